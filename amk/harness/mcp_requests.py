"""Each line a client sends `amk mcp` is read here before the MCP SDK's stdio transport sees it.

The SDK's reader answers nothing at all to a line it cannot read (the client waits for its own timeout, and nothing
is logged), and it keeps the last value of a key given twice in one JSON object, where AMK's config reader refuses
the key by its path: which value was meant is not known. So every line is read here first, and:

- evaluate's `config` or propose's `incumbent` given as an object (any JSON but a string) that holds a key given
  twice, or what the SDK's reader cannot take (an integer of more than 4300 digits, nesting past its depth limit),
  is handed on as its JSON text, as received: AMK's own reader then refuses it with the verdict (or tool error) and
  the `$.path` that the same text gives through the CLI or from Python;
- a line that is refused is answered with a JSON-RPC 2.0 error, written by the SDK's own writer (one whole line at a
  time), logged as one line on stderr, and not handed to the SDK:

  -32700 Parse error: no JSON the SDK's reader takes (a comment, a trailing comma; outside those two arguments an
         integer of more than 4300 digits, or nesting past its depth limit). The id is the request's when it comes before the part that does
         not parse (as clients write it: jsonrpc, id, method, params), else null, as JSON-RPC says.
  -32600 Invalid Request: JSON, but no JSON-RPC message (a list, a number, params that are no object), or a key
         given twice in the request's own members (`method`, `id`, `params`).
  -32602 Invalid params: a key given twice anywhere else in a request's params (a tool's name, an argument name,
         inside an argument AMK does not read as JSON text), named by argument and path.

A key given twice outside tool arguments is refused too, not passed on: which tool or argument was meant is as
unknown as which config value, and a refusal costs the client one round trip where a guess could run the wrong
call. A notification or a response cannot be answered: one with a key given twice is passed on (its last value, as
before) and logged; one the SDK cannot read is dropped, as the SDK drops it, and logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping

log = logging.getLogger("amk.mcp")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

Path = tuple[str | int, ...]


class RequestRefused(Exception):
    """A line answered with a JSON-RPC error instead of being handed to the SDK."""

    def __init__(self, code: int, message: str, request_id: int | str | None = None, data: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.request_id, self.data = code, message, request_id, data


class _Object(dict):
    """A JSON object that keeps its pairs as given (the dict keeps the last value of a key)."""

    pairs: list[tuple[str, object]]

    @classmethod
    def of(cls, pairs: list[tuple[str, object]]) -> _Object:
        out = cls(pairs)
        out.pairs = pairs
        return out


class _Digits:
    """A JSON integer past Python's 4300-digit conversion limit, kept as its text (no int, so that json.dumps
    refuses it: only _text writes it)."""

    def __init__(self, text: str):
        self.text = text


def _integer(text: str) -> int | _Digits:
    return int(text) if len(text.lstrip("-")) <= 4300 else _Digits(text)


def _given_twice(value, at: Path = ()) -> Iterator[tuple[Path, object, object]]:
    """(path, first value, second value) of every key given twice in a parsed JSON value, outermost first."""
    if isinstance(value, _Object):
        seen: dict[str, object] = {}
        for k, v in value.pairs:
            if k in seen:
                yield (*at, k), seen[k], v
            seen.setdefault(k, v)
        for k, v in value.items():
            yield from _given_twice(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _given_twice(v, (*at, i))


def _path(at: Path) -> str:
    """`at` spelt as AMK's config errors spell a path: $.matvec.o.k_splits, $.sm.explicit_map.qkv[0]."""
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in at)


def _text(value) -> str:
    """The JSON text of a parsed value with every pair as given, a key given twice included."""
    if isinstance(value, _Object):
        return "{" + ", ".join(f"{json.dumps(k)}: {_text(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_text, value)) + "]"
    return value.text if isinstance(value, _Digits) else json.dumps(value)


