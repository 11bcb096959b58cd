"""Edges of results.tsv, corpus.jsonl and config dicts as a user's tools leave them (HARNESS.md sections 1, 5 and
7): an emptied results file, the rows of trials that crashes cut short, a one-record corpus an editor saved with a
byte-order mark and no newline, an array or a pandas column where a config holds a boolean, and a plot named by a
symbolic link loop."""

from __future__ import annotations

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel.records import load_records
from amk.flywheel.results import HEADER, ResultRow, Status, append_result, load_results, read_rows
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import ConfigError


def _row(trial: int) -> ResultRow:
    return ResultRow(model="toy", gpu="cpu-sim", schedule_id=f"{trial:012x}", status=Status.DISCARD, correct=True,
                     latency_us=50.0 + trial, kind="predicted", program_fingerprint=f"{trial:016x}", dtype="fp32",
                     max_seq=512, trial=trial)

# ---- report's skipped_lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"], ids=["empty", "blank lines", "spaces"])
def test_an_empty_results_file_skips_no_line(tmp_path, capsys, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.tsv").write_text(text)
    assert load_results(tmp_path / "results.tsv").attrs["skipped_lines"] == 0
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 0 and out["skipped_lines"] == 0  # was -1
    assert not any("skipped" in n for n in out["notes"]), out["notes"]


def test_a_results_file_emptied_to_a_byte_order_mark_is_written_into(tmp_path, capsys, monkeypatch):
    """An editor asked to empty a file "with BOM" leaves the mark alone: a results file of no rows, not another
    tool's fragment (the loop and report refused it as a foreign header '\\ufeff')."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.tsv").write_bytes(b"\xef\xbb\xbf")
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 0 and out["skipped_lines"] == 0
    append_result(tmp_path / "results.tsv", _row(0))  # trial 0: numbered by the append
    assert [r["trial"] for r in read_rows(tmp_path / "results.tsv")] == ["1"]
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 1 and out["skipped_lines"] == 0


@pytest.mark.parametrize("cut", [len("trial\ttime\t"), 40, len(HEADER) - 2], ids=["two names", "mid", "one short"])
def test_a_header_a_write_cut_short_is_written_anew(tmp_path, capsys, monkeypatch, caplog, cut):
    """append_result writes a new file's header with its first row in one write; a full disk can stop it inside
    the header. That start of AMK's own header is a file of no rows (loop and report refused it as a foreign
    header), and the next row appended starts the file again, header whole."""
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "results.tsv"
    res.write_bytes(HEADER[:cut].encode())
    assert read_rows(res) == [] and "header cut short" in caplog.text
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["trials"] == 0
    append_result(res, _row(0))
    assert res.read_text().startswith(HEADER) and [r["trial"] for r in read_rows(res)] == ["1"]


def test_a_line_that_only_starts_like_the_header_is_still_refused(tmp_path):
    from amk.flywheel.results import ResultsFormatError

    res = tmp_path / "results.tsv"
    res.write_text("trial\ttime\tsomething else")  # not the header's start: another tool's file
    with pytest.raises(ResultsFormatError):
        read_rows(res)
    with pytest.raises(ResultsFormatError):
        append_result(res, _row(0))
    assert res.read_text() == "trial\ttime\tsomething else"


# ---- trials cut short are no unreadable file ---------------------------------------------------------------------


def test_a_results_file_of_only_rows_that_crashes_cut_short_is_resumed(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    append_result(res, _row(1))
    whole = res.read_bytes()
    res.write_bytes(whole[:-20])  # trial 1's row cut short (a full disk)
    append_result(res, _row(2))  # the next append marks it as cut ...
    res.write_bytes(res.read_bytes()[:-20])  # ... and is cut short in turn
    assert read_rows(res) == []
    summary = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, seed=1, resume=True)
    assert summary["trials"] == 1
    rows = read_rows(res)
    assert len(rows) == 1 and int(rows[0]["trial"]) > 2  # neither cut trial's number given again


def test_a_marked_cut_row_beside_an_unreadable_one_is_still_refused(tmp_path):
    from amk.harness.loop import LoopError

    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    res.write_text(HEADER + "\t".join(_row(1).cells()).replace("\ttrue\t", "\tTRUE\t") + "\n"
                   + "\t".join(_row(2).cells())[:-20])
    append_result(res, _row(3))
    res.write_bytes(res.read_bytes()[:-20])
    before = res.read_bytes()
    with pytest.raises(LoopError, match=r"none of its 1 data lines is a readable row") as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, seed=1, resume=True)
    assert e.value.argument == "results" and res.read_bytes() == before


# ---- a corpus an editor saved ---------------------------------------------------------------------------------------


def test_a_one_record_corpus_saved_with_a_byte_order_mark_and_no_newline_is_read(tmp_path, caplog):
    cor = tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "results.tsv", corpus=cor, seed=1)
    (record,) = load_records(cor)
    cor.write_bytes(b"\xef\xbb\xbf" + cor.read_bytes().rstrip(b"\n"))  # Notepad's "UTF-8 with BOM"
    assert [r.schedule_id for r in load_records(cor)] == [record.schedule_id]
    assert "write cut short" not in caplog.text
    summary = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "results.tsv", corpus=cor,
                       seed=1, resume=True)
    assert summary["trials"] == 1 and len(load_records(cor)) == 2  # the record read, and the next one after it


# ---- numpy and pandas values where a config holds a boolean --------------------------------------------------------


def _values():
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    return {"a numpy array": np.array([True, False]), "a 0-d numpy array": np.array(True),
            "a pandas column": pd.Series([True]), "a nullable pandas column": pd.Series([True], dtype="boolean")}


@pytest.mark.parametrize("name", ["a numpy array", "a 0-d numpy array", "a pandas column",
                                  "a nullable pandas column"])
@pytest.mark.parametrize("knob", ["norm_into_matvec", "rope_kv_into_qkv"])  # bool, and bool | None
def test_an_array_where_a_config_holds_a_boolean_is_refused_naming_the_field(name, knob):
    value = _values()[name]
    with pytest.raises(ConfigError) as e:
        ScheduleConfig.from_dict({"fusion": {knob: value}})
    assert str(e.value).startswith(f"$.fusion.{knob}: expected a boolean, got "), str(e.value)
    # as an integer knob refuses the same value
    with pytest.raises(ConfigError, match=r"^\$\.pipelining_depth: expected an integer"):
        ScheduleConfig.from_dict({"pipelining_depth": value})


def test_numpy_boolean_scalars_are_still_the_booleans_they_hold():
    np = pytest.importorskip("numpy")
    got = ScheduleConfig.from_dict({"fusion": {"norm_into_matvec": np.bool_(False), "rope_kv_into_qkv": np.True_}})
    assert got.fusion.norm_into_matvec is False and got.fusion.rope_kv_into_qkv is True


# ---- report's plots --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("links", [["search.png"], ["latency_vs_floor.png", "a"]], ids=["itself", "two links"])
def test_a_plot_named_by_a_symbolic_link_loop_is_a_usage_error_naming_out_dir(tmp_path, capsys, monkeypatch, links):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    for i in (1, 2):
        append_result(tmp_path / "results.tsv", _row(i))
    out_dir = tmp_path / "report"
    out_dir.mkdir()
    for name, to in zip(links, links[1:] + links[:1]):  # each names the next, the last the first
        (out_dir / name).symlink_to(to)
    code, out = cli_json(capsys, "report", "--out-dir", "report")
    assert code == 2 and out["error_type"] == "usage", out  # was exit 3, internal: RuntimeError: Symlink loop
    assert out["error"].startswith("--out-dir 'report': ") and "names no file" in out["error"], out["error"]
    assert all((out_dir / name).is_symlink() for name in links)


def test_report_json_counts_the_corpus_lines_it_skipped(tmp_path, capsys, monkeypatch):
    """A caller of `amk --json report` (or the MCP tool) sees no stderr: a damaged corpus is counted in the answer."""
    monkeypatch.chdir(tmp_path)
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results="results.tsv", corpus="corpus.jsonl")
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["corpus"]["skipped_lines"] == 0
    assert not any("no tuning record" in n for n in out["notes"]), out["notes"]
    with open(tmp_path / "corpus.jsonl", "a") as f:
        f.write("TRUE\n{\"not\": \"a record\"}\n{\"cut")
    code, out = cli_json(capsys, "report", "--no-plots")
    assert code == 0 and out["corpus"]["skipped_lines"] == 3 and out["corpus"]["entries"] == 1
    assert any(n.startswith("3 lines of corpus.jsonl skipped as no tuning record") for n in out["notes"]), out["notes"]


def test_a_row_whose_model_path_is_not_utf8_is_skipped_naming_the_column(tmp_path, caplog):
    """A spreadsheet's save in cp1252 turns a checkpoint path's é into a byte no UTF-8 reader takes: read with
    replacement, the row would be another model's; it is skipped with a warning naming the column."""
    res = tmp_path / "results.tsv"
    row = _row(0)
    row.model = str(tmp_path / "café-1b")
    append_result(res, row)
    append_result(res, _row(0))
    assert [r["model"] for r in read_rows(res)] == [row.model, "toy"]
    res.write_bytes(res.read_bytes().replace("é".encode(), "é".encode("cp1252")))
    with caplog.at_level("WARNING"):
        rows = read_rows(res)
    assert [r["model"] for r in rows] == ["toy"]
    assert any(":2: skipped trial row: column model" in r.getMessage() and "not UTF-8" in r.getMessage()
               for r in caplog.records)


