"""amk.loop: keep rules, stopping, no program measured twice, tuning records, resume, seeding, SIGINT, and a
real toy run on CPU. The search's acceptance (a synthetic evaluator) is in test_search.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel import load_corpus, load_results, read_rows
from amk.flywheel.records import MODEL_FINGERPRINT, load_records
from amk.flywheel.results import Status
from amk.harness.loop import Incumbent, LoopError, SearchSettings, decide
from amk.schedule.config import ScheduleConfig
from amk.schedule.config import schedule_id_of as written_schedule_id
from amk.schedule.smem import max_dynamic_smem
from amk.schedule.space import neighbours, non_default_knobs, random_config, search_space


def _verdict(lat, correct=True, valid=True, spread=None, kind="predicted"):
    return {"valid": valid, "rejected_reason": None if valid else "schema: $.x: bad", "correct": correct,
            "latency_us": lat if correct else None, "latency_spread_us": spread, "latency_kind": kind if correct else None,
            "failures": [] if correct else [{"case": "pos0", "message": "MERE 1 >= 0.1"}], "notes": [],
            "pct_of_floor": 50.0, "environment": {}}


DEFAULT = ScheduleConfig()
TWO_KNOBS = ScheduleConfig.from_dict({"pipelining_depth": 2, "matvec": {"qkv": {"k_splits": 2}}})


def test_decide_keep_discard_and_margins():
    inc = Incumbent(DEFAULT, 100.0, 0.0, "predicted")
    assert decide(inc, _verdict(98.0), TWO_KNOBS)[0] == Status.KEEP  # 2% > 1%
    assert decide(inc, _verdict(99.5), TWO_KNOBS)[0] == Status.DISCARD  # inside 1%
    assert decide(inc, _verdict(120.0), DEFAULT)[0] == Status.DISCARD
    assert decide(Incumbent(DEFAULT, 100.0, 2.0, "measured-gpu"), _verdict(95.0, spread=2.0), TWO_KNOBS)[0] == \
        Status.DISCARD  # 5% faster, but 2 sigma of the spreads is 5.7 us
    assert decide(inc, _verdict(None, correct=False), DEFAULT)[0] == Status.FAIL
    assert decide(inc, _verdict(None, valid=False, correct=False), DEFAULT)[0] == Status.REJECTED
    assert decide(Incumbent(DEFAULT), _verdict(500.0), TWO_KNOBS)[0] == Status.KEEP  # first correct config
    withheld = {**_verdict(50.0), "latency_us": None, "notes": ["latency withheld: under the floor"]}
    assert decide(inc, withheld, DEFAULT)[0] == Status.DISCARD


def test_decide_tie_goes_to_the_simpler_config():
    inc = Incumbent(TWO_KNOBS, 100.0, 0.0, "predicted")
    one = ScheduleConfig.from_dict({"pipelining_depth": 2})
    status, why = decide(inc, _verdict(100.5), one)
    assert status == Status.KEEP and "simpler" in why
    assert why == "tie within 1.00 us (0.50% higher latency), simpler"
    assert decide(Incumbent(one, 100.0), _verdict(99.5), TWO_KNOBS) == \
        (Status.DISCARD, "0.50% lower latency (a keep needs more than 1.00% lower)")
    assert decide(Incumbent(one, 100.0), _verdict(102.0), TWO_KNOBS) == \
        (Status.DISCARD, "2.00% higher latency (a keep needs more than 1.00% lower)")
    assert decide(inc, _verdict(102.0), one) == (Status.DISCARD, "2.00% higher latency (a simpler config is kept "
                                                 "within 1.00%)")
    assert decide(Incumbent(one, 100.0), _verdict(100.004), TWO_KNOBS)[1].startswith("the same latency")
    assert decide(Incumbent(one, 0.0), _verdict(5.0), TWO_KNOBS)[0] == Status.DISCARD  # no division by zero
    assert len(non_default_knobs(TWO_KNOBS)) == 2


def test_the_race_bound_sits_beyond_any_keep_or_tie():
    from amk.harness.search.keep import margin_us, race_bound_us

    assert race_bound_us(Incumbent(DEFAULT, 1000.0, 2.0, "predicted")) is None  # a prediction has no repeats
    assert race_bound_us(Incumbent(DEFAULT)) is None  # nothing measured yet
    quiet = Incumbent(DEFAULT, 1000.0, 2.0, "measured-gpu")
    assert race_bound_us(quiet) == pytest.approx(1030.0)  # 3% beats two 1% margins
    noisy = Incumbent(DEFAULT, 1000.0, 20.0, "measured-gpu")
    assert race_bound_us(noisy) == pytest.approx(1080.0)  # two margins of 2 x 20 us
    for inc in (quiet, noisy):  # a first repeat at the bound neither wins nor ties, whatever the others show
        at = race_bound_us(inc)
        assert decide(inc, _verdict(at, spread=None, kind="measured-gpu"), DEFAULT)[0] == Status.DISCARD
        assert at - inc.latency_us >= 2 * margin_us(inc, None)


def test_space_moves_and_random_configs_stay_in_the_space():
    space = search_space("cpu-sim")
    moves = neighbours(DEFAULT, space)
    assert len({m.config.schedule_id for m in moves}) == len(moves)
    assert all(len(non_default_knobs(m.config)) == 1 for m in moves)
    import random

    rng = random.Random(0)
    for _ in range(50):
        cfg = random_config(space, rng)
        assert cfg.smem_per_block <= max_dynamic_smem(amk.get_target("cpu-sim").smem_per_block_max)


class _Fake(list):
    """A deterministic evaluate(): latency falls with lm_head rows_per_task, qkv k_splits fail. Records the
    schedule ids it was asked for."""

    def __call__(self, model, gpu, config, **kw):
        self.append(config.schedule_id)
        if config.matvec.qkv.k_splits > 1:
            return _verdict(None, correct=False)
        rows = config.matvec.lm_head.rows_per_task or 256  # null (derived): as 256 rows would
        return _verdict(100.0 - rows / 10 + config.pipelining_depth)


@pytest.fixture
def fake_evaluate():
    return _Fake()


SMALL = SearchSettings(population=16, measure_per_round=4)


def test_loop_budget_keeps_only_correct_records_every_trial_and_never_repeats_a_program(tmp_path, fake_evaluate):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    s = amk.loop("toy", "cpu-sim", budget=12, device="cpu", results=res, corpus=cor, seed=3, max_reverts=1000,
                 evaluate=fake_evaluate, settings=SMALL)
    assert s["trials"] == 12 and s["stopped"] == "budget"
    rows = read_rows(res)
    assert [int(r["trial"]) for r in rows] == list(range(1, 13))
    assert len({r["program_fingerprint"] for r in rows}) == 12 == len(fake_evaluate)  # one measurement each
    assert rows[0]["schedule_id"] == DEFAULT.schedule_id and rows[0]["description"].startswith("baseline")
    kept = [r for r in rows if r["status"] == "keep"]
    assert kept and all(r["correct"] == "true" for r in kept)
    assert all(r["status"] == "fail" for r in rows if r["correct"] == "false")
    records = load_records(cor)  # every trial is a tuning record, kept or not
    assert [r.trial for r in records] == [int(r["trial"]) for r in rows]
    assert [r.program_fingerprint for r in records] == [r["program_fingerprint"] for r in rows]
    assert sum(r.kept for r in records) == len(kept) and all(r.correct for r in records if r.kept)
    assert all(r.features and r.predicted_latency_us and r.dtype == "fp32" for r in records)
    assert all(r.status == row["status"] for r, row in zip(records, rows))
    assert len(load_corpus(cor)) == 12
    lats = [float(r["latency_us"]) for r in kept]
    assert lats == sorted(lats, reverse=True)  # each keep beats the one before
    assert s["incumbent"]["latency_us"] == min(lats)
    assert s["incumbent"]["config"] == ScheduleConfig.from_dict(s["incumbent"]["config"]).to_dict()


def test_loop_stops_on_reverts_and_minutes(tmp_path, fake_evaluate):
    s = amk.loop("toy", "cpu-sim", max_reverts=2, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=0, evaluate=lambda *a, **k: _verdict(100.0), settings=SMALL)
    statuses = [r["status"] for r in read_rows(tmp_path / "r.tsv")]
    assert s["stopped"] == "max_reverts" and all(st != "keep" for st in statuses[-2:])
    s = amk.loop("toy", "cpu-sim", minutes=1e-9, device="cpu", results=tmp_path / "r2.tsv", corpus=tmp_path / "c.jsonl",
                 evaluate=fake_evaluate)
    assert s["stopped"] == "minutes" and s["trials"] == 0


def test_a_bounded_loop_moves_to_another_region_instead_of_stopping_on_reverts(tmp_path):
    s = amk.loop("toy", "cpu-sim", budget=9, max_reverts=2, device="cpu", results=tmp_path / "r.tsv",
                 corpus=tmp_path / "c.jsonl", seed=0, evaluate=lambda *a, **k: _verdict(100.0), settings=SMALL)
    assert s["stopped"] == "budget" and s["trials"] == 9 and s["search"]["restarts"] >= 2
    sources = [r.source for r in load_records(tmp_path / "c.jsonl")]
    assert "restart" in sources


def test_loop_refuses_an_existing_results_file_without_resume_and_a_foreign_one(tmp_path, fake_evaluate):
    res = tmp_path / "results.tsv"
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=tmp_path / "c.jsonl",
             evaluate=fake_evaluate, settings=SMALL)
    with pytest.raises(LoopError, match="resume"):
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=tmp_path / "c.jsonl",
                 evaluate=fake_evaluate)
    foreign = tmp_path / "foreign.tsv"
    foreign.write_text("a\tb\n1\t2\n")
    with pytest.raises(LoopError, match="foreign.tsv"):
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=foreign, corpus=tmp_path / "c.jsonl",
                 evaluate=fake_evaluate, resume=True)
    assert foreign.read_text() == "a\tb\n1\t2\n"  # nothing lost


def _others_are_faster(model, gpu, config, **kw):  # any move off the defaults is a keep
    return _verdict(100.0 if config.schedule_id == DEFAULT.schedule_id else 90.0)


def _file_with_a_keep(tmp_path, evaluate=_others_are_faster):
    """results.tsv and corpus.jsonl of an 8-trial loop, and its latest kept row: the incumbent a resume takes."""
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=8, device="cpu", results=res, corpus=cor, seed=3, evaluate=evaluate,
             settings=SMALL)
    best = [r for r in read_rows(res) if r["status"] == "keep"][-1]
    return res, cor, best


def test_resume_without_the_corpus_of_its_best_keep_refuses(tmp_path):
    res, cor, best = _file_with_a_keep(tmp_path)
    assert best["schedule_id"] != DEFAULT.schedule_id  # a kept config only corpus.jsonl can give back
    before = res.read_text()
    with pytest.raises(LoopError, match=f"trial {best['trial']} kept {best['schedule_id']}.*holds no record"):
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=tmp_path / "elsewhere.jsonl",
                 evaluate=_others_are_faster, resume=True, settings=SMALL)
    assert res.read_text() == before  # nothing appended
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_others_are_faster,
                 resume=True, settings=SMALL)  # with its corpus, the loop continues from that keep
    assert s["incumbent"]["latency_us"] <= float(best["latency_us"])


def test_resume_whose_best_keep_lost_its_record_continues_from_the_best_keep_recorded(tmp_path, caplog):
    # a run stopped between its row and its record, or a record line torn: the file stays resumable
    res, cor, best = _file_with_a_keep(tmp_path)
    lines = cor.read_text().splitlines(keepends=True)
    torn = [i for i, line in enumerate(lines) if best["schedule_id"] in line and '"kept": true' in line]
    assert torn
    for i in torn:
        lines[i] = lines[i][: len(lines[i]) // 2] + "\n"
    cor.write_text("".join(lines))
    before = res.read_text()
    with caplog.at_level("WARNING", logger="amk.harness"):
        s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_others_are_faster,
                     resume=True, settings=SMALL)
    assert any(f"trial {best['trial']} kept {best['schedule_id']}" in r.getMessage() and "continuing from trial"
               in r.getMessage() for r in caplog.records)
    assert res.read_text().startswith(before) and s["trials"] >= 1
    with pytest.raises(LoopError, match="holds no record"):  # no keep recorded at all: moved without its corpus
        cor.write_text("")
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_others_are_faster,
                 resume=True, settings=SMALL)


def test_resume_with_a_given_config_other_than_the_kept_incumbent_refuses(tmp_path):
    res, cor, best = _file_with_a_keep(tmp_path)
    before = res.read_text()
    slower = {"build": {"loads_in_flight": 4}}  # the defaults: 100 us against the kept 90, it must not become a keep
    with pytest.raises(LoopError, match=f"trial {best['trial']} kept {best['schedule_id']}.*resume without --config"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_others_are_faster,
                 resume=True, incumbent=slower, settings=SMALL)
    assert res.read_text() == before


def test_loop_progress_callback(tmp_path, fake_evaluate):
    seen = []
    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
             progress=seen.append, evaluate=fake_evaluate, settings=SMALL)
    assert [p["trial"] for p in seen] == [1, 2, 3] and {"status", "latency_us", "best_latency_us", "source"} <= set(seen[0])


def test_loop_crash_in_evaluate_is_a_row_not_an_exception(tmp_path):
    def broken(*a, **k):
        raise RuntimeError("harness bug")

    s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 evaluate=broken, settings=SMALL)
    rows = read_rows(tmp_path / "r.tsv")
    assert s["trials"] == 2 and [r["status"] for r in rows] == ["crash", "crash"]
    assert "harness bug" in rows[0]["description"] and rows[0]["correct"] == ""
    assert [r.status for r in load_records(tmp_path / "c.jsonl")] == ["crash", "crash"]


def test_seeded_loop_starts_from_the_given_config_and_a_measured_one_is_a_duplicate(tmp_path, fake_evaluate):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    seed = {"matvec": {"lm_head": {"rows_per_task": 128}}}
    s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=cor, incumbent=seed,
                 evaluate=fake_evaluate, settings=SMALL)
    rows = read_rows(res)
    given = ScheduleConfig.from_dict(seed)
    assert rows[0]["schedule_id"] == given.schedule_id and rows[0]["description"].startswith("baseline (given")
    calls = len(fake_evaluate)
    # the same program again (resume): its row stands for it, nothing is measured twice
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=seed, resume=True,
                 evaluate=fake_evaluate, settings=SMALL)
    assert len(read_rows(res)) == len(rows) + 1  # its one trial, no second baseline row
    assert s["incumbent"]["latency_us"] <= float(rows[0]["latency_us"])
    assert len(fake_evaluate) == calls + 1 and s["search"]["duplicates"] >= 1
    assert given.schedule_id not in fake_evaluate[calls:]
    with pytest.raises(amk.ConfigError, match="rows_per_tsk"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "x.tsv", corpus=cor,
                 incumbent={"matvec": {"lm_head": {"rows_per_tsk": 1}}}, evaluate=fake_evaluate)
    with pytest.raises(LoopError, match="rejected"):  # parses, but the lowering refuses it
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "y.tsv", corpus=cor,
                 incumbent={"matvec": {"qkv": {"heads_per_task": 2, "head_splits": 2}}}, evaluate=fake_evaluate)
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "y.tsv").exists()


def test_configs_that_lower_to_one_program_are_one_trial(tmp_path):
    # kv_partitions=1 is one ATTN_DECODE task whichever softmax: two configs, one program
    a = {"attention": {"kv_partitions": 1}}
    b = {"attention": {"kv_partitions": 1, "softmax": "global"}}
    calls = _Fake()
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=a, evaluate=calls)
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=b, resume=True,
                 evaluate=calls, settings=SMALL)
    assert s["search"]["duplicates"] >= 1 and ScheduleConfig.from_dict(b).schedule_id not in calls
    rows = read_rows(res)
    assert len(rows) == 2 and len(calls) == 2 and rows[1]["program_fingerprint"] != rows[0]["program_fingerprint"]


def test_real_loop_then_resume_on_cpu(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    small = SearchSettings(population=8, measure_per_round=2, neighbours=False)
    first = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1, settings=small)
    assert first["trials"] == 3
    second = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1, resume=True,
                      settings=small)
    assert second["trials"] == 3
    df = load_results(res)
    assert df["trial"].tolist() == [1, 2, 3, 4, 5, 6]  # numbering continues
    assert df["schedule_id"].is_unique and df["program_fingerprint"].is_unique  # nothing measured twice
    assert not df["description"].iloc[3].startswith("baseline")  # the incumbent came from the corpus
    assert (df[df["status"] == "keep"]["correct"] == True).all()  # noqa: E712
    assert (df["kind"][df["latency_us"].notna()] == "predicted").all()
    for line in open(cor):
        d = json.loads(line)
        assert {"config", "verdict", "environment", "model", "gpu", "time", "program_fingerprint", "features",
                "latency_us", "latency_kind", "commit", "kept", "dtype"} <= set(d)


def test_a_resume_of_a_12_column_results_file_measures_nothing_it_holds(tmp_path):
    """A file written before the program_fingerprint column: its rows stand for their schedule ids. Its incumbent
    was measured again as a new trial and logged as a first keep ("first correct config"), since the rows were
    matched by fingerprint alone."""
    from amk.flywheel.results import LEGACY_COLUMNS

    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    small = SearchSettings(population=8, measure_per_round=2, neighbours=False)
    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1, settings=small)
    lines = res.read_text().splitlines()
    res.write_text("".join("\t".join(ln.split("\t")[:len(LEGACY_COLUMNS)]) + "\n" for ln in lines))
    before = {r["schedule_id"] for r in read_rows(res)}
    out = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=cor, seed=1, resume=True,
                   settings=small)
    new = read_rows(res)[3:]
    assert out["trials"] == 2 and [r["trial"] for r in new] == ["4", "5"]
    assert not {r["schedule_id"] for r in new} & before, new  # nothing the file holds is measured again
    assert not any(r["description"].startswith("baseline") for r in new)


def test_loop_on_a_cpu_for_a_gpu_target_prices_bf16_as_evaluate_does(tmp_path):
    # HARNESS §2: bf16 is the default dtype also when a CPU predicts for a GPU target (fp32 only for cpu-sim)
    amk.loop("toy", "h200", budget=1, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl")
    (record,) = load_records(tmp_path / "c.jsonl")
    verdict = amk.evaluate("toy", "h200", record.config, device="cpu")
    assert record.dtype == verdict["dtype"] == "bf16"
    assert record.program_fingerprint == verdict["program_fingerprint"]


def test_one_checkpoint_is_one_model_however_its_directory_is_spelt(tmp_path, monkeypatch, fake_evaluate):
    """A resume by a relative path, or with a trailing slash, continues the run of the absolute path: the same
    incumbent, no baseline measured again, one model in results.tsv and the corpus."""
    from _checkpoints import llama

    ck = llama(tmp_path / "ck" / "tiny")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    files = {"results": "r.tsv", "corpus": "c.jsonl", "device": "cpu", "settings": SMALL}
    first = amk.loop(str(ck), "cpu-sim", budget=4, evaluate=fake_evaluate, **files)
    for spelling in ("../ck/tiny", f"{ck}/"):
        again = amk.loop(spelling, "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
        assert again["incumbent"]["schedule_id"] == first["incumbent"]["schedule_id"] or \
            again["incumbent"]["latency_us"] <= first["incumbent"]["latency_us"]
    rows = read_rows(work / "r.tsv")
    assert {r["model"] for r in rows} == {str(ck.resolve())}
    assert sum(r["description"].startswith("baseline") for r in rows) == 1
    assert amk.propose("../ck/tiny", "cpu-sim", corpus="c.jsonl")["source"].startswith("corpus:")


def test_a_checkpoint_saved_again_has_its_incumbent_verified_again_on_resume(tmp_path, fake_evaluate, caplog):
    """The corpus records the fingerprint of the weights each trial ran on; a resume whose incumbent the corpus does
    not record passing on the weights there now (the checkpoint saved again, whatever other results file shares the
    corpus) verifies and times it again on them before searching on, and stops with LoopError (its row written)
    when it fails there, on every resume until it passes."""
    from _checkpoints import SMALL as SHAPE
    from _checkpoints import save_checkpoint
    from transformers import LlamaConfig

    from amk.harness.environment import Device, get_model
    from amk.models.registry import checkpoint_fingerprint

    def llama(path, seed):
        return save_checkpoint(LlamaConfig(**SHAPE, num_hidden_layers=1, max_position_embeddings=64), path, seed)

    def remeasures():
        return [r for r in read_rows(files["results"]) if r["status"] == "remeasure"]

    ck = llama(tmp_path / "ck", 0)
    files = {"results": tmp_path / "r.tsv", "corpus": tmp_path / "c.jsonl", "device": "cpu", "settings": SMALL}
    first = amk.loop(str(ck), "cpu-sim", budget=3, evaluate=fake_evaluate, **files)
    before = checkpoint_fingerprint(ck)
    assert before == amk.load_model(str(ck), weights=False).fingerprint
    assert get_model(str(ck), "fp32", Device.CPU).fingerprint == before
    assert {r.environment["model_fingerprint"] for r in load_records(files["corpus"])} == {before}
    amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
    assert not remeasures()  # same weights: the row stands for the incumbent

    config = (ck / "config.json").read_text()
    llama(tmp_path / "ck", 1)  # other values, same shape and config.json
    assert (ck / "config.json").read_text() == config
    now = checkpoint_fingerprint(ck)
    assert now != before and get_model(str(ck), "fp32", Device.CPU).fingerprint == now  # loaded again
    # another results file on the same corpus runs on the new weights first: the incumbent is still unchecked
    amk.loop(str(ck), "cpu-sim", budget=1, evaluate=fake_evaluate, incumbent={"pipelining_depth": 3},
             **{**files, "results": tmp_path / "other.tsv"})
    with caplog.at_level("INFO", logger="amk"):
        amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
    assert "has not passed on the checkpoint there now" in caplog.text
    assert "whose row stands for it until it is checked on the checkpoint there now" in caplog.text
    assert [r["schedule_id"] for r in remeasures()] == [first["incumbent"]["schedule_id"]]
    assert load_records(files["corpus"])[-1].environment["model_fingerprint"] == now

    llama(tmp_path / "ck", 2)

    def failing(model, gpu, config, **kw):
        return _verdict(None, correct=False)

    for _ in range(2):  # its failure is no pass: the next resume checks it again
        with pytest.raises(LoopError, match="fails on the checkpoint now in"):
            amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=failing, **files)
        assert read_rows(files["results"])[-1]["status"] == "fail"
    amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
    assert len(remeasures()) == 2

    llama(tmp_path / "ck", 4)  # a resume stopped between adopting its incumbent and the check says so
    caplog.clear()
    polls = []

    def stop_after_the_start():  # the go loop asks before the start and again before the check
        polls.append(1)
        return len(polls) >= 2

    with caplog.at_level("WARNING", logger="amk"):
        amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, should_stop=stop_after_the_start,
                 **files)
    assert "stopped before it checked the incumbent" in caplog.text and len(remeasures()) == 2
    amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
    assert len(remeasures()) == 3  # the next resume checks it

    def saving_midway(model, gpu, config, **kw):  # the checkpoint saved again while the loop runs
        if len(fake_evaluate) == calls + 1:
            llama(tmp_path / "ck", 3)
        return fake_evaluate(model, gpu, config, **kw)

    calls, trials = len(fake_evaluate), len(read_rows(files["results"]))
    with pytest.raises(LoopError, match="saved again during the loop"):
        amk.loop(str(ck), "cpu-sim", budget=5, resume=True, evaluate=saving_midway, **files)
    assert len(read_rows(files["results"])) == trials + 2  # no trial ran on the new weights


@pytest.mark.parametrize("corpus_lost", ["emptied", "deleted"])
def test_a_resume_whose_corpus_was_lost_checks_its_incumbent_again(tmp_path, fake_evaluate, caplog, corpus_lost):
    """The default config kept, then the corpus emptied or deleted and the checkpoint saved again: the results
    row alone cannot say which weights it passed on, so the resume verifies and times the incumbent on the
    checkpoint there now, as for one saved again, and says the corpus holds no record of it."""
    from _checkpoints import SMALL as SHAPE
    from _checkpoints import save_checkpoint
    from transformers import LlamaConfig

    def llama(seed):
        return save_checkpoint(LlamaConfig(**SHAPE, num_hidden_layers=1, max_position_embeddings=64),
                               tmp_path / "ck", seed)

    ck = llama(0)
    files = {"results": tmp_path / "r.tsv", "corpus": tmp_path / "c.jsonl", "device": "cpu", "settings": SMALL}
    first = amk.loop(str(ck), "cpu-sim", budget=1, evaluate=fake_evaluate, **files)
    assert first["incumbent"]["schedule_id"] == amk.ScheduleConfig().schedule_id
    if corpus_lost == "emptied":
        files["corpus"].write_text("")
    else:
        files["corpus"].unlink()
    llama(1)
    with caplog.at_level("WARNING", logger="amk"):
        amk.loop(str(ck), "cpu-sim", budget=1, resume=True, evaluate=fake_evaluate, **files)
    assert "holds no record of the incumbent" in caplog.text and "carry no weights fingerprint" not in caplog.text
    assert [r["schedule_id"] for r in read_rows(files["results"]) if r["status"] == "remeasure"] == \
        [first["incumbent"]["schedule_id"]]


def test_a_confirmed_keep_describes_its_pooled_figure(tmp_path):
    # a measured gain is timed again: the row holds the mean of the two runs, and so must its description
    from amk.harness.search.policy import SearchSettings

    seen: dict[str, int] = {}

    def evaluate(model, gpu, config, **kw):
        seen[config.schedule_id] = seen.get(config.schedule_id, 0) + 1
        lat = 100.0 if config.schedule_id == DEFAULT.schedule_id else (90.0 if seen[config.schedule_id] == 1 else 96.0)
        return _verdict(lat, spread=0.5, kind="measured-gpu")

    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
             seed=3, evaluate=evaluate, settings=SearchSettings(population=16, measure_per_round=4))
    keeps = [r for r in read_rows(tmp_path / "r.tsv") if "confirmed" in r["description"]]
    assert keeps, read_rows(tmp_path / "r.tsv")
    row = keeps[0]
    assert row["status"] == "keep" and float(row["latency_us"]) == pytest.approx(93.0)
    assert "7.00% lower latency (1.075x); confirmed (90.00, 96.00 us)" in row["description"], row["description"]


def test_the_loop_says_when_its_latencies_are_at_a_short_kv_context(tmp_path, fake_evaluate):
    # toy holds 512 positions: its steps are timed and priced at a context of 512 - 211, as evaluate notes
    from amk.harness.cmd_run import loop_text

    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 evaluate=fake_evaluate, settings=SMALL)
    assert s["notes"] == ["every latency is at a KV context of 301 positions, not 1024: the program holds 512 "
                          "positions, and its warm-up and timed steps follow the context"]
    assert "note: every latency is at a KV context of 301" in loop_text(s)
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r2.tsv", corpus=tmp_path / "c.jsonl",
                 evaluate=fake_evaluate, settings=SMALL, max_seq=2048)
    assert s["notes"] == []


def test_the_summary_names_the_incumbents_knobs_off_the_default():
    # the whole config (every knob, defaults too) is one long line: the moves the search kept come first
    from amk.harness.cmd_run import loop_text

    s = {"trials": 2, "statuses": {"keep": 1, "discard": 1}, "stopped": "budget", "trials_per_minute": 3.0,
         "incumbent": {"schedule_id": "abc", "latency_us": 1.5, "latency_kind": "predicted",
                       "config": {"threads_per_block": 128, "matvec": {"qkv": {"heads_per_task": 2}}}},
         "results": "r.tsv", "corpus": "c.jsonl"}
    lines = loop_text(s).splitlines()
    assert "incumbent's knobs off the default: matvec.qkv.heads_per_task=2, threads_per_block=128" in lines
    s["incumbent"]["config"] = {}
    assert "incumbent's knobs off the default: none" in loop_text(s).splitlines()


def test_the_summarys_best_is_of_the_runs_dtype(tmp_path, fake_evaluate):
    # two results files on one corpus: a bf16 run's (faster) records are no rival of an fp32 run's best
    corpus = tmp_path / "c.jsonl"
    amk.loop("toy", "cpu-sim", budget=2, dtype="bfloat16", results=tmp_path / "b.tsv", corpus=corpus,
             evaluate=lambda model, gpu, config, **kw: _verdict(10.0), settings=SMALL)
    assert {r.dtype for r in load_records(corpus)} == {"bf16"}  # any spelling, recorded by its name
    s = amk.loop("toy", "cpu-sim", budget=2, results=tmp_path / "f.tsv", corpus=corpus, evaluate=fake_evaluate,
                 settings=SMALL)
    assert s["dtype"] == "fp32" and s["best"]["latency_us"] > 10.0


# ---- dtype and context (max_seq) of results rows -------------------------------------------------------------


def test_every_row_carries_the_runs_dtype_and_max_seq(tmp_path):
    calls = []

    def measured_or_crash(model, gpu, config, **kw):  # a GPU's kind: the incumbent is re-measured
        calls.append(config.schedule_id)
        if len(calls) == 3:  # whichever trial the search makes third
            raise RuntimeError("harness bug")
        return _verdict(100.0 - (config.matvec.lm_head.rows_per_task or 256) / 10, spread=0.5, kind="measured-gpu")

    res = tmp_path / "r.tsv"
    amk.loop("toy", "cpu-sim", budget=12, device="cpu", results=res, corpus=tmp_path / "c.jsonl", seed=3,
             max_reverts=1000, dtype="bfloat16", max_seq=64, evaluate=measured_or_crash,
             settings=SearchSettings(population=16, measure_per_round=4, remeasure_every=2))
    rows = read_rows(res)
    assert {"keep", "remeasure", "crash"} <= {r["status"] for r in rows}, [r["status"] for r in rows]
    assert {(r["dtype"], r["max_seq"]) for r in rows} == {("bf16", "64")}
    # without max_seq, the positions lower() gives the program: the toy's 512
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "d.tsv", corpus=tmp_path / "c.jsonl",
             evaluate=lambda *a, **k: _verdict(None, valid=False, correct=False), settings=SMALL)
    assert [(r["status"], r["dtype"], r["max_seq"]) for r in read_rows(tmp_path / "d.tsv")] == \
        [("rejected", "fp32", "512")]


def _one_row_file(tmp_path, evaluate, **edits) -> tuple:
    """A results file of one fp32 trial of SEED (max_seq 512), its row edited as `edits` says (column -> cell),
    its latency set to 50 us unless `edits` say otherwise: a resume that adopts the row has an incumbent of 50 us."""
    from amk.flywheel.results import COLUMNS, PRE_CONTEXT_COLUMNS

    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=SEED, evaluate=evaluate,
             settings=SMALL)
    header, line = res.read_text().splitlines()
    cells = dict(zip(COLUMNS, line.split("\t")))
    assert (cells["dtype"], cells["max_seq"], cells["status"]) == ("fp32", "512", "keep")
    cells.update({"latency_us": "50.0000", **edits})
    columns = PRE_CONTEXT_COLUMNS if edits.pop("older", None) else COLUMNS
    res.write_text("\t".join(columns) + "\n" + "\t".join(cells[c] for c in columns) + "\n")
    return res, cor


SEED = {"matvec": {"lm_head": {"rows_per_task": 128}}}


@pytest.mark.parametrize("edits, adopted", [
    ({}, True),  # the run's own dtype and max_seq
    ({"dtype": "bf16"}, False),
    ({"max_seq": "64"}, False),
    ({"older": "1"}, True),  # a 15-column file: its rows cannot say, and stand as today's did
], ids=["same", "other-dtype", "other-max_seq", "15-columns"])
def test_a_resume_adopts_only_a_row_of_its_own_dtype_and_max_seq(tmp_path, fake_evaluate, caplog, edits, adopted):
    import logging

    res, cor = _one_row_file(tmp_path, fake_evaluate, **edits)
    calls = len(fake_evaluate)
    with caplog.at_level(logging.INFO, logger="amk.harness"):
        s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=SEED, resume=True,
                     evaluate=fake_evaluate, settings=SMALL)
    seed_id = ScheduleConfig.from_dict(SEED).schedule_id
    rows = read_rows(res)
    if adopted:  # the row stands for the incumbent: not measured again
        assert s["incumbent"]["trial"] == 1 and s["incumbent"]["latency_us"] == 50.0
        assert seed_id not in fake_evaluate[calls:]
    else:  # measured again at this run's dtype and context: the other row's 50 us is no bar
        assert s["incumbent"]["latency_us"] != 50.0 and seed_id in fake_evaluate[calls:]
        assert rows[1]["status"] == "remeasure" and (rows[1]["dtype"], rows[1]["max_seq"]) == ("fp32", "512")
        assert f"{res}: 1 row of toy on cpu-sim is of another dtype or context" in caplog.text
        assert "passed over" in caplog.text
    older = "older" in edits
    warned = [r for r in caplog.records if "carry no dtype or context" in r.getMessage()]
    assert len(warned) == (1 if older else 0) and (not older or warned[0].levelno == logging.WARNING)
    assert not older or str(res) in warned[0].getMessage()
    if older:  # appended in its own 15 columns
        assert all(line.count("\t") == 14 for line in res.read_text().splitlines())


def test_a_resume_passes_over_a_kept_latency_under_the_spec_floor(tmp_path, fake_evaluate, caplog):
    # the fp32 weights a toy step reads at cpu-sim's 50 GB/s: 8.7 us, so 0.0001 us is a hand edit, never the bar to beat
    import logging

    res, cor = _one_row_file(tmp_path, fake_evaluate, latency_us="0.0001")
    calls = len(fake_evaluate)
    with caplog.at_level(logging.INFO, logger="amk.harness"):
        s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=cor, incumbent=SEED, resume=True,
                     evaluate=fake_evaluate, settings=SMALL)
    seed_id = ScheduleConfig.from_dict(SEED).schedule_id
    assert seed_id in fake_evaluate[calls:]  # the incumbent is measured again
    assert s["incumbent"]["latency_us"] > 8.0
    rows = read_rows(res)
    assert rows[1]["schedule_id"] == seed_id and rows[1]["status"] == "remeasure"
    assert "trial 1 of" in caplog.text and "under the spec floor 8.7 us" in caplog.text
    assert "another dtype or context" not in caplog.text  # the row is of this run: only the floor passes it over
    assert rows[2]["status"] in ("keep", "discard") and "44670933" not in rows[2]["description"]


def test_a_resume_at_another_dtype_or_max_seq_is_not_barred_by_the_files_keeps(tmp_path):
    res, cor, best = _file_with_a_keep(tmp_path)
    assert best["schedule_id"] != DEFAULT.schedule_id
    slower = {"build": {"loads_in_flight": 4}}
    # of the run's dtype and context, the file's keep bars both a corpus without it and a slower given config
    with pytest.raises(LoopError, match="holds no record"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=tmp_path / "other.jsonl", resume=True,
                 evaluate=_others_are_faster, settings=SMALL)
    with pytest.raises(LoopError, match="resume without --config"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True, incumbent=slower,
                 evaluate=_others_are_faster, settings=SMALL)
    # of another dtype or context, it is no bar: those runs start on their own (the given config, or the defaults)
    for n, other in enumerate(({"dtype": "bf16"}, {"max_seq": 64}), start=1):
        before = len(read_rows(res))
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True, incumbent=slower,
                 evaluate=_others_are_faster, settings=SMALL, **other)
        start = read_rows(res)[before]  # the given config, measured as this run's start
        assert start["description"].startswith("baseline (given") and start["status"] == "keep"
        assert float(start["latency_us"]) == 100.0
        s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=tmp_path / f"o{n}.jsonl",
                     resume=True, evaluate=_others_are_faster, settings=SMALL, **other)
        # the defaults (the slower config above) start it, adopted from the row of this dtype and context just
        # written: not measured again, and that row (not the fp32 keep) was the bar its one trial beat
        added = read_rows(res)[before + 1:]
        assert s["trials"] == 1 and len(added) == 1 and added[0]["schedule_id"] != DEFAULT.schedule_id
        assert float(added[0]["speedup"]) == pytest.approx(100.0 / float(added[0]["latency_us"]), abs=1e-4)
    rows = read_rows(res)
    assert {(r["dtype"], r["max_seq"]) for r in rows} == {("fp32", "512"), ("bf16", "512"), ("fp32", "64")}


def test_a_resume_starts_from_its_files_best_keep_not_a_faster_record_of_another_context(tmp_path):
    """The corpus does not record a record's max_seq: its best may be a latency of a shorter context, and a start
    from it (slower at this context) would log slower configs as keeps over the file's best."""
    short = ScheduleConfig.from_dict(SEED).schedule_id

    def by_context(model, gpu, config, max_seq=None, **kw):
        context = 0 if max_seq == 64 else 301  # as gates.gate_latency records it: 64 positions leave none
        if config.schedule_id == short:
            v = _verdict(50.0 if max_seq == 64 else 99.0)  # fast only at the short context
        else:
            v = _verdict(100.0 if config.schedule_id == DEFAULT.schedule_id else 90.0)
        return {**v, "latency_context": context}

    res, cor, best = _file_with_a_keep(tmp_path, by_context)
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r64.tsv", corpus=cor, max_seq=64,
             incumbent=SEED, evaluate=by_context, settings=SMALL)  # the corpus's best record now: 50 us at 64
    before = len(read_rows(res))
    s = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, resume=True,
                 evaluate=by_context, settings=SMALL)
    added = read_rows(res)[before:]
    assert short not in [r["schedule_id"] for r in added]  # not the start
    assert all(float(r["latency_us"]) < float(best["latency_us"]) for r in added if r["status"] == "keep")
    assert s["incumbent"]["latency_us"] <= float(best["latency_us"])
    assert s["best"]["schedule_id"] != short  # its 50 us is of a 64-position program, not this run's context
    # a new results file at this context starts from the corpus's best at this context, not the short one
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "new.tsv", corpus=cor,
                 evaluate=by_context, settings=SMALL)
    assert read_rows(tmp_path / "new.tsv")[0]["schedule_id"] != short


