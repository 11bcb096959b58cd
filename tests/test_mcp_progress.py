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


async def _two_loops(cwd, cache_dir) -> tuple[list, dict, list, dict]:
    """A loop call of budget 2 that asks for progress, then one that resumes it with a budget of 1 and asks none,
    on one server: (the first's notifications, its summary, the second's notifications, its summary)."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "amk.cli", "-q", "mcp"], cwd=str(cwd),
                                   env={"AMK_CACHE_DIR": str(cache_dir)})
    asked: list = []
    unasked: list = []

    async def on_progress(progress, total, message):
        asked.append((progress, total, message))

    files = {"model": "toy", "gpu": "cpu-sim", "results": "r.tsv", "corpus": "c.jsonl"}
    async with Client(params, read_timeout_seconds=600) as client:
        first = await client.call_tool("loop", {**files, "budget": 2}, progress_callback=on_progress)
        n = len(asked)
        second = await client.call_tool("loop", {**files, "budget": 1, "resume": True})
        unasked = asked[n:]
    for result in (first, second):
        assert not result.is_error, result.content
    return asked[:n], first.structured_content, unasked, second.structured_content


def test_a_loop_call_sends_one_progress_notification_a_trial_and_none_unasked(tmp_path):
    seen, summary, unasked, resumed = asyncio.run(_two_loops(tmp_path, tmp_path / "cache"))
    rows = list(load_results(tmp_path / "r.tsv").itertuples())
    first = rows[:len(rows) - resumed["trials"]]
    assert [p for p, _, _ in seen] == list(range(1, len(first) + 1))
    assert len(seen) >= 2 and all(total == 2 for _, total, _ in seen)
    for (_, _, message), row in zip(seen, first):
        assert f"trial {row.trial:>4} {row.status}" in message, (message, row)
        assert row.schedule_id in message
    assert unasked == [] and resumed["trials"] >= 1  # a call without a progress token gets only its answer
