"""amk.loop: keep/revert rules, stopping, no schedule evaluated twice, resume, and a real toy run on CPU."""

from __future__ import annotations

import json

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
import amk.harness.loop as loop_mod
from amk.flywheel import load_corpus, load_results, read_rows
from amk.flywheel.results import Status
from amk.harness.loop import Incumbent, LoopError, decide
from amk.schedule.config import ScheduleConfig
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
    assert decide(Incumbent(one, 100.0), _verdict(99.5), TWO_KNOBS)[0] == Status.DISCARD
    assert len(non_default_knobs(TWO_KNOBS)) == 2


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


@pytest.fixture
def fake_evaluate(monkeypatch):
    """A deterministic stand-in for evaluate: latency falls with lm_head rows_per_task, k_splits fail."""
    calls = []

    def fake(model, gpu, config, **kw):
        calls.append(config.schedule_id)
        if config.matvec.qkv.k_splits > 1:
            return _verdict(None, correct=False)
        lat = 100.0 - config.matvec.lm_head.rows_per_task / 10 + config.pipelining_depth
        return _verdict(lat)

    monkeypatch.setattr(loop_mod, "evaluate", fake)
    return calls


def test_loop_budget_keeps_only_correct_and_never_repeats(tmp_path, fake_evaluate):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    s = amk.loop("toy", "cpu-sim", budget=25, device="cpu", results=res, corpus=cor, seed=3, max_reverts=1000)
    assert s["trials"] == 25 and s["stopped"] == "budget"
    rows = read_rows(res)
    assert [int(r["trial"]) for r in rows] == list(range(1, 26))
    assert len({r["schedule_id"] for r in rows}) == 25 == len(fake_evaluate)
    assert rows[0]["schedule_id"] == DEFAULT.schedule_id and rows[0]["description"].startswith("baseline")
    kept = [r for r in rows if r["status"] == "keep"]
    assert kept and all(r["correct"] == "true" for r in kept)
    assert all(r["status"] == "fail" for r in rows if r["correct"] == "false")
    corpus = load_corpus(cor)
    assert len(corpus) == len(kept) and all(e.verdict["correct"] for e in corpus)
    lats = [float(r["latency_us"]) for r in kept]
    assert lats == sorted(lats, reverse=True)  # each keep beats the one before
    assert s["incumbent"]["latency_us"] == min(lats)


def test_loop_stops_on_reverts_and_minutes(tmp_path, fake_evaluate):
    s = amk.loop("toy", "cpu-sim", max_reverts=2, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=0)
    statuses = [r["status"] for r in read_rows(tmp_path / "r.tsv")]
    assert s["stopped"] == "max_reverts" and all(st != "keep" for st in statuses[-2:])
    s = amk.loop("toy", "cpu-sim", minutes=0, device="cpu", results=tmp_path / "r2.tsv", corpus=tmp_path / "c.jsonl")
    assert s["stopped"] == "minutes" and s["trials"] == 0


def test_loop_refuses_an_existing_results_file_without_resume(tmp_path, fake_evaluate):
    res = tmp_path / "results.tsv"
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=tmp_path / "c.jsonl")
    with pytest.raises(LoopError, match="resume"):
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=tmp_path / "c.jsonl")


def test_loop_progress_callback(tmp_path, fake_evaluate):
    seen = []
    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
             progress=seen.append)
    assert [p["trial"] for p in seen] == [1, 2, 3] and {"status", "latency_us", "best_latency_us"} <= set(seen[0])


def test_loop_crash_in_evaluate_is_a_row_not_an_exception(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("harness bug")

    monkeypatch.setattr(loop_mod, "evaluate", broken)
    s = amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl")
    rows = read_rows(tmp_path / "r.tsv")
    assert s["trials"] == 2 and [r["status"] for r in rows] == ["crash", "crash"]
    assert "harness bug" in rows[0]["description"] and rows[0]["correct"] == ""


def test_real_loop_then_resume_on_cpu(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    first = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1)
    assert first["trials"] == 3
    second = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1, resume=True)
    assert second["trials"] == 3
    df = load_results(res)
    assert df["trial"].tolist() == [1, 2, 3, 4, 5, 6]  # numbering continues
    assert df["schedule_id"].is_unique  # nothing evaluated twice, across the resume either
    assert not df["description"].iloc[3].startswith("baseline")  # the incumbent came from the corpus
    assert (df[df["status"] == "keep"]["correct"] == True).all()  # noqa: E712
    assert (df["kind"][df["latency_us"].notna()] == "predicted").all()
    for line in open(cor):
        d = json.loads(line)
        assert {"config", "verdict", "environment", "model", "gpu", "time"} <= set(d) and d["verdict"]["correct"]