def test_a_resume_of_a_file_of_other_models_only_says_so(tmp_path, fake_evaluate, caplog):
    # a mistyped --model (or --gpu) on resume would otherwise start a new baseline without a word
    import logging

    res, cor = _one_row_file(tmp_path, fake_evaluate, model="toy-2L")
    with caplog.at_level(logging.INFO, logger="amk.harness"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                 evaluate=fake_evaluate, settings=SMALL)
    (warned,) = [r for r in caplog.records if "none of its" in r.getMessage()]
    assert warned.levelno == logging.WARNING
    assert f"{res}: none of its 1 rows are of toy on cpu-sim (it holds toy-2L on cpu-sim)" in warned.getMessage()
    assert read_rows(res)[1]["description"].startswith("baseline")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="amk.harness"):  # now it holds rows of toy: no word
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                 evaluate=fake_evaluate, settings=SMALL)
    assert "none of its" not in caplog.text


def test_a_built_in_name_is_the_built_in_beside_a_directory_so_named(tmp_path, monkeypatch, fake_evaluate):
    # bench/shapes.py saves shapes under built-in names: a loop started beside one runs (and records) the built-in
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()  # no checkpoint in it: fingerprinting it would refuse the run
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results="r.tsv", corpus="c.jsonl", evaluate=fake_evaluate,
                 settings=SMALL)
    assert s["trials"] == 1
    assert all(MODEL_FINGERPRINT not in r.environment for r in load_records(tmp_path / "c.jsonl"))


