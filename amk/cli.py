"""`amk`: the command line over the harness. Every subcommand prints human text on stdout, or with --json
exactly one JSON object (the only way to get JSON); logs and progress go to stderr, and -q leaves only
warnings and errors there.

Exit codes (HARNESS.md section 4): 0 ok, 1 correctness failure, 2 rejected config or usage error,
3 environment (missing CUDA, cupy, a package) or an internal error (the JSON's error_type says which),
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path

from amk import __version__
from amk.harness.baselines import PEERS
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
from amk.schedule.opcodes import DTYPE_NAMES

log = logging.getLogger("amk.cli")




class _Formatter(argparse.HelpFormatter):
    """Every flag's help ends with its default (a flag whose default is None says in words what it is)."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "%(default)" not in text and "(default: " not in text:  # some helps say it in their words
            text += " (default: %(default)s)"
        return text


class _VersionAsked(Exception):
    pass


class _Version(argparse.Action):
    """--version: answered by _main as any command is (text, or one JSON object with --json), not printed by argparse."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise _VersionAsked


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(args) if args is not None else []  # what error() can name beside a missing flag
        return super().parse_known_args(args, namespace)

    def _unknown_flags(self) -> list[str]:
        """The flags given that none of this parser's options is, nor abbreviates (a misspelt --modl, say)."""
        known = [s for s in self._option_string_actions if s.startswith("--")]
        return [a for a in getattr(self, "_given", []) if a.startswith("--") and not any(
            k.startswith(a.split("=", 1)[0]) for k in known)]

    # argparse prints usage and exits; we raise so that --json can still answer with one JSON object
    def error(self, message):
        # "argument --dtype: invalid choice ..." -> "--dtype: invalid choice ... (amk evaluate)": the flag first,
        # as every other usage error
        flag = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if flag:
            raise UsageError(f"{flag.group(1)}: {flag.group(2)} ({self.prog})")
        required = re.match(r"the following arguments are required: (.*)", message, re.S)
        if required:
            unknown = self._unknown_flags()
            also = f"; {' '.join(unknown)}: unrecognized" if unknown else ""
            raise UsageError(f"{required.group(1)}: required{also} ({self.prog})")
        one_of = re.match(r"one of the arguments (.*) is required", message, re.S)
        if one_of:
            raise UsageError(f"{' | '.join(one_of.group(1).split())}: one of them is required ({self.prog})")
        ambiguous = re.match(r"ambiguous option: (.*?) could match (.*)", message, re.S)
        if ambiguous:  # the option as typed, with any "=value" it carried
            flag = ambiguous.group(1).split("=", 1)[0]
            raise UsageError(f"{flag}: ambiguous, could be {ambiguous.group(2)} ({self.prog})")
        raise UsageError(f"{message} ({self.prog})")


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "positive")
nonnegative_int = _int_at_least(0, "non-negative")


def seed(text: str) -> int:
    from amk.harness.arguments import SEED_LIMIT  # the one bound evaluate() and loop() check too

    value = nonnegative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a seed below 2**63, got {value}")
    return value


def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of minutes, got {text}")
    return value


def token_ids(text: str) -> list[int]:
    """--prompt-ids: comma-separated non-negative token ids."""
    parts = [t.strip() for t in text.split(",")]
    bad = [t for t in parts if not t.isdigit()]  # an empty part ("1,,2") is a missing id, not a separator
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like 1,5,9, got {text!r}"
                                         + (f" ({', '.join(map(repr, bad))} is not a token id)" if bad else ""))
    return [int(t) for t in parts]


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's absent --json must not overwrite `amk --json <cmd>`
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print exactly one JSON object on stdout (the only way to get JSON)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only on stderr: no info lines, no progress bars")


def _model_gpu(p) -> None:
    p.add_argument("--model", required=True, help="built-in model name (amk models) or a checkpoint directory")
    p.add_argument("--gpu", default="auto", help="GPU target name (amk targets); auto: the live GPU, or "
                                                      "the cpu-sim stand-in on a machine without CUDA")


