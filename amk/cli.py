"""`amk`: the command line over the harness. Every subcommand takes --json, which prints exactly one JSON
object on stdout (everything else, logs and progress included, goes to stderr).

Exit codes: 0 ok, 1 correctness failure, 2 rejected config or usage error, 3 environment (missing CUDA,
cupy, a package, amk.generate) or an internal error (the JSON's error_type says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback

from amk.harness.commands import COMMANDS, CommandResult, ExitCode, UsageError
from amk.harness.verdict import jsonable

log = logging.getLogger("amk.cli")


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and exits; we raise so that --json can still answer with one JSON object
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's absent --json must not overwrite `amk --json <cmd>`
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print exactly one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only on stderr")


def _model_gpu(p, gpu_default: str | None = "auto") -> None:
    p.add_argument("--model", required=True, help="built-in model name (amk models) or a checkpoint directory")
    p.add_argument("--gpu", default=gpu_default, help="GPU target name (amk targets); auto: the live GPU, or "
                                                      "the cpu-sim stand-in on a machine without CUDA")


def _run_opts(p) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on cuda, fp32 on cpu)")


def _config_opt(p) -> None:
    p.add_argument("--config", default="{}", help="config: a JSON file, '-' for stdin, or an inline JSON object "
                                                  "(default: {} = every knob at its default)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="amk", description="Search for the fastest correct batch-1 decode megakernel.")
    ap.add_argument("--json", action="store_true", default=False, help="print exactly one JSON object on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", default=False, help="warnings only on stderr")
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
    p.add_argument("--incumbent", default=None, help="start from this config (file, '-' or inline JSON)")
    p.add_argument("--corpus", default="corpus.jsonl")
    p = add("evaluate", "one config's verdict: valid, correct, latency (measured or predicted), floor")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    p.add_argument("--cases", default=None, choices=["full", "reduced"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default="corpus.jsonl",
                   help="calibrate the cost model from this corpus when it has measured rows (ignored if absent)")
    p.add_argument("--peers", action="store_true", help="time the peers (slow) for the speed-ups")
    p = add("loop", "search: candidate rounds ranked by a cost model fitted to the tuning records, measured and "
                    "kept only on a gain beyond the noise; appends to results.tsv and corpus.jsonl")
    _model_gpu(p)
    _run_opts(p)
    p.add_argument("--config", default=None, help="start from this config (a JSON file, '-' or inline JSON; "
                                                  "default: the corpus's best kept config, else the defaults)")
    p.add_argument("--budget", type=int, default=None,
                   help="new trials this call adds, --resume included (re-measurements of the incumbent come on top; "
                        "default: no limit)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this many minutes (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the search (default: 0)")
    p.add_argument("--results", default="results.tsv", help="results file, one row per trial (default: results.tsv)")
    p.add_argument("--corpus", default="corpus.jsonl",
                   help="tuning records, one per measurement, shared by every run (default: corpus.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue an existing results file")
    p.add_argument("--max-reverts", type=int, default=20,
                   help="trials in a row without a keep: they stop a run with neither --budget nor --minutes, and "
                        "move a bounded run to another region (default: 20)")
    p.add_argument("--cases", default=None, choices=["full", "reduced"])
    p.add_argument("--workers", type=int, default=1,
                   help="measuring workers, one per GPU, through Ray (pip install 'amk[ray]'); default: 1, no Ray")
    p.add_argument("--ray-address", default=None,
                   help="a Ray cluster to run the workers on (default: a local Ray instance)")
    p.add_argument("--builders", type=int, default=None,
                   help="processes that lower, validate, price and compile the next candidates while one is "
                        "measured (default: none on the CPU path, all cores but two on CUDA)")
    p = add("verify", "run every verify case; writes verify_result.json; exit 1 on any failed case")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    p.add_argument("--cases", default=None, choices=["full", "reduced"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="verify_result.json")
    p = add("bench", "per-case latency and peak memory of a verified program, and the geometric-mean speed-up")
    _model_gpu(p)
    _config_opt(p)
    _run_opts(p)
    p.add_argument("--verify-result", default="verify_result.json")
    p.add_argument("--verify-not-required", action="store_true",
                   help="bench without a passing verify_result.json for this program (the output says so)")
    p.add_argument("--contexts", default="1,256,1024", help="comma-separated KV lengths, one bench case each")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--peers", action="store_true", help="time the peers for the speed-ups (GPU only)")
    p.add_argument("--peer", default="torch_static_cuda_graph", help="the peer the speed-up is against")
    p = add("generate", "greedy generation through the megakernel (amk.generate)")
    p.add_argument("--model", default=None, help="model name (one with a tokenizer for --prompt text)")
    p.add_argument("--prompt", default=None, help="prompt text")
    p.add_argument("--prompt-ids", default=None, help="prompt as comma-separated token ids")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--gpu", default=None)
    p.add_argument("--config", default=None, help="config: file, '-' or inline JSON (default: the defaults)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p = add("report", "summarise results.tsv and the tuning records; the best config; the search as PNG")
    p.add_argument("--results", default="results.tsv")
    p.add_argument("--corpus", default="corpus.jsonl")
    p.add_argument("--out-dir", default="report", help="where the PNG plots go")
    p.add_argument("--no-plots", action="store_true")
    p = add("compile", "lower a config; write the program JSON and a short report")
    _model_gpu(p, "cpu-sim")
    _config_opt(p)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", default="program.json")
    p = add("cache", "list, clear or count the cache (AMK_CACHE_DIR)")
    p.add_argument("action", choices=["ls", "clear", "stats"])
    p.add_argument("--kind", default=None, choices=["kernel", "program", "reference", "baseline"])
    return ap


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("amk: %(message)s"))
    root = logging.getLogger("amk")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    stdout = sys.stdout
    try:
        args = build_parser().parse_args(argv)
        want_json = bool(getattr(args, "json", False))
        _setup_logging(bool(getattr(args, "quiet", False)))
        # anything a library prints goes to stderr, so stdout holds only our one answer
        with contextlib.redirect_stdout(sys.stderr):
            result = COMMANDS[args.command](args)
    except UsageError as e:
        result = CommandResult(ExitCode.USAGE, {"error": str(e), "error_type": "usage"}, str(e))
    except KeyboardInterrupt:
        result = CommandResult(ExitCode.USAGE, {"error": "interrupted", "error_type": "interrupted"}, "interrupted")
    except Exception as e:
        code, kind = ExitCode.of_exception(e)
        log.debug("%s", traceback.format_exc())
        msg = f"{type(e).__name__}: {e}"
        result = CommandResult(code, {"error": msg, "error_type": kind}, msg)
        if kind == "internal":
            traceback.print_exc(file=sys.stderr)
    if want_json:
        payload = jsonable({"ok": result.code == ExitCode.OK, "exit_code": int(result.code), **result.payload})
        stdout.write(json.dumps(payload, default=str, allow_nan=False) + "\n")
    else:
        text = result.text if result.text is not None else json.dumps(jsonable(result.payload), indent=1, default=str)
        if text:
            stream = sys.stderr if "error_type" in result.payload else stdout
            stream.write(text.rstrip("\n") + "\n")
    stdout.flush()
    return int(result.code)


if __name__ == "__main__":
    sys.exit(main())
