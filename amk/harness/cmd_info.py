"""CLI commands about the environment and artefacts: doctor, models, targets, cache, generate, compile."""

from __future__ import annotations

import os
import platform
from collections import Counter

from amk.progress import status

from .commands import CommandResult, ExitCode, read_config_arg


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
    from amk.cache import CacheDirError, default_root, root_problem

    from .environment import cuda_usable, git_commit

    info: dict = {"python": platform.python_version(), "torch": _version("torch"),
                  "transformers": _version("transformers"), "cupy": _version("cupy"), "numpy": _version("numpy"),
                  "pandas": _version("pandas"), "matplotlib": _version("matplotlib"),
                  "jsonschema": _version("jsonschema"), "git_commit": git_commit()}
    problems = []
    try:
        root = default_root()
    except CacheDirError as e:  # ~ of an unknown user: the report goes on, with the problem in it
        root = None
        problems.append(str(e))
    info["cache_dir"] = str(root) if root is not None else os.environ.get("AMK_CACHE_DIR")
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
    problem = root_problem(root) if root is not None else None
    if problem is not None:  # what every command that lowers refuses (check_root raises it), in the same words
        problems.append(str(problem))
    info["problems"] = problems
    target = info.get("detected_target")
    shown = {**info, "detected_target": (f"{target['name']} ({target['sm_count']} SMs, {target['arch']})"
                                         if target else "none: --gpu auto means the cpu-sim stand-in")}
    text = "\n".join(f"{k:<16} {v}" for k, v in shown.items() if k != "problems")
    text += "".join(f"\nPROBLEM: {p}" for p in problems)
    if not info["cuda_usable"]:
        text += "\nno usable CUDA device: evaluate runs on the CPU ReferenceVM with PREDICTED latencies"
    if not problems:
        return CommandResult(ExitCode.OK, info, text)
    # a failing answer carries error and error_type (HARNESS section 4): doctor is a report, so whatever it finds
    # is the environment's (exit 3), a cache directory the commands refuse as a usage error included
    n = len(problems)
    error = problems[0] + (f" (and {n - 1} more problem{'s' if n > 2 else ''})" if n > 1 else "")
    return CommandResult(ExitCode.ENVIRONMENT, {**info, "error": error, "error_type": "environment"},
                         f"doctor found {n} problem{'s' if n > 1 else ''}\n{text}")


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


def _label_text(label: dict | None) -> str:
    """What a cache entry is for, in one line: model, GPU, dtype, config or case."""
    if not label:
        return "-"
    parts = [str(label[k]) for k in ("model", "gpu", "dtype") if label.get(k)]
    if "schedule_id" in label:
        parts.append(f"config {label['schedule_id']}")
        cfg = label.get("config")
        if isinstance(cfg, dict):
            from amk.schedule.config import ScheduleConfig
            from amk.schedule.space import diff

            try:
                changed = diff(ScheduleConfig(), ScheduleConfig.from_dict(cfg))
            except ValueError:
                changed = ["(a config of an older schema)"]
            parts.append(", ".join(changed) if changed else "(defaults)")
    if label.get("max_seq"):
        parts.append(f"max_seq {label['max_seq']}")
    if label.get("case"):
        parts.append(f"case {label['case']}" + (" (higher precision)" if label.get("higher_precision") else ""))
    for k in ("peer", "measurement"):
        if label.get(k):
            parts.append(str(label[k]))
    return " ".join(parts)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cache(args) -> CommandResult:
    """`amk cache ls|stats|clear`. Raises root_problem's CacheDirError (exit 2) for a directory the cache cannot be
    used at, as every command that uses the cache does; listing writes nothing, so a read-only cache (a shared
    or mounted one) is listed and only clear refuses it. A missing directory is not created: there is no cache."""
    from amk.cache import KINDS, Cache, default_cache, last_run_stats, root_problem

    c = Cache()
    problem = root_problem(c.root, read=True, write=args.action == "clear")
    if problem is not None:
        raise problem
    present = c.root.exists()
    if args.action == "clear":
        n = default_cache().clear(args.kind) if present else 0  # the process's cache: its memory layer goes too
        where = f"from {c.root}" if present else f"(no cache at {c.root}: the directory does not exist)"
        return CommandResult(ExitCode.OK, {"root": str(c.root), "exists": present, "removed": n, "kind": args.kind},
                             f"removed {n} {'entry' if n == 1 else 'entries'} {where}")
    rows = c.ls(args.kind) if present else []
    if args.action == "ls":
        strays = c.strays(args.kind) if present else []
        lines = [f"{r['kind']:<9} {r['key'][:12]} {_size(r['size_bytes']):>10} {r['age_s'] / 3600:>7.1f} h  "
                 f"{_label_text(r.get('label'))}" for r in rows]
        lines += [f"{s['kind']:<9} not a cache entry, left: {s['path']}" for s in strays]
        head = (f"{len(rows)} {'entry' if len(rows) == 1 else 'entries'}" if rows else "(empty)") if present else \
            "no cache there: the directory does not exist"
        return CommandResult(ExitCode.OK, {"root": str(c.root), "exists": present, "entries": rows, "strays": strays},
                             "\n".join([f"{c.root}: {head}", *lines]))
    # --kind: that kind's counts alone, in the JSON as in the text (rows holds no other kind's entries)
    files = {k: {"entries": 0, "bytes": 0} for k in KINDS if args.kind in (None, k)}
    for r in rows:
        files[r["kind"]]["entries"] += 1
        files[r["kind"]]["bytes"] += r["size_bytes"]
    last = last_run_stats(c.root)
    if last is not None and args.kind is not None:
        last = {k: d for k, d in last.items() if k == args.kind}
    out = {"root": str(c.root), "exists": present, "files": files, "last_run": last}
    lines = [f"cache {c.root}" + ("" if present else ": no cache there, the directory does not exist")]
    lines += [f"  {k:<9} {f['entries']:>6} entries {_size(f['bytes']):>10}" for k, f in files.items()]
    if last:
        lines.append("last run: " + ", ".join(f"{k} {d.get('hits', 0)} hits / {d.get('misses', 0)} misses"
                                              for k, d in last.items() if isinstance(d, dict)))
    return CommandResult(ExitCode.OK, out, "\n".join(lines))


