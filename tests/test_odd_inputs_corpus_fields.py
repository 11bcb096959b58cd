"""A hand-edited tuning record whose dtype, status, latency kind, top-level `correct`, environment or features no
trial writes is skipped with a warning naming the field, as results.tsv skips such a cell: never read as a group
of its own (a dtype `bf17`), a trial of no known outcome, a latency of no known kind, a correct trial the line
itself says failed, or (environment) skipped with a message naming no field."""

from __future__ import annotations

import json
import logging

import pytest

from amk.flywheel.records import load_records


def _record(**edits) -> dict:
    config = {}
    from amk.schedule.config import schedule_id_of

    r = {"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "device": "cpu", "time": "2026-01-01T00:00:00Z",
         "trial": 1, "status": "keep", "kept": True, "source": "baseline", "schedule_id": schedule_id_of(config),
         "program_fingerprint": "ab" * 8, "config": config, "correct": True, "latency_us": 40.0,
         "latency_spread_us": None, "latency_kind": "predicted", "predicted_latency_us": 40.0,
         "features": {"mem_us": 1.0, "tasks": 2, "waits": 3}, "commit": None, "change": [], "improvement": None,
         "environment": {"torch": "x"}, "verdict": {"correct": True, "latency_kind": "predicted", "dtype": "fp32"}}
    r.update(edits)
    return r


def test_a_well_formed_record_is_read(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_record()) + "\n")
    (rec,) = load_records(p)
    assert rec.dtype == "fp32" and rec.correct and rec.latency_kind == "predicted"


@pytest.mark.parametrize("field, value", [
    ("dtype", "bf17"),
    ("status", "weird"),
    ("latency_kind", "measured"),
    ("correct", "true"),
    ("correct", False),  # the verdict says true: which one holds is not known
    ("environment", 5),
    ("features", "x"),
])
def test_a_record_with_a_value_no_trial_writes_is_skipped_naming_the_field(tmp_path, caplog, field, value):
    p = tmp_path / "c.jsonl"
    good = _record(trial=2)
    p.write_text(json.dumps(_record(**{field: value})) + "\n" + json.dumps(good) + "\n")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        recs = load_records(p)
    assert [r.trial for r in recs] == [2]  # the other line is still read
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "c.jsonl:1" in msg and field in msg, msg
