"""Damaged results.tsv rows and corpus lines that once read as whole ones, report plots that could overwrite the
files they summarise, and a config read from a closed or non-UTF-8 stdin (HARNESS.md sections 4 and 5)."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module
from test_results_cell_checks import DISCARD, KEEP, _results

import amk
from amk.flywheel.records import load_records
from amk.flywheel.results import HEADER, ResultRow, Status, append_result, load_results, read_rows
from amk.harness.commands import UsageError, read_config_arg


def _row(trial: int) -> ResultRow:
    return ResultRow(model="toy", gpu="cpu-sim", schedule_id=f"{trial:012x}", status=Status.DISCARD, correct=True,
                     latency_us=50.0 + trial, kind="predicted", program_fingerprint=f"{trial:016x}", dtype="fp32",
                     max_seq=512, trial=trial)


# ---- a last row cut short ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2], ids=["max_seq 512 as 51", "max_seq 512 as 5"])
def test_a_row_cut_inside_its_last_cell_stays_skipped_once_the_next_row_ends_it(tmp_path, caplog, cut):
    res = tmp_path / "results.tsv"
    for i in (1, 2):
        append_result(res, _row(i))
    whole = res.read_bytes()
    res.write_bytes(whole[:-1 - cut])  # trial 2's max_seq cut short: its cells still parse
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1"]
        append_result(res, _row(3))
        rows = read_rows(res)
    assert [r["trial"] for r in rows] == ["1", "3"]  # was ["1", "2", "3"], trial 2 at a context of 51 or 5
    assert load_results(res)["trial"].tolist() == [1, 3]
    assert res.read_bytes().startswith(whole[:-1 - cut])  # nothing of the file rewritten


def test_a_header_saved_without_its_newline_is_ended_as_a_header(tmp_path):
    res = tmp_path / "results.tsv"
    res.write_text(HEADER.rstrip("\n"))
    append_result(res, _row(1))
    assert [r["trial"] for r in read_rows(res)] == ["1"]


def test_a_whole_last_record_without_its_newline_is_read_before_and_after_the_next_append(tmp_path, caplog):
    cor = tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=tmp_path / "results.tsv", corpus=cor, seed=1)
    whole = load_records(cor)
    cor.write_bytes(cor.read_bytes().rstrip(b"\n"))  # an editor's save
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r.schedule_id for r in load_records(cor)] == [r.schedule_id for r in whole]
    assert "read a tuning record no newline ends" in caplog.text


# ---- cells that one reader took and another did not -----------------------------------------------------------------


@pytest.mark.parametrize("cell", ["4_4.5", "1_0", "\u0664\u0664.5", "0x10"])
def test_a_latency_of_other_than_an_ascii_number_is_skipped_by_every_reader(tmp_path, caplog, cell):
    res = tmp_path / "r.tsv"
    _results(res, latency_us=cell)
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["2"]
    assert f"{res}:2: skipped trial row: column latency_us is" in caplog.text
    assert load_results(res)["trial"].tolist() == [2]


def test_a_latency_without_its_kind_is_skipped(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    _results(res, kind="")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["2"]
    assert "column kind is ''" in caplog.text


@pytest.mark.parametrize("status", ["fail", "crash", "rejected"])
def test_a_failed_row_is_never_the_best_whatever_it_holds(tmp_path, capsys, monkeypatch, status):
    monkeypatch.chdir(tmp_path)
    rows = ({**KEEP, "status": status, "latency_us": "10.0"}, {**DISCARD, "status": "discard"})
    (tmp_path / "results.tsv").write_text(HEADER + "".join("\t".join(r.values()) + "\n" for r in rows))
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0
    (group,) = out["groups"]
    assert group["best"]["predicted"]["trial"] == 2 and group["best"]["predicted"]["latency_us"] == 90.5


# ---- report's plots ---------------------------------------------------------------------------------------------


@pytest.fixture
def searched(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results="results.tsv", corpus="corpus.jsonl", seed=1)
    return tmp_path


@pytest.mark.parametrize("name", ["results.tsv", "corpus.jsonl"])
def test_a_plot_named_by_a_link_to_the_results_is_refused_and_the_file_kept(searched, capsys, name):
    before = (searched / name).read_bytes()
    (searched / "plots").mkdir()
    os.symlink(searched / name, searched / "plots" / "search.png")
    code, out = cli_json(capsys, "report", "--out-dir", "plots")
    assert code == 2 and "search.png (a link to" in out["error"] and "is not a PNG image" in out["error"]
    assert (searched / name).read_bytes() == before


def test_a_plot_over_a_file_of_another_kind_is_refused_and_over_an_earlier_plot_replaced(searched, capsys):
    (searched / "plots").mkdir()
    notes = searched / "plots" / "latency_vs_floor.png"
    notes.write_text("my notes\n")
    code, out = cli_json(capsys, "report", "--out-dir", "plots")
    assert code == 2 and "latency_vs_floor.png exists and is not a PNG image" in out["error"]
    assert notes.read_text() == "my notes\n"
    notes.unlink()
    assert cli_json(capsys, "report", "--out-dir", "plots")[0] == 0
    first = (searched / "plots" / "search.png").stat().st_ino
    assert cli_json(capsys, "report", "--out-dir", "plots")[0] == 0  # the earlier plots are replaced
    assert (searched / "plots" / "search.png").read_bytes().startswith(b"\x89PNG")
    assert (searched / "plots" / "search.png").stat().st_ino != first  # written beside it, then renamed
    assert sorted(p.name for p in (searched / "plots").iterdir()) == ["latency_vs_floor.png", "search.png"]


# ---- --config - -------------------------------------------------------------------------------------------------


def test_a_config_from_a_closed_stdin_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(UsageError, match=r"--incumbent -: stdin is closed"):
        read_config_arg("-", "--incumbent")


def test_a_config_of_non_utf8_bytes_on_stdin_is_a_usage_error_as_in_a_file(monkeypatch, tmp_path):
    data = b"\xff\xfe{}"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with pytest.raises(UsageError, match=r"--config -: stdin is not UTF-8 text \(invalid start byte at byte 0\)"):
        read_config_arg("-")
    (tmp_path / "c.json").write_bytes(data)
    with pytest.raises(UsageError, match=r"not a UTF-8 text file \(invalid start byte at byte 0\)"):
        read_config_arg(str(tmp_path / "c.json"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'\xef\xbb\xbf{"threads_per_block": 256}')))
    assert str(read_config_arg("-")) == '{"threads_per_block": 256}'


def test_a_kept_row_under_its_floor_is_marked_withheld_and_drawn_as_no_best(tmp_path, monkeypatch):
    from amk.harness import cmd_report

    res = tmp_path / "r.tsv"
    _results(res, latency_us="1.0")  # kept trial 1 under its program's spec floor: a hand edit
    df = load_results(res)
    floors = {KEEP["program_fingerprint"]: 40.0}
    out = cmd_report.summarise(df, {}, floors)
    (group,) = out["groups"]
    assert out["withheld"] == 1 and group["kept_trials"][0]["withheld"] is True
    assert group["best"]["predicted"]["trial"] == 2
    assert "(under the spec floor: withheld)" in cmd_report._text({**out, "plots": [], "notes": []})
    assert cmd_report.under_floor(df, floors).tolist() == [True, False]
    assert cmd_report.under_floor(df, None).tolist() == [False, False]


@pytest.mark.parametrize("resume", [True, False])
def test_a_results_file_of_no_readable_row_is_refused_not_run_afresh_beside(tmp_path, resume):
    from amk.harness.loop import LoopError

    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=cor, seed=1)
    res.write_text(res.read_text().replace("\ttrue\t", "\tTRUE\t"))  # a spreadsheet's re-save
    before = res.read_bytes()
    with pytest.raises(LoopError, match=r"none of its 2 data lines is a readable row") as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, seed=1, resume=resume)
    assert e.value.argument == "results"
    assert res.read_bytes() == before


def test_report_counts_the_lines_it_skipped_where_a_json_or_mcp_caller_sees_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _results(tmp_path / "results.tsv", kind="")  # trial 1 skipped: a latency without its kind
    (tmp_path / "results.tsv").write_bytes(data + b"3\t2026-01-01")  # and a last line cut short
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 1 and out["skipped_lines"] == 2
    assert any(n.startswith("2 lines of results.tsv skipped as no readable row") for n in out["notes"]), out["notes"]
    _results(tmp_path / "results.tsv")  # every line a row
    code, out = cli_json(capsys, "report", "--no-plots")
    assert out["skipped_lines"] == 0 and not any("skipped" in n for n in out["notes"])