def _shown(value) -> str:
    text = _text(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_kind(value) -> str:
    """`value`'s JSON type in words: a string, a number, an array, true or false."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string (send the arguments as a JSON object, not as its text)"
    return "an array" if isinstance(value, list) else "a number" if isinstance(value, (int, float, _Digits)) \
        else "a value"


def _request_id(value) -> int | str | None:
    """A JSON-RPC id as the SDK takes one (an integer or a string), else None."""
    return value if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)) else None


_SPACE = re.compile(r"[ \t\n\r]*")


def _leading_id(line: str) -> int | str | None:
    """The id of a request that does not parse, when its top-level members before the part that does not parse
    include it; else None."""
    decoder = json.JSONDecoder()
    at = _SPACE.match(line).end()
    if not line.startswith("{", at):
        return None
    at += 1
    try:
        while True:
            at = _SPACE.match(line, at).end()
            if not line.startswith('"', at):
                return None
            key, at = json.decoder.scanstring(line, at + 1)
            at = _SPACE.match(line, at).end()
            if not line.startswith(":", at):
                return None
            value, at = decoder.raw_decode(line, _SPACE.match(line, at + 1).end())
            if key == "id":
                return _request_id(value)
            at = _SPACE.match(line, at).end()
            if not line.startswith(",", at):
                return None
            at += 1
    except (ValueError, RecursionError):  # the member that does not parse, before any id
        return None


def _unreadable(line: str, error, message) -> RequestRefused | None:
    """The refusal of a line the SDK's reader rejects (`error`, its pydantic ValidationError; `message`, the line as
    Python read it, or None), or None for a notification or response, which has no one to answer."""
    details = error.errors(include_url=False)
    if any(d["type"] == "json_invalid" for d in details):
        reason = next(d for d in details if d["type"] == "json_invalid").get("ctx", {}).get("error", "not JSON")
        return RequestRefused(PARSE_ERROR, f"Parse error: {reason}", _leading_id(line))
    if isinstance(message, Mapping) and ("method" not in message or "id" not in message):
        return None
    first = next((d for d in details if d["loc"][:1] == ("JSONRPCRequest",)), details[0])
    where = ".".join(map(str, first["loc"][1:])) or "the message"
    return RequestRefused(INVALID_REQUEST, f"Invalid Request: {where}: {first['msg']}",
                          _request_id(message.get("id")) if isinstance(message, Mapping) else None)


def _refusal(at: Path, first, second, request_id, in_arguments: bool) -> RequestRefused:
    """The refusal of a request that gives the key at `at` twice (values `first`, then `second`); `in_arguments`:
    the request is a tools/call, whose params.arguments hold the tool's arguments."""
    told = (f"given twice in one JSON object (values {_shown(first)} and {_shown(second)}): which one was meant is "
            f"not known")
    if len(at) == 1:  # the request's own members
        return RequestRefused(INVALID_REQUEST, f"Invalid Request: {_path(at)}: {told}", request_id, {"path": _path(at)})
    if in_arguments and len(at) > 2 and at[:2] == ("params", "arguments"):
        name, inside = at[2], _path(at[3:])
        if len(at) == 3:
            return RequestRefused(INVALID_PARAMS, f"Invalid params: argument {name}: {told}", request_id,
                                  {"argument": name})
        return RequestRefused(INVALID_PARAMS, f"Invalid params: argument {name}: {inside}: {told}", request_id,
                              {"argument": name, "path": inside})
    return RequestRefused(INVALID_PARAMS, f"Invalid params: {_path(at)}: {told}", request_id, {"path": _path(at)})


def _sdk_error(line: str):
    """Why the SDK's reader rejects `line` (its pydantic ValidationError), or None when it reads it."""
    from mcp_types import jsonrpc_message_adapter
    from pydantic import ValidationError

    try:
        jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as e:
        return e
    return None


def _parsed(line: str):
    """`line` as Python's json reads it, pairs kept and integers of any length (_Digits past Python's limit), or
    None where it reads no JSON either."""
    try:
        return json.loads(line, object_pairs_hook=_Object.of, parse_int=_integer)
    except (ValueError, RecursionError):
        return None


def _with_json_text(message: dict, names: frozenset[str]) -> str | None:
    """The request line with its arguments `names` that are no string given as their JSON text, as received; None
    when that line is still none the SDK's reader takes (an integer too long for it outside those arguments)."""
    arguments = message["params"]["arguments"]
    for name in names & arguments.keys():
        if not isinstance(arguments[name], str):
            arguments[name] = _text(arguments[name])
    try:
        line = json.dumps(message) + "\n"
    except TypeError:  # a _Digits outside them
        return None
    return line if _sdk_error(line) is None else None


def check_line(line: str, json_text_arguments: Mapping[str, frozenset[str]]) -> str | None:
    """_check_line, with a request nested too deeply for Python's readers refused, where it went unanswered."""
    try:
        return _check_line(line, json_text_arguments)
    except RecursionError:
        raise RequestRefused(INVALID_REQUEST, "Invalid Request: JSON nested too deeply for this server to read",
                             _leading_id(line)) from None