def test_a_loaded_checkpoint_and_a_path_object_are_the_directory_by_its_absolute_path(tmp_path, monkeypatch,
                                                                                     fake_evaluate):
    """A checkpoint handed over as a loaded Model, or as a pathlib.Path, is recorded by its absolute path, as its
    name in a string is; a directory called like a built-in (toy) stays the directory, never the built-in."""
    from _checkpoints import llama

    from amk.harness.propose import model_label

    work = tmp_path / "work"
    work.mkdir()
    ck = llama(work / "toy")
    monkeypatch.chdir(work)
    m = amk.load_model("./toy")
    assert m.name == str(ck.resolve()) and model_label(m) == m.name
    assert model_label(Path("toy")) == model_label(Path("./toy")) == m.name
    assert model_label("toy") == "toy"  # a name in a str is the built-in, beside a directory so named
    assert amk.load_model(Path("toy"), weights=False).source == "path"
    files = {"results": "r.tsv", "corpus": "c.jsonl", "device": "cpu", "settings": SMALL, "evaluate": fake_evaluate}
    amk.loop(m, "cpu-sim", budget=1, **files)
    amk.loop(Path("toy"), "cpu-sim", budget=1, resume=True, **files)
    amk.loop("toy", "cpu-sim", budget=1, resume=True, **files)
    models = [r["model"] for r in read_rows(work / "r.tsv")]
    assert set(models) == {m.name, "toy"} and models.count("toy") == 1, models
    assert {r.model for r in load_records(work / "c.jsonl")} == {m.name, "toy"}


