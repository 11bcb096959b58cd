"""`amk mcp` stops a running loop as the CLI does: SIGTERM, or the client's end of stdin closed, ends the loop after
its trial in flight and the server exits, with results.tsv and corpus.jsonl whole; a cancel of the call ends it so
too, and the server serves on. A loop runs on the SDK's worker thread, where no signal reaches it, and the SDK waits
for that thread before it exits: the loop ran on to its budget after its client was gone."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

from amk.flywheel import read_rows
from amk.flywheel.records import load_records

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mcp") is None, reason="the mcp extra is not installed")


def _server(cwd):
    p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "amk"), "mcp"], cwd=cwd, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "loop", "arguments": {"model": "toy", "gpu": "cpu-sim", "budget": 500}}}]
    for m in lines:
        p.stdin.write(json.dumps(m) + "\n")
    p.stdin.flush()
    return p


def _rows_appear(p, cwd, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if (cwd / "results.tsv").exists() and len(read_rows(cwd / "results.tsv")) >= 2:
            return
        time.sleep(0.5)
    pytest.fail(f"no trials within {timeout} s: {p.stderr.read()[-2000:] if p.poll() is not None else ''}")


@pytest.mark.parametrize("how", ["sigterm", "stdin closed"])
def test_a_loop_over_mcp_ends_after_its_trial_in_flight_when_the_server_is_stopped(tmp_path, how):
    p = _server(tmp_path)
    try:
        _rows_appear(p, tmp_path)
        if how == "sigterm":
            p.send_signal(signal.SIGTERM)
        else:
            p.stdin.close()
        p.wait(timeout=120)  # one trial of toy takes seconds; the budget of 500 would take an hour
    finally:
        if p.poll() is None:
            p.kill()
    rows = read_rows(tmp_path / "results.tsv")
    assert 2 <= len(rows) < 100, len(rows)
    assert (tmp_path / "results.tsv").read_bytes().endswith(b"\n")
    assert len(load_records(tmp_path / "corpus.jsonl")) == len(rows)  # every row's record written


def _answer(p, request_id, timeout):
    """The server's response to `request_id`, read from its stdout (other messages skipped)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.time())):
            break
        line = p.stdout.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg.get("id") == request_id:
            return msg
    pytest.fail(f"no answer to request {request_id} within {timeout} s")


def _close(p) -> None:
    """End the server as a client does, by closing its stdin (killed after a minute)."""
    if p.poll() is None:
        p.stdin.close()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def test_a_cancelled_loop_call_ends_after_its_trial_in_flight_and_the_server_serves_on(tmp_path):
    # the SDK cancels the call's scope, but the loop's worker thread ran on to its budget (an hour here), and every
    # later call waited behind it
    p = _server(tmp_path)
    try:
        assert "result" in _answer(p, 1, 60)  # initialize
        _rows_appear(p, tmp_path)
        for m in ({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}},
                  {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                   "params": {"name": "report", "arguments": {"plots": False}}}):
            p.stdin.write(json.dumps(m) + "\n")
        p.stdin.flush()
        report = _answer(p, 3, 120)  # tools run one at a time: answered once the loop has ended
        rows = read_rows(tmp_path / "results.tsv")
        assert 2 <= len(rows) < 100, len(rows)
        assert report["result"]["structuredContent"]["trials"] == len(rows), report
        assert p.poll() is None  # the server serves on
    finally:
        _close(p)
    assert p.returncode == 0
    assert (tmp_path / "results.tsv").read_bytes().endswith(b"\n")
    assert len(load_records(tmp_path / "corpus.jsonl")) == len(rows)


def test_a_loop_call_cancelled_while_it_waits_its_turn_starts_no_trial(tmp_path):
    # its stop event was made only once the call had its turn: a cancel sent before then was lost, and the loop ran
    # its whole budget, every later call waiting behind it
    p = _server(tmp_path)
    try:
        assert "result" in _answer(p, 1, 60)
        _rows_appear(p, tmp_path)
        queued = {"model": "toy", "gpu": "cpu-sim", "budget": 10, "results": "r3.tsv", "corpus": "c3.jsonl"}
        for m in ({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "loop", "arguments": queued}},
                  {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}},
                  {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}},
                  {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                   "params": {"name": "report", "arguments": {"plots": False}}}):
            p.stdin.write(json.dumps(m) + "\n")
        p.stdin.flush()
        assert "result" in _answer(p, 4, 120)
        assert not (tmp_path / "r3.tsv").exists() or not read_rows(tmp_path / "r3.tsv")
        assert not (tmp_path / "c3.jsonl").exists() or not load_records(tmp_path / "c3.jsonl")
    finally:
        _close(p)
    assert p.returncode == 0
