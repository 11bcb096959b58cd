"""validate(program, target) -> ValidationResult: static checks of a MegakernelProgram that never raise.

1. structure and ABI (queues, SM ids, instruction limits, int32 params, shared memory, buffer ids),
2. params against regions (what the params write and read, the task or its join declares, element by element
   where the params give the range; no write to a weight, and weights read as weights: schedule/param_buffers.py),
   and bounds (every region inside its buffer; no region writes a weight),
   and the tagged streams, x and the MLP's hidden row (each tagged read expects the version the last write of its
   stream makes; a carried wait only where its producers write nothing but what the reader reads tagged:
   schedule/tags_check.py),
3. counters (every wait satisfiable and for all of its counter's producers),
4. deadlock (the signal/wait/queue graph is acyclic; a cycle comes back as a witness),
5. data hazards over happens-before (RAW, WAR, WAW per element range; see `hazard_sweep.sweep`).

The issue kinds and the result are issues.py's; the per-task checks of 1 and 2, abi_check.py's.
"""

from __future__ import annotations

import gc
import time

from . import hazard_sweep, hazards, param_buffers, tags_check
from . import opcodes as oc
from . import smem as block_smem
from .abi_check import BUFFER_FIELDS as BUFFER_FIELDS
from .abi_check import OPTIONAL_BUFFER_FIELDS as OPTIONAL_BUFFER_FIELDS
from .abi_check import _check_tasks
from .clocks import ClockBudgetError, HappensBefore
from .errors import ArgumentError
from .issues import MAX_ISSUES_PER_KIND as MAX_ISSUES_PER_KIND
from .issues import IssueKind as IssueKind
from .issues import ValidationIssue as ValidationIssue
from .issues import ValidationResult as ValidationResult
from .issues import _malformed, _Report
from .program import BufferKind, Region, is_task_id
from .targets import GpuTarget, get_target


def validate(program, target=None, *, gpu_limits: bool = True) -> ValidationResult:
    """The static checks of the module docstring on `program` (a MegakernelProgram) for `target` (a GpuTarget or
    its name; None: the target the program was lowered for, named in its meta, and no check of a GPU's limits for a
    program that names none or one not registered; `gpu_limits=False`: no check of a GPU's limits at all, for a
    program built past them on purpose): `ok` and every issue found, at most MAX_ISSUES_PER_KIND a kind (the
    rest counted in `suppressed`). Raises ArgumentError naming `program` for something that is no program at all,
    `gpu_limits` for anything but True or False, or `target` for something that is no target name nor GpuTarget,
    and UnknownTargetError for a `target` name not registered (a caller's mistake, not an issue of a program, as
    lower() raises it); otherwise never raises: a check that fails internally is an issue."""
    if not hasattr(program, "constants") or not hasattr(program, "tasks"):
        text = repr(program)
        raise ArgumentError("program", f"expected a program from amk.lower, got {type(program).__name__} "
                                       f"({text if len(text) <= 60 else text[:57] + '...'})")
    if not isinstance(gpu_limits, bool):  # "no" would check them
        raise ArgumentError("gpu_limits", f"expected True or False, got {gpu_limits!r:.60}")
    if not gpu_limits:
        target = None
    elif target is None:
        target = _lowered_for(program)
    elif not isinstance(target, GpuTarget):
        # ArgumentError for no name nor GpuTarget, UnknownTargetError for a name not registered: the caller's
        # mistake, as lower() and evaluate() raise it, not an issue of the program
        target = get_target(target)
    t0 = time.perf_counter()
    rep = _Report(program)
    gc_was = gc.isenabled()
    gc.disable()  # the sweep allocates many small containers; collections would only cost time
    try:
        _validate(program, target, rep)
    except Exception as e:  # noqa: BLE001 - validate never raises
        rep.internal("validate", e)
    finally:
        if gc_was:
            gc.enable()
    suppressed = {k.value: n - MAX_ISSUES_PER_KIND for k, n in rep.counts.items() if n > MAX_ISSUES_PER_KIND}
    return ValidationResult(not rep.counts, rep.issues, time.perf_counter() - t0, suppressed)


def _lowered_for(program):
    """The registered target a program's meta names (amk.lower records it), else None."""
    from .targets import TARGETS

    meta = getattr(program, "meta", None)
    name = meta.get("target") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name in TARGETS else None


