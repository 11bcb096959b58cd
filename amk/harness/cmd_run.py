"""CLI commands that run the harness: propose, evaluate, loop, verify."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from enum import Enum
from pathlib import Path

from .arguments import append_refusal, loop_file_kind
from .commands import (
    CommandResult,
    ExitCode,
    UsageError,
    check_not_stdout,
    check_path_flag,
    counted,
    read_config_arg,
    verdict_exit,
)

log = logging.getLogger("amk.cli")


class OutputKind(str, Enum):
    """What an output flag writes, so that an existing file is replaced only when it holds the same kind."""

    PROGRAM = "a lowered program (`amk compile`)"
    VERIFY_RECORD = "a verify record (`amk verify`)"


_PROGRAM_HEAD = '{"buffers": '  # Program.to_json sorts its keys: every program file begins so
_VERIFY_KEYS = frozenset({"program_fingerprint", "schedule_id", "passed", "cases"})


def holds_output(path: Path, kind: OutputKind) -> bool:
    """Whether the existing file at `path` is empty or an earlier output of `kind`: the only files an output flag
    replaces. Read from the first 64 KiB of a program (its files run to megabytes) and whole for a verify record
    (bounded at 16 MiB: a larger file is none)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16 if kind == OutputKind.PROGRAM else 16 << 20)
            longer = bool(f.read(1))
    except OSError:
        return False
    if not head.strip():
        return not longer
    if kind == OutputKind.PROGRAM:
        return head.startswith(_PROGRAM_HEAD.encode())
    if longer:
        return False
    try:
        record = json.loads(head)
    except ValueError:
        return False
    return isinstance(record, dict) and _VERIFY_KEYS <= record.keys()


def output_file(flag: str, value: str, kind: OutputKind) -> Path:
    """The file an output flag names, checked before the command does its work (verifying every case, lowering):
    a directory, a missing or unwritable parent would otherwise fail only at the write, as a bare OSError. An
    existing file is replaced only when it is a regular file that is empty or holds an earlier output of `kind` (a
    default such as ./program.json may name a file the user keeps); a device, a FIFO or a socket never (a rename
    over /dev/null would replace the device). A symbolic link, dangling or not, is written through to the file it
    names. UsageError naming the flag otherwise, '-' (no name for stdout here) included."""
    check_not_stdout(flag, value)
    if value.endswith(("/", os.sep)):
        raise UsageError(f"{flag} {value!r}: names a directory; name a file")
    check_path_flag(flag, value)
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {value!r}: is a directory; name a file")
    if path.exists() and not path.is_file():  # checked before any read: opening a FIFO blocks
        raise UsageError(f"{flag} {value!r}: is not a regular file (a device, a FIFO or a socket); name a file")
    target = path
    if path.is_symlink():
        try:
            target = path.resolve()
        except (RuntimeError, OSError) as e:  # a symbolic link loop
            raise UsageError(f"{flag} {value!r}: names no file ({e})") from None
    parent = target.parent
    if not parent.is_dir():
        why = "does not exist" if not parent.exists() else "is not a directory"
        raise UsageError(f"{flag} {value!r}: the directory {str(parent)!r} {why}")
    # the output is written beside its target, then renamed over it: the directory must take a new file
    for where in ((target,) if target.exists() else ()) + (parent,):
        if not os.access(where, os.W_OK):
            raise UsageError(f"{flag} {value!r}: {str(where)!r} is not writable")
    held = loop_file_kind(target)
    if held is not None:  # the output is written whole: a loop's record of its trials would be gone
        raise UsageError(f"{flag} {value!r}: holds {held.value}, which this would overwrite; name another file")
    why = append_refusal(target)
    if why is not None:
        raise UsageError(f"{flag} {value!r}: cannot be written ({why})")
    if target.exists() and not holds_output(target, kind):
        raise UsageError(f"{flag} {value!r}: exists and does not hold {kind.value}, which this would overwrite; "
                         "name another file or remove it")
    return path


def write_output(flag: str, path: Path, text: str | bytes) -> None:
    """Write `text` (str, or bytes such as a PNG image) to `path` whole or not at all: into a temporary file beside
    it, then renamed over it (through a symbolic link, onto the file it names), so that a full disk or an interrupt
    leaves the earlier file as it was. UsageError naming the flag when it cannot be written."""
    target = path.resolve()
    tmp = target.with_name(f".amk-{os.getpid()}-{secrets.token_hex(4)}.tmp")  # short: any target name fits beside it
    try:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = None
        with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as e:  # checked up front; what is left (a race, a full disk) still names the flag
        raise UsageError(f"{flag} {str(path)!r}: cannot be written ({e.strerror or e})") from e
    finally:  # gone after the rename; left by a failure or an interrupt before it
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def parsed_config(flag: str, value: str | None) -> dict | None:
    """The config a start flag names, as a dict; a malformed one is a usage error naming the flag (and the
    field), before any model work."""
    from amk.harness.verdict import parse_config
    from amk.schedule.errors import ConfigError

    if value is None:
        return None
    try:
        return parse_config(read_config_arg(value, flag)).to_dict()
    except ConfigError as e:
        raise UsageError(f"{flag}: {e}") from None


