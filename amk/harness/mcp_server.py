"""`amk mcp`: propose, evaluate, loop and report as Model Context Protocol tools, served over stdio.

A coding agent that speaks MCP starts `amk mcp` as a subprocess and calls the tools; each returns the same
JSON object as the Python function of the same name (HARNESS.md), as the tool's structured result. A bad
config, whatever its JSON type, is not an error: it comes back as a verdict with `valid: false`. The other
arguments are typed: the SDK converts what it can (the string "1" for an int) and rejects the rest, a JSON true
or false for a number, and any argument name a tool does not have, before AMK sees it. A usage error (an unknown model or GPU, a bad dtype, a results file with a foreign header) is a tool
error whose text starts with `usage:`; an environment problem with `environment:`. Logs go to stderr; stdout
carries only the protocol. Each request line is read by mcp_requests before the SDK sees it: a config object with a
key given twice is refused as its JSON text is, and a line the SDK cannot read gets a JSON-RPC error, not silence.
Tool calls run one at a time, in the order they arrive: calls sent together wait their turn (_one_at_a_time says
why).

Needs the optional `mcp` extra: `pip install -e '.[mcp]'` in the checkout.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from .commands import CommandResult, ExitCode
from .mcp_arguments import JSON_TEXT_ARGUMENTS, keep_json_text, strict_arguments

try:  # at module level: the SDK reads the loop tool's annotations (strings here) in this module's namespace
    from mcp.server.mcpserver import Context
except ImportError:  # no mcp extra: build_server says so
    Context = None

log = logging.getLogger("amk.mcp")

INSTRUCTIONS = (
    "AMK searches for the fastest correct batch-1 decode megakernel of a Llama-family model. Call propose "
    "for the incumbent config and the search space, edit one knob of the config, call evaluate with it, and "
    "keep the edit only when the verdict is correct and its latency_us beats the incumbent's by more than "
    "max(1%, 2 sigma of the spreads). latency_kind says whether a latency was measured on a GPU or predicted "
    "by the cost model. loop runs that search by itself; report summarises a results file.")


# One tool call at a time in this process. The SDK runs each sync tool on a worker thread, and AMK's verbs are
# not thread-safe: their first call imports transformers, whose lazy module answers a second thread's import
# half-built (a false "cannot import name 'AutoConfig'" environment error), a model is built from torch's global
# RNG after manual_seed, and loop sets torch's process-wide thread count for its run. Importing the heavy modules
# up front would fix only the first of these.
_TOOL_LOCK = threading.Lock()

# Set when the server is to stop (SIGINT, SIGTERM, or the client's end of stdin closed): a loop running on a
# worker thread reads it between trials (should_stop), finishes the trial in flight and returns its summary, so
# that results.tsv and corpus.jsonl end whole. Signal handlers run only on the main thread, and the SDK waits for
# a running tool's thread before it exits: without it, a loop ran on to its budget after its client was gone.
_STOP = threading.Event()

# The stop event of each loop call from its arrival to its answer, by its JSON-RPC request id (as text): a client's
# cancel of the call (notifications/cancelled, seen by _CancelLoops) sets it, and the loop ends after its trial in
# flight, or starts none when it was still waiting its turn. The SDK cancels the call's scope too, but a tool's
# worker thread runs on until it returns.
_CANCELS: dict[str, threading.Event] = {}


class _CancelLoops:
    """Server middleware: a loop call's stop event lives from the call's arrival to its answer; a
    notifications/cancelled naming that call sets it."""

    async def __call__(self, ctx, call_next):
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        if ctx.method == "tools/call" and ctx.request_id is not None and params.get("name") == "loop":
            key = str(ctx.request_id)
            _CANCELS[key] = threading.Event()
            try:
                return await call_next(ctx)
            finally:
                _CANCELS.pop(key, None)
        if ctx.method == "notifications/cancelled":
            event = _CANCELS.get(str(params.get("requestId")))
            if event is not None and not event.is_set():
                log.warning("loop cancelled by the client: it finishes its trial in flight, or starts none")
                event.set()
        return await call_next(ctx)


def _request_key(ctx) -> str | None:
    """The JSON-RPC id of the call `ctx` belongs to, as text; None outside a request (a call made in process)."""
    try:
        return str(ctx.request_context.request_id) if ctx is not None else None
    except ValueError:  # the SDK's "Context is not available outside of a request"
        return None


def _one_at_a_time(tool):
    """`tool` run under _TOOL_LOCK, its imports included. functools.wraps keeps the signature and docstring the
    SDK reads for the tool's name, arguments and description. Raises what `tool` raises."""
    @functools.wraps(tool)
    def serialised(*args, **kwargs):
        with _TOOL_LOCK:
            return tool(*args, **kwargs)

    return serialised


