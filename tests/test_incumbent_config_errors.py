"""A malformed `incumbent=` config given to loop() or propose() is a ConfigError that names the argument beside the
field: a caller of the Python API passes several things that could hold a config, and `$.matvecs: unknown key`
alone did not say which. The field's path and problems stay as they were, and nothing is written."""

from __future__ import annotations

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.schedule.errors import ConfigError


@pytest.mark.parametrize("bad, path", [({"matvecs": {}}, "$.matvecs"), ('{"matvec": 3}', "$.matvec"),
                                       ({"matvec": {"qkv": {"heads_per_task": "x"}}}, "$.matvec.qkv.heads_per_task")])
def test_loop_names_its_incumbent_argument(tmp_path, bad, path):
    res, cor = tmp_path / "results.tsv", tmp_path / "corpus.jsonl"
    with pytest.raises(ConfigError) as e:
        amk.loop("toy", "cpu-sim", budget=1, device="cpu", results=res, corpus=cor, incumbent=bad)
    assert e.value.argument == "incumbent" and e.value.path == path
    assert str(e.value).startswith(f"incumbent: {path}: ")
    assert not res.exists() and not cor.exists()


def test_propose_names_its_incumbent_argument():
    with pytest.raises(ConfigError) as e:
        amk.propose("toy", "cpu-sim", incumbent={"matvec": {"qkv": {"k_splits": 0}}}, corpus=None)
    assert e.value.argument == "incumbent" and e.value.path == "$.matvec.qkv.k_splits"
    assert str(e.value).startswith("incumbent: $.matvec.qkv.k_splits: ")
    assert e.value.detail == str(e.value).removeprefix("incumbent: ")


def test_a_config_error_of_no_argument_reads_as_before():
    e = ConfigError("$.pipelining_depth", "expected an integer")
    assert e.argument is None and str(e) == e.detail == "$.pipelining_depth: expected an integer"
