"""Edges of results.tsv, corpus.jsonl and config dicts as a user's tools leave them (HARNESS.md sections 1, 5 and
7): an emptied results file."""

from __future__ import annotations

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.flywheel.results import load_results

# ---- report's skipped_lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"], ids=["empty", "blank lines", "spaces"])
def test_an_empty_results_file_skips_no_line(tmp_path, capsys, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.tsv").write_text(text)
    assert load_results(tmp_path / "results.tsv").attrs["skipped_lines"] == 0
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 0 and out["skipped_lines"] == 0  # was -1
    assert not any("skipped" in n for n in out["notes"]), out["notes"]
