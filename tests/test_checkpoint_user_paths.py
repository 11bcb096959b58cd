"""A checkpoint directory saved with transformers and loaded by path, as a user runs AMK on a small shape of their
own: what the verdict and the command line say of it (HARNESS.md sections 1, 2 and 7)."""

from __future__ import annotations

import pytest

import amk
from tests._checkpoints import llama
from tests._isolated_cache import cache_dir  # noqa: F401


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # 4 q heads and 2 KV heads: 8 q, k and v heads in all
    return llama(tmp_path_factory.mktemp("ck") / "llama")


def test_heads_per_task_past_the_heads_is_noted_once(checkpoint):
    v = amk.evaluate(checkpoint, "cpu-sim", {"matvec": {"qkv": {"heads_per_task": 16}}}, cases="reduced")
    assert v["valid"] and v["correct"], v["rejected_reason"] or v["failures"]
    said = [n for n in v["notes"] if n.startswith("matvec.qkv.heads_per_task=16")]
    # one knob that cannot act, one note: the verdict's notes are read by agents, one caveat a line
    assert len(said) == 1, said
    assert "has no effect" in said[0] and "8" in said[0]


def test_loop_resume_help_names_the_latest_keep():
    from amk.cli import build_parser

    loop = next(a for a in build_parser()._subparsers._group_actions[0].choices["loop"]._actions
                if "--resume" in a.option_strings)
    # HARNESS.md section 7: a resume continues from the latest kept trial, which a simpler config kept within the
    # noise of a faster one can leave slower than an earlier keep
    assert "latest kept trial" in loop.help and "best keep" not in loop.help


def test_mcp_loop_description_says_when_max_reverts_stops():
    pytest.importorskip("mcp")
    import asyncio

    from amk.harness.mcp_server import build_server

    tools = asyncio.run(build_server().list_tools())
    text = " ".join(next(t for t in tools if t.name == "loop").description.split())
    # loop.py: max_reverts stops only a run with neither a budget nor minutes; a bounded one restarts elsewhere
    assert "or `max_reverts` non-keeps" not in text
    assert "neither `budget` nor `minutes`" in text
