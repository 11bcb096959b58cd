"""`amk mcp` reads each request line before the MCP SDK does (amk/harness/mcp_requests.py): a config object with a
key given twice is refused by its path, as the same config's JSON text is (the SDK alone kept the last value and
evaluated it), and a line the SDK cannot read gets a JSON-RPC error at once (the SDK alone answered nothing, and the
client waited for its own timeout). One server serves the module's calls, driven with raw JSON-RPC lines."""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
import time

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mcp") is None, reason="the mcp extra is not installed")

TOOL_TIMEOUT = 300  # the first call imports torch and transformers and builds the toy model
PROMPT = 10  # an answer the server writes without running a tool
TOY = '"model":"toy","gpu":"cpu-sim","cases":"reduced"'
TWICE = '{"pipelining_depth":1,"pipelining_depth":2}'


class _Server:
    def __init__(self, cwd):
        self.stderr_path = cwd / "stderr.txt"
        self.p = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "amk"), "-q", "mcp"], cwd=cwd,
                                  text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.stderr_path.open("w"), bufsize=1)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.p.stdout, selectors.EVENT_READ)
        self.next_id = 100

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def answer(self, request_id, timeout: float) -> dict:
        """The response to `request_id` (other messages skipped); fails after `timeout` seconds."""
        deadline = time.time() + timeout
        while self.selector.select(timeout=max(0.0, deadline - time.time())):
            line = self.p.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "id" in msg and msg["id"] == request_id:
                return msg
        pytest.fail(f"no answer to request {request_id} within {timeout} s; stderr: "
                    f"{self.stderr_path.read_text()[-2000:]}")

    def call(self, tool: str, arguments: str, timeout: float = TOOL_TIMEOUT) -> dict:
        """The response to a tools/call whose arguments are the JSON text `arguments`, sent as it is."""
        self.next_id += 1
        self.send(f'{{"jsonrpc":"2.0","id":{self.next_id},"method":"tools/call",'
                  f'"params":{{"name":"{tool}","arguments":{arguments}}}}}')
        return self.answer(self.next_id, timeout)


@pytest.fixture(scope="module")
def server(cache_dir, tmp_path_factory):  # noqa: F811 - the module's cache, set before the server starts
    s = _Server(tmp_path_factory.mktemp("mcp_raw"))
    try:
        s.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                      "clientInfo": {"name": "t", "version": "0"}}}))
        assert "result" in s.answer(1, 60)
        s.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        yield s
    finally:
        if s.p.poll() is None:
            s.p.stdin.close()
            try:
                s.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                s.p.kill()


