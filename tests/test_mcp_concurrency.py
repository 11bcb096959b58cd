"""`amk mcp` under tool calls sent together, as an agent may send them: each must answer as it would alone. The SDK
runs every sync tool on a worker thread, and the first calls of a fresh server used to race on transformers' lazy
import (three of four failed with a false `environment: cannot import name 'AutoConfig'`)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

pytest.importorskip("mcp")

from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

TOY = {"model": "toy", "gpu": "cpu-sim"}


async def _first_calls_together(cwd, cache_dir) -> list:
    """Two loops and two evaluates sent at once to a server that has answered nothing yet."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "amk.cli", "-q", "mcp"], cwd=str(cwd),
                                   env={"AMK_CACHE_DIR": str(cache_dir)})
    async with Client(params, read_timeout_seconds=300) as client:
        loops = [client.call_tool("loop", {**TOY, "budget": 1, "results": f"results{i}.tsv",
                                           "corpus": f"corpus{i}.jsonl"}) for i in range(2)]
        evaluates = [client.call_tool("evaluate", {**TOY, "seed": i}) for i in range(2)]
        return await asyncio.gather(*loops, *evaluates)


def test_concurrent_first_calls_to_a_fresh_server_all_succeed(tmp_path):
    results = asyncio.run(_first_calls_together(tmp_path, tmp_path / "cache"))
    failed = [r.content[0].text for r in results if r.is_error]
    assert not failed, failed
    loops, verdicts = [r.structured_content for r in results[:2]], [r.structured_content for r in results[2:]]
    assert all(s["statuses"] for s in loops), loops
    assert all(v["valid"] and v["correct"] for v in verdicts), verdicts
    assert all((tmp_path / f"results{i}.tsv").is_file() for i in range(2))


def _counting(overlaps: dict, answer):
    """A stand-in for a verb that records how many calls run at once, holding each long enough to overlap."""
    lock = threading.Lock()

    def verb(*args, **kwargs):
        with lock:
            overlaps["now"] += 1
            overlaps["most"] = max(overlaps["most"], overlaps["now"])
        time.sleep(0.1)
        with lock:
            overlaps["now"] -= 1
        return answer

    return verb


def test_tool_calls_run_one_at_a_time(monkeypatch):
    """The verbs share process-wide state (torch's RNG and thread count, transformers' lazy module), so the server
    runs one call at a time, whichever tools are called."""
    import amk.harness.evaluate
    import amk.harness.loop
    from amk.harness.mcp_server import build_server

    overlaps = {"now": 0, "most": 0}
    monkeypatch.setattr(amk.harness.evaluate, "evaluate", _counting(overlaps, {"valid": True}))
    monkeypatch.setattr(amk.harness.loop, "loop", _counting(overlaps, {"statuses": {}}))
    server = build_server()

    async def together():
        calls = [server.call_tool(name, dict(TOY)) for name in ("evaluate", "loop") * 3]
        return await asyncio.gather(*calls)

    results = asyncio.run(together())
    assert not any(r.is_error for r in results), [r.content for r in results]
    assert overlaps["most"] == 1
