"""A loop started without resume takes its results file (flywheel.claims.start_run): a second loop started on the
same fresh file without resume before the first wrote a row is refused, where both ran, the second continuing the
first's run though it was not asked to resume."""

from __future__ import annotations

import json
import os
import socket

import pytest

import amk
from amk.flywheel.claims import claim, claims_path, end_run, start_run
from amk.flywheel.results import read_rows
from amk.harness.loop import LoopError

ALIVE = f"{socket.gethostname()}:{os.getppid()}"  # another process of this host that runs (pytest's parent)
DEAD = f"{socket.gethostname()}:{2**22 + 12345}"  # past any pid this host gives


def _lines(res):
    return [json.loads(x) for x in claims_path(res).read_text().splitlines()] if claims_path(res).exists() else []


def test_a_live_loops_lease_holds_the_file_and_its_end_gives_it_back(tmp_path):
    res = tmp_path / "r.tsv"
    assert start_run(res) is None and [x.get("run") for x in _lines(res)] == [f"{socket.gethostname()}:{os.getpid()}"]
    assert start_run(res) is None  # this loop's own lease holds nothing against it
    assert start_run(res, owner=ALIVE) == f"{socket.gethostname()}:{os.getpid()}"
    assert claim(res, "toy", "cpu-sim", "fp", "sid").trial == 1  # claims read past a lease line
    end_run(res)
    assert [x for x in _lines(res) if "run" in x] == []
    assert start_run(res, owner=ALIVE) == f"{socket.gethostname()}:{os.getpid()}"  # its live claim holds the file too


def test_a_dead_loops_lease_holds_nothing_and_rows_are_named(tmp_path):
    res = tmp_path / "r.tsv"
    assert start_run(res, owner=DEAD) is None
    assert start_run(res) is None  # the dead owner could write nothing more
    end_run(res)
    end_run(res, owner=DEAD)
    assert not claims_path(res).exists()
    res.write_text("trial\tx\n1\ty\n")
    assert start_run(res) == "rows"


def test_a_loop_without_resume_is_refused_while_another_holds_the_fresh_file(tmp_path, capsys):
    res, corpus = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    assert start_run(res, owner=ALIVE) is None  # another loop started here and has written no row yet
    with pytest.raises(LoopError, match=rf"in use by another loop \({ALIVE}\).*resume") as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, cases="reduced")
    assert e.value.argument == "results" and read_rows(res) == []
    from amk.cli import main

    assert main(["loop", "--model", "toy", "--budget", "1", "--results", str(res), "--corpus", str(corpus)]) == 2
    assert "in use by another loop" in capsys.readouterr().err
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, resume=True, cases="reduced")
    assert s["trials"] == 1 and len(read_rows(res)) == 1  # resume joins that run


def test_a_loop_leaves_no_lease_behind(tmp_path):
    res, corpus = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, cases="reduced")
    assert [x for x in _lines(res) if "run" in x] == [] and len(read_rows(res)) == 1
