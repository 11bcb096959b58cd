"""A results.tsv row hand-edited to a time that is no time, or an empty model or GPU, is skipped with a warning
naming the line and column, as other cells no loop writes are: never a row of no model, or a pandas UserWarning
naming no line."""

from __future__ import annotations

import logging
import warnings

import pytest

from amk.flywheel import load_results
from amk.flywheel.results import HEADER

ROW = ["1", "2026-01-01T00:00:00Z", "toy", "cpu-sim", "ab12cd34ef56", "keep", "true", "40.0", "predicted", "20.0",
       "", "baseline", "ab" * 8, "40.0", "", "fp32", "512"]


def _write(path, *rows):
    path.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))


def test_a_well_formed_row_is_read(tmp_path):
    p = tmp_path / "results.tsv"
    _write(p, ROW)
    assert list(load_results(p)["trial"]) == [1]


@pytest.mark.parametrize("index, column, value", [
    (1, "time", "yesterday"),
    (2, "model", ""),
    (3, "gpu", ""),
])
def test_a_row_no_loop_writes_is_skipped_naming_its_column(tmp_path, caplog, index, column, value):
    p = tmp_path / "results.tsv"
    bad = list(ROW)
    bad[index] = value
    _write(p, bad, ["2", *ROW[1:]])
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"), warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' "Could not infer format" named no line
        df = load_results(p)
    assert list(df["trial"]) == [2]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "results.tsv:2" in msg and f"column {column}" in msg, msg
