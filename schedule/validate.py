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
5. data hazards over happens-before (RAW, WAR, WAW per element range; see `hazards.sweep`).
"""

from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from types import SimpleNamespace

import numpy as np

from . import hazards, param_buffers, tags_check
from . import opcodes as oc
from . import smem as block_smem
from .clocks import ClockBudgetError, HappensBefore
from .errors import ArgumentError
from .opcodes import Epilogue, Opcode
from .program import BufferKind, Region, is_task_id
from .targets import GpuTarget, get_target


class IssueKind(str, Enum):
    CYCLE = "cycle"
    QUEUE_ORDER = "queue_order"
    UNSATISFIABLE_WAIT = "unsatisfiable_wait"
    PARTIAL_WAIT = "partial_wait"
    RACE_NO_WRITER = "race_no_writer"
    KV_READ_BEFORE_APPEND = "kv_read_before_append"
    CLOBBER = "clobber"
    SM_OUT_OF_RANGE = "sm_out_of_range"
    ABI = "abi"
    OUT_OF_BOUNDS = "out_of_bounds"
    TAGGED_READ = "tagged_read"  # a read of a tagged stream that could see stale values, or a wait it cannot carry
    INTERNAL = "internal"
    NOT_CHECKED = "not_checked"  # a check that cannot run on this program (why is said): its issues are unknown


@dataclass(frozen=True)
class ValidationIssue:
    kind: IssueKind
    message: str
    tasks: tuple[int, ...] = ()
    buffers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"kind": self.kind.value, "message": self.message, "tasks": list(self.tasks),
                "buffers": list(self.buffers)}


@dataclass
class ValidationResult:
    ok: bool
    issues: list[ValidationIssue]
    seconds: float
    suppressed: dict[str, int] = field(default_factory=dict)  # issue kind -> how many were left out

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": self.seconds, "issues": [i.to_dict() for i in self.issues],
                "suppressed": dict(self.suppressed)}

    def __bool__(self) -> bool:
        """`ok`: `assert amk.validate(p)` holds only for a program with no issue."""
        return self.ok

    def first_message(self) -> str:
        return self.issues[0].message if self.issues else ""

    def kinds(self) -> set[IssueKind]:
        return {i.kind for i in self.issues}


MAX_ISSUES_PER_KIND = 20
# params fields (flattened, dotted) that name buffers besides every X that has an X_off sibling; the
# optional ones may be NO_BUFFER
BUFFER_FIELDS = frozenset({"table", "token", "weight", "kcache", "vcache", "epi.out"})
OPTIONAL_BUFFER_FIELDS = frozenset({"norm_weight", "epi.bias", "epi.kcache", "epi.vcache", "epi.qnorm",
                                    "epi.knorm", "epi.argmax", "part_stats",
                                    "inp_stats", "join.out", "join.part"})


class _Report:
    def __init__(self, program):
        self.issues: list[ValidationIssue] = []
        self.counts: dict[IssueKind, int] = {}
        self.program = program

    def add(self, kind, message: str, tasks=(), buffers=()) -> None:
        if not isinstance(kind, IssueKind):
            kind = IssueKind[kind]
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if n < MAX_ISSUES_PER_KIND:
            self.issues.append(ValidationIssue(kind, message, tuple(self._task_of(t) for t in tasks
                                                                    if isinstance(t, int)),
                                               tuple(str(b) for b in buffers)))

    def _task_of(self, tid: int) -> int:
        """A task id; the hazard sweep numbers each join after the tasks: it is reported as its first task."""
        n = len(self.program.tasks)
        if tid >= n and tid - n < len(self.program.joins):
            return self.program.joins[tid - n].tasks[0]
        return tid

    def internal(self, where: str, exc: BaseException) -> None:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        self.add(IssueKind.INTERNAL, f"validator failed in {where}: {last}")

    def tname(self, tid) -> str:
        try:
            n = len(self.program.tasks)
            if tid >= n and tid - n < len(self.program.joins):
                j = self.program.joins[tid - n]
                return (f"the combine of counter {j.counter} ({self.program.counters[j.counter].name}) by the last "
                        f"of tasks {', '.join(map(str, j.tasks[:4]))}{', ...' if len(j.tasks) > 4 else ''}")
            return f"task {tid} ({self.program.tasks[tid].kind})" if tid >= 0 else f"task {tid}"
        except Exception:
            return f"task {tid}"

    @property
    def total(self) -> int:
        return sum(self.counts.values())


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
            _guarded(rep, "hazards", hazards.sweep, program, per, hb, rep.add, rep.tname)


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


# ---- 1 and 2. per task: ABI, shared memory, buffer ids, bounds ---------------------------------------
class _Layout:
    """How one params class flattens (nested dataclasses in place), and where its buffer ids sit."""

    def __init__(self, cls):
        names = list(cls.__dataclass_fields__)
        self.top = attrgetter(*names) if len(names) > 1 else (lambda p, g=attrgetter(names[0]): (g(p),))
        self.nested: list[tuple[int, _Layout]] = []
        self.paths: list[str] = []
        for i, f in enumerate(cls.__dataclass_fields__.values()):
            sub = getattr(oc, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), None)
            if isinstance(sub, type) and hasattr(sub, "__dataclass_fields__"):
                self.nested.append((i, _layout(sub)))
        nested = dict(self.nested)
        for i, name in enumerate(names):
            self.paths += [f"{name}.{x}" for x in nested[i].paths] if i in nested else [name]
        self.nested.reverse()
        self.ix = {x: i for i, x in enumerate(self.paths)}
        req = [i for i, x in enumerate(self.paths) if (x in BUFFER_FIELDS or x + "_off" in self.ix)
               and x not in OPTIONAL_BUFFER_FIELDS]
        opt = [i for i, x in enumerate(self.paths) if x in OPTIONAL_BUFFER_FIELDS]
        self.required = np.asarray(req, dtype=np.int64)
        self.optional = np.asarray(opt, dtype=np.int64)

    def flat(self, p) -> list:
        vals = list(self.top(p))
        for i, sub in self.nested:
            vals[i:i + 1] = sub.flat(vals[i])
        return vals


_LAYOUTS: dict[type, _Layout] = {}
_INT_TYPES: set[type] = set()


def _layout(cls) -> _Layout:
    lay = _LAYOUTS.get(cls)
    if lay is None:
        lay = _LAYOUTS[cls] = _Layout(cls)
    return lay


def _all_int32(vals: list) -> bool:
    for tp in set(map(type, vals)) - _INT_TYPES:
        if not issubclass(tp, int) or tp is bool:
            return False
        _INT_TYPES.add(tp)
    return not vals or (min(vals) >= -oc.INT32_MAX and max(vals) <= oc.INT32_MAX)


def _check_tasks(program, target, rep: _Report) -> None:
    """Instruction limits, params type and int32 range, buffer ids in params, shared memory, whole heads."""
    flat: list = []
    spans: dict[_Layout, tuple[list[int], list[int]]] = {}  # layout -> (task ids, offsets into flat)
    mw, ms, mp, params_of = oc.MAX_WAITS, oc.MAX_SIGNALS, oc.MAX_PREFETCH, oc.PARAMS_OF
    for tid, t in enumerate(program.tasks):
        try:
            if len(t.waits) > mw or len(t.signals) > ms or len(t.prefetch) > mp:
                rep.add(IssueKind.ABI, f"{rep.tname(tid)} has {len(t.waits)} waits, {len(t.signals)} signals, "
                        f"{len(t.prefetch)} prefetches (limits {mw}/{ms}/{mp})", tasks=(tid,))
            op, p = t.opcode, t.params
            cls = params_of.get(op) if isinstance(op, Opcode) else None
            if cls is None or type(p) is not cls:
                rep.add(IssueKind.ABI, f"{rep.tname(tid)} has opcode {op!r} with params of type "
                        f"{type(p).__name__}, expected {cls.__name__ if cls else 'a known opcode'}", tasks=(tid,))
                continue
            lay = _layout(cls)
            vals = lay.flat(p)
            ids, offs = spans.setdefault(lay, ([], []))
            ids.append(tid)
            offs.append(len(flat))
            flat += vals
        except Exception as e:  # noqa: BLE001 - a malformed task is an ABI issue, not a crash
            _malformed(rep, tid, e)
    if not _all_int32(flat):  # one pass over every parameter; task by task only when something is off
        for lay, (ids, offs) in spans.items():
            for tid, off in zip(ids, offs):
                for path, v in zip(lay.paths, flat[off:off + len(lay.paths)]):
                    if isinstance(v, bool) or not isinstance(v, int) or not -oc.INT32_MAX <= v <= oc.INT32_MAX:
                        rep.add(IssueKind.ABI, f"{rep.tname(tid)}: parameter {path}={v!r} does not fit in int32",
                                tasks=(tid,))
        return
    allv = np.asarray(flat, dtype=np.int64)
    for lay, (ids, offs) in spans.items():
        rows = allv[np.asarray(offs)[:, None] + np.arange(len(lay.paths))]
        _check_params(program, lay, np.asarray(ids), rows, rep)


def _check_params(program, lay: _Layout, tids, a, rep: _Report) -> None:
    """Vectorised over every task of one params layout: `a` holds one flattened params row per task."""
    nb, bufs, c = len(program.buffers), program.buffers, program.constants
    if lay.required.size or lay.optional.size:
        r, o = a[:, lay.required], a[:, lay.optional]
        bad = ((r < 0) | (r >= nb)).any(axis=1) | ((o < -1) | (o >= nb)).any(axis=1)
        for k in np.flatnonzero(bad):
            for i in [*lay.required, *lay.optional]:
                v = int(a[k, i])
                if not (0 <= v < nb or (v == oc.NO_BUFFER and lay.paths[i] in OPTIONAL_BUFFER_FIELDS)):
                    rep.add(IssueKind.ABI, f"{rep.tname(int(tids[k]))}: parameter {lay.paths[i]}={v} names no "
                            "buffer", tasks=(int(tids[k]),))
        a, tids = a[~bad], tids[~bad]
    ix, hd = lay.ix, c.head_dim
    combine_need = None
    smem = block_smem.program_work_smem_bytes(program.smem_per_block, program.build)
    consumers = block_smem.consumer_threads(program.threads_per_block, program.build)
    col = {name: a[:, i] for name, i in ix.items()}
    try:
        if "klen" in ix:  # matvec: the staged input slice (all of K when the norm is fused) and its rows
            cols = np.asarray([b.cols for b in bufs], dtype=np.int64)
            width = np.where(col["norm_weight"] != oc.NO_BUFFER, cols[col["weight"]], col["klen"])
            nrows = col["rows"] * np.where(col["epi.pair_offset"] != 0, 2, 1)
            partials = [block_smem.page_partials(int(k), int(r), program.build, c.dtype.nbytes)
                        for k, r in zip(col["klen"], nrows)]
            need = np.asarray([block_smem.matvec_smem_bytes(int(w), int(r), p) for w, r, p in zip(width, nrows, partials)])
            per_copy = block_smem.combine_per_copy(program.build, c.dtype.nbytes)
            combine_need = _combine_smem(col, hd, consumers, per_copy, rep, tids)
            what = "an input of {} elements and {} rows"
            detail = (width, nrows)
        elif "chunk" in ix:  # attention: q of the group plus a chunk of scores
            group = c.n_heads // c.n_kv_heads // int(program.build.get("Q_SPLITS", 1))  # a task's q heads
            if "stage" in ix:  # ATTN_PARTIAL: statistics scratch and staged K/V rows behind its chunk
                dims = SimpleNamespace(group=group, head_dim=hd)
                tpb, nbytes = consumers, c.dtype.nbytes
                need = np.asarray([block_smem.attention_partial_smem_bytes(int(k), int(n), dims, tpb, nbytes)
                                   for k, n in zip(col["chunk"], col["stage"])])
                what, detail = "a chunk of {} positions and {} staged K/V rows", (col["chunk"], col["stage"])
            else:
                need = _attention_smem(col["chunk"], group, hd, consumers)
                what, detail = "a chunk of {} positions", (col["chunk"],)
        else:
            need = None
    except Exception as e:  # noqa: BLE001 - the tiler's formulas changed shape
        rep.internal("shared-memory check", e)
        need = None
    ring = block_smem.ring_bytes(program.build)
    if ring:
        room = (f"smem_per_block={program.smem_per_block} less pipeline.pages={program.build['PAGES']} x "
                f"pipeline.page_kb={ring // program.build['PAGES'] // 1024} leaves {smem}")
    else:
        room = f"smem_per_block is {smem}"
    if need is not None:
        for k in np.flatnonzero(need > smem):
            tid = int(tids[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} stages {what.format(*(int(d[k]) for d in detail))} and "
                    f"needs {int(need[k])} bytes of shared memory; {room}", tasks=(tid,))
    if combine_need is not None:
        for k in np.flatnonzero(combine_need > smem):
            tid = int(tids[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} combines an input of {int(col['klen'][k])} elements from "
                    f"{int(col['inp_parts'][k])} attention partitions with inp_slots={int(col['inp_slots'][k])} "
                    f"and needs {int(combine_need[k])} bytes of shared memory; {room}", tasks=(tid,))
    if "epi.kind" in ix and "row0" in ix:
        # whole heads, or (a split head) rows inside the first half of one head with their partners half a head on
        r0, n, pair = col["row0"], col["rows"], col["epi.pair_offset"]
        whole = (pair == 0) & (r0 % hd == 0) & (n % hd == 0)
        halves = (pair == hd // 2) & (n > 0) & (r0 % hd + n <= hd // 2)
        rope = (col["epi.kind"] == Epilogue.ROPE_KV) & ~whole & ~halves
        for k in np.flatnonzero(rope):
            tid, a, m, po = int(tids[k]), int(r0[k]), int(n[k]), int(pair[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)}: the ROPE_KV epilogue covers rows [{a}, {a + m}) with pair "
                    f"offset {po}: neither whole heads of {hd} nor rows of one head's first half with pair offset "
                    f"{hd // 2}", tasks=(tid,))


def _combine_smem(col: dict, head_dim: int, threads: int, per_copy: int, rep: _Report, tids) -> np.ndarray:
    """Shared memory each matvec task's input combine takes (0 where its input is not in partitions; `per_copy`
    partition elements a 16-byte copy); an ABI issue where a combining task's inp_slots is outside [1, inp_parts],
    which the kernel's copies would overrun."""
    parts, slots = col["inp_parts"], col["inp_slots"]
    for k in np.flatnonzero((parts > 0) & ((slots < 1) | (slots > parts))):
        rep.add(IssueKind.ABI, f"{rep.tname(int(tids[k]))}: parameter inp_slots={int(slots[k])} is outside "
                f"[1, inp_parts={int(parts[k])}]", tasks=(int(tids[k]),))
    out = np.zeros(len(parts), dtype=np.int64)
    for k in np.flatnonzero(parts > 0):
        k0, klen, p = int(col["k0"][k]), int(col["klen"][k]), int(parts[k])
        heads = block_smem.combine_heads(k0, klen, head_dim) if col["inp_stats"][k] != oc.NO_BUFFER else 0
        out[k] = block_smem.combine_smem_bytes(klen, p, heads, threads, max(1, int(slots[k])), per_copy)
    return out


def _attention_smem(chunk, group: int, head_dim: int, threads: int):
    dims = SimpleNamespace(group=group, head_dim=head_dim)
    return np.asarray([block_smem.attention_smem_bytes(int(k), dims, threads) for k in np.atleast_1d(chunk)])


def _malformed(rep: _Report, tid: int, exc: BaseException) -> None:
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    rep.add(IssueKind.ABI, f"{rep.tname(tid)} is malformed: {last}", tasks=(tid,))


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
