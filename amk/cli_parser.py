"""The `amk` command line's grammar: the argparse parser of every subcommand, its flags with their help and
defaults, and the value types that check a flag's value as it is parsed. A parse error is raised as a UsageError,
not printed by argparse, so that --json still answers with one JSON object (amk/cli.py).
"""

from __future__ import annotations

import argparse
import math
import re

from amk.harness.baselines import PEERS
from amk.harness.commands import UsageError
from amk.schedule.opcodes import DTYPE_NAMES


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


def _verified_program_opts(p) -> None:
    """evaluate's and verify's shared flags: which program, where it runs, and its verify cases."""
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    _max_seq_opt(p)
    _cases_opt(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of the verify cases' inputs (default: 0)")


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
    _verified_program_opts(p)
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
    _verified_program_opts(p)
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