def test_a_loop_that_finds_no_correct_config_says_it_has_no_result(tmp_path, capsys, monkeypatch):
    """The start config fails verify and no trial passes: the summary's incumbent is marked not correct, a note
    says it is no result, and the command exits 1 (a correctness failure), not 0."""
    from _cli import cli_json

    class AllFail(_Fake):
        def __call__(self, model, gpu, config, **kw):
            self.append(config.schedule_id)
            return _verdict(None, correct=False)

    s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 evaluate=AllFail(), settings=SMALL)
    assert s["incumbent"]["correct"] is False and s["incumbent"]["latency_us"] is None
    assert s["notes"][0].startswith("no config passed verify and was timed"), s["notes"]
    good = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "g.tsv",
                    corpus=tmp_path / "g.jsonl", evaluate=_Fake(), settings=SMALL)
    assert good["incumbent"]["correct"] is True and not any(n.startswith("no config") for n in good["notes"])
    import amk.harness.loop as loop_module

    real = loop_module.loop
    for fake, want in ((AllFail(), 1), (_Fake(), 0)):
        monkeypatch.setattr(loop_module, "loop", lambda *a, fake=fake, **kw: real(*a, evaluate=fake, settings=SMALL,
                                                                                  **kw))
        name = f"cli{want}"
        code, out = cli_json(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--results",
                             str(tmp_path / f"{name}.tsv"), "--corpus", str(tmp_path / f"{name}.jsonl"))
        assert code == want and out["incumbent"]["correct"] is (want == 0), out


