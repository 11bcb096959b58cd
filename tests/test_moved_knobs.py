"""A knob that became another one (schedule/config_migrate.py MOVED_KNOBS): a config written with the old spelling is refused
with the new one, near misses and old values get the same pointer, and a tuning record stored before the rename is
read in the new spelling, so that propose and report still find the corpus's best config."""

from __future__ import annotations

import json

import pytest

import amk
from amk.flywheel.records import load_records
from amk.harness.propose import incumbent_config
from amk.schedule.config import AttentionCombine, ScheduleConfig, migrate_config
from amk.schedule.config import schedule_id_of as written_schedule_id
from amk.schedule.errors import ConfigError

OLD = "fusion.attention_combine_into_o"
POINTER = "attention.combine: true is 'o_input', false is 'stage'"


def _problem(cfg: dict) -> str:
    with pytest.raises(ConfigError) as e:
        ScheduleConfig.from_dict(cfg)
    (p,) = e.value.problems
    return f"{p.path}: {p.message}"


@pytest.mark.parametrize("cfg, where", [
    ({"fusion": {"attention_combine_into_o": False}}, "$.fusion.attention_combine_into_o"),
    ({"fusion": {"attention_combine": True}}, "$.fusion.attention_combine"),  # a near miss of the old name
    ({"attention": {"attention_combine_into_o": False}}, "$.attention.attention_combine_into_o"),  # wrong parent
])
def test_the_old_spelling_is_refused_with_the_new_one(cfg, where):
    msg = _problem(cfg)
    assert msg.startswith(where + ": unknown key") and POINTER in msg


@pytest.mark.parametrize("value, meant", [("last", "last_partition"), ("O_INPUT", "o_input"), ("stages", "stage"),
                                          (True, "o_input"), (False, "stage")])
def test_a_wrong_value_of_the_new_knob_gets_the_value_it_meant(value, meant):
    msg = _problem({"attention": {"combine": value}})
    assert f"got {json.dumps(value)}" in msg and msg.endswith(f"did you mean {meant!r}?")


def test_null_is_named_as_json_and_gets_no_guess():
    msg = _problem({"attention": {"combine": None}})
    assert msg.endswith("got null")


def test_a_stored_config_is_read_in_the_new_spelling_without_changing_the_original():
    old = {"fusion": {"attention_combine_into_o": False, "norm_into_matvec": True}, "attention": {"kv_partitions": 8}}
    new = migrate_config(old)
    assert new == {"fusion": {"norm_into_matvec": True}, "attention": {"kv_partitions": 8, "combine": "stage"}}
    assert old["fusion"]["attention_combine_into_o"] is False
    assert ScheduleConfig.from_dict(migrate_config({"fusion": {"attention_combine_into_o": True}})).attention.combine \
        == AttentionCombine.O_INPUT
    # the new knob set as well wins; a value the old knob never had is left for the parser to refuse
    assert migrate_config({"fusion": {"attention_combine_into_o": True}, "attention": {"combine": "stage"}}) \
        == {"fusion": {}, "attention": {"combine": "stage"}}
    assert migrate_config({"fusion": {"attention_combine_into_o": "x"}}) == {"fusion": {"attention_combine_into_o": "x"}}


def test_a_corpus_written_before_the_rename_still_gives_its_best_config(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    line = {"record": 2, "model": "toy", "gpu": "cpu-sim", "kept": True, "status": "keep", "time": "t",
            "config": {"fusion": {"attention_combine_into_o": False}, "attention": {"kv_partitions": 4}},
            "verdict": {"correct": True}, "latency_us": 12.5, "latency_kind": "predicted"}
    line["schedule_id"] = written_schedule_id(line["config"])  # hashed as written, in the old spelling
    corpus.write_text(json.dumps(line) + "\n")
    (rec,) = load_records(corpus)
    assert rec.config == {"fusion": {}, "attention": {"kv_partitions": 4, "combine": "stage"}}
    cfg, source, _ = incumbent_config("toy", "cpu-sim", corpus)
    assert source == f"corpus:{corpus}" and cfg.attention.combine == AttentionCombine.STAGE


def test_a_best_record_that_no_longer_parses_is_said_before_the_defaults_stand_in(tmp_path, caplog):
    corpus = tmp_path / "corpus.jsonl"
    config = {"fusion": {"no_such_knob": True}}
    sid = written_schedule_id(config)
    line = {"record": 2, "model": "toy", "gpu": "cpu-sim", "kept": True, "status": "keep", "time": "t",
            "schedule_id": sid, "config": config, "verdict": {"correct": True},
            "latency_us": 12.5, "latency_kind": "predicted"}
    corpus.write_text(json.dumps(line) + "\n")
    with caplog.at_level("WARNING"):
        cfg, source, _ = incumbent_config("toy", "cpu-sim", corpus)
    assert source == "default" and cfg == ScheduleConfig()
    assert f"schedule {sid}" in caplog.text and "no_such_knob" in caplog.text and str(corpus) in caplog.text


def test_a_best_record_that_no_longer_parses_gives_way_to_the_next_best(tmp_path, caplog):
    corpus = tmp_path / "corpus.jsonl"
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "kept": True, "status": "keep", "time": "t",
            "verdict": {"correct": True}, "latency_kind": "predicted"}
    bad = {"matvec": {"o": {"rows_per_task": 0}}}
    corpus.write_text("\n".join(json.dumps({**base, "schedule_id": written_schedule_id(kw["config"]), **kw}) for kw in [
        {"latency_us": 9.0, "config": bad}, {"latency_us": 12.5, "config": {"attention": {"kv_partitions": 4}}}])
        + "\n")
    with caplog.at_level("WARNING"):
        cfg, source, _ = incumbent_config("toy", "cpu-sim", corpus)
    assert source == f"corpus:{corpus}" and cfg.attention.kv_partitions == 4  # not the defaults
    assert f"schedule {written_schedule_id(bad)}" in caplog.text and "next best" in caplog.text


