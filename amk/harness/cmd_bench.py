"""`amk bench`: per-case (KV length) latency and peak memory of a program that passed `amk verify` on the same
device, and the geometric-mean speed-up over a peer. Cases whose speed-up is NaN, inf, zero, negative or
missing are listed apart and left out of the mean (one bad case must not poison or flatter it)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .commands import CommandResult, ExitCode, UsageError, check_path_flag, read_config_arg

log = logging.getLogger("amk.cli")


def geomean_speedups(cases: list[dict]) -> tuple[float | None, list[dict]]:
    """(geometric mean of the valid speed-ups or None, the excluded cases with the reason each was left out)."""
    logs, excluded = [], []
    for c in cases:
        s = c.get("speedup")
        if s is None:
            reason = "missing"
        elif isinstance(s, bool) or not isinstance(s, (int, float)):
            reason = f"not a number ({type(s).__name__})"
        elif math.isnan(s):
            reason = "NaN"
        elif math.isinf(s):
            reason = "infinite"
        elif s == 0:
            reason = "zero"
        elif s < 0:
            reason = "negative"
        else:
            logs.append(math.log(s))
            continue
        excluded.append({"case": c.get("case"), "speedup": None if s is None else repr(s), "reason": reason})
    return (math.exp(sum(logs) / len(logs)) if logs else None), excluded


def weights_fingerprint(model: str) -> str | None:
    """The fingerprint of the weights a model label names now: a checkpoint directory's (its config.json and weight
    files hashed), None for a built-in model, whose weights its name, dtype and seed define."""
    from amk.models.registry import builtin_key, checkpoint_fingerprint

    path = Path(model)
    return checkpoint_fingerprint(path) if builtin_key(model) is None and path.is_dir() else None


def check_verified(path: Path, fingerprint: str, device: str, model: str, dtype: str, gpu: str | None = None,
                   config: dict | None = None, max_seq: int | None = None) -> str | None:
    """Why this program may not be benched yet, or None when a matching passing verify_result.json exists: the
    same program on the same device, for the same model (label), dtype and, for a checkpoint directory, the same
    weights (the program fingerprint leaves weights out: two checkpoints of one shape lower to one program)."""
    if path.is_dir():
        return f"{path} is a directory: name the verify_result.json that `amk verify --out` wrote"
    if not path.is_file() and path.is_symlink():
        return f"{path} is a symbolic link that leads to no file (dangling, or a loop): name the verify_result.json " \
               "that `amk verify --out` wrote"
    if not path.is_file():
        return f"{path} not found: run `amk verify` with the same --model/--gpu/--config/--device first"
    try:
        rec = json.loads(path.read_text())
    except ValueError as e:
        return f"{path} is not valid JSON ({e})"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    if not isinstance(rec, dict):
        return (f"{path} holds a JSON {type(rec).__name__}, not the JSON object `amk verify` writes: run `amk verify` "
                "again")
    if rec.get("program_fingerprint") != fingerprint:
        return (f"{path} verified program {rec.get('program_fingerprint')}, but {_what_differs(rec, model, dtype, gpu, config, max_seq)}"
                f" lowers to program {fingerprint}: verify this program first")
    if not isinstance(rec.get("passed"), bool):  # a hand edit: no verdict to read, whatever its case counts say
        return (f"{path}: its `passed` is {rec.get('passed')!r}, not the true or false `amk verify` writes: run "
                "`amk verify` again")
    if rec.get("passed") is not True:
        return f"{path}: program {fingerprint} FAILED verification ({rec.get('cases_passed')}/{rec.get('cases_total')})"
    if rec.get("device") != device:
        return f"{path}: verified on {rec.get('device')}, benching on {device}: verify on the same device"
    if rec.get("model") != model or rec.get("dtype") != dtype:
        return (f"{path}: verified {rec.get('model')} in {rec.get('dtype')}, benching {model} in {dtype}: verify "
                "this model first")
    now = weights_fingerprint(model)
    if now is not None and rec.get("model_fingerprint") != now:
        return (f"{path}: verified other weights of {model} (model_fingerprint {rec.get('model_fingerprint')}, the "
                f"directory's now {now}: saved again since, or a record written before verify recorded it): verify "
                "again")
    return None


def _what_differs(rec: dict, model: str, dtype: str, gpu: str | None, config: dict | None, max_seq: int | None) -> str:
    """Which of the bench's settings differ from the verify record's (`dtype bf16, where verify had fp32`): a
    program differs by its model, dtype, target, config or context, and a user rereads the config when the message
    blames it for a flag. "this program" where the record cannot tell (a record older than its max_seq key)."""
    diffs = []
    for flag, mine, key in (("model", model, "model"), ("dtype", dtype, "dtype"), ("gpu", gpu, "gpu")):
        if mine is not None and key in rec and rec[key] != mine:
            diffs.append(f"{flag} {mine}, where verify had {rec[key]}")
    if "max_seq" in rec and rec["max_seq"] != max_seq:  # the flags as given: None is the model's default context
        diffs.append(f"max_seq {max_seq if max_seq is not None else 'the default'}, where verify had "
                     f"{rec['max_seq'] if rec['max_seq'] is not None else 'the default'}")
    if config is not None and isinstance(rec.get("config"), dict) and rec["config"] != config:
        diffs.append("the config, which differs from verify's")
    if not diffs:
        return "this program"
    return "this run (" + "; ".join(diffs) + ")"


def _contexts(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]  # an empty part ("1,,2") is a missing length, not a separator
    except ValueError:
        raise UsageError(f"--contexts {text!r}: expected comma-separated integers") from None
    if not out or any(c < 0 for c in out):
        raise UsageError(f"--contexts {text!r}: expected non-negative KV lengths")
    return out


DEFAULT_STEPS = 200  # timed decode steps a case on the GPU (--steps)


def bench(args) -> CommandResult:
    from amk.harness.evaluate import build_program
    from amk.schedule.config_text import parse_config

    from .arguments import check_corpus

    check_corpus(args.corpus)  # a named file that is no corpus: refused before the program is built
    check_path_flag("--verify-result", args.verify_result)  # ~ of an unknown user, a NUL byte: before the build

    raw = read_config_arg(args.config)
    v, program = build_program(args.model, args.gpu, raw, args.device, args.dtype, args.max_seq)
    if program is None:
        return CommandResult(ExitCode.USAGE, v.to_dict(), f"REJECTED: {v.rejected_reason}")
    notes: list[str] = []
    why = check_verified(Path(args.verify_result).expanduser(), v.program_fingerprint, v.device, v.model, v.dtype,
                         v.gpu, parse_config(raw).to_dict(), args.max_seq)
    if why and not args.verify_not_required:
        return CommandResult(ExitCode.USAGE, {"error": why, "error_type": "unverified",
                                              "program_fingerprint": v.program_fingerprint}, why)
    if why:
        notes.append(f"UNVERIFIED (--verify-not-required): {why}")
    # a timed run must fit behind its prefilled positions: the GPU runs warm-up and timed steps after them
    steps = args.steps or DEFAULT_STEPS
    limit = program.constants.max_seq - (steps + 11 if v.device == "cuda" else 1)
    contexts = _fit_contexts(_contexts(args.contexts), limit, program.constants.max_seq, notes)
    if v.device == "cuda":
        cases, code = _bench_cuda(v, program, contexts, args, notes, steps)
    else:
        cases, code = _bench_cpu(v, program, contexts, notes, args.gpu, args.steps, args.corpus), ExitCode.OK
    geo, excluded = geomean_speedups(cases)
    out = {"program_fingerprint": v.program_fingerprint, "schedule_id": v.schedule_id, "model": v.model,
           "gpu": v.gpu, "device": v.device, "dtype": v.dtype, "verified": why is None, "cases": cases,
           "speedup_vs": args.peer, "geomean_speedup": geo, "valid_speedup_cases": len(cases) - len(excluded),
           "excluded": excluded, "notes": notes, "environment": v.environment}
    return CommandResult(code, out, _text(out))


def _fit_contexts(contexts: list[int], limit: int, max_seq: int, notes: list[str]) -> list[int]:
    """The contexts capped at `limit` (at least 0), each once, in the order asked; a note names each one that
    was capped or merged into another."""
    out: list[int] = []
    for ctx in contexts:
        c = max(0, min(ctx, limit))
        if c != ctx:
            notes.append(f"context {ctx} runs at {c}: the program holds {max_seq} positions")
        if c in out:
            notes.append(f"context {ctx} is the same case as context {c}: benched once")
        else:
            out.append(c)
    return out


def _bench_cpu(v, program, contexts: list[int], notes: list[str], gpu, steps: int | None = None,
               corpus: str | None = None) -> list[dict]:
    from amk.schedule.cost import predict

    from .calibration import calibrate_file
    from .environment import resolve_target

    target = resolve_target(gpu)
    calib = calibrate_file(corpus, v.gpu)  # as evaluate's: the same corpus gives the same coefficients
    coef = calib.coefficients
    notes.append(f"CPU: every latency is PREDICTED by the cost model for {v.gpu}, not measured; peak GPU memory is "
                 "not measured on a CPU; no peer runs, so speed-ups are missing")
    notes.append(calib.note(v.gpu))
    if steps is not None:  # the cost model prices one step: a count of timed steps has nothing to time
        notes.append(f"--steps {steps} has no effect: a predicted latency times no steps")
    cases = []
    for c in contexts:
        p = predict(program, target, coef, context=c)
        cases.append({"case": f"ctx{c}", "context": c, "latency_us": p.latency_us, "spread_us": None,
                      "kind": "predicted", "peak_memory_bytes": None, "speedup": None, "peer_latency_us": None})
    return cases


def _bench_cuda(v, program, contexts: list[int], args, notes: list[str],
                steps: int) -> tuple[list[dict], ExitCode]:
    import torch

    from amk.cache import default_cache
    from amk.eval.bench import time_vm
    from amk.eval.roofline import Floor

    from .baselines import measured_bandwidth_gbs, peer_latencies
    from .correctness import build_cuda_vm
    from .environment import Device, get_model, resolve_target

    model = get_model(v.model, v.dtype, Device.CUDA, weights=True)
    cache = default_cache()
    floor = Floor(program.step_weight_bytes, resolve_target(args.gpu).spec_bandwidth_gbs, measured_bandwidth_gbs(cache))
    try:
        vm = build_cuda_vm(program, model)
    except Exception as e:
        notes.append(f"GPU failure building the VM: {type(e).__name__}: {e}")
        return [], ExitCode.INCORRECT
    cases, code = [], ExitCode.OK
    for c in contexts:
        case = {"case": f"ctx{c}", "context": c, "kind": "measured-gpu",
                "latency_us": None, "spread_us": None, "peak_memory_bytes": None, "speedup": None,
                "peer_latency_us": None}
        try:
            torch.cuda.reset_peak_memory_stats()
            t = time_vm(vm, steps=steps, context=case["context"])
            case["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        except Exception as e:  # a GPU failure fails the case; nothing stands in for it
            case["error"] = f"{type(e).__name__}: {e}"
            code = ExitCode.INCORRECT
            cases.append(case)
            continue
        reason = floor.below_floor(t["latency_us"])
        if reason:
            case["withheld"] = reason
        else:
            case.update(latency_us=t["latency_us"], spread_us=t["spread_us"])
        if args.peers and case["latency_us"]:
            peer = peer_latencies(cache, model, program.constants.max_seq, case["context"], True, (args.peer,))
            if args.peer in peer:
                case["peer_latency_us"] = peer[args.peer]
                case["speedup"] = peer[args.peer] / case["latency_us"]
        cases.append(case)
    if not args.peers:
        notes.append("no --peers: speed-ups are missing")
    return cases, code


def _text(out: dict) -> str:
    lines = [f"program {out['program_fingerprint']} ({out['schedule_id']}) on {out['device']}, "
             f"verified: {out['verified']}"]
    for c in out["cases"]:
        lat = f"{c['latency_us']:.2f} us" if c.get("latency_us") is not None else "-"
        mem = f"{c['peak_memory_bytes'] / 2**20:.1f} MiB" if c.get("peak_memory_bytes") else "-"
        sp = f"{c['speedup']:.2f}x" if isinstance(c.get("speedup"), float) else "-"
        lines.append(f"  {c['case']:<10} {lat:>14} ({c['kind']})  peak {mem:>10}  speed-up {sp}  "
                     f"{c.get('error', c.get('withheld', ''))}")
    geo = out["geomean_speedup"]
    if out["valid_speedup_cases"] or any(e["reason"] != "missing" for e in out["excluded"]):
        lines.append(f"geometric-mean speed-up vs {out['speedup_vs']}: {f'{geo:.3f}x' if geo else 'n/a'} over "
                     f"{out['valid_speedup_cases']} cases")
        for e in out["excluded"]:
            lines.append(f"  excluded {e['case']}: speed-up {e['reason']}")
    else:  # no peer ran (a CPU): one line, not one a case
        lines.append(f"no speed-up vs {out['speedup_vs']}: no peer was timed (the notes say why)")
    lines += [f"note: {n}" for n in out["notes"]]
    return "\n".join(lines)


