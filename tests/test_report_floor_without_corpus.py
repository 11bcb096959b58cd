"""`amk report` checks a row against its model's spec floor when no tuning record names it (HARNESS.md section 7):
with the corpus moved away, or another model's rows appended without theirs, a hand-edited 0.5 us row ranked as the
best with `withheld: 0`, and its pct_of_floor was copied from the row's cell."""

from __future__ import annotations

import json

import pytest
from _cli import cli_json

from amk.flywheel import ResultRow, Status, append_result
from amk.harness import cmd_report, report_plots
from amk.harness.report_floor import model_floor
from amk.schedule.config import schedule_id_of

TOY_FP = "fa" * 8  # the program fingerprint the toy rows (and, where written, their records) name


def _row(res, model="toy", lat=40.0, status=Status.KEEP, fp=TOY_FP, dtype="fp32", max_seq=512, pct=99.0):
    append_result(res, ResultRow(model=model, gpu="cpu-sim", schedule_id=schedule_id_of({"threads_per_block": 256}),
                                 status=status, correct=True, latency_us=lat, kind="predicted", pct_of_floor=pct,
                                 dtype=dtype, max_seq=max_seq, program_fingerprint=fp, description=f"{lat} us"))


def _report(capsys, tmp_path, *more):
    code, out = cli_json(capsys, "report", "--results", str(tmp_path / "r.tsv"), "--corpus",
                         str(tmp_path / "corpus.jsonl"), *more)
    assert code == 0, out
    return out


def _group(out, model):
    (g,) = [g for g in out["groups"] if g["model"] == model]
    return g


def test_a_row_under_its_models_floor_is_withheld_without_the_corpus(capsys, tmp_path):
    res = tmp_path / "r.tsv"
    _row(res, lat=40.0)
    _row(res, lat=0.5)  # the latest keep edited by hand, its pct_of_floor cell left as it was
    out = _report(capsys, tmp_path, "--no-plots")
    floor = model_floor("toy", "cpu-sim", "fp32")
    assert 0.5 < floor < 40.0
    best = _group(out, "toy")["best"]["predicted"]
    assert best["trial"] == 1 and best["latency_us"] == 40.0 and out["withheld"] == 1
    assert best["pct_of_floor"] == pytest.approx(100.0 * floor / 40.0)  # computed, not the row's 99.0
    assert _group(out, "toy")["kept_trials"][1]["withheld"] is True
    assert any("under the spec floor" in n for n in out["notes"])


def test_another_models_rows_appended_without_their_corpus_are_checked_too(capsys, tmp_path):
    res, cor = tmp_path / "r.tsv", tmp_path / "corpus.jsonl"
    _row(res, lat=40.0)
    cfg = {"threads_per_block": 256}
    cor.write_text(json.dumps({"record": 2, "model": "toy", "gpu": "cpu-sim", "dtype": "fp32", "kept": True,
                               "status": "keep", "time": "t", "latency_kind": "predicted", "latency_us": 40.0,
                               "program_fingerprint": TOY_FP, "config": cfg, "schedule_id": schedule_id_of(cfg),
                               "verdict": {"correct": True, "latency_us": 40.0, "spec_floor_us": 8.0}}) + "\n")
    big = "smollm2-135m"
    floor = model_floor(big, "cpu-sim", "fp32")
    _row(res, model=big, lat=2 * floor, fp="cd" * 8)
    _row(res, model=big, lat=5.0, fp="ce" * 8)  # no record names either program's floor
    out = _report(capsys, tmp_path, "--no-plots")
    best = _group(out, big)["best"]["predicted"]
    assert best["latency_us"] == pytest.approx(2 * floor) and best["pct_of_floor"] == pytest.approx(50.0)
    assert out["withheld"] == 1
    # the toy row's floor is its record's (8.0 us), not one computed from the model
    assert _group(out, "toy")["best"]["predicted"]["pct_of_floor"] == pytest.approx(20.0)