def test_a_record_whose_config_was_edited_is_no_record(tmp_path, fake_evaluate, caplog):
    """A corpus line whose config no longer hashes to its schedule_id (edited after its trial) is skipped with a
    warning naming the line: its latency is not that config's. A resume whose best keep has no other record
    refuses, as for a corpus without it; propose does not offer the edited config."""
    files = {"results": tmp_path / "r.tsv", "corpus": tmp_path / "c.jsonl", "device": "cpu", "settings": SMALL,
             "evaluate": fake_evaluate}
    s = amk.loop("toy", "cpu-sim", budget=2, incumbent={"matvec": {"lm_head": {"rows_per_task": 512}}}, **files)
    best = s["incumbent"]["trial"]
    assert s["incumbent"]["schedule_id"] != DEFAULT.schedule_id  # a keep the default start does not stand for
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    edited = []
    for line in lines:
        d = json.loads(line)
        if d["trial"] == best:
            d["config"]["threads_per_block"] = 1024
        edited.append(json.dumps(d, sort_keys=True))
    (tmp_path / "c.jsonl").write_text("\n".join(edited) + "\n")
    with caplog.at_level("WARNING"):
        records = load_records(tmp_path / "c.jsonl")
    assert best not in [r.trial for r in records] and len(records) == len(lines) - 1
    assert "does not hash to its schedule_id" in caplog.text, caplog.text
    p = amk.propose("toy", "cpu-sim", corpus=tmp_path / "c.jsonl")
    assert p["config"].get("threads_per_block") != 1024
    legacy = json.loads(edited[best - 1])  # a version-1 line's id sits in its verdict: checked there too
    legacy.pop("record")
    legacy["verdict"]["schedule_id"] = legacy.pop("schedule_id")
    (tmp_path / "one.jsonl").write_text(json.dumps(legacy) + "\n")
    assert load_records(tmp_path / "one.jsonl") == []
    legacy["verdict"]["schedule_id"] = written_schedule_id(legacy["config"])
    (tmp_path / "one.jsonl").write_text(json.dumps(legacy) + "\n")
    assert len(load_records(tmp_path / "one.jsonl")) == 1
    with pytest.raises(LoopError, match="corpus"):
        amk.loop("toy", "cpu-sim", budget=1, resume=True, **files)