def _guarded(rep: _Report, name: str, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        rep.internal(name, e)
        return None


def _validate(program, target, rep: _Report) -> None:
    if target is not None:
        try:
            target = get_target(target)
        except Exception as e:  # noqa: BLE001 - e.g. UnknownTargetError
            rep.add(IssueKind.ABI, f"target: {e}")
            target = None
    _guarded(rep, "structure", _check_structure, program, target, rep)
    _guarded(rep, "tasks", _check_tasks, program, target, rep)
    fields = param_buffers.TaskFields(program)  # both checks read each task's params fields
    _guarded(rep, "param buffers", param_buffers.check, program, rep.add, rep.tname, fields)
    _guarded(rep, "tags", tags_check.check, program, rep.add, rep.tname, fields)
    per = _guarded(rep, "regions", hazards.collect, program, lambda tid, e: _malformed(rep, tid, e))
    if per is not None:
        _guarded(rep, "regions", hazards.check_regions, program, per, rep.add, rep.tname)
    n0 = rep.total
    _guarded(rep, "counters", _check_counters, program, rep)
    counters_ok = rep.total == n0
    graph = _guarded(rep, "deadlock", hazards.build_graph, program)
    if graph is None:
        return
    if not graph.acyclic:
        _guarded(rep, "deadlock", hazards.report_cycle, program, graph, rep.add, rep.tname)
        return
    if counters_ok:
        try:
            hb = HappensBefore(graph, program.queues)
        except ClockBudgetError as e:  # a program broken in structure already, or past any size that runs
            rep.add(IssueKind.NOT_CHECKED, f"the data-hazard sweep did not run: {e}")
            return
        except Exception as e:  # noqa: BLE001 - validate never raises
            rep.internal("happens-before", e)
            return
        if per is not None:
            _guarded(rep, "hazards", hazard_sweep.sweep, program, per, hb, rep.add, rep.tname)


# ---- 1. structure -----------------------------------------------------------------------------------
def context_problems(program) -> list[str]:
    """Why the program's max_seq cannot run on any GPU, one message a reason, each starting "N positions:": past the
    kernel's int arithmetic (the attention's score offsets, 0 .. n_heads * max_seq - 1, are int). Empty when it
    can."""
    c = program.constants
    if c.n_heads * c.max_seq > oc.INT32_MAX + 1:
        return [f"{c.max_seq} positions: {c.n_heads} q heads x max_seq = {c.n_heads * c.max_seq} attention scores, "
                f"past the int32 offsets the kernel takes them at"]
    return []


def resident_bytes(program) -> int:
    """Bytes of every buffer the program allocates on the device: the weights, the RoPE tables, the KV cache, the
    scratch (a value placed in an arena counted once, as its arena) and the I/O; not the CUDA context's own."""
    return sum(b.nbytes for b in program.buffers if b.kind != BufferKind.SCRATCH or b.arena == oc.NO_BUFFER)


def kv_cache_bytes(program) -> int:
    """Bytes of the program's KV cache buffers."""
    return sum(b.nbytes for b in program.buffers if b.kind == BufferKind.KV)


def model_weight_bytes(program) -> int:
    """Bytes of the model's own weights: the WEIGHT buffers but the RoPE tables, which grow with max_seq."""
    c = program.constants
    return sum(b.nbytes for b in program.buffers if b.kind == BufferKind.WEIGHT and b.id not in (c.rope_cos, c.rope_sin))


def memory_problem(program, target) -> str | None:
    """Why the program's buffers (resident_bytes) do not fit `target`'s device memory (a GpuTarget or None; None,
    or a target with no memory figure, is not checked), or None where they fit."""
    memory = getattr(target, "memory_bytes", None)
    if not memory:
        return None
    need = resident_bytes(program)
    if need <= memory:
        return None
    kv = kv_cache_bytes(program)
    return (f"the program's buffers need {need / 2**30:.1f} GiB (the weights {model_weight_bytes(program) / 2**30:.1f}, "
            f"the KV cache {kv / 2**30:.1f} at max_seq {program.constants.max_seq}), past {target.name}'s "
            f"{memory / 2**30:.1f} GiB of device memory")


def _check_context(program, target, rep: _Report) -> None:
    for message in context_problems(program):
        rep.add(IssueKind.ABI, f"max_seq: {message}")
    over = memory_problem(program, target)
    if over:
        rep.add(IssueKind.ABI, over)


def _check_structure(program, target, rep: _Report) -> None:
    tasks, queues = program.tasks, program.queues
    n, nsm = len(tasks), len(queues)
    if n > oc.MAX_TASKS:
        rep.add(IssueKind.ABI, f"{n} tasks exceed MAX_TASKS={oc.MAX_TASKS}")
    if len(program.counters) > oc.MAX_COUNTERS:
        rep.add(IssueKind.ABI, f"{len(program.counters)} counters exceed MAX_COUNTERS={oc.MAX_COUNTERS}")
    for i, b in enumerate(program.buffers):
        if b.id != i:
            rep.add(IssueKind.ABI, f"buffer {b.name!r} at index {i} has id {b.id}", buffers=(b.name,))
    for i, c in enumerate(program.counters):
        if c.id != i:
            rep.add(IssueKind.ABI, f"counter {c.name!r} at index {i} has id {c.id}")
    tpb = program.threads_per_block
    if not (isinstance(tpb, int) and tpb % 32 == 0 and 128 <= tpb <= 1024):
        rep.add(IssueKind.ABI, f"threads_per_block={tpb!r} is not a multiple of 32 in [128, 1024]")
    elif target is not None and tpb > target.max_threads_per_block:
        rep.add(IssueKind.ABI, f"threads_per_block={tpb} exceeds {target.name}'s {target.max_threads_per_block}")
    _check_context(program, target, rep)
    if target is not None:
        pages = int(program.build.get("PAGES", 0))
        if pages and target.lacks_bulk_copies:
            rep.add(IssueKind.ABI, f"pipeline.pages={pages} needs bulk copies (sm_90 or newer); "
                                   f"{target.name} is {target.arch}: set pipeline.pages to 0")
        room = block_smem.max_dynamic_smem(target.smem_per_block_max, program.build, program.constants.head_dim)
        if program.smem_per_block > room:
            rep.add(IssueKind.ABI, f"smem_per_block={program.smem_per_block} exceeds the {room} bytes {target.name} "
                                   f"leaves beside this build's static shared memory ({target.smem_per_block_max} in "
                                   "all a block)")
        if nsm > target.sm_count:
            rep.add(IssueKind.SM_OUT_OF_RANGE, f"the program has {nsm} SM queues but {target.name} has "
                                               f"{target.sm_count} SMs")
    where: list[tuple[int, int] | None] = [None] * n
    for sm, q in enumerate(queues):
        for qp, tid in enumerate(q):
            if not is_task_id(tid, n):
                rep.add(IssueKind.ABI, f"SM {sm}'s queue holds {tid!r} at position {qp}, not a task id")
            elif where[tid] is not None:
                rep.add(IssueKind.ABI, f"{rep.tname(tid)} is on SM {where[tid][0]}'s queue and on SM {sm}'s",
                        tasks=(tid,))
            else:
                where[tid] = (sm, qp)
    for tid, t in enumerate(tasks):
        if t.id != tid:
            rep.add(IssueKind.ABI, f"task at index {tid} has id {t.id}", tasks=(tid,))
        if not isinstance(t.stage, int):
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} has stage {t.stage!r}, not an integer", tasks=(tid,))
        sm = t.sm
        if not (isinstance(sm, int) and 0 <= sm < nsm) or (target is not None and sm >= target.sm_count):
            lim = nsm if target is None else min(nsm, target.sm_count)
            rep.add(IssueKind.SM_OUT_OF_RANGE, f"{rep.tname(tid)} is placed on SM {sm!r}, outside [0, {lim})",
                    tasks=(tid,))
        w = where[tid]
        if w is None:
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} is on no SM queue", tasks=(tid,))
            continue
        if sm != w[0] or t.queue_pos != w[1]:
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} says SM {sm} position {t.queue_pos}, but it is queued on "
                                   f"SM {w[0]} at position {w[1]}", tasks=(tid,))