def _verdict(msg: dict) -> dict:
    result = msg["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]


def _tool_error(msg: dict) -> str:
    result = msg["result"]
    assert result.get("isError"), result
    return result["content"][0]["text"]


@pytest.mark.parametrize("config, says", [
    (TWICE, "schema: $.pipelining_depth: given twice in one JSON object (values 1 and 2)"),
    ('{"pipelining_depth":' + "9" * 5000 + "}", "schema: $.pipelining_depth: "),  # past the SDK's reader
])
def test_a_config_object_is_refused_as_its_text_is(server, config, says):
    as_object = _verdict(server.call("evaluate", f'{{{TOY},"config":{config}}}'))
    as_text = _verdict(server.call("evaluate", json.dumps({"model": "toy", "gpu": "cpu-sim", "cases": "reduced",
                                                           "config": config})))
    assert as_object["valid"] is False and as_object["rejected_reason"].startswith(says), as_object
    assert {**as_object, "seconds": None} == {**as_text, "seconds": None}


def test_a_key_given_twice_deep_in_a_config_object_is_refused_by_its_path(server):
    verdict = _verdict(server.call("evaluate", f'{{{TOY},"config":{{"matvec":{{"o":{{"k_splits":2,"k_splits":1}}}}}}}}'))
    assert verdict["valid"] is False
    assert "$.matvec.o.k_splits: given twice" in verdict["rejected_reason"]


def test_an_incumbent_object_with_a_key_given_twice_is_refused_as_its_text_is(server):
    as_object = _tool_error(server.call("propose", f'{{"model":"toy","gpu":"cpu-sim","incumbent":{TWICE}}}'))
    as_text = _tool_error(server.call("propose", json.dumps({"model": "toy", "gpu": "cpu-sim", "incumbent": TWICE})))
    assert "incumbent: $.pipelining_depth: given twice in one JSON object" in as_object
    assert as_object == as_text


@pytest.mark.parametrize("arguments, says", [
    (f'{{{TOY},"config":{{"pipelining_depth":1 /* one */}}}}', "expected `,` or `}`"),
    (f'{{{TOY},"config":{{"pipelining_depth":1,}}}}', "trailing comma"),
    (f'{{{TOY},"seed":{"9" * 5000}}}', "number out of range"),
])
def test_a_line_the_server_cannot_read_is_answered_at_once_and_the_server_serves_on(server, arguments, says):
    msg = server.call("evaluate", arguments, timeout=PROMPT)
    assert msg["error"]["code"] == -32700 and says in msg["error"]["message"], msg
    assert f"answered request {server.next_id} with JSON-RPC error -32700" in server.stderr_path.read_text()
    assert _verdict(server.call("evaluate", f'{{{TOY},"config":{{"pipelining_depth":2}}}}'))["valid"] is True


def test_a_key_given_twice_elsewhere_in_a_request_is_refused_by_name(server):
    msg = server.call("evaluate", '{"model":"toy","model":"toy-2L","gpu":"cpu-sim"}', timeout=PROMPT)
    assert msg["error"]["code"] == -32602 and "argument model: given twice" in msg["error"]["message"], msg
    server.send('{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call"}')
    msg = server.answer(7, PROMPT)
    assert msg["error"]["code"] == -32600 and "$.method: given twice" in msg["error"]["message"], msg
    server.send('[1, 2]')
    assert server.answer(None, PROMPT)["error"]["code"] == -32600
    server.send('{"jsonrpc":"2.0","id":8,"method":"tools/list"}')
    assert "tools" in server.answer(8, PROMPT)["result"]


def test_the_line_reader_alone():
    from amk.harness.mcp_requests import RequestRefused, check_line

    text_arguments = {"evaluate": frozenset({"config"})}
    call = '{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"evaluate","arguments":%s}}'
    line = check_line(call % '{"model":"toy","config":{"x":[{"k":1,"k":2}],"x":3}}', text_arguments)
    assert json.loads(line)["params"]["arguments"] == {"model": "toy", "config": '{"x": [{"k": 1, "k": 2}], "x": 3}'}
    plain = call % '{"model":"toy","config":{"k":1}}'
    assert check_line(plain, text_arguments) == plain  # nothing given twice: the line as sent
    assert check_line("\n", text_arguments) == "\n"
    huge = "9" * 5000
    line = check_line(call % f'{{"model":"toy","config":{{"a":{{"b":-{huge}}}}}}}', text_arguments)
    assert json.loads(line)["params"]["arguments"]["config"] == f'{{"a": {{"b": -{huge}}}}}'  # AMK's reader names it
    notification = '{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"requestId":2}}'
    assert check_line(notification, text_arguments) == notification  # no one to answer
    for sent, code, request_id in ((call % '{"config":{"k":1,}}', -32700, "a"),
                                   ('{"method":"x","params":{"a":1,},"id":3}', -32700, None),  # no id before
                                   (call % f'{{"model":"toy","seed":{huge}}}', -32700, "a"),
                                   ('{"jsonrpc":"2.0","id":4,"method":"x","params":3}', -32600, 4),
                                   (call % '{"model":"toy","other":{"k":1,"k":2}}', -32602, "a")):
        with pytest.raises(RequestRefused) as e:
            check_line(sent, text_arguments)
        assert (e.value.code, e.value.request_id) == (code, request_id), e.value.message


def test_a_request_nested_too_deeply_or_with_no_usable_id_is_answered():
    # the SDK dropped both without a word (a traceback on stderr for the first): the client waited for ever
    from amk.harness.mcp_requests import RequestRefused, check_line

    text_arguments = {"evaluate": frozenset({"config"})}
    call = '{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"evaluate","arguments":%s}}'
    for depth in (340, 600, 5000):
        deep = '{"a":' * depth + "1" + "}" * depth
        with pytest.raises(RequestRefused) as e:
            check_line(call % f'{{"model":"toy","config":{{"k":{deep}}}}}', text_arguments)
        assert e.value.code in (-32600, -32700) and e.value.request_id == "a", e.value.message
        assert "nested too deeply" in e.value.message or "recursion" in e.value.message.lower(), e.value.message
    for bad in ("1.5", "null", "true", "[1]", "{}"):
        with pytest.raises(RequestRefused) as e:
            check_line(f'{{"jsonrpc":"2.0","id":{bad},"method":"tools/list"}}', text_arguments)
        assert e.value.code == -32600 and "id: expected a string or an integer" in e.value.message
        assert e.value.request_id is None
    ok = '{"jsonrpc":"2.0","id":0,"method":"tools/list"}'
    assert check_line(ok, text_arguments) == ok


@pytest.mark.parametrize("arguments, kind", [
    (json.dumps(json.dumps({"model": "toy", "gpu": "cpu-sim"})), "a string (send the arguments as a JSON object"),
    ('[1, 2]', "an array [1, 2]"),
    ("7", "a number 7"),
])
def test_arguments_that_are_no_object_are_refused_naming_the_member(server, arguments, kind):
    # the SDK answered -32602 with neither the member nor the reason
    msg = server.call("evaluate", arguments, timeout=PROMPT)
    assert msg["error"]["code"] == -32602, msg
    assert msg["error"]["message"].startswith("Invalid params: params.arguments: expected an object of the tool's "
                                              f"arguments, got {kind}"), msg
    assert msg["error"]["data"] == {"path": "params.arguments"}
    assert _verdict(server.call("evaluate", f'{{{TOY},"config":{{"pipelining_depth":2}}}}'))["valid"] is True
