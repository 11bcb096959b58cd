"""A loop call over MCP reports each trial to a client that asked for progress (a progressToken in the call's
_meta): one notifications/progress a trial, progress counting the call's trials, total its budget, and the line
`amk loop` prints for the trial as the message. A long loop otherwise gave its client nothing to show until its
answer."""

from __future__ import annotations

import asyncio
import sys

import pytest

pytest.importorskip("mcp")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from amk.flywheel.results import load_results  # noqa: E402


async def _loop_with_progress(cwd, cache_dir, arguments: dict, ask: bool) -> tuple[list, dict]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "amk.cli", "-q", "mcp"], cwd=str(cwd),
                                   env={"AMK_CACHE_DIR": str(cache_dir)})
    seen: list = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async with Client(params, read_timeout_seconds=600) as client:
        result = await client.call_tool("loop", arguments, progress_callback=on_progress if ask else None)
    assert not result.is_error, result.content
    return seen, result.structured_content


def test_a_loop_call_sends_one_progress_notification_a_trial(tmp_path):
    arguments = {"model": "toy", "gpu": "cpu-sim", "budget": 3, "results": "r.tsv", "corpus": "c.jsonl"}
    seen, summary = asyncio.run(_loop_with_progress(tmp_path, tmp_path / "cache", arguments, ask=True))
    rows = list(load_results(tmp_path / "r.tsv").itertuples())
    assert [p for p, _, _ in seen] == list(range(1, len(rows) + 1))
    assert len(seen) >= 3 and all(total == 3 for _, total, _ in seen)
    for (_, _, message), row in zip(seen, rows):
        assert f"trial {row.trial:>4} {row.status}" in message, (message, row)
        assert row.schedule_id in message


def test_a_loop_call_without_a_progress_token_gets_only_its_answer(tmp_path):
    arguments = {"model": "toy", "gpu": "cpu-sim", "minutes": 0.05, "results": "r.tsv", "corpus": "c.jsonl"}
    seen, summary = asyncio.run(_loop_with_progress(tmp_path, tmp_path / "cache", arguments, ask=False))
    assert seen == [] and summary["trials"] >= 1
