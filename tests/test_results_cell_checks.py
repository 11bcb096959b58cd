"""results.tsv cells that parse as neither a number pandas can hold nor one of a column's values (hand edits):
a trial or max_seq past int64, a `correct`, `status` or `kind` cell of another value. Each row is skipped with a
warning naming its line and column (HARNESS.md section 5), never a traceback of `amk report`, a trial number
counted on from it, nor a row that one reader counts and another ignores."""

from __future__ import annotations

import logging

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.flywheel.results import HEADER, TrialNumbersExhausted, load_results, next_trial, read_rows

run = cli_json
HUGE = "99999999999999999999999"  # past int64: pandas reads it as a float it cannot cast back

# a kept trial 1 (the cell under test edited into it) and a discarded trial 2, as test_bad_files writes them
KEEP = {"trial": "1", "time": "2026-01-01T00:00:00Z", "model": "toy", "gpu": "cpu-sim", "schedule_id": "b4b855881ef6",
        "status": "keep", "correct": "true", "latency_us": "80.0", "kind": "predicted", "pct_of_floor": "",
        "speedup": "", "description": "baseline", "program_fingerprint": "0b1a245a7680c90b",
        "predicted_us": "83.6681", "spread_us": "", "dtype": "fp32", "max_seq": "64"}
DISCARD = {**KEEP, "trial": "2", "time": "2026-01-01T00:00:01Z", "schedule_id": "62d6b5dd075d", "status": "discard",
           "latency_us": "90.5", "description": "a change", "program_fingerprint": "e8c7a28e0e4f5408",
           "predicted_us": "34.3"}


def _results(path, **edit) -> bytes:
    """A results.tsv of KEEP (its cells replaced by `edit`) and DISCARD; returns its bytes."""
    rows = ({**KEEP, **edit}, DISCARD)
    path.write_text(HEADER + "".join("\t".join(r.values()) + "\n" for r in rows))
    return path.read_bytes()


def _skipped(path, caplog, column: str) -> list[dict]:
    """read_rows(path), asserting that line 2 (trial 1's) was skipped with a warning naming it and `column`."""
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        rows = read_rows(path)
    assert f"{path}:2: skipped trial row: column {column} is" in caplog.text, caplog.text
    return rows


# ---- integer cells past int64 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [HUGE, str(2**63), "9" * 5000], ids=["1e23", "2**63", "5000-digits"])
def test_a_trial_number_past_int64_is_skipped_with_a_warning_naming_its_line(tmp_path, caplog, cell):
    res = tmp_path / "r.tsv"
    _results(res, trial=cell)
    assert [r["trial"] for r in _skipped(res, caplog, "trial")] == ["2"]
    assert "below 2**63" in caplog.text
    df = load_results(res)  # raised TypeError: cannot safely cast non-equivalent float64 to int64
    assert df["trial"].tolist() == [2] and str(df["trial"].dtype) == "Int64"


def test_a_max_seq_past_int64_is_skipped_with_a_warning_naming_its_line(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    _results(res, max_seq=HUGE)
    assert [r["trial"] for r in _skipped(res, caplog, "max_seq")] == ["2"]
    assert load_results(res)["max_seq"].tolist() == [64]


def test_the_largest_int64_trial_is_still_a_trial(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    _results(res, trial=str(2**63 - 1))
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == [str(2**63 - 1), "2"]
    assert "skipped" not in caplog.text
    assert load_results(res)["trial"].tolist() == [2**63 - 1, 2]


def test_next_trial_does_not_count_on_from_a_trial_past_int64(tmp_path):
    res = tmp_path / "r.tsv"
    data = _results(res, trial=HUGE)
    assert next_trial(data) == 3
    assert next_trial(data + HUGE.encode()) == 4  # a torn last line past int64: one past the rows before it


def test_a_resume_whose_next_trial_number_would_pass_int64_is_refused_before_any_trial(capsys, tmp_path):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    before = _results(res, trial=str(2**63 - 1))
    code, out = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                    "--results", str(res), "--corpus", str(cor))
    assert code == 2 and out["error"].startswith(f"--results: {res}: its trial numbers reach {2**63 - 1}"), out
    assert res.read_bytes() == before and not cor.exists()
    with pytest.raises(TrialNumbersExhausted, match="choose another results file"):
        next_trial(before)
    # room for one more trial, but not for the budget's three
    before = _results(res, trial=str(2**63 - 3))
    code, out = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "3", "--resume",
                    "--results", str(res), "--corpus", str(cor))
    assert code == 2 and f"reach {2**63 - 3}, so the next 3 would pass" in out["error"], out
    assert res.read_bytes() == before