def _check_line(line: str, json_text_arguments: Mapping[str, frozenset[str]]) -> str | None:
    """The line to hand the SDK, or None for a line to drop. A tools/call whose arguments named for its tool in
    `json_text_arguments` (tool name -> argument names) hold a key given twice, or something the SDK's reader
    cannot take (an integer too long, nesting too deep), gets those arguments as their JSON text, for AMK's reader
    to refuse by path as it refuses that text; any other line is handed on as sent. Raises RequestRefused for a
    line to answer with a JSON-RPC error."""
    if not line.strip():  # no message: the SDK skips it too
        return line
    error, message = _sdk_error(line), _parsed(line)
    twice = list(_given_twice(message))
    if isinstance(message, dict) and "method" in message and "id" in message:
        request_id = None if any(at == ("id",) for at, _, _ in twice) else _request_id(message["id"])
        if request_id is None and not any(at == ("id",) for at, _, _ in twice):
            # the SDK drops such a request without a word: its client would wait for ever
            raise RequestRefused(INVALID_REQUEST, f"Invalid Request: id: expected a string or an integer, got "
                                                  f"{_shown(message['id'])}")
        params = message.get("params")
        tool = params.get("name") if message["method"] == "tools/call" and isinstance(params, dict) else None
        if tool is not None and params.get("arguments") is not None and not isinstance(params["arguments"], dict):
            # the SDK answers -32602 with neither the member nor the reason: a client that sent the arguments as
            # their JSON text could not tell what to change
            raise RequestRefused(INVALID_PARAMS, f"Invalid params: params.arguments: expected an object of the tool's "
                                                 f"arguments, got {_json_kind(params['arguments'])} "
                                                 f"{_shown(params['arguments'])}", request_id,
                                 {"path": "params.arguments"})
        as_text = json_text_arguments.get(tool, frozenset()) if isinstance(tool, str) else frozenset()
        for at, first, second in twice:
            if not (len(at) > 3 and at[:2] == ("params", "arguments") and at[2] in as_text):
                raise _refusal(at, first, second, request_id, in_arguments=tool is not None)
        if as_text and isinstance(params.get("arguments"), dict) and (twice or error is not None):
            rewritten = _with_json_text(message, as_text)
            if rewritten is not None:
                return rewritten
    elif twice and error is None:
        log.warning("a notification or response gives %s twice: its last value is taken", _path(twice[0][0]))
    if error is not None:
        refusal = _unreadable(line, error, message)
        if refusal is None:
            log.warning("dropped a notification or response the MCP SDK cannot read: %s", error.errors()[0]["msg"])
            return None
        raise refusal
    return line


class CheckedLines:
    """The client's lines as the SDK's stdio transport reads them (an async iterable of str), each through
    check_line first; a refused one is answered on the transport's write stream (answer_with) instead."""

    def __init__(self, lines: AsyncIterable[str], json_text_arguments: Mapping[str, frozenset[str]]):
        import anyio

        self._lines, self._json_text_arguments = lines, json_text_arguments
        self._writer = None
        self._writer_set = anyio.Event()

    def answer_with(self, write_stream) -> None:
        """Answer refused lines on `write_stream`, the SDK's: its one writer task writes each message whole."""
        self._writer = write_stream
        self._writer_set.set()

    async def __aiter__(self) -> AsyncIterator[str]:
        from mcp.shared.message import SessionMessage
        from mcp_types import ErrorData, JSONRPCError

        async for line in self._lines:
            try:
                checked = check_line(line, self._json_text_arguments)
            except RequestRefused as e:
                log.warning("answered request %s with JSON-RPC error %d: %s", json.dumps(e.request_id), e.code,
                            e.message)
                error = ErrorData(code=e.code, message=e.message, **({"data": e.data} if e.data else {}))
                await self._writer_set.wait()  # the reader may start before the transport hands out its writer
                await self._writer.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=e.request_id, error=error)))
                continue
            except Exception:  # a fault of this check must not end the connection: the SDK reads the line as before
                log.exception("could not check a request line; it is passed on unchecked")
                checked = line
            if checked is not None:
                yield checked


async def serve_stdio(server, json_text_arguments: Mapping[str, frozenset[str]]) -> None:
    """`server.run("stdio")` (MCPServer.run_stdio_async) with its stdin read through CheckedLines. stdin is
    claimed as the SDK claims it (fd 0 points at the null device while serving, so that no tool or child process
    reads the client's bytes), with the SDK's own functions: they are private, so a change there fails here, at
    the server's start."""
    import anyio
    from mcp.server import stdio

    wire, release = stdio._claim_fd(0, sys.stdin, "rb", stdio._open_stdin_diversion)
    try:
        lines = CheckedLines(anyio.wrap_file(stdio._UnownedTextWrapper(wire, encoding="utf-8", errors="replace")),
                             json_text_arguments)
        async with stdio.stdio_server(stdin=lines) as (read_stream, write_stream):
            lines.answer_with(write_stream)
            lowlevel = server._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        if release is not None:
            release()