# ---- 3. counters ------------------------------------------------------------------------------------
def _check_counters(program, rep: _Report) -> None:
    counters = program.counters
    nc = len(counters)
    signalled = [0] * nc
    for tid, t in enumerate(program.tasks):
        for s in t.signals:
            if isinstance(s, int) and 0 <= s < nc:
                signalled[s] += 1
            else:
                rep.add(IssueKind.UNSATISFIABLE_WAIT, f"{rep.tname(tid)} signals counter {s!r}, which does not "
                        "exist", tasks=(tid,))
    _count_arrivals(program, signalled, rep)
    for c in counters:
        if 0 <= c.id < nc and c.producers != signalled[c.id]:
            rep.add(IssueKind.UNSATISFIABLE_WAIT, f"counter {c.id} ({c.name}) declares {c.producers} producers "
                    f"but {signalled[c.id]} signals reach it per step")
    for tid, t in enumerate(program.tasks):
        for w in t.waits:
            cid, n = w.counter, w.count
            if not (isinstance(cid, int) and 0 <= cid < nc):
                rep.add(IssueKind.UNSATISFIABLE_WAIT, f"{rep.tname(tid)} waits on counter {cid!r}, which does "
                        "not exist", tasks=(tid,))
                continue
            cn = counters[cid]
            have = signalled[cid]
            if n > have:
                rep.add(IssueKind.UNSATISFIABLE_WAIT, f"{rep.tname(tid)} waits for {n} signals of counter {cid} "
                        f"({cn.name}), which only {have} tasks signal", tasks=(tid,))
            elif n < 1:
                rep.add(IssueKind.PARTIAL_WAIT, f"{rep.tname(tid)} waits for count {n} on counter {cid} "
                        f"({cn.name}); a wait must count at least 1", tasks=(tid,))
            elif n < cn.producers and cn.producers > 1:
                rep.add(IssueKind.PARTIAL_WAIT, f"{rep.tname(tid)} waits for {n} of the {cn.producers} producers "
                        f"of counter {cid} ({cn.name}); the count cannot say which finished", tasks=(tid,))