def test_a_given_start_config_with_a_knob_that_cannot_act_is_said_so(tmp_path, caplog):
    # evaluate's verdict names such a knob; the loop's start row would carry it unremarked into every keep
    with caplog.at_level("WARNING", logger="amk"):
        out = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r.tsv",
                       corpus=tmp_path / "c.jsonl", incumbent={"build": {"l2_prefetch_kb": 64}})
    note = "the given config's build.l2_prefetch_kb=64 has no effect: "
    assert any(n.startswith(note) and "pipelining_depth" in n for n in out["notes"]), out["notes"]
    assert note in caplog.text and "the search never moves it" in caplog.text
    # on a GPU target (predicted here) with a prefetch that runs, it acts (cpu-sim prices no prefetch at all)
    acting = amk.loop("toy", "h200", budget=1, device="cpu", results=tmp_path / "r2.tsv",
                      corpus=tmp_path / "c2.jsonl", incumbent={"build": {"l2_prefetch_kb": 64}, "pipelining_depth": 1})
    assert not any("has no effect" in n for n in acting["notes"]), acting["notes"]


def test_a_keep_says_that_the_rounds_other_picks_go_back_to_the_backlog(tmp_path, caplog):
    # the round's line names the picks it will measure; after a keep the rest are ranked again, and the log says so
    with caplog.at_level("INFO", logger="amk"):
        s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", cases="reduced", results=tmp_path / "r.tsv",
                     corpus=tmp_path / "c.jsonl")
    rows = read_rows(tmp_path / "r.tsv")
    assert s["trials"] == 2 and "round 1: " in caplog.text and "measuring 4" in caplog.text
    # trial 2 is round 1's first pick: a keep returns the other three, anything else returns none
    said = caplog.text.count("the round's 3 other picks go back to the backlog, to be ranked around the new incumbent")
    assert said == (rows[1]["status"] == "keep") == caplog.text.count("other picks go back"), caplog.text


