"""CLI commands about the environment and artefacts: doctor, models, targets, cache, generate, compile."""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

from .commands import CommandResult, ExitCode, dumps, read_config_arg


def _version(module: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        pass  # e.g. cupy ships as cupy-cuda13x: ask the module
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # doctor reports, it does not fail on a broken package
        return None


def doctor(args) -> CommandResult:
    from amk.cache import default_root

    from .environment import cuda_usable, git_commit

    info: dict = {"python": platform.python_version(), "torch": _version("torch"),
                  "transformers": _version("transformers"), "cupy": _version("cupy"), "numpy": _version("numpy"),
                  "pandas": _version("pandas"), "matplotlib": _version("matplotlib"),
                  "jsonschema": _version("jsonschema"), "cache_dir": str(default_root()), "git_commit": git_commit()}
    problems = []
    try:
        import torch

        info["cuda_available"] = bool(torch.cuda.is_available())
        info["torch_cuda"] = torch.version.cuda
        if info["cuda_available"]:
            info["gpu_name"] = torch.cuda.get_device_name()
    except Exception as e:
        problems.append(f"torch: {e}")
    try:
        from cupy.cuda import nvrtc

        major, minor = nvrtc.getVersion()
        info["nvrtc"] = f"{major}.{minor}"
    except Exception as e:
        info["nvrtc"] = None
        info["nvrtc_error"] = f"{type(e).__name__}: {e}"[:200]
    info["cuda_usable"] = cuda_usable()
    info["default_device"] = "cuda" if info["cuda_usable"] else "cpu"
    if info.get("cuda_available"):
        try:
            from amk.schedule.targets import detect_target

            info["detected_target"] = detect_target().to_dict()
        except Exception as e:
            problems.append(f"detect_target: {e}")
    else:
        info["detected_target"] = None
    for need in ("torch", "transformers"):
        if info[need] is None:
            problems.append(f"{need} is not installed")
    info["problems"] = problems
    text = "\n".join(f"{k:<16} {v}" for k, v in info.items() if k != "problems")
    text += "".join(f"\nPROBLEM: {p}" for p in problems)
    if not info["cuda_usable"]:
        text += "\nno usable CUDA device: evaluate runs on the CPU ReferenceVM with PREDICTED latencies"
    return CommandResult(ExitCode.ENVIRONMENT if problems else ExitCode.OK, info, text)


def models(args) -> CommandResult:
    from amk.models import list_models

    rows = list_models()
    text = "\n".join(f"{m['name']:<24} {m['arch']:<8} {m['params'] / 1e6:>9.1f}M  {m['description']}" for m in rows)
    return CommandResult(ExitCode.OK, {"models": rows}, text)


def targets(args) -> CommandResult:
    from amk.schedule.targets import TARGETS

    rows = [t.to_dict() for t in TARGETS.values()]
    text = "\n".join(f"{t['name']:<10} {t['sm_count']:>4} SMs {t['spec_bandwidth_gbs']:>7.0f} GB/s  smem "
                     f"{t['smem_per_block_max'] // 1024} KiB  {t['arch']}" for t in rows)
    return CommandResult(ExitCode.OK, {"targets": rows}, text)


def cache(args) -> CommandResult:
    from amk.cache import KINDS, default_cache, last_run_stats

    c = default_cache()
    if args.action == "ls":
        rows = c.ls(args.kind)
        text = "\n".join(f"{r['kind']:<10} {r['key'][:16]} {r['size_bytes']:>12} B {r['age_s'] / 3600:>8.1f} h"
                         for r in rows) or "(empty)"
        return CommandResult(ExitCode.OK, {"root": str(c.root), "entries": rows}, text)
    if args.action == "clear":
        n = c.clear(args.kind)
        return CommandResult(ExitCode.OK, {"root": str(c.root), "removed": n, "kind": args.kind},
                             f"removed {n} entries from {c.root}")
    files = {k: {"entries": 0, "bytes": 0} for k in KINDS}
    for r in c.ls(args.kind):
        files[r["kind"]]["entries"] += 1
        files[r["kind"]]["bytes"] += r["size_bytes"]
    out = {"root": str(c.root), "files": files, "last_run": last_run_stats(c.root)}
    return CommandResult(ExitCode.OK, out, dumps(out))


def generate(args) -> CommandResult:
    from amk.generation import generate as fn
    from amk.schedule.errors import ProgramError

    from .commands import UsageError
    from .verdict import parse_config
    if args.model is None or (args.prompt is None and args.prompt_ids is None):
        raise UsageError("amk generate needs --model and --prompt TEXT (or --prompt-ids 1,2,3)")
    prompt = args.prompt if args.prompt is not None else [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    given = {"model": args.model, "prompt": prompt, "max_new_tokens": args.max_new_tokens, "gpu": args.gpu,
             "device": args.device,
             "config": parse_config(read_config_arg(args.config)) if args.config is not None else None}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        out = fn(**given)
    except (ValueError, ProgramError) as e:  # a bad prompt or a schedule that does not validate
        return CommandResult(ExitCode.USAGE, {"error": f"{type(e).__name__}: {e}", "error_type": "usage"}, str(e))
    payload = out.to_dict() if hasattr(out, "to_dict") else (out if isinstance(out, dict) else {"output": out})
    text = payload.get("text") if isinstance(payload.get("text"), str) else None
    return CommandResult(ExitCode.OK, payload, text if text is not None else dumps(payload))


def compile_cmd(args) -> CommandResult:
    from .evaluate import build_program

    v, program = build_program(args.model, args.gpu, read_config_arg(args.config), "cpu", args.dtype)
    if program is None:
        return CommandResult(ExitCode.USAGE, v.to_dict(), f"REJECTED: {v.rejected_reason}")
    out = Path(args.out)
    out.write_text(program.to_json() + "\n")
    per_sm = [sum(program.tasks[t].weight_bytes for t in q) for q in program.queues]
    used = [b for q, b in zip(program.queues, per_sm) if q]
    report = {
        "path": str(out), "schedule_id": v.schedule_id, "program_fingerprint": v.program_fingerprint,
        "model": v.model, "gpu": v.gpu, "dtype": v.dtype, "tasks": len(program.tasks),
        "tasks_per_opcode": dict(sorted(Counter(t.opcode.name for t in program.tasks).items())),
        "tasks_per_kind": dict(sorted(Counter(t.kind for t in program.tasks).items())),
        "counters": len(program.counters), "waits": sum(len(t.waits) for t in program.tasks),
        "sms": program.num_sms, "sms_used": len(used), "weight_bytes": program.weight_bytes,
        "weight_bytes_per_sm": {"min": min(used, default=0), "max": max(used, default=0),
                                "mean": sum(used) / len(used) if used else 0},
        "threads_per_block": program.threads_per_block, "smem_per_block": program.smem_per_block,
        "build": program.build, "stages": program.meta.get("stages"), "max_seq": program.constants.max_seq,
    }
    text = "\n".join([f"wrote {out}: {report['tasks']} tasks, {report['counters']} counters, "
                      f"{report['sms_used']}/{report['sms']} SMs used, {report['weight_bytes']} weight bytes",
                      "tasks per opcode: " + json.dumps(report["tasks_per_opcode"]),
                      f"weight bytes per SM: {report['weight_bytes_per_sm']}"])
    return CommandResult(ExitCode.OK, report, text)
