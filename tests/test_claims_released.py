"""A trial whose measurement stops the loop (the environment, not the config) withdraws its claim: no row will
carry its number, so the next run's first trial takes it, where it started at 2 with a claim of 1 left behind."""

from __future__ import annotations

import json

import pytest

import amk
from amk.flywheel.claims import Claim, claim, claims_path, release
from amk.flywheel.results import read_rows
from amk.schedule.errors import EnvironmentProblem


def test_release_withdraws_only_that_claim_and_removes_an_empty_file(tmp_path):
    res = tmp_path / "r.tsv"
    a = claim(res, "toy", "cpu-sim", "fp-a", "sid-a")
    b = claim(res, "toy", "cpu-sim", "fp-b", "sid-b")
    assert isinstance(a, Claim) and isinstance(b, Claim) and (a.trial, b.trial) == (1, 2)
    assert release(res, a) and not release(res, a)
    left = [json.loads(x) for x in claims_path(res).read_text().splitlines()]
    assert [x["trial"] for x in left] == [2]
    assert release(res, b) and not claims_path(res).exists()
    assert claim(res, "toy", "cpu-sim", "fp-c", "sid-c").trial == 1  # nothing left to number past


def test_a_loop_stopped_by_its_environment_leaves_no_claim_and_no_gap(tmp_path):
    res, corpus = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"

    def broken(*a, **k):
        raise EnvironmentProblem("the cache folder cannot be written (a test)")

    with pytest.raises(EnvironmentProblem):
        amk.loop("toy", "cpu-sim", budget=2, device="cpu", results=res, corpus=corpus, evaluate=broken)
    assert not claims_path(res).exists() or not claims_path(res).read_text().strip()
    s = amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=corpus, resume=True, cases="reduced")
    assert s["trials"] == 1 and [r["trial"] for r in read_rows(res)] == ["1"]