@pytest.mark.parametrize("odd", ["tab\tmodel", "new\nline"])
def test_a_model_path_a_results_cell_cannot_hold_is_refused_before_any_trial(tmp_path, odd):
    from _checkpoints import llama

    path = llama(tmp_path / odd)
    res = tmp_path / "results.tsv"
    with pytest.raises(LoopError, match="control character") as e:
        amk.loop(str(path), "cpu-sim", budget=1, device="cpu", results=res, corpus=tmp_path / "c.jsonl")
    assert e.value.argument == "model" and not res.exists()


def test_a_resume_on_a_checkpoint_saved_again_with_another_shape_warns_that_the_rows_are_of_other_weights(
        tmp_path, caplog, capsys):
    import shutil

    from _checkpoints import llama

    path = llama(tmp_path / "ck")
    res, cor = tmp_path / "results.tsv", tmp_path / "c.jsonl"
    amk.loop(str(path), "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, settings=SMALL)
    shutil.rmtree(path)
    llama(path, intermediate_size=256)  # the incumbent's config lowers to another program: no row stands for it
    with caplog.at_level("WARNING", logger="amk.harness"):
        amk.loop(str(path), "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True, settings=SMALL)
    assert any("saved again since, perhaps with another shape" in r.getMessage() for r in caplog.records)
    from _cli import cli_json

    code, out = cli_json(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0 and any("timed on 2 checkpoints there" in n for n in out["notes"]), out["notes"]
