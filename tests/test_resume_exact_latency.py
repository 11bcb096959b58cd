"""A resumed loop's summary gives its incumbent the latency the corpus records for that trial, to the last digit:
results.tsv writes latencies to four decimals, and a resume that took the incumbent's from there reported the
same trial at two latencies (`incumbent` from the file, `best` from the corpus)."""

from __future__ import annotations

from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel import read_rows
from amk.flywheel.records import load_records
from amk.harness.loop import SearchSettings

SMALL = SearchSettings(population=16, measure_per_round=4)
LATENCY = 97.123456789  # more digits than a results.tsv cell holds


def _evaluate(model, gpu, config, **kw):
    lat = LATENCY if config.matvec.qkv.heads_per_task == 1 else 2 * LATENCY
    return {"valid": True, "rejected_reason": None, "correct": True, "latency_us": lat, "latency_spread_us": 0.0123456,
            "latency_kind": "predicted", "failures": [], "notes": [], "pct_of_floor": 50.0, "environment": {}}


def test_a_resumed_incumbent_has_the_corpus_latency_of_its_trial(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    first = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_evaluate,
                     settings=SMALL)
    assert first["incumbent"]["latency_us"] == LATENCY
    assert read_rows(res)[0]["latency_us"] == f"{LATENCY:.4f}"  # the file's cell is rounded

    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True, evaluate=_evaluate,
                 settings=SMALL)
    assert s["incumbent"]["trial"] == s["best"]["trial"] == 1
    assert s["incumbent"]["latency_us"] == s["best"]["latency_us"] == LATENCY
    assert s["incumbent"]["latency_spread_us"] == 0.0123456


def test_a_row_the_corpus_does_not_hold_keeps_the_file_latency(tmp_path, caplog):
    """A corpus record of the trial whose latency rounds to another figure is another measurement (the file's row
    was rewritten, or another loop's corpus): the row's own figure stands."""
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_evaluate, settings=SMALL)
    lines = res.read_text().splitlines(keepends=True)
    cols = lines[0].rstrip("\n").split("\t")
    cells = lines[1].rstrip("\n").split("\t")
    cells[cols.index("latency_us")] = "97.5000"
    res.write_text(lines[0] + "\t".join(cells) + "\n" + "".join(lines[2:]))
    assert [r.latency_us for r in load_records(cor)][0] == LATENCY

    with caplog.at_level("WARNING"):
        s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                     evaluate=_evaluate, settings=SMALL)
    assert s["incumbent"]["trial"] == 1 and s["incumbent"]["latency_us"] == 97.5
    # the bar a candidate must beat is a figure no record confirms: said, naming both figures
    warned = [r.getMessage() for r in caplog.records if "trial 1's row gives 97.5000 us" in r.getMessage()]
    assert len(warned) == 1 and f"{LATENCY:.4f}" in warned[0]


def test_a_row_that_matches_its_record_is_resumed_without_a_warning(tmp_path, caplog):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, evaluate=_evaluate, settings=SMALL)
    with caplog.at_level("WARNING"):
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True, evaluate=_evaluate,
                 settings=SMALL)
    assert not [r for r in caplog.records if "row gives" in r.getMessage()]
