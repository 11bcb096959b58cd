"""What amk.loop tells a Python caller: its refusals name the keyword the caller passed, not only the CLI's flag."""

from __future__ import annotations

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.harness.loop import LoopError


def test_a_resume_refusing_a_given_incumbent_names_the_keyword(tmp_path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor,
             incumbent={"matvec": {"qkv": {"heads_per_task": 2}}})
    # the message said only "resume without --config", a flag a notebook never passed
    with pytest.raises(LoopError, match=r"resume without --config \(incumbent= in Python\)") as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, resume=True,
                 incumbent={"matvec": {"lm_head": {"k_splits": 4}}})
    assert e.value.argument == "incumbent"
