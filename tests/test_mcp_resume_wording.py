"""Proposed addition to tests/test_mcp.py (defect 2): the loop tool's refusal of a results file that holds trials
names the tool's own argument, where Python and the CLI name theirs."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

import amk

pytest.importorskip("mcp")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402


async def _loop_twice(cwd, cache_dir) -> list:
    env = {"AMK_CACHE_DIR": str(cache_dir), **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    params = StdioServerParameters(command=sys.executable, args=["-m", "amk.cli", "-q", "mcp"], cwd=str(cwd), env=env)
    args = {"model": "toy", "gpu": "cpu-sim", "budget": 1}
    async with Client(params, read_timeout_seconds=300) as client:
        return [await client.call_tool("loop", args) for _ in range(2)]


def test_the_loop_tool_asks_for_its_own_resume_argument(tmp_path):
    first, again = asyncio.run(_loop_twice(tmp_path, tmp_path / "cache"))
    assert not first.is_error, first.content
    text = again.content[0].text
    assert again.is_error and "usage: results.tsv already holds 1 trial: pass resume=true to continue it" in text, text
    assert "--resume" not in text and "in Python" not in text
    with pytest.raises(amk.LoopError) as e:  # Python (and the CLI) keep their own spelling
        amk.loop("toy", "cpu-sim", budget=1, results=tmp_path / "results.tsv", corpus=tmp_path / "corpus.jsonl")
    assert "already holds 1 trial: resume it (--resume; resume=True in Python)" in str(e.value)
    assert e.value.argument == "results"
