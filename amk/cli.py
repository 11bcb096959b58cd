"""`amk`: the command line over the harness. Every subcommand prints human text on stdout, or with --json
exactly one JSON object (the only way to get JSON); logs and progress go to stderr, and -q leaves only
warnings and errors there.

Exit codes (HARNESS.md section 4): 0 ok, 1 correctness failure, 2 rejected config or usage error,
3 environment (missing CUDA, cupy, a package) or an internal error (the JSON's error_type says which),
130 interrupted (Ctrl-C).

The flags each command takes are amk/cli_parser.py's; this module runs the command they name and writes its one
answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from amk import __version__
from amk.cli_parser import _VersionAsked, build_parser
from amk.harness.commands import COMMANDS, CommandResult, ExitCode, UsageError
from amk.harness.verdict import jsonable
from amk.schedule.errors import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    ContextError,
    UnknownModelError,
    UnknownTargetError,
    UnsupportedModelError,
)

log = logging.getLogger("amk.cli")


DEFAULT_CORPUS = "corpus.jsonl"
# commands that only read the tuning records, and say nothing of a corpus that is not there (report notes it)
READS_CORPUS = frozenset({"propose", "evaluate", "bench"})


def _resolve_corpus(args) -> None:
    """--corpus of a command that only reads it: unset, ./corpus.jsonl where present (else none); named, a file
    that exists, else a UsageError. A misspelt path read as "no records yet" would start propose from the defaults
    and calibrate evaluate's cost model from nothing, with no word of why."""
    if getattr(args, "command", None) not in READS_CORPUS:
        return
    if args.corpus is None:  # absent, no corpus at all: the verdict's notes then speak of none
        args.corpus = DEFAULT_CORPUS if Path(DEFAULT_CORPUS).exists() else None
        return
    if not str(args.corpus).strip():  # an empty one: check_corpus's
        return
    from amk.harness.arguments import check_path_name

    check_path_name("corpus", args.corpus)  # a NUL byte, a name too long, ~ of an unknown user
    if not Path(args.corpus).expanduser().exists():
        raise UsageError(f"--corpus {args.corpus!r}: no such file (leave --corpus out to read ./{DEFAULT_CORPUS} "
                         "when present)")


