"""evaluate(model, gpu, config): parse -> lower -> validate -> verify on a device -> latency, as one verdict.

Order matters: the config is parsed before anything touches a model, so malformed configs cost
microseconds; lowering needs only the model's dims (no weights); weights load only for a valid program.
Honesty gates (HARNESS.md): no latency without a correctness pass on the same device, a latency under the
floor is withheld, a GPU failure is a failure (never replaced by a prediction), and a predicted latency is
always labelled so.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback

from amk.cache import Cache, CacheStorageError, default_cache, program_key
from amk.progress import bar, status
from amk.schedule.config import ScheduleConfig, SmAssignment, value_text
from amk.schedule.errors import ArgumentError, ConfigError, LoweringError
from amk.schedule.inert import derived_alike, inert_knobs, priced_alike_notes, program_inert_knobs
from amk.schedule.lower import check_rope_context, lower
from amk.schedule.program import (
    FINGERPRINT_META,
    VALIDATION_META,
    MegakernelProgram,
    gc_paused,
    lowering_digest,
)
from amk.schedule.targets import GpuTarget

from .arguments import (
    check_cases,
    check_corpus,
    check_flag,
    check_max_seq,
    check_model_weights,
    check_seed,
    integral,
    real,
    user_path,
)
from .calibration import calibrate_file
from .correctness import counted, reference_hook, resolve_cases, run_cpu, run_cuda, scaling_note
from .environment import Device, environment, get_model, resolve_device, resolve_target
from .gates import gate_latency, speedups
from .propose import model_label
from .run_checks import (
    check_context,
    check_kv_memory,
    check_model_dtype,
    default_dtype,
    misspelt_field_notes,
    resolve_dtype_name,
)
from .verdict import LatencyKind, Verdict, parse_config

log = logging.getLogger("amk.harness")

MAX_ISSUES_IN_REASON = 3




def evaluate(model, gpu, config, device: str = "auto", cases=None, seed: int = 0, dtype: str | None = None,
             corpus: str | None = None, peers: bool = False, max_seq: int | None = None, measure: bool = True,
             stop_above_us: float | None = None) -> dict:
    """The verdict of one config as a JSON-able dict (see HARNESS.md for every field).

    Bad configs never raise: they come back valid=false with `rejected_reason` (every problem at once).
    An unknown model or GPU target (UnknownModelError, UnknownTargetError), a bad dtype, device, cases or
    max_seq (ArgumentError) raise before any model work: usage errors, exit 2 on the CLI. device="cuda" on a
    machine without one raises EnvironmentProblem (exit 3). A model AMK does not lower, or on a GPU one whose shape
    the kernel does not build in this dtype (head_dim over 128 in fp32), raises UnsupportedModelError naming the field
    (exit 2). `dtype` None picks bf16, except fp32 for the
    cpu-sim stand-in on a CPU; the verdict's `dtype` and a note say which.
    `measure=False` stops after correctness (what `amk verify` runs). `stop_above_us` (GPU only): when the first
    timed repeat is slower than this many microseconds, the other repeats are skipped; the latency then comes
    from that one repeat, `timed_repeats` is 1 and `latency_spread_us` null (the search passes a bound well
    above its best config: a clearly slower config needs no spread to be discarded)."""
    seed, max_seq = integral(seed), integral(max_seq)  # a numpy integer is the int it holds
    stop_above_us = real(stop_above_us)
    if stop_above_us is not None and (isinstance(stop_above_us, bool) or not isinstance(stop_above_us, int | float)
                                      or not stop_above_us > 0):
        raise ArgumentError("stop_above_us", f"expected a positive number of microseconds, got {stop_above_us!r}")
    check_seed(seed)
    check_flag("measure", measure)
    check_flag("peers", peers)
    t0 = time.perf_counter()
    check_cases(cases)  # before any model work
    check_corpus(corpus)
    corpus = None if corpus is None else str(user_path(corpus))
    check_model_weights(model)
    if not _names_checked(model, gpu, config):  # a malformed config: its verdict needs no model and no cache
        v, _ = build_program(model, gpu, config, device, dtype, max_seq)
        v.cache = {"hits": 0, "misses": 0, "by_kind": {}}
        v.seconds = round(time.perf_counter() - t0, 4)
        return v.to_dict()
    cache = default_cache()
    before = cache.stats()
    v, program = build_program(model, gpu, config, device, dtype, max_seq, cache)
    if program is not None:
        _evaluate(v, model, resolve_target(gpu), program, resolve_device(device), cases, seed, corpus, peers, measure,
                  cache, stop_above_us)
    v.cache = _stats_delta(before, cache.stats())
    v.seconds = round(time.perf_counter() - t0, 4)
    return v.to_dict()


def _names_checked(model, gpu, config) -> bool:
    """The caller's names, before the cache directory's state: UnknownTargetError for an unknown GPU, then
    UnknownModelError for a model name neither built in nor a directory. False, with the model not looked up,
    when the config is malformed (HARNESS section 2: its verdict comes first)."""
    from amk.models import Model
    from amk.models.registry import check_model_name

    resolve_target(gpu)
    if not isinstance(model, Model | str | os.PathLike) or isinstance(model, bytes):
        check_model_name(model)  # a model of the wrong type is a usage error, before any config verdict
    try:
        parse_config(config)
    except ConfigError:
        return False
    if not isinstance(model, Model):
        check_model_name(model)
    return True


def build_program(model, gpu, config, device: str = "auto", dtype: str | None = None, max_seq: int | None = None,
                  cache: Cache | None = None, notes: bool = True) -> tuple[Verdict, MegakernelProgram | None]:
    """Parse, lower (cached) and validate: the verdict so far, and the program when it is valid. Needs the
    model's dims only, never its weights. `notes=False` skips the notes on a valid program's config (knobs that
    cannot act, go unpriced or equal their derived values), for a caller that keeps only the program."""
    from amk.models import Model
    from amk.models.registry import check_model_name, dtype_name

    v = Verdict()
    try:
        cfg = parse_config(config)
    except ConfigError as e:
        v.reject(f"schema: {e}")
        cfg = None
    target = resolve_target(gpu)
    dev = resolve_device(device)
    check_max_seq(max_seq)
    given = model if isinstance(model, Model) else None
    dtype_note = None
    check_model_dtype(model, dtype)
    if given:
        v.dtype = dtype_name(given.dtype)
        usual = default_dtype(dev, target)
        if dtype is None and v.dtype != usual:  # amk.load_model's default is fp32: a GPU target's verdict says so
            dtype_note = (f"dtype {v.dtype}: the loaded model's own (amk.load_model loads fp32 unless given dtype=), "
                          f"where {target.name} on {dev.value} runs {usual} by default: load it with "
                          f"dtype='{usual}' for that")
    else:
        v.dtype, dtype_note = resolve_dtype_name(dtype, dev, target)
    v.gpu, v.device, v.environment = target.name, dev.value, environment(dev)
    v.model = model_label(model)  # as loop, propose and report name it
    if cfg is None:
        return v, None
    if given is None:
        check_model_name(model)  # before anything resolves it as a path (`~user/...` of no user, a NUL byte)
    if dtype_note:
        v.notes.append(dtype_note)
    v.schedule_id = cfg.schedule_id
    dims_model = given or get_model(v.model, v.dtype, dev, weights=False)
    check_rope_context(dims_model, max_seq)
    v.notes += misspelt_field_notes(dims_model)
    with status(f"lowering {cfg.schedule_id} of {v.model} for {target.name}"):
        program = _lower_cached(v, dims_model, target, cfg, max_seq, cache or default_cache())
    if program is not None:
        check_context(program, target, lambda: lower(dims_model, target, ScheduleConfig(), max_seq=max_seq))
    if program is None or not _validate(v, program, target):
        return v, None
    v.valid = True
    v.task_count, v.weight_bytes = len(program.tasks), program.weight_bytes
    v.program_fingerprint = program.known_fingerprint()
    v.derived = dict(program.meta.get("derived", {}))
    if notes:
        v.notes += _config_notes(cfg, program, v.derived, dims_model.dims, target, dev)
    return v, program


def _config_notes(cfg: ScheduleConfig, program: MegakernelProgram, derived: dict, dims, target: GpuTarget,
                  dev: Device) -> list[str]:
    """What a verdict says of a valid program's config: knobs that cannot act, that a prediction does not price or
    that equal their derived values, unused SM placements, and settings past the model's or the program's sizes."""
    notes: list[str] = []
    inert = inert_knobs(cfg, target, derived)
    inert += program_inert_knobs(cfg, program, skip={k.path for k in inert})
    notes += [k.note() for k in inert]
    named = {k.path for k in inert}  # a knob that cannot act needs no second note
    notes += priced_alike_notes(cfg, target, dev != Device.CUDA, skip=named)
    notes += [f"{path}={value_text(value)} is the value the lowering derives for null here: the program is the one "
              f"null gives, and null would follow the model's shape and the GPU where {value_text(value)} stays put"
              for path, value in derived_alike(cfg, program, dims, target, skip=named)]
    notes += _unused_explicit_kinds(cfg, program)
    if program.constants.max_seq > dims.max_positions:
        notes.append(f"max_seq {program.constants.max_seq} is past the model's {dims.max_positions} "
                     "positions (max_position_embeddings): verify cases there check AMK against transformers, "
                     "which computes them the same way, not the model's quality that far out")
    parts, positions = cfg.attention.kv_partitions, program.constants.max_seq
    if parts is not None and parts > positions:  # the live length is split evenly: never more than one a partition
        notes.append(f"attention.kv_partitions={parts} is more than the program's {positions} positions (max_seq): "
                     f"at least {parts - positions} partitions of each KV head are empty at every step, and still "
                     f"run, signal and are combined; kv_partitions={positions} gives every position one")
    return notes


def _unused_explicit_kinds(cfg: ScheduleConfig, program: MegakernelProgram) -> list[str]:
    """A note for each stage kind `sm.explicit_map` places that this program has no task of (another
    attention.softmax, say): the entry places nothing."""
    if cfg.sm.assignment != SmAssignment.EXPLICIT:
        return []  # the whole map is inert then, and inert_knobs says so
    kinds = {t.kind for t in program.tasks}
    return [f"sm.explicit_map.{k} has no effect: this program has no {k} tasks (its kinds: {', '.join(sorted(kinds))})"
            for k in cfg.sm.explicit_map if k not in kinds]


def _evaluate(v: Verdict, model, target: GpuTarget, program: MegakernelProgram, dev: Device, cases, seed: int,
              corpus, peers: bool, measure: bool, cache: Cache, stop_above_us: float | None = None) -> None:
    from amk.models import Model

    given = model if isinstance(model, Model) else None
    check_kv_memory(program, dev)  # before the weights load
    from amk.schedule.errors import UnsupportedModelError
    from amk.vm.loader import check_kernel_shape

    try:
        check_kernel_shape(program)
    except UnsupportedModelError as e:
        if dev == Device.CUDA:
            raise  # a shape no config can build for is the model's, not this config's failure
        on = "on any GPU" if target.arch == "none" else f"for {target.name}"  # cpu-sim stands in for no GPU
        v.notes.append(f"the CUDA kernel does not build this model {on}: {e}; the ReferenceVM runs it")
    floor = _floor(v, program, target, dev, cache)
    calib = calibrate_file(corpus, target.name)
    _predict(v, program, target, calib)
    v.notes.append(calib.note(target.name))
    full = given or get_model(v.model, v.dtype, dev, weights=True)
    case_list, left_out = resolve_cases(full, program, cases, dev, seed)
    if note := scaling_note(case_list, program.constants.max_seq, left_out):
        v.notes.append(note)
    with bar(len(case_list), f"verifying on {dev.value}", unit="case") as cases_bar:
        ref = counted(reference_hook(full, program, cache, label={"model": v.model}), cases_bar)
        if dev == Device.CUDA:
            timing = run_cuda(v, program, full, case_list, ref, seed, measure, stop_above_us)
        else:
            timing = run_cpu(v, program, full, case_list, ref, seed)
        cases_bar.advance(v.cases_total - cases_bar.done)
    if stop_above_us is not None and (dev != Device.CUDA or not measure):
        why = "no latency is measured" if not measure else "a predicted latency has no repeats to stop"
        v.notes.append(f"stop_above_us={stop_above_us:g} has no effect: it stops a GPU's timed "
                       f"repeats early, and {why}")
    if not measure:
        if peers:
            v.notes.append("peers=True (--peers) has no effect: no latency is measured (measure=False) to compare "
                           "the peers with")
        v.notes.append("latency not asked for (measure=False): correctness only")
        return
    gate_latency(v, timing, floor, dev, program.constants.max_seq)
    if v.latency_us is not None and v.latency_kind == LatencyKind.MEASURED_GPU.value:
        speedups(v, full, program, cache, peers)
    elif peers:
        v.notes.append("peers=True (--peers) has no effect: the peers are timed on a GPU against a measured latency, "
                       f"and this latency is {v.latency_kind or 'missing'}")


# ---- lowering and static checks --------------------------------------------------------------------------


def _lower_cached(v: Verdict, model, target: GpuTarget, cfg: ScheduleConfig, max_seq, cache: Cache):
    from amk.schedule.lower import DEFAULT_MAX_SEQ

    seq = int(max_seq or min(model.dims.max_positions, DEFAULT_MAX_SEQ))
    key = program_key(model.fingerprint, cfg.canonical_json(), json.dumps(target.to_dict(), sort_keys=True),
                      v.dtype, seq, lowering_digest())
    held: dict = {}

    def check(d):  # decode once and keep it: the cache validates with the same parse we need
        held["program"] = MegakernelProgram.from_dict(d)

    label = {"model": v.model, "gpu": target.name, "dtype": v.dtype, "max_seq": seq, "schedule_id": cfg.schedule_id,
             "config": cfg.to_dict()}
    try:
        with gc_paused():  # read back: JSON decode and from_dict; on a miss, lower, validate and hash
            cache.get_or_create_json("program", key, lambda: _lowered(model, target, cfg, seq), check, label=label)
    except ConfigError as e:
        v.reject(f"schema: {e}")
        return None
    except LoweringError as e:
        v.reject(f"lowering: {e.knob}: {str(e).removeprefix(e.knob + ': ')}")
        return None
    except CacheStorageError:
        raise  # the cache directory, not this config: AMK_CACHE_DIR unusable (usage) or its disk full (environment)
    except Exception as e:
        # lower() should only raise LoweringError for a config it cannot handle; anything else is a bug
        # in lowering, reported as a rejection so the loop moves on, with the trace in the notes
        cause = e.__cause__ if e.__cause__ is not None and type(e).__name__ == "CacheError" else e
        v.reject(f"lowering: internal error ({type(cause).__name__}: {cause})")
        v.notes.append("lowering raised an unexpected error (a bug to report): "
                       + traceback.format_exception_only(type(cause), cause)[-1].strip())
        return None
    return held["program"]


def _lowered(model, target: GpuTarget, cfg: ScheduleConfig, seq: int) -> dict:
    """The program's JSON form for the cache, with its fingerprint and the validator's verdict in meta (which the
    fingerprint leaves out): hashing and validating a 12k-task program take most of a second, and every trial of
    the search reads its program back. The cache key holds the digest of the code that did both."""
    from amk.schedule.lower import lower

    program = lower(model, target, cfg, max_seq=seq)
    d = program.to_dict()
    d["meta"] = {**d["meta"], FINGERPRINT_META: MegakernelProgram.fingerprint_of(d),
                 VALIDATION_META: _validation_reason(program, target)}
    return d


def _validate(v: Verdict, program: MegakernelProgram, target: GpuTarget) -> bool:
    """The static validator's verdict (read from meta when the program was validated as it was cached); a
    rejection names at most MAX_ISSUES_IN_REASON issues."""
    reason = program.meta.get(VALIDATION_META)
    if not isinstance(reason, str):
        reason = _validation_reason(program, target)
    if reason:
        v.reject(reason)
    return not reason


def _validation_reason(program: MegakernelProgram, target: GpuTarget) -> str:
    """"" for a program the validator passes, else the rejection reason."""
    from amk.schedule.validate import validate

    res = validate(program, target)
    if res.ok:
        return ""
    parts = []
    for issue in res.issues[:MAX_ISSUES_IN_REASON]:
        tasks = f" (tasks {', '.join(map(str, issue.tasks[:6]))})" if issue.tasks else ""
        parts.append(f"{issue.kind.value}: {issue.message}{tasks}")
    more = len(res.issues) + sum(res.suppressed.values()) - len(parts)
    return "validator: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# ---- floor and prediction ----------------------------------------------------------------------------------


def _floor(v: Verdict, program: MegakernelProgram, target: GpuTarget, dev: Device, cache: Cache):
    from amk.eval.roofline import Floor

    bw = None
    if dev == Device.CUDA:
        from .baselines import measured_bandwidth_gbs

        bw = measured_bandwidth_gbs(cache)
    floor = Floor(program.step_weight_bytes, target.spec_bandwidth_gbs, bw)
    v.spec_floor_us = floor.spec_us or None
    v.measured_floor_us = floor.measured_us
    return floor


def _predict(v: Verdict, program: MegakernelProgram, target: GpuTarget, calib) -> None:
    from amk.schedule.assign import stage_fill
    from amk.schedule.cost import CostModelError, predict

    try:
        p = predict(program, target, calib.coefficients)
    except CostModelError as e:
        v.notes.append(f"cost model: {e}")
        return
    v.predicted_latency_us = p.latency_us
    # a knob the inert rules already named as having no effect here needs no second note on its pricing
    idle = {n.split("=", 1)[0] for n in v.notes if " has no effect: " in n}
    v.notes += [n for n in p.unpriced if n.split("=", 1)[0] not in idle]
    v.cost = {"features": p.features.to_dict(), "context": p.context, "sms_used": p.sms_used,
              "bytes_per_sm_max": p.bytes_per_sm_max, "coefficients": p.coefficients.to_dict(),
              "stage_fill": {f.kind: round(f.fill, 3)
                             for f in stage_fill(program.tasks, program.constants, program.num_sms)}}


def _stats_delta(before: dict, after: dict) -> dict:
    kinds = {k: {f: after[k][f] - before[k][f] for f in ("hits", "misses", "writes")} for k in after}
    return {"hits": sum(d["hits"] for d in kinds.values()), "misses": sum(d["misses"] for d in kinds.values()),
            "by_kind": {k: d for k, d in kinds.items() if any(d.values())}}