def generate(args) -> CommandResult:
    from amk.generation import generate as fn
    from amk.schedule.errors import LoweringError, ProgramError

    from .cmd_run import parsed_config

    config = parsed_config("--config", args.config)
    prompt = args.prompt if args.prompt is not None else args.prompt_ids
    try:
        out = fn(args.model, prompt, max_new_tokens=args.max_new_tokens, config=config, device=args.device,
                 gpu=args.gpu, max_seq=args.max_seq, dtype=args.dtype)
    except (LoweringError, ProgramError) as e:  # the config's fault; a bad prompt's typed error reaches main()
        msg = f"--config: {e}"
        return CommandResult(ExitCode.USAGE, {"error": msg, "error_type": "usage"}, msg)
    payload = out.to_dict()
    rate = payload["decode_tokens_per_s"]
    summary = (f"{len(payload['tokens'])} new tokens after {len(payload['prompt_tokens'])} prompt tokens on "
               f"{payload['device']} ({payload['vm']} VM) in {payload['seconds']:.2f} s, "
               + (f"{rate:.1f} tokens/s decoding" if rate is not None else "no decode step (the one new token is "
                  "the prompt's last step's)"))
    body = payload["text"] if isinstance(payload.get("text"), str) else " ".join(map(str, payload["tokens"]))
    notes = "".join(f"\nnote: {n}" for n in payload["notes"])
    return CommandResult(ExitCode.OK, payload, f"{body}\n-- {summary}{notes}")


def _count(mean: float) -> int | float:
    """A mean count as an integer where it is one (every stage alike), else as it is."""
    return int(mean) if float(mean).is_integer() else mean


def compile_cmd(args) -> CommandResult:
    from amk.schedule.assign import stage_fill
    from amk.schedule.config import value_text

    from .cmd_run import OutputKind, output_file, write_output
    from .evaluate import build_program

    config = read_config_arg(args.config)
    out = output_file("--out", args.out, OutputKind.PROGRAM)
    v, program = build_program(args.model, args.gpu, config, "cpu", args.dtype, args.max_seq)
    if program is None:  # a config compile cannot lower is a usage error (HARNESS section 4), its verdict beside it
        msg = f"--config: {v.rejected_reason}"
        return CommandResult(ExitCode.USAGE, {**v.to_dict(), "error": msg, "error_type": "usage"}, msg)
    with status(f"writing {out}"):
        write_output("--out", out, program.to_json() + "\n")
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
        "derived": v.derived, "notes": v.notes,
    }
    fill = stage_fill(program.tasks, program.constants, program.num_sms)
    # tasks and SMs busy are means over a kind's stages: whole numbers where every stage of the kind has the same
    report["stage_fill"] = {f.kind: {"stages": f.stages, "tasks": _count(f.tasks), "sms_busy": _count(f.sms_busy),
                                     "fill": f.fill} for f in fill}
    per_sm = report["weight_bytes_per_sm"]
    lines = [f"wrote {out}: program {v.program_fingerprint} (schedule {v.schedule_id}) of {v.model} for {v.gpu}, "
             f"{v.dtype}, max_seq {report['max_seq']}",
             f"{report['tasks']} tasks in {report['stages']} stages, {report['counters']} counters, "
             f"{report['waits']} waits; {report['sms_used']} of {report['sms']} SMs used",
             f"weight bytes {report['weight_bytes']:,}; per SM min {per_sm['min']:,} mean {per_sm['mean']:,.0f} "
             f"max {per_sm['max']:,}",
             "tasks per opcode: " + ", ".join(f"{k} {n}" for k, n in report["tasks_per_opcode"].items()),
             f"SM fill a stage (tasks, SMs busy, mean SM's bytes over the busiest's) on {program.num_sms} SMs: "
             + ", ".join(f"{f.kind} {f.tasks:.0f}/{f.sms_busy:.0f}/{f.fill:.2f}" for f in fill),
             f"block: {report['threads_per_block']} threads, {report['smem_per_block']:,} B shared memory; build: "
             + ", ".join(f"{k}={val}" for k, val in sorted(report["build"].items()))]
    if v.derived:
        lines.append("derived: " + ", ".join(f"{k}={value_text(val)}" for k, val in sorted(v.derived.items())))
    lines += [f"note: {n}" for n in v.notes]
    return CommandResult(ExitCode.OK, report, "\n".join(lines))