def _check_paths(args) -> None:
    """UsageError when --results and --corpus name one file: a results row and a tuning record would
    interleave in it, and every later read of either would skip the other's lines."""
    from amk.harness.arguments import same_file

    results, corpus = getattr(args, "results", None), getattr(args, "corpus", None)
    if results and corpus and same_file(results, corpus):
        raise UsageError(f"--results and --corpus name the same file ({results!r}): give each its own")


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each record (a caller or a test may swap it between commands)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    from amk import progress

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("amk: %(message)s"))
    root = logging.getLogger("amk")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    progress.set_quiet(quiet)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run one `amk` command line; returns its exit code (HARNESS.md section 4)."""
    # SIGTERM (timeout, docker stop, a job scheduler) ends any command as Ctrl-C does: exit 130 with its answer
    # (`loop` installs its own handler, which finishes the trial in flight first)
    previous = (signal.signal(signal.SIGTERM, _interrupt)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _flags_of(e: Exception, args: argparse.Namespace | None) -> str | None:
    """The command-line flag(s) a usage error raised below the CLI is about, where the error names an API
    argument (the library's errors speak of `max_seq=`, the user typed `--max-seq`). None when no flag of
    this command is to blame."""
    if args is None:
        return None
    # a model field AMK does not lower, or a checkpoint directory that cannot be loaded as it is: --model's
    if isinstance(e, (UnknownModelError, UnsupportedModelError, CheckpointError)):
        names = ["model"]
    elif isinstance(e, UnknownTargetError):
        names = ["gpu"]
    elif isinstance(e, ArgumentError):  # the API's prompt is text or ids; the CLI has a flag for each
        names = ["prompt_ids" if e.argument == "prompt" and getattr(args, "prompt_ids", None) else e.argument]
    elif isinstance(e, ContextError) and e.needed is not None:
        names = ["max_new_tokens", "max_seq"]
    elif getattr(e, "argument", None):  # LoopError; loop()'s incumbent= is `loop --config`
        names = ["config" if e.argument == "incumbent" and "incumbent" not in vars(args) else e.argument]
    elif isinstance(e, OSError) and e.filename is not None:  # a path the system refused: the flag that named it
        where = os.path.abspath(str(e.filename))
        names = [k for k, v in vars(args).items() if isinstance(v, str) and v
                 and os.path.abspath(os.path.expanduser(v)) == where]
    else:
        return None
    flags = ["--" + n.replace("_", "-") for n in names if n in vars(args)]
    return ", ".join(flags) or None


def _usage_message(e: Exception, args: argparse.Namespace | None) -> str:
    """str(e), led by the flag(s) it is about (HARNESS section 4: a usage error names its field)."""
    flags, msg = _flags_of(e, args), str(e)
    if flags is None:
        return msg
    if isinstance(e, (ArgumentError, ConfigError)) and e.argument:
        msg = msg.removeprefix(f"{e.argument}: ")
    return f"{flags}: {msg}"


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    stdout = sys.stdout
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        want_json = want_json or bool(getattr(args, "json", False))  # --json abbreviated, beside a bad argument
        if extra:  # named here, where the subcommand is known (argparse's own message names only `amk`)
            where = " ".join(str(w) for w in (parser.prog, getattr(args, "command", None),
                                                getattr(args, "action", None)) if isinstance(w, str))
            raise UsageError(f"{' '.join(extra)}: unrecognized argument{'s' if len(extra) > 1 else ''} ({where})")
        _resolve_corpus(args)
        _check_paths(args)
        want_json = bool(getattr(args, "json", False))
        _setup_logging(bool(getattr(args, "quiet", False)))
        if args.command == "mcp":  # the MCP stdio transport owns stdout
            return int(COMMANDS["mcp"](args).code)
        # anything a library prints goes to stderr, so stdout holds only our one answer
        with contextlib.redirect_stdout(sys.stderr):
            result = COMMANDS[args.command](args)
    except _VersionAsked:
        others = [a for a in argv if a not in ("--version", "--json", "-q", "--quiet")]
        if others:  # answered only alone: a flag beside it would otherwise be dropped unread
            msg = f"{' '.join(others)}: not taken beside --version (amk)"
            result = CommandResult(ExitCode.USAGE, {"error": msg, "error_type": "usage"}, msg)
        else:
            result = CommandResult(ExitCode.OK, {"version": __version__}, f"amk {__version__}")
    except UsageError as e:
        result = CommandResult(ExitCode.USAGE, {"error": str(e), "error_type": "usage"}, str(e))
    except KeyboardInterrupt:
        result = CommandResult(ExitCode.INTERRUPTED, {"error": "interrupted", "error_type": "interrupted"},
                               "interrupted")
    except Exception as e:
        code, kind = ExitCode.of_exception(e)
        log.debug("%s", traceback.format_exc())
        msg = f"{type(e).__name__}: {e}" if kind == "internal" else _usage_message(e, args)
        result = CommandResult(code, {"error": msg, "error_type": kind}, msg)
        if kind == "internal":
            traceback.print_exc(file=sys.stderr)
    if want_json:
        failure = {}
        if result.code == ExitCode.INTERRUPTED and "error_type" not in result.payload:  # a loop's summary
            failure = {"error": "interrupted", "error_type": "interrupted"}
        payload = jsonable({"ok": result.code == ExitCode.OK, "exit_code": int(result.code), **result.payload,
                            **failure})
        if not _written(stdout, json.dumps(payload, default=str, allow_nan=False) + "\n"):
            return int(ExitCode.ENVIRONMENT)
    elif result.text:
        stream = sys.stderr if "error_type" in result.payload else stdout
        prefix = "amk: error: " if "error_type" in result.payload and result.code != ExitCode.INCORRECT else ""
        if not _written(stream, prefix + result.text.rstrip("\n") + "\n"):
            return int(ExitCode.ENVIRONMENT)
    return int(result.code)


def _written(stream, text: str) -> bool:
    """Write and flush `text`; False, with one line on stderr, when the stream is closed or its reader gone (`>&-`,
    a pipe into `head`): the answer was not delivered, which is no correctness failure (exit 1)."""
    try:
        if stream is None:
            raise OSError("closed")
        stream.write(text)
        stream.flush()
        return True
    except (OSError, ValueError) as e:  # ValueError: a closed file object
        try:
            sys.stderr.write(f"amk: error: the answer could not be written to {getattr(stream, 'name', 'stdout')} "
                             f"({type(e).__name__}: {e})\n")
        except (OSError, ValueError, AttributeError):
            pass
        return False


if __name__ == "__main__":
    sys.exit(main())
