"""A loop keeps a config with fewer non-default knobs at its incumbent's latency (a tie within the noise,
simpler): the later keep replaced the earlier. A resume continues from that later keep, and the corpus's best
(report's, propose's) names it too, not the first keep of that latency."""

from __future__ import annotations

import json

from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel import read_rows
from amk.flywheel.corpus import best_entry
from amk.flywheel.records import load_records
from amk.harness.loop import SearchSettings
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import non_default_knobs

TWO_KNOBS = ScheduleConfig.from_dict({"matvec": {"qkv": {"heads_per_task": 2}}, "smem_per_block": 49152})
ONE_KNOB = ScheduleConfig.from_dict({"matvec": {"qkv": {"heads_per_task": 2}}})
SMALL = SearchSettings(population=16, measure_per_round=4)


def _same_latency_with_heads_2(model, gpu, config, **kw):
    lat = 90.0 if config.matvec.qkv.heads_per_task == 2 else 100.0
    return {"valid": True, "rejected_reason": None, "correct": True, "latency_us": lat, "latency_spread_us": None,
            "latency_kind": "predicted", "failures": [], "notes": [], "pct_of_floor": 50.0, "environment": {}}


def _tie_kept_after(res, cor):
    """Append to a one-keep run (TWO_KNOBS, trial 1) what the loop writes when it keeps ONE_KNOB at the same
    latency as simpler: a keep row and its record, trial 2."""
    lines = res.read_text().splitlines(keepends=True)
    cells = lines[1].rstrip("\n").split("\t")
    cols = lines[0].rstrip("\n").split("\t")
    cells[cols.index("trial")] = "2"
    cells[cols.index("schedule_id")] = ONE_KNOB.schedule_id
    cells[cols.index("program_fingerprint")] = "0123456789abcdef"
    cells[cols.index("description")] = "smem_per_block=98304: tie within 0.90 us (the same latency), simpler"
    res.write_text("".join(lines) + "\t".join(cells) + "\n")
    rec = json.loads(cor.read_text().splitlines()[0])
    rec.update(config=ONE_KNOB.to_dict(), schedule_id=ONE_KNOB.schedule_id, trial=2,
               program_fingerprint="0123456789abcdef", change=["smem_per_block=98304"], source="neighbour")
    with cor.open("a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def test_a_resume_and_the_corpus_best_take_the_simpler_keep_of_equal_latency(tmp_path):
    assert len(non_default_knobs(ONE_KNOB)) < len(non_default_knobs(TWO_KNOBS))
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_same_latency_with_heads_2,
             incumbent=TWO_KNOBS.to_dict(), settings=SMALL)
    _tie_kept_after(res, cor)
    best = best_entry([r for r in load_records(cor) if r.model == "toy"])
    assert best.schedule_id == ONE_KNOB.schedule_id and best.trial == 2  # of two at 90 us, the later keep

    before = len(read_rows(res))
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                 evaluate=_same_latency_with_heads_2, settings=SMALL)
    assert s["incumbent"]["schedule_id"] == ONE_KNOB.schedule_id
    added = read_rows(res)[before:]
    assert added and all(r["schedule_id"] != TWO_KNOBS.schedule_id for r in added)  # never back to the first keep
    assert s["best"]["schedule_id"] == ONE_KNOB.schedule_id


def test_a_keep_row_without_a_true_correct_cell_is_no_incumbent(tmp_path):
    """The loop writes `correct` true on every keep row; one whose cell was emptied by hand is no evidence that its
    config passed, so a resume continues from the keep before it, as the report's best passes it over."""
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_same_latency_with_heads_2,
             incumbent=TWO_KNOBS.to_dict(), settings=SMALL)
    _tie_kept_after(res, cor)
    lines = res.read_text().splitlines(keepends=True)
    cols = lines[0].rstrip("\n").split("\t")
    cells = lines[-1].rstrip("\n").split("\t")
    assert cells[cols.index("correct")] == "true"
    cells[cols.index("correct")] = ""
    res.write_text("".join(lines[:-1]) + "\t".join(cells) + "\n")

    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                 evaluate=_same_latency_with_heads_2, settings=SMALL)
    assert s["incumbent"]["schedule_id"] == TWO_KNOBS.schedule_id and s["incumbent"]["trial"] == 1