# ---- a loop stopped before its first trial -------------------------------------------------------------------------


def test_a_loop_stopped_before_its_first_trial_says_nothing_ran(tmp_path):
    """Stopped at start-up (an interrupt before trial 1 ends), the summary said the start config failed verify and
    that results.tsv, never written, says why."""
    from amk.harness.cmd_run import loop_text

    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    s = amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1, should_stop=lambda: True)
    assert s["trials"] == 0 and s["stopped"] == "interrupted" and not res.exists()
    assert any(n.startswith("no trial ran") for n in s["notes"]), s["notes"]
    assert not any("results.tsv says why" in n or "latency" in n for n in s["notes"]), s["notes"]
    assert loop_text(s).startswith("0 trials; stopped: interrupted")  # no empty "()"


# ---- one config, one answer, however it is spelt ---------------------------------------------------------------------


@pytest.mark.parametrize("sms", ["tuple", "numpy ints", "numpy array"])
def test_an_explicit_map_takes_a_notebooks_sequences_of_sm_ids(sms):
    import numpy as np

    given = {"tuple": (1, 2), "numpy ints": [np.int64(1), np.int32(2)], "numpy array": np.array([1, 2])}[sms]
    cfg = ScheduleConfig.from_dict({"sm": {"assignment": "explicit", "explicit_map": {"qkv": given}}})
    plain = ScheduleConfig.from_dict({"sm": {"assignment": "explicit", "explicit_map": {"qkv": [1, 2]}}})
    assert cfg == plain and cfg.schedule_id == plain.schedule_id
    assert cfg.to_dict()["sm"]["explicit_map"] == {"qkv": [1, 2]}


