"""A loop asked to resume a results file that holds no rows (a misspelt path, or a first run with resume) starts a
new run, as before, and now says so: a line at start and a note in its summary, naming the file and a directory
it made, so that the run is not taken for the one it was meant to continue (a warning where it made the directory,
else an info line: the README's first command resumes a file that is not there yet)."""

from __future__ import annotations

import logging

import amk
from amk.flywheel.results import read_rows


def _resume_notes(summary: dict) -> list[str]:
    return [n for n in summary["notes"] if n.startswith("resume:")]


def test_a_resume_of_a_missing_file_says_it_started_a_new_run(tmp_path, caplog):
    res, corpus = tmp_path / "runz" / "results.tsv", tmp_path / "corpus.jsonl"
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, resume=True, cases="reduced")
    [note] = _resume_notes(s)
    assert str(res) in note and "new run" in note and f"directory {str(res.parent)!r} was made" in note
    assert [r.levelname for r in caplog.records if r.getMessage() == note] == ["WARNING"]
    assert len(read_rows(res)) == 1
    again = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, resume=True,
                     cases="reduced")
    assert _resume_notes(again) == []  # a continued run


def test_a_resume_of_an_empty_file_in_an_existing_directory_names_no_directory(tmp_path, caplog):
    res, corpus = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    res.write_text("")
    caplog.set_level(logging.INFO, logger="amk.harness")
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, resume=True, cases="reduced")
    [note] = _resume_notes(s)
    assert "new run" in note and "directory" not in note
    assert [r.levelname for r in caplog.records if r.getMessage() == note] == ["INFO"]  # a first run, as a rule


def test_a_run_without_resume_has_no_such_note(tmp_path):
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 cases="reduced")
    assert _resume_notes(s) == []