def _dtype_opt(p) -> None:
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="weights and activations dtype (default: bf16 on cuda and for a GPU target, which is what "
                        "a GPU runs; fp32 for the cpu-sim stand-in)")


def _run_opts(p) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where correctness runs: cuda (the GPU; measures), cpu (the ReferenceVM; predicts), auto: "
                        "cuda when usable")
    _dtype_opt(p)


def _max_seq_opt(p) -> None:
    p.add_argument("--max-seq", type=positive_int, default=None,
                   help="KV positions the program holds (default: the model's context, at most 2048; past the "
                        "context is allowed, as transformers allows it, and evaluate notes it)")


def _config_opt(p) -> None:
    p.add_argument("--config", default="{}", help="config: a JSON file, '-' for stdin, or an inline JSON object "
                                                  "({} = every knob at its default)")


def _cases_opt(p) -> None:
    p.add_argument("--cases", default=None, choices=["full", "reduced"],
                   help="verify case set (default: reduced on a CPU for models over 200M parameters, else full)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="amk", description="Search for the fastest correct batch-1 decode megakernel.")
    ap.add_argument("--json", action="store_true", default=False,
                    help="print exactly one JSON object on stdout (the only way to get JSON)")
    ap.add_argument("-q", "--quiet", action="store_true", default=False,
                    help="warnings and errors only on stderr: no info lines, no progress bars")
    ap.add_argument("--version", action=_Version, help="print AMK's version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name, help):
        p = sub.add_parser(name, help=help, description=help)
        _common(p)
        return p

    add("doctor", "versions of python, torch, CUDA, cupy, nvrtc and transformers; the GPU; the cache dir")
    add("models", "list the built-in models")
    add("targets", "list the GPU targets")
    p = add("propose", "the incumbent config, the schema path and the search space")
    _model_gpu(p)
    p.add_argument("--incumbent", default=None,
                   help="start from this config (file, '-' or inline JSON); default: the corpus's best kept config "
                        "for the model, GPU, dtype and KV context, else every knob at its default")
    p.add_argument("--corpus", default=None,
                   help="the incumbent is this corpus's best kept config for the model, GPU, dtype and KV context "
                        "(default: ./corpus.jsonl when present; a file named here must exist)")
    _dtype_opt(p)
    _max_seq_opt(p)
    p = add("evaluate", "one config's verdict: valid, correct, latency (measured or predicted), floor")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    _max_seq_opt(p)
    _cases_opt(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of the verify cases' inputs (default: 0)")
    p.add_argument("--corpus", default=None,
                   help="calibrate the cost model from this corpus when it has measured rows (default: "
                        "./corpus.jsonl when present; a file named here must exist)")
    p.add_argument("--peers", action="store_true", help="time the peers (slow) for the speed-ups")
    p = add("loop", "search: candidate rounds ranked by a cost model fitted to the tuning records, measured and "
                    "kept only on a gain beyond the noise; appends to results.tsv and corpus.jsonl")
    _model_gpu(p)
    _run_opts(p)
    p.add_argument("--config", default=None, help="start from this config (a JSON file, '-' or inline JSON; "
                                                  "default: the corpus's best kept config for the model, GPU, "
                                                  "dtype and KV context, else the defaults)")
    p.add_argument("--budget", type=positive_int, default=None,
                   help="new trials this call adds, --resume included (re-measurements of the incumbent come on top; "
                        "default: no limit)")
    p.add_argument("--minutes", type=positive_minutes, default=None, help="stop after this many minutes (default: no limit)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the search (default: 0)")
    p.add_argument("--results", default="results.tsv",
                   help="results file, one row per trial, created with its folders if absent (default: results.tsv)")
    p.add_argument("--corpus", default="corpus.jsonl",
                   help="tuning records, one per measurement, shared by every run (default: corpus.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue the results file: its latest kept trial is the incumbent and its trials are not "
                        "measured again (a missing file is started)")
    p.add_argument("--max-reverts", type=positive_int, default=20,
                   help="trials in a row without a keep: they stop a run with neither --budget nor --minutes, and "
                        "move a bounded run to another region (default: 20)")
    _cases_opt(p)
    _max_seq_opt(p)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="measuring workers, one per GPU, through Ray (the ray extra: pip install -e '.[ray]'; 1 runs without Ray)")
    p.add_argument("--ray-address", default=None,
                   help="a Ray cluster to run the workers on (default: a local Ray instance)")
    p.add_argument("--builders", type=nonnegative_int, default=None,
                   help="processes that lower, validate, price and compile the next candidates while one is "
                        "measured (default: none on the CPU path, all cores but two on CUDA)")
    p = add("verify", "run every verify case; writes verify_result.json; exit 1 on any failed case")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    _max_seq_opt(p)
    _cases_opt(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of the verify cases' inputs (default: 0)")
    p.add_argument("--out", default="verify_result.json", help="where the verify record goes")
    p = add("bench", "per-case latency and peak memory of a verified program, and the geometric-mean speed-up")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    _max_seq_opt(p)
    p.add_argument("--verify-result", default="verify_result.json",
                   help="the `amk verify` record that must hold a passing verify of this program on this device")
    p.add_argument("--verify-not-required", action="store_true",
                   help="bench without a passing verify_result.json for this program (the output says UNVERIFIED)")
    p.add_argument("--contexts", default="1,256,1024", help="comma-separated KV lengths, one bench case each")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="timed decode steps per case (GPU; default 200)")
    p.add_argument("--peers", action="store_true", help="time the peers for the speed-ups (GPU only)")
    p.add_argument("--peer", default="torch_static_cuda_graph", choices=PEERS, help="the peer the speed-up is against")
    p.add_argument("--corpus", default=None,
                   help="on a CPU, predict with the cost model calibrated from this corpus when it has measured rows, "
                        "as evaluate does (default: ./corpus.jsonl when present; a file named here must exist)")
    p = add("generate", "greedy generation through the megakernel (the ReferenceVM without a GPU)")
    p.add_argument("--model", required=True, help="built-in model name or checkpoint directory (one with a "
                                                  "tokenizer for --prompt text)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", default=None, help="prompt text (needs a model with a tokenizer)")
    prompt.add_argument("--prompt-ids", type=token_ids, default=None,
                        help="prompt as comma-separated token ids, e.g. 1,5,9")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate")
    p.add_argument("--gpu", default=None, help="GPU target name (default: the live GPU, or cpu-sim without CUDA)")
    p.add_argument("--config", default=None, help="config: file, '-' or inline JSON (default: every knob at its "
                                                  "default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the VM runs; auto: cuda when usable")
    p.add_argument("--max-seq", type=positive_int, default=None,
                   help="KV positions the program holds (default: the prompt and new tokens, rounded up to a "
                        "power of two, at least 256, and at most max_position_embeddings or the prompt and new "
                        "tokens, whichever is more)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="weights and activations dtype (default: bf16 on cuda, fp32 on the CPU)")
    p = add("report", "summarise results.tsv and the tuning records; the best config; the search as PNG")
    p.add_argument("--results", default="results.tsv", help="the results file of `amk loop`, one row per trial")
    p.add_argument("--corpus", default="corpus.jsonl", help="the tuning records, one per measurement")
    p.add_argument("--out-dir", default="report", help="where the PNG plots go")
    p.add_argument("--no-plots", action="store_true", help="draw no PNG (the summary only; needs no matplotlib)")
    p = add("compile", "lower a config; write the program JSON and a short report")
    _model_gpu(p)
    _config_opt(p)
    _dtype_opt(p)
    _max_seq_opt(p)
    p.add_argument("--out", default="program.json", help="where the program JSON goes")
    p = add("cache", "list, clear or count the cache (AMK_CACHE_DIR)")
    p.add_argument("action", choices=["ls", "clear", "stats"],
                   help="ls: every entry with its model and config; clear: delete entries; stats: entries, bytes and "
                        "the last run's hits")
    p.add_argument("--kind", default=None, choices=["kernel", "program", "reference", "baseline"],
                   help="only this kind of entry (default: every kind)")
    add("mcp", "serve propose, evaluate, loop and report to coding agents over MCP (stdio); needs the mcp extra (pip install -e '.[mcp]')")
    return ap


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