def _call(fn, *args, **kwargs):
    """fn's answer, with AMK's own errors turned into a tool error whose text says which kind it is."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return fn(*args, **kwargs)
    except Exception as e:
        code, kind = ExitCode.of_exception(e)
        if kind == "internal":
            log.exception("tool %s failed", getattr(fn, "__name__", fn))
        raise ToolError(f"{kind}: {e}" if kind != "internal" else f"internal: {type(e).__name__}: {e}") from e


def _trial_notifier(ctx, budget: int | None):
    """A loop's `progress` callable that sends the client a notifications/progress a trial, on the call's progress
    token: progress the trials this call has run, total its budget (none without one), and the line `amk loop`
    prints for the trial as the message. None for a call made in process. The SDK sends nothing when the client
    asked for no progress (no progressToken in the call's _meta). The loop runs on the SDK's worker thread, so each
    notification is sent on the server's event loop (anyio.from_thread); one that cannot be sent (the client gone)
    is logged, and the loop goes on."""
    if ctx is None or _request_key(ctx) is None:
        return None
    import anyio.from_thread

    from amk.progress import progress_line, trial_description

    done = 0

    def notify(trial: dict) -> None:
        nonlocal done
        done += 1
        message = f"{progress_line(trial)}  {trial_description(trial)}"
        try:
            anyio.from_thread.run(ctx.report_progress, done, budget, message)
        except Exception as e:  # a progress line lost must not lose the trial's row
            log.warning("trial %s: progress not sent (%s: %s)", trial.get("trial"), type(e).__name__, e)

    return notify


# the report command's flags as the report tool's arguments
_REPORT_ARGUMENTS = {"--results": "results", "--corpus": "corpus", "--out-dir": "out_dir", "--no-plots": "plots=false"}
_REPORT_FLAG = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, _REPORT_ARGUMENTS)) + r")(?![\w-])")


def _keywords(text: str) -> str:
    """`text` with the report command's flags spelled as the tool's arguments (--out-dir -> out_dir): the report
    tool runs the CLI command, whose errors name flags an MCP client never sees. Only whole flags: a path that
    holds "--" (a--out-dir.tsv) is quoted as given."""
    return _REPORT_FLAG.sub(lambda m: _REPORT_ARGUMENTS[m.group(1)], text)


def build_server():
    """The MCPServer with AMK's four tools registered."""
    from mcp.server.mcpserver import MCPServer

    import amk
    from amk.progress import is_quiet

    server = MCPServer(name="amk", instructions=INSTRUCTIONS, version=amk.__version__,
                       log_level="WARNING" if is_quiet() else "INFO", middleware=[_CancelLoops()])

    @server.tool()
    @_one_at_a_time
    def propose(model: str, gpu: str = "auto", incumbent: Any = None,
                corpus: str | None = "corpus.jsonl", dtype: str | None = None,
                max_seq: int | None = None) -> dict[str, Any]:
        """The incumbent ScheduleConfig for `model` on `gpu` (the corpus's best kept config of `dtype` timed at the
        KV context of `max_seq`, else the defaults, or `incumbent` when given: an object or a JSON string of one;
        corpus null: no corpus is read, the defaults),
        its schedule_id, the JSON schema's
        path, and the search space: every knob with its type, bounds, default, help and the values searched on
        this GPU. dtype: fp32, fp16 or bf16 (default: bf16 for a GPU, fp32 for cpu-sim, as loop takes); max_seq:
        the KV positions the run's programs hold (default: the model's context, at most 2048, as loop takes)."""
        from amk.harness.propose import propose
        from amk.harness.verdict import parse_config
        from amk.schedule.errors import ArgumentError, ConfigError

        def fn(*args, incumbent=None, **kwargs):
            try:
                if isinstance(incumbent, str):  # JSON text, parsed as evaluate parses a config's
                    incumbent = parse_config(incumbent).to_dict()
                return propose(*args, incumbent=incumbent, **kwargs)
            except ConfigError as e:  # only the incumbent is parsed here: named as the CLI's --incumbent is
                raise ArgumentError("incumbent", e.detail) from e

        return _call(fn, model, gpu, incumbent=incumbent, corpus=corpus, dtype=dtype, max_seq=max_seq)

    @server.tool()
    @_one_at_a_time
    def evaluate(model: str, config: Any = "{}", gpu: str = "auto",
                 device: str = "auto", dtype: str | None = None, cases: str | None = None, seed: int = 0,
                 max_seq: int | None = None, corpus: str | None = "corpus.jsonl") -> dict[str, Any]:
        """One config's verdict: valid (parsed, lowered, validated), correct (every verify case against eager
        transformers), latency_us (null unless correct; latency_kind measured-gpu or predicted), the floor,
        schedule_id, program_fingerprint and notes. config: an object, or a JSON string of one; omitted: the
        defaults. A malformed config (null, a list, a number, unknown keys, wrong types) comes back valid=false
        with rejected_reason listing every problem, as from the Python function. dtype: fp32, fp16 or bf16
        (default bf16, except fp32 on the cpu-sim stand-in); cases: full or reduced."""
        from amk.harness.evaluate import evaluate as fn

        return _call(fn, model, gpu, config, device=device, cases=cases, seed=seed,
                     dtype=dtype, corpus=corpus, max_seq=max_seq)

    @server.tool()
    @_one_at_a_time
    def loop(model: str, gpu: str = "auto", budget: int | None = None, minutes: float | None = None,
             seed: int = 0, device: str = "auto", results: str = "results.tsv", corpus: str = "corpus.jsonl",
             resume: bool = False, max_reverts: int = 20, dtype: str | None = None,
             max_seq: int | None = None, ctx: Context | None = None) -> dict[str, Any]:
        """Keep/revert search from the incumbent (mutations of one or more knobs, crossovers of kept configs and
        random points, ranked by the cost model: HARNESS.md section 7), appending one row a trial to `results`
        and one tuning record a measurement, kept or not, to `corpus`; stops at `budget` trials or `minutes`, and
        with neither `budget` nor `minutes` at `max_reverts` non-keeps in a row (a bounded run moves to another
        region there and goes on). An existing non-empty results file needs resume=true. max_seq: the KV positions
        every trial's program holds (default: the model's, at most 2048). Returns the summary: incumbent, statuses,
        why it stopped."""
        from amk.harness.loop import LoopError, ResultsNotResumed
        from amk.harness.loop import loop as run

        def fn(*args, **kwargs):
            try:
                return run(*args, **kwargs)
            except ResultsNotResumed as e:  # the CLI's --resume and Python's resume=True mean nothing to a client
                raise LoopError(e.message("pass resume=true to continue it"), argument="results") from e

        cancel = _CANCELS.get(_request_key(ctx)) or threading.Event()  # none for a call made in process
        return _call(fn, model, gpu, budget=budget, minutes=minutes, seed=seed, device=device, results=results,
                     corpus=corpus, resume=resume, max_reverts=max_reverts, dtype=dtype, max_seq=max_seq,
                     should_stop=lambda: _STOP.is_set() or cancel.is_set(),
                     progress=_trial_notifier(ctx, budget))

    @server.tool()
    @_one_at_a_time
    def report(results: str = "results.tsv", corpus: str = "corpus.jsonl", out_dir: str = "report",
               plots: bool = True) -> dict[str, Any]:
        """Summary of a results file: trials per status, the best latency per model, GPU, dtype, max_seq and
        latency kind (rows of another dtype or context are never ranked together), the kept trials, what the
        corpus says about the cost model and the prior, and (plots=true) the paths of two PNG plots written
        under out_dir."""
        import argparse

        from mcp.server.mcpserver.exceptions import ToolError

        from amk.harness.cmd_report import report as fn

        args = argparse.Namespace(results=results, corpus=corpus, out_dir=out_dir, no_plots=not plots)
        try:
            return _call(fn, args).payload
        except ToolError as e:
            raise ToolError(_keywords(str(e))) from e.__cause__

    strict_arguments(server)
    keep_json_text(server)
    return server


def serve_command(args) -> CommandResult:
    """`amk mcp`: serve until the client closes stdin."""
    try:
        server = build_server()
    except ImportError as e:
        from amk.schedule.errors import EnvironmentProblem

        raise EnvironmentProblem(f"amk mcp needs the mcp package ({e}): pip install -e '.[mcp]' in AMK's checkout") from e
    log.info("serving propose, evaluate, loop and report over MCP (stdio)")
    _STOP.clear()
    previous = _stop_on_signals()
    threading.Thread(target=_stop_when_stdin_closes, name="amk-mcp-stdin-watch", daemon=True).start()
    try:
        import anyio

        from .mcp_requests import serve_stdio

        anyio.run(serve_stdio, server, JSON_TEXT_ARGUMENTS)
    except KeyboardInterrupt:
        # a loop still running ends after its trial in flight; then exit at once: the SDK's thread reading stdin
        # blocks there until the client closes it, and the interpreter would wait for that thread for ever
        with _TOOL_LOCK:
            pass
        log.error("interrupted")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(ExitCode.INTERRUPTED.value)
    finally:
        _STOP.set()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return CommandResult(ExitCode.OK, {}, None)


def _stop_on_signals() -> dict:
    """SIGINT and SIGTERM set _STOP, then stop the server as before (KeyboardInterrupt in the main thread); returns
    the handlers replaced. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        if not _STOP.is_set() and _TOOL_LOCK.locked():
            log.warning("%s: a running tool finishes its trial in flight, then the server exits",
                        signal.Signals(signum).name)
        _STOP.set()
        raise KeyboardInterrupt

    return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}


def _stop_when_stdin_closes() -> None:
    """Set _STOP once the client's end of stdin is closed (POLLHUP on a pipe or socket; never on a file or a
    terminal, where nothing is lost by waiting), without reading from it: the SDK reads the requests."""
    import select

    try:
        # a descriptor of its own: the SDK closes stdin at its end, and a file opened later may take number 0
        fd = os.dup(sys.stdin.fileno())
    except (AttributeError, ValueError, OSError):  # no stdin descriptor
        return
    try:
        poller = select.poll()
        poller.register(fd, 0)  # no events asked: only hang-ups and errors are reported
        while not _STOP.is_set():
            events = poller.poll(1000)
            if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
                _STOP.set()
                return
    except (AttributeError, OSError):  # no poll on this platform
        return
    finally:
        os.close(fd)