def test_an_sm_id_out_of_range_or_boolean_is_named_in_json_words():
    import numpy as np

    with pytest.raises(ConfigError, match=r"qkv\[0\]: expected an SM id in \[0, 4096\), got an integer \(5000\)"):
        ScheduleConfig.from_dict({"sm": {"assignment": "explicit", "explicit_map": {"qkv": [np.int64(5000)]}}})
    with pytest.raises(ConfigError, match=r"qkv\[0\]: expected an SM id .* got a boolean \(true\)"):
        ScheduleConfig.from_dict({"sm": {"assignment": "explicit", "explicit_map": {"qkv": [np.bool_(True)]}}})


def test_an_integer_past_pythons_conversion_limit_is_refused_by_its_path():
    from amk.schedule.config_text import parse_config

    for given in ('{"pipelining_depth": ' + "9" * 5000 + "}", {"pipelining_depth": 10 ** 5000}):
        with pytest.raises(ConfigError, match=r"\$\.pipelining_depth: must be <= \d+, got an integer of 500[01] digits"):
            parse_config(given)
    with pytest.raises(ConfigError, match=r"must be >= 0, got a negative integer of 5001 digits"):
        parse_config({"pipelining_depth": -10 ** 5000})


def test_a_byte_order_mark_before_json_text_is_the_same_config_on_every_way_in():
    from amk.schedule.config_text import parse_config

    text = '{"pipelining_depth": 1}'
    assert parse_config("\ufeff" + text) == parse_config(text)
    assert parse_config(("\ufeff" + text).encode()) == parse_config(text)  # the file's raw bytes
    assert amk.evaluate("toy", "cpu-sim", "\ufeff" + text)["valid"]


def test_results_saved_back_from_load_results_by_pandas_are_read_and_resumed(tmp_path):
    """load_results types time and correct; DataFrame.to_csv writes them as 2026-12-07 11:26:28+00:00 and True,
    which every reader skipped as hand edits (report 0 trials, loop --resume refused the file)."""
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=3, device="cpu", results=res, corpus=cor, seed=1)
    before = load_results(res)
    df = load_results(res)
    df.loc[df.trial == 2, "description"] = "a note of mine"
    df.to_csv(res, sep="\t", index=False)
    assert "+00:00\t" in res.read_text() and "\tTrue\t" in res.read_text()  # pandas' spellings, as saved
    after = load_results(res)
    assert after.attrs["skipped_lines"] == 0 and len(after) == len(before)
    assert after["time"].equals(before["time"]) and after["correct"].equals(before["correct"])
    assert after.loc[after.trial == 2, "description"].item() == "a note of mine"
    summary = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, seed=1, resume=True)
    assert summary["trials"] == 1 and len(read_rows(res)) == len(before) + 1


def test_the_report_names_remeasures_apart_from_the_trials_they_are_not(tmp_path, capsys, monkeypatch):
    import dataclasses

    monkeypatch.chdir(tmp_path)
    res = tmp_path / "results.tsv"
    for trial, status in ((1, Status.KEEP), (2, Status.KEEP), (3, Status.REMEASURE), (4, Status.DISCARD)):
        append_result(res, dataclasses.replace(_row(trial), status=status))
    from amk.cli import main

    assert main(["report", "--no-plots"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "3 trials: keep 2, discard 1; and 1 remeasure of the incumbent", first