def test_a_model_that_cannot_be_read_has_its_floor_named_unknown(capsys, tmp_path):
    gone = str(tmp_path / "ck-removed")  # a checkpoint directory since deleted: nothing to compute a floor from
    _row(tmp_path / "r.tsv", model=gone, lat=3.0)
    out = _report(capsys, tmp_path, "--no-plots")
    best = _group(out, gone)["best"]["predicted"]
    assert best["latency_us"] == 3.0 and best["pct_of_floor"] is None  # ranked, but never shown as a % of a floor
    (note,) = [n for n in out["notes"] if "floor of its rows is unknown" in n]
    assert note.startswith(gone) and "cannot be checked" in note and "UnknownModelError" in note


def test_rows_that_record_no_dtype_are_checked_against_the_lowest_floor(capsys, tmp_path):
    res = tmp_path / "r.tsv"
    low = model_floor("toy", "cpu-sim", "bf16")
    assert low < model_floor("toy", "cpu-sim", "fp32")
    _row(res, lat=40.0, dtype=None, max_seq=None)
    _row(res, lat=low / 2, dtype=None, max_seq=None)
    out = _report(capsys, tmp_path, "--no-plots")
    best = _group(out, "toy")["best"]["predicted"]
    assert best["latency_us"] == 40.0 and best["pct_of_floor"] is None and out["withheld"] == 1
    assert any("dtype not recorded" in n and "bf16" in n for n in out["notes"])


def test_two_models_plots_label_each_floor_and_keep_the_status_legend(capsys, tmp_path, monkeypatch):
    legends: dict[str, list[str]] = {}

    def save(fig, path, plt):  # the legends each plot would be saved with
        legends[path.name] = [t.get_text() for ax in fig.axes if ax.get_legend()
                              for t in ax.get_legend().get_texts()]
        plt.close(fig)
        return str(path)

    monkeypatch.setattr(report_plots, "_save", save)
    res = tmp_path / "r.tsv"
    _row(res, lat=40.0)
    _row(res, lat=45.0, status=Status.DISCARD, fp="fb" * 8)
    big = model_floor("smollm2-135m", "cpu-sim", "fp32")
    _row(res, model="smollm2-135m", lat=2 * big, fp="cd" * 8)
    _report(capsys, tmp_path, "--out-dir", str(tmp_path / "plots"))
    assert "spec floor: toy / cpu-sim / fp32" in legends["latency_vs_floor.png"]
    assert "spec floor: smollm2-135m / cpu-sim / fp32" in legends["latency_vs_floor.png"]
    assert {"keep", "discard"} <= set(legends["search.png"])


def test_a_bests_pct_is_against_the_measured_floor_its_records_name_else_the_spec_floor():
    # as the verdict gives it: on a GPU the loop's pct_of_floor is against the measured bandwidth's floor
    import pandas as pd

    df = pd.DataFrame({"trial": [1, 2], "model": ["toy", "toy"], "gpu": ["h200", "h200"], "dtype": ["bf16", "bf16"],
                       "max_seq": [512, 512], "kind": ["measured_gpu"] * 2, "status": ["keep", "keep"],
                       "correct": [True, True], "latency_us": [50.0, 40.0], "program_fingerprint": ["a", "b"],
                       "schedule_id": ["s1", "s2"], "pct_of_floor": [1.0, 1.0],
                       "description": ["x", "y"]})
    floors = {"a": 10.0, "b": 10.0}  # the spec floors the records name
    best = cmd_report.summarise(df, {}, floors, {"b": 12.0})["groups"][0]["best"]["measured_gpu"]
    assert best["trial"] == 2 and best["floor_kind"] == "measured" and best["pct_of_floor"] == pytest.approx(30.0)
    best = cmd_report.summarise(df, {}, floors)["groups"][0]["best"]["measured_gpu"]
    assert best["floor_kind"] == "spec" and best["pct_of_floor"] == pytest.approx(25.0)