def propose(args) -> CommandResult:
    from amk.harness.propose import propose as _propose

    inc = parsed_config("--incumbent", args.incumbent)
    out = _propose(args.model, args.gpu, incumbent=inc, corpus=args.corpus, dtype=args.dtype, max_seq=args.max_seq)
    return CommandResult(ExitCode.OK, out, proposal_text(out))


def proposal_text(p: dict) -> str:
    """propose()'s answer for a person: the incumbent, then one line per knob (value, default, the values
    searched on this GPU). `--json` gives the same with each knob's help, type and bounds."""
    from amk.schedule.config import ScheduleConfig, get_path, to_jsonable, value_text
    from amk.schedule.space import Knob, KnobType

    cfg = ScheduleConfig.from_dict(p["config"])
    derived = p.get("derived") or {}
    lat = ""
    if p.get("incumbent_latency_us") is not None:
        lat = f", {p['incumbent_latency_us']:.2f} us ({p.get('incumbent_latency_kind')}"
        lat += f" at a KV context of {p['context']})" if p.get("context") is not None else ")"
    lines = [f"incumbent for {p['model']} on {p['gpu']}: schedule {p['schedule_id']} (from {p['source']}{lat})",
             *(f"  {n}" for n in p.get("notes") or ()),
             f"schema: {p['schema_path']}",
             f"{'knob':<34} {'value':<16} {'default':<16} searched on {p['gpu']}"]
    for k in p["search_space"]:
        knob = Knob(path=k["path"], type=KnobType(k["type"]), default=k["default"], help=k["help"],
                    nullable=bool(k.get("nullable")))
        value = to_jsonable(get_path(cfg, knob.path))
        if value is None and knob.nullable:
            got = derived.get("values", {}).get(knob.path)
            shown = "derived" if got is None else f"derived ({value_text(got)})"
        else:
            shown = value_text(value) if not isinstance(value, dict) else (str(value) if value else "{}")
        search = (" ".join("derived" if v is None else value_text(v) for v in k["search"])
                  or ("(not searched: " + k["unsearched"] + ")" if k.get("unsearched") else "(not searched)"))
        mark = "*" if value != knob.default else " "
        lines.append(f"{mark}{knob.path:<33} {shown:<16} {knob.default_text:<16} {search}")
    if derived:
        lines.append(f"(derived: the lowering's value for this model on {p['gpu']} at {derived['dtype']}, "
                     f"{counted(derived['max_seq'], 'position')})")
    lines.append("(* = not the default; amk propose --json gives the config, and each knob's help and bounds)")
    return "\n".join(lines)


def verdict_text(v: dict) -> str:
    from amk.schedule.config import value_text

    lines = [f"schedule {v.get('schedule_id') or '-'}  model {v.get('model')}  gpu {v.get('gpu')}  "
             f"device {v.get('device')}  dtype {v.get('dtype')}"]
    if not v.get("valid"):
        reason = str(v.get("rejected_reason"))
        if reason.startswith("schema: ") and "; $" in reason:  # one schema problem a line
            problems = reason.removeprefix("schema: ").split("; $")
            lines += ["REJECTED: schema:"] + [f"  {'' if i == 0 else '$'}{p}" for i, p in enumerate(problems)]
        else:
            lines.append(f"REJECTED: {reason}")
    else:
        lines.append(f"{v['task_count']} tasks, {v['weight_bytes']} weight bytes, correct {v['correct']} "
                     f"({v['cases_passed']}/{v['cases_total']} cases)")
        if v.get("derived"):
            lines.append("derived: " + ", ".join(f"{k}={value_text(val)}" for k, val in sorted(v["derived"].items())))
        for f in v.get("failures", []):
            lines.append(f"  FAILED {f['case']}: {f['message'][:200]}")
        if v.get("latency_us") is not None:
            pct = f", {v['pct_of_floor']:.1f}% of the floor" if v.get("pct_of_floor") else ""
            lines.append(f"latency {v['latency_us']:.2f} us ({v['latency_kind']}){pct}")
        for name, s in (v.get("speedups") or {}).items():
            lines.append(f"  speed-up vs {name}: {s:.2f}x")
    lines += [f"note: {n}" for n in v.get("notes", [])]
    return "\n".join(lines)


def evaluate(args) -> CommandResult:
    from amk.harness.evaluate import evaluate as _evaluate

    v = _evaluate(args.model, args.gpu, read_config_arg(args.config), device=args.device, cases=args.cases,
                  seed=args.seed, dtype=args.dtype, corpus=args.corpus, peers=args.peers, max_seq=args.max_seq)
    return CommandResult(verdict_exit(v), v, verdict_text(v))


