"""The Python readers of results.tsv and corpus.jsonl refuse what `amk report` refuses, naming the file and why
(HARNESS.md section 5): a directory raised a bare `IsADirectoryError: [Errno 21] Is a directory` with no path, and
load_results("/dev/null") read an empty table where `amk report --results /dev/null` refused it."""

from __future__ import annotations

import os
import threading
import time

import pytest
from _cli import cli_json

from amk.flywheel import load_results
from amk.flywheel.records import load_records, records_and_skipped, records_frame
from amk.schedule.errors import ArgumentError

READERS = [(load_results, "path"), (load_records, "path"), (records_and_skipped, "path"),
           (records_frame, "records")]


@pytest.mark.parametrize(("reader", "argument"), READERS)
def test_a_directory_is_refused_naming_it(tmp_path, reader, argument):
    with pytest.raises(ArgumentError, match=r"is a directory, not a file") as e:
        reader(tmp_path)
    assert e.value.argument == argument and repr(str(tmp_path)) in str(e.value)


@pytest.mark.parametrize(("reader", "argument"), READERS)
def test_a_device_is_refused_naming_it(reader, argument):
    with pytest.raises(ArgumentError, match=r"'/dev/null' is not a regular file") as e:
        reader(os.devnull)
    assert e.value.argument == argument


@pytest.mark.parametrize(("reader", "argument"), READERS)
def test_a_fifo_is_refused_before_it_is_opened(tmp_path, reader, argument):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # opened, its read would block until a writer came
    stop = threading.Event()

    def writer():  # comes once a reader has opened it, so that a reader that opens it reads "" rather than hangs
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ArgumentError, match="not a regular file") as e:
            reader(fifo)
        assert e.value.argument == argument
    finally:
        stop.set()
        thread.join()


def test_load_results_refuses_what_report_refuses(capsys, tmp_path):
    for bad in (os.devnull, str(tmp_path)):
        code, out = cli_json(capsys, "report", "--results", bad, "--no-plots")
        assert code == 2 and out["error_type"] == "usage"
        with pytest.raises(ArgumentError):
            load_results(bad)


def test_a_dangling_link_is_named_as_one(tmp_path):
    link = tmp_path / "results.tsv"
    link.symlink_to(tmp_path / "gone.tsv")
    with pytest.raises(FileNotFoundError, match="a symbolic link that leads to no file"):
        load_results(link)


def test_a_missing_corpus_still_reads_as_no_records(tmp_path):
    assert load_records(tmp_path / "corpus.jsonl") == []
