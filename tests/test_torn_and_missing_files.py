"""What the readers of results.tsv and corpus.jsonl say about a file cut short, a file of foreign bytes and a corpus
that is not there: each is named once, as what it is."""

from __future__ import annotations

import logging
from argparse import Namespace

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel import ResultRow, Status, append_result, read_rows
from amk.flywheel.records import load_records
from amk.harness.cmd_report import report
from amk.harness.loop import SearchSettings


@pytest.fixture(scope="module")
def loop_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop")
    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=d / "results.tsv", corpus=d / "corpus.jsonl",
             seed=1, settings=SearchSettings(population=8, measure_per_round=2))
    return d / "results.tsv", d / "corpus.jsonl"


def test_a_corpus_whose_last_record_is_cut_short_says_so(loop_files, tmp_path, caplog):
    cor = tmp_path / "corpus.jsonl"
    data = loop_files[1].read_bytes()
    whole = load_records(loop_files[1])
    assert len(whole) >= 2
    cor.write_bytes(data[:-500])  # the last record's line without its end: a write cut short
    n = data[:-500].count(b"\n") + 1
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        kept = load_records(cor)
    assert [r.schedule_id for r in kept] == [r.schedule_id for r in whole[:-1]]
    assert f"{cor}:{n}: skipped a tuning record no newline ends" in caplog.text
    assert cor.read_bytes() == data[:-500]  # left as it is


def test_a_results_file_of_foreign_bytes_is_refused_without_a_row_warning_first(tmp_path, caplog):
    res = tmp_path / "results.tsv"
    res.write_bytes(b"Nm\x01D garbage\nmore\tbytes\nand a torn tail")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"), pytest.raises(ValueError, match="header"):
        read_rows(res)
    assert "skipped trial row" not in caplog.text


def test_report_of_a_corpus_that_is_not_there_says_no_such_file(loop_files, tmp_path):
    out = report(Namespace(results=str(loop_files[0]), corpus=str(tmp_path / "nope.jsonl"), no_plots=True,
                           out_dir=str(tmp_path))).payload
    (note,) = [n for n in out["notes"] if "no tuning records" in n]
    assert "nope.jsonl" in note and "no such file" in note and "(pass --corpus)" not in note


def test_report_of_a_results_file_with_no_rows_prints_no_empty_list(tmp_path):
    res = tmp_path / "results.tsv"
    append_result(res, ResultRow(model="toy", gpu="cpu-sim", schedule_id="0" * 12, status=Status.KEEP, correct=True,
                                 latency_us=50.0, kind="predicted", dtype="fp32", max_seq=512, description="row"))
    res.write_text(res.read_text().splitlines(keepends=True)[0])  # the header alone
    assert read_rows(res) == []
    text = report(Namespace(results=str(res), corpus=str(tmp_path / "c.jsonl"), no_plots=True,
                            out_dir=str(tmp_path))).text
    assert text.splitlines()[0] == "0 trials"


def test_the_loop_summary_prints_the_corpus_best_latency_as_every_other_latency():
    from amk.harness.cmd_run import loop_text
    from amk.schedule.config import ScheduleConfig

    inc = {"schedule_id": "a" * 12, "program_fingerprint": "f" * 16, "latency_us": 42.77, "latency_kind": "predicted",
           "config": ScheduleConfig().to_dict()}
    best = {**inc, "schedule_id": "b" * 12, "latency_us": 42.77048959999999}
    s = {"incumbent": inc, "best": best, "trials": 1, "statuses": {"keep": 1}, "stopped": "budget",
         "trials_per_minute": 1.0, "results": "r.tsv", "corpus": "c.jsonl"}
    (line,) = [ln for ln in loop_text(s).splitlines() if ln.startswith("best kept in the corpus")]
    assert f"{'b' * 12} 42.77 us (predicted)" in line