def test_report_and_resume_survive_a_trial_past_int64(capsys, tmp_path):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    before = _results(res, trial=HUGE)
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0 and out["trials"] == 1, out
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                  "--results", str(res), "--corpus", str(cor))
    assert code == 0, s
    data = res.read_bytes()
    assert data.startswith(before)
    added = [int(ln.split(b"\t", 1)[0]) for ln in data[len(before):].splitlines()]
    assert added and added == list(range(3, 3 + len(added))), added  # was 100000000000000000000000


# ---- cells of a fixed set of values ----------------------------------------------------------------------------


@pytest.mark.parametrize(("column", "cell", "allowed"), [
    ("correct", "maybe", "one of true, false (or empty)"),
    ("correct", "TRUE", "one of true, false (or empty)"),  # a spreadsheet's; pandas' True is read
    ("status", "kept", "one of keep, discard, rejected, fail, crash, remeasure"),
    ("kind", "measured", "one of measured-gpu, predicted (or empty)"),
])
def test_a_cell_of_none_of_its_columns_values_is_skipped_with_a_warning(tmp_path, caplog, column, cell, allowed):
    res = tmp_path / "r.tsv"
    before = _results(res, **{column: cell})
    assert [r["trial"] for r in _skipped(res, caplog, column)] == ["2"]
    assert f"column {column} is {cell!r}, not {allowed}" in caplog.text
    df = load_results(res)
    assert df["trial"].tolist() == [2] and df["correct"].notna().all()
    assert res.read_bytes() == before


def test_an_empty_correct_and_kind_are_still_read(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    _results(res, status="crash", correct="", latency_us="", kind="")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1", "2"]
    assert "skipped" not in caplog.text
    assert load_results(res)["correct"].isna().tolist() == [True, False]


def test_report_and_resume_skip_a_keep_whose_correct_is_neither_true_nor_false(capsys, tmp_path):
    # the row was counted (trials 2, kept 1) yet left out of best, and resume took it for the incumbent to
    # continue from and refused for want of its config in the corpus
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    before = _results(res, correct="maybe")
    code, out = run(capsys, "report", "--results", str(res), "--corpus", str(cor), "--no-plots")
    assert code == 0 and out["trials"] == 1 and out["statuses"] == {"discard": 1}, out
    (group,) = out["groups"]
    assert group["kept"] == 0 and group["kept_trials"] == [], group
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                  "--results", str(res), "--corpus", str(cor))
    assert code == 0, s
    assert res.read_bytes().startswith(before)


@pytest.mark.parametrize("trial", [10**23, 2**63, "7", 1.5, True, 0])
def test_a_tuning_record_whose_trial_no_row_could_hold_is_skipped_with_a_warning(tmp_path, caplog, trial):
    import json

    from amk.flywheel.records import load_records, records_frame

    good = {"model": "toy", "gpu": "cpu-sim", "config": {}, "verdict": {}, "trial": 3}
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({**good, "trial": trial}) + "\n" + json.dumps(good) + "\n")
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        records = load_records(corpus)
    assert [r.trial for r in records] == [3] and "corpus.jsonl:1" in caplog.text and "trial" in caplog.text
    assert list(records_frame(records)["trial"]) == [3]


def test_a_claim_of_a_trial_past_int64_does_not_move_the_next_trial_number(tmp_path):
    import json

    from amk.flywheel.claims import claim, claims_path

    results = tmp_path / "results.tsv"
    _results(results)
    line = {"model": "toy", "gpu": "cpu-sim", "program_fingerprint": "f", "schedule_id": "s", "owner": "x:1",
            "time": 0.0}
    claims_path(results).write_text(json.dumps({**line, "trial": 5}) + "\n")
    assert claim(results, "toy", "cpu-sim", "f2", "s2").trial == 6  # a claim line as written is read
    claims_path(results).write_text(json.dumps({**line, "trial": 10**23}) + "\n")
    assert claim(results, "toy", "cpu-sim", "f3", "s3").trial == 3


