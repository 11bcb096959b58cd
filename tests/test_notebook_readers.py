"""The pandas readers a notebook calls by hand: a misspelt path must not read as a run with no trials."""

from __future__ import annotations

import pytest

from amk.flywheel import load_results
from amk.flywheel.records import records_frame


def test_load_results_of_a_missing_file_raises_naming_it(tmp_path):
    # `amk report` refuses a results file that is not there; the reader read it as an empty frame, so a typo
    # in a notebook showed "no trials" instead of an error
    missing = tmp_path / "result.tsv"
    with pytest.raises(FileNotFoundError, match="result.tsv"):
        load_results(missing)


def test_records_frame_of_a_missing_file_raises_naming_it(tmp_path):
    missing = tmp_path / "corpus.jsnol"
    with pytest.raises(FileNotFoundError, match="corpus.jsnol"):
        records_frame(missing)


def test_records_frame_of_a_record_list_still_takes_an_empty_one():
    assert records_frame([]).empty