def test_the_loops_summary_names_as_best_no_record_that_does_not_parse(tmp_path):
    # the start passes over it (propose's rule); the summary's best, and its line "best kept in the corpus", did not
    corpus = tmp_path / "corpus.jsonl"
    line = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True, "status": "keep",
            "time": "t", "schedule_id": written_schedule_id({"bogus": 1}), "config": {"bogus": 1},
            "verdict": {"correct": True}, "latency_us": 1.0, "latency_kind": "predicted"}
    corpus.write_text(json.dumps(line) + "\n")
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r.tsv", corpus=corpus)
    assert s["best"] is not None and s["best"]["schedule_id"] != line["schedule_id"]
    assert ScheduleConfig.from_dict(s["best"]["config"]).schedule_id == s["best"]["schedule_id"]
    assert (s["max_seq"], s["context"]) == (amk.propose("toy", "cpu-sim", corpus=None)["max_seq"],
                                            amk.propose("toy", "cpu-sim", corpus=None)["context"])


def _two_dtype_corpus(tmp_path):
    """A corpus whose faster kept record is bf16 (kv_partitions 2, 9 us), the slower fp32 (4, 12.5 us)."""
    corpus = tmp_path / "corpus.jsonl"
    base = {"record": 2, "model": "toy", "gpu": "cpu-sim", "kept": True, "status": "keep", "time": "t",
            "verdict": {"correct": True}, "latency_kind": "predicted"}
    corpus.write_text("\n".join(json.dumps({**base, "schedule_id": written_schedule_id(kw["config"]), **kw}) for kw in [
        {"dtype": "bf16", "latency_us": 9.0, "config": {"attention": {"kv_partitions": 2}}},
        {"dtype": "fp32", "latency_us": 12.5, "config": {"attention": {"kv_partitions": 4}}}]) + "\n")
    return corpus


def test_the_incumbent_is_the_best_record_of_the_runs_dtype(tmp_path):
    corpus = _two_dtype_corpus(tmp_path)
    assert incumbent_config("toy", "cpu-sim", corpus)[0].attention.kv_partitions == 2  # any dtype: the fastest
    assert incumbent_config("toy", "cpu-sim", corpus, "fp32")[0].attention.kv_partitions == 4
    assert incumbent_config("toy", "cpu-sim", corpus, "fp16")[0] == ScheduleConfig()  # none of fp16: defaults


def test_propose_starts_from_the_best_record_of_its_dtype(tmp_path):
    from amk.harness.propose import propose

    corpus = _two_dtype_corpus(tmp_path)
    fp32 = propose("toy", "cpu-sim", corpus=corpus)  # cpu-sim's default dtype, as loop takes it
    assert fp32["dtype"] == "fp32" and fp32["config"]["attention"]["kv_partitions"] == 4
    assert fp32["derived"]["dtype"] == "fp32"
    bf16 = propose("toy", "cpu-sim", corpus=corpus, dtype="bfloat16")
    assert bf16["dtype"] == "bf16" and bf16["config"]["attention"]["kv_partitions"] == 2
    with pytest.raises(amk.ArgumentError, match="dtype"):
        propose("toy", "cpu-sim", corpus=corpus, dtype="int8")
    loaded = amk.load_model("toy", dtype="bf16", weights=False)
    assert propose(loaded, "cpu-sim", corpus=corpus)["config"]["attention"]["kv_partitions"] == 2
    with pytest.raises(amk.ArgumentError, match="loaded as bf16"):
        propose(loaded, "cpu-sim", corpus=corpus, dtype="fp32")