def test_a_trial_number_given_twice_is_read_with_a_warning_naming_both_lines(tmp_path, caplog):
    res = tmp_path / "r.tsv"
    rows = (KEEP, DISCARD, {**DISCARD, "time": "2026-01-01T00:00:02Z"})  # trial 2's line copied
    res.write_text(HEADER + "".join("\t".join(r.values()) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="amk.flywheel"):
        assert [r["trial"] for r in read_rows(res)] == ["1", "2", "2"]
    assert f"{res}:4: trial 2 is also line 3's number (a line copied, or two results files joined); both rows are " \
           "read" in caplog.text, caplog.text
    assert f"{res}:2:" not in caplog.text and f"{res}:3:" not in caplog.text
    assert load_results(res)["trial"].tolist() == [1, 2, 2] and next_trial(res.read_bytes()) == 3


# ---- control characters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["schedule_id", "program_fingerprint", "model", "gpu"])
def test_a_key_cell_holding_a_nul_byte_is_skipped_with_a_warning(tmp_path, caplog, column):
    res = tmp_path / "r.tsv"
    _results(res, **{column: KEEP[column][:4] + "\x00" + KEEP[column][4:]})
    assert [r["trial"] for r in _skipped(res, caplog, column)] == ["2"]
    assert "control character" in caplog.text


def test_a_control_character_in_a_written_cell_is_written_as_a_space(tmp_path):
    from amk.flywheel.results import ResultRow, Status, append_result

    res = tmp_path / "r.tsv"
    append_result(res, ResultRow("toy", "cpu-sim", "b4b855881ef6", Status.KEEP, description="a\x00b\x1bc"))
    assert [r["description"] for r in read_rows(res)] == ["a b c"]


# ---- line endings ----------------------------------------------------------------------------------------------


def test_a_results_file_saved_with_crlf_line_endings_is_read_and_resumed(capsys, tmp_path):
    """A results.tsv edited and saved on Windows ends its lines in CRLF: its header was refused ("not a results.tsv
    header") and its rows' last cell read as "64\\r". Read as the LF file it was, resumed with the next number."""
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    lf = _results(res)
    res.write_bytes(lf.replace(b"\n", b"\r\n"))
    before = res.read_bytes()
    rows = read_rows(res)
    assert rows == read_rows_of_bytes(tmp_path / "lf.tsv", lf)
    assert [r["max_seq"] for r in rows] == ["64", "64"] and next_trial(before) == 3
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                  "--results", str(res), "--corpus", str(cor))
    assert code == 0, s
    assert res.read_bytes().startswith(before)
    assert [r["trial"] for r in read_rows(res)] == ["1", "2", "3"]
    after = res.read_bytes()  # the appended row ends as the file's lines do
    assert after.endswith(b"\r\n") and after.count(b"\n") == after.count(b"\r\n") == 4


def test_a_results_file_saved_with_a_byte_order_mark_is_read_and_resumed(capsys, tmp_path):
    """A spreadsheet's "UTF-8 with BOM" puts U+FEFF before the header, which then did not match. It is read as the
    file without it and resumed; the mark stays where it was."""
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    plain = _results(res)
    res.write_bytes(b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n"))
    before = res.read_bytes()
    assert read_rows(res) == read_rows_of_bytes(tmp_path / "plain.tsv", plain) and next_trial(before) == 3
    code, s = run(capsys, "loop", "-q", "--model", "toy", "--gpu", "cpu-sim", "--budget", "1", "--resume",
                  "--results", str(res), "--corpus", str(cor))
    assert code == 0, s
    assert res.read_bytes().startswith(before) and [r["trial"] for r in read_rows(res)] == ["1", "2", "3"]


def test_a_results_file_with_cr_only_line_endings_is_refused_saying_so(tmp_path):
    from amk.flywheel.results import ResultsFormatError

    res = tmp_path / "r.tsv"
    res.write_bytes(_results(res).replace(b"\n", b"\r"))
    before = res.read_bytes()
    with pytest.raises(ResultsFormatError, match="end in CR alone"):
        read_rows(res)
    assert res.read_bytes() == before


def read_rows_of_bytes(path, data: bytes) -> list[dict]:
    path.write_bytes(data)
    return read_rows(path)


@pytest.mark.parametrize("status", ["keep", "discard"])
def test_a_kept_or_discarded_row_marked_incorrect_is_skipped_with_a_warning(tmp_path, caplog, status):
    # the loop keeps or discards only a correct config: such a row is a hand edit, read by no one as a latency
    res = tmp_path / "r.tsv"
    _results(res, correct="false", status=status)
    assert [r["trial"] for r in _skipped(res, caplog, "correct")] == ["2"]
    assert f"false on a {status} row" in caplog.text
    assert load_results(res)["trial"].tolist() == [2]
    _results(res, correct="false", status="fail", latency_us="")  # a failed trial: read as it is
    assert [r["trial"] for r in read_rows(res)] == ["1", "2"]