def loop(args) -> CommandResult:
    from amk.harness.loop import LoopInterrupted, StopReason
    from amk.harness.loop import loop as _loop
    from amk.progress import print_trial_line

    if args.budget is None and args.minutes is None:
        log.info("no --budget or --minutes: the loop stops after %d non-improving trials in a row",
                 args.max_reverts)
    for flag, value in (("--results", args.results), ("--corpus", args.corpus)):  # appended to, as --out is written
        check_not_stdout(flag, value)
    seed_config = parsed_config("--config", args.config)
    try:
        s = _loop(args.model, args.gpu, budget=args.budget, minutes=args.minutes, seed=args.seed, device=args.device,
                  results=args.results, corpus=args.corpus, resume=args.resume, max_reverts=args.max_reverts,
                  progress=print_trial_line, cases=args.cases, dtype=args.dtype, incumbent=seed_config,
                  workers=args.workers, ray_address=args.ray_address, builders=args.builders, max_seq=args.max_seq)
    except LoopInterrupted as e:  # the trial in flight is written: the summary is printed, the exit is 130
        s = e.summary
    if s["stopped"] == StopReason.INTERRUPTED.value:
        code = ExitCode.INTERRUPTED
    else:  # a loop that found no correct config has no result: a correctness failure, as evaluate's
        code = ExitCode.OK if s["incumbent"]["correct"] else ExitCode.INCORRECT
    return CommandResult(code, s, loop_text(s))


def _off_default(config: dict) -> list[str]:
    """`path=value` for each knob of a config dict off the default (the whole config follows on its own line)."""
    from amk.schedule.config import ScheduleConfig
    from amk.schedule.space import diff

    return diff(ScheduleConfig(), ScheduleConfig.from_dict(config))


def loop_text(s: dict) -> str:
    inc = s["incumbent"]
    lat = f"{inc['latency_us']:.2f} us ({inc['latency_kind']})" if inc.get("latency_us") is not None else "no latency"
    statuses = ", ".join(f"{k} {n}" for k, n in s["statuses"].items())
    lines = [f"{counted(s['trials'], 'trial')}{f' ({statuses})' if statuses else ''}; stopped: "
             f"{s['stopped']}; {s.get('trials_per_minute')} trials/minute"
             + (f" over {s['workers']} workers" if s.get("workers") else ""),
             f"incumbent {inc['schedule_id']} (program {inc.get('program_fingerprint')}): {lat}",
             "incumbent's knobs off the default: " + (", ".join(_off_default(inc["config"])) or "none"),
             "incumbent config: " + json.dumps(inc["config"], sort_keys=True)]
    b = s.get("best")
    if b and b.get("schedule_id") != inc["schedule_id"]:
        blat = f"{b['latency_us']:.2f} us" if b.get("latency_us") is not None else "no latency"
        lines.append(f"best kept in the corpus: {b['schedule_id']} {blat} ({b['latency_kind']}): "
                     + json.dumps(b["config"], sort_keys=True))
    lines.append(f"results: {s['results']}  corpus: {s['corpus']}")
    lines += [f"note: {n}" for n in s.get("notes", [])]
    return "\n".join(lines)


def verify(args) -> CommandResult:
    from amk.harness.cmd_bench import weights_fingerprint
    from amk.harness.evaluate import evaluate as _evaluate

    raw = read_config_arg(args.config)
    out = output_file("--out", args.out, OutputKind.VERIFY_RECORD)
    v = _evaluate(args.model, args.gpu, raw, device=args.device, cases=args.cases, seed=args.seed, dtype=args.dtype,
                  measure=False, max_seq=args.max_seq)
    if not v.get("valid"):
        return CommandResult(ExitCode.USAGE, v, verdict_text(v))
    from amk.harness.verdict import parse_config

    record = {
        "program_fingerprint": v["program_fingerprint"], "schedule_id": v["schedule_id"], "passed": bool(v["correct"]),
        "model": v["model"], "model_fingerprint": weights_fingerprint(v["model"]), "gpu": v["gpu"],
        "device": v["device"], "dtype": v["dtype"], "max_seq": args.max_seq, "seed": args.seed,
        "cases_passed": v["cases_passed"], "cases_total": v["cases_total"], "cases": v["case_results"],
        "failures": v["failures"], "worst_mere": v["worst_mere"], "worst_mare": v["worst_mare"],
        "top1_agreement": v["top1_agreement"], "kl_max": v["kl_max"], "notes": v["notes"],
        "config": parse_config(raw).to_dict(), "environment": v["environment"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_output("--out", out, json.dumps(record, indent=1, default=str) + "\n")
    text = verdict_text(v) + f"\nwrote {out} (program {record['program_fingerprint']}, passed {record['passed']})"
    return CommandResult(ExitCode.OK if record["passed"] else ExitCode.INCORRECT, {**record, "path": str(out)}, text)
