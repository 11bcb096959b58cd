"""A results file holding exactly the first two names of the header and no newline (HARNESS.md section 5: "its first
two names at least, and no newline") is the header of a first row's write cut short: a file of no rows, read with a
warning, that the next row appended starts again with the whole header. `trial\ttime` was refused as a foreign
header (exit 2) while `trial\ttime\tmo` was read; a longer name than the header's (`trial\ttimes`) stays refused."""

from __future__ import annotations

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.flywheel.results import (
    HEADER,
    ResultRow,
    ResultsFormatError,
    Status,
    append_result,
    load_results,
    read_rows,
    starts_as_header,
    torn_header,
)

TWO_NAMES = "trial\ttime"


def _row() -> ResultRow:
    return ResultRow(model="toy", gpu="cpu-sim", schedule_id="0" * 12, status=Status.DISCARD, correct=True,
                     latency_us=50.0, kind="predicted", program_fingerprint="0" * 16, dtype="fp32", max_seq=512)


@pytest.mark.parametrize("data", [TWO_NAMES.encode(), b"\xef\xbb\xbf" + TWO_NAMES.encode()], ids=["plain", "bom"])
def test_the_first_two_names_alone_are_a_header_cut_short(tmp_path, caplog, data):
    assert starts_as_header(TWO_NAMES) and torn_header(data)
    res = tmp_path / "results.tsv"
    res.write_bytes(data)
    assert read_rows(res) == [] and "header cut short" in caplog.text
    assert len(load_results(res)) == 0
    append_result(res, _row())
    assert res.read_text().removeprefix("\ufeff").startswith(HEADER)
    assert [r["trial"] for r in read_rows(res)] == ["1"]


def test_report_reads_the_two_names_as_no_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.tsv").write_text(TWO_NAMES)
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 0 and out["skipped_lines"] == 0, out


def test_a_loop_resumes_onto_the_two_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "results.tsv"
    res.write_text(TWO_NAMES)
    code, out = cli_json(capsys, "loop", "--model", "toy", "--budget", "1", "--resume", "--results", str(res),
                         "--corpus", str(tmp_path / "corpus.jsonl"))
    assert code == 0 and out["trials"] == 1, out
    assert res.read_text().startswith(HEADER) and [r["trial"] for r in read_rows(res)] == ["1"]


@pytest.mark.parametrize("text", ["trial\ttimes", "trial\ttimes\tmodel", "trial\ttim", "trial", "trial\ttime\r"])
def test_a_name_that_only_starts_like_the_second_is_still_refused(tmp_path, capsys, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "results.tsv"
    res.write_text(text, newline="")
    assert not torn_header(text.encode())
    with pytest.raises(ResultsFormatError):
        read_rows(res)
    with pytest.raises(ResultsFormatError):
        append_result(res, _row())
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 2 and out["error_type"] == "usage" and out["error"].startswith("--results: "), out
    assert res.read_bytes() == text.encode()