def _count_arrivals(program, signalled: list[int], rep: _Report) -> None:
    """A join's tasks each add 1 to its counter once (inside the task, not as a signal): count them, and check
    that every task of the join names that counter, and that no other task does."""
    nc, n = len(program.counters), len(program.tasks)
    named: dict[int, int] = {}  # task -> the counter its params add to
    for tid, t in enumerate(program.tasks):
        j = getattr(t.params, "join", None)
        if j is not None and j.active:
            named[tid] = j.arrivals
    for j in program.joins:
        if not (isinstance(j.counter, int) and 0 <= j.counter < nc):
            rep.add(IssueKind.UNSATISFIABLE_WAIT, f"a join names counter {j.counter!r}, which does not exist",
                    tasks=j.tasks[:1])
            continue
        for tid in j.tasks:
            if not is_task_id(tid, n):
                rep.add(IssueKind.ABI, f"the join of counter {j.counter} lists task {tid!r}, which does not exist")
            elif named.pop(tid, None) != j.counter:
                rep.add(IssueKind.UNSATISFIABLE_WAIT, f"{rep.tname(tid)} is a task of the join of counter "
                        f"{j.counter} but its params do not add to that counter", tasks=(tid,))
            else:
                signalled[j.counter] += 1
    for tid, cid in named.items():
        rep.add(IssueKind.UNSATISFIABLE_WAIT, f"{rep.tname(tid)} adds to counter {cid} as a join's task, but no join "
                "of the program lists it", tasks=(tid,))
    for j in program.joins:
        _check_split_join(program, j, rep)


def _check_split_partials(program, t, x: oc.SplitJoin, rep: _Report) -> None:
    """A split task's partial sums: every split's rows of its row block inside one fp32 activation buffer, and its own
    split's rows among the regions it declares writing (what the hazard check reads)."""
    if not 0 <= x.part < len(program.buffers):
        return  # reported as a parameter that names no buffer
    b, p = program.buffers[x.part], t.params
    last = x.part_off + (x.splits - 1) * x.stride + p.epi.pair_offset + p.row0 + p.rows
    own = Region(x.part, x.part_off + x.split * x.stride + p.row0, p.rows)
    if b.kind not in (BufferKind.SCRATCH, BufferKind.ARENA) or b.dtype != oc.DType.F32:
        why = f"buffer {b.name} is {b.kind.value} {b.dtype.name}, not fp32 activations"
    elif x.part_off < 0 or x.stride < p.rows or last > b.numel:
        why = f"its splits' rows reach element {last} of buffer {b.name}'s {b.numel}"
    elif own not in t.writes:
        why = f"the task does not declare writing its own rows {own}"
    else:
        return
    rep.add(IssueKind.ABI, f"{rep.tname(t.id)}: join.part={x.part}, part_off={x.part_off}, stride={x.stride}: {why}",
            tasks=(t.id,))


def _check_split_join(program, j, rep: _Report) -> None:
    """A k-split join's last task knows it is last when the arrivals reach `splits` a step, and sums splits 0..
    splits-1: its tasks must be exactly those splits, one task each."""
    members = [program.tasks[t] for t in j.tasks if isinstance(t, int) and 0 <= t < len(program.tasks)]
    sj = [getattr(t.params, "join", None) for t in members]
    if not sj or not all(isinstance(x, oc.SplitJoin) for x in sj):
        return
    n = len(j.tasks)
    if any(x.splits != n for x in sj) or sorted(x.split for x in sj) != list(range(n)):
        rep.add(IssueKind.UNSATISFIABLE_WAIT, f"the k-split join of counter {j.counter} has {n} tasks, whose "
                f"splits are {sorted(x.split for x in sj)} of {sorted({x.splits for x in sj})}: the last of them "
                "would never know it is last, or would sum a split twice", tasks=j.tasks[:1])
    # the last task sums the partials of its own rows: every task of the join must store those rows, to the same
    # partials, and finish them with the same epilogue
    for t, x in zip(members, sj):
        _check_split_partials(program, t, x, rep)
    block = {(t.params.weight, t.params.row0, t.params.rows, t.params.epi, x.part, x.part_off, x.stride)
             for t, x in zip(members, sj)}
    if len(block) > 1:
        rep.add(IssueKind.ABI, f"the k-split join of counter {j.counter} mixes tasks of different row blocks, "
                "partial sums or epilogues (weight, row0, rows, epi, join.part, join.part_off, join.stride differ): "
                "its last task would sum partials no task of it stored", tasks=j.tasks[:2])
