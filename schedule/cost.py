"""Cost model: a predicted step latency for a lowered program on a GPU target, with no GPU.

Each SM walks its queue in order; a task starts when its SM is free and every counter it waits on has
been signalled enough times (plus one acquire of global memory). A task's time is its weight bytes and
KV bytes over the SM's share of bandwidth, plus a fixed dispatch cost. With the weight pipeline
(pipeline.pages > 0) the weight bytes stream into shared memory while the task waits on its dependencies, since
weights never depend on activations. The L2 prefetch (pipelining_depth > 0 without pages) gets no such credit:
it was measured slower at every depth and cap (llama-3.2-1b bf16: 18-23% on an H200, bench/results/
loop_20261130_h200_llama_s0/results.tsv; 6-12% on an H100, bench/results/20261122-040834_h100-sxm_llama-3.2-
1b_bf16_s3_third.json), so it is priced as the register path and the search's learned part charges what the
GPU shows. On the register path a matvec task lasts as long as its busiest warp streams: its weight bytes are
counted as the busiest warp's steps on every consumer warp, each at least what the SM streams in one memory
latency (autotile.streamed_bytes). A task of a join (attention.combine =
last_partition) pays one more round trip, its arrival. Activation reads are not priced, except the attention
partitions a combine reads (combine_bytes): under attention.combine = o_input every O task reads all of them
(128 KiB a task at 16 partitions on llama-3.2-1b), under stage and last_partition one task a KV head. They are
priced like KV bytes, at the SM's rate: O's input
staging traced 2.9 us for 64 KiB an SM on an H200, against 2.1 us so priced
(bench/results/20261201-2315_h200_o_combine_slots_and_gpu_suite.json). The step is the latest finish plus the
launch. Along the path that decides each finish we carry (memory microseconds, tasks, waits), so measured rows
fit the coefficients by least squares.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .autotile import MEMORY_LATENCY_NS, WarpSplit, streamed_bytes
from .errors import AmkError
from .opcodes import NO_BUFFER, Opcode
from .program import MegakernelProgram, Task
from .smem import combine_heads, consumer_threads, partial_bytes
from .targets import GpuTarget, get_target

MIN_FIT_ROWS = 5
LOAD_BYTES = 16  # one vectorised load (uint4)
JOIN_OPCODES = (Opcode.ATTN_PARTIAL, Opcode.ATTN_VALUES)  # their params may make them tasks of a join


class CostModelError(AmkError, ValueError):
    """The cost model cannot price this program (a queue that never drains) or fit these rows."""


@dataclass(frozen=True)
class CostCoefficients:
    # Defaults fitted (launch held at 4 us) on the default configs of six public shapes on an H200, 135M to 3B
    # parameters, 16 to 36 layers: every prediction within 4% of its measurement, where the earlier defaults
    # (0.4 + 0.8 us a task on the path) predicted 12-55% too fast, most on the smallest shapes
    # (bench/results/20261202-0337_h200_six_shapes_with_peers.json). Traced, a task on the path costs its input
    # staging, epilogue and signal beyond its bytes, and its wait the boundary's signal and spread
    # (bench/results/20261202-0650_h200_three_shape_traces.json).
    mem_scale: float = 1.16  # spec bandwidth is never reached: about 86% of it streams
    task_overhead_us: float = 1.8  # fetch and decode one instruction, stage its input, reduce, store, signal
    wait_us: float = 1.0  # one acquire round trip on a counter in global memory, and the spread of ready times
    launch_us: float = 4.0  # one kernel launch (host side included, as bench times it)
    memory_latency_ns: float = MEMORY_LATENCY_NS  # DRAM latency: the bytes-in-flight (Little's law) limit, a step's floor
    fitted_rows: int = 0  # 0: the defaults above; else how many measured rows they were fitted on

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Features:
    """The critical path in the units the coefficients multiply."""

    mem_us: float  # bytes over unscaled bandwidth, in microseconds
    tasks: int
    waits: int

    def __add__(self, other: Features) -> Features:
        return Features(self.mem_us + other.mem_us, self.tasks + other.tasks, self.waits + other.waits)

    def to_dict(self) -> dict:
        return asdict(self)


_ZERO = Features(0.0, 0, 0)


@dataclass(frozen=True)
class Prediction:
    latency_us: float
    features: Features
    context: int
    sms_used: int
    bytes_per_sm_max: int
    coefficients: CostCoefficients
    unpriced: tuple[str, ...] = ()  # knobs of the program this prediction does not move with, each said in a line

    def to_dict(self) -> dict:
        return {"latency_us": self.latency_us, "features": self.features.to_dict(), "context": self.context,
                "sms_used": self.sms_used, "bytes_per_sm_max": self.bytes_per_sm_max,
                "coefficients": self.coefficients.to_dict()}


BENCH_CONTEXT = 1024  # the KV length a latency is taken at, where the program holds it (eval.bench.time_vm)


def bench_context(max_seq: int, context: int = BENCH_CONTEXT, steps: int = 200, warmup: int = 10) -> int:
    """The KV length eval.bench.time_vm decodes at for this program, so a prediction prices the same step:
    BENCH_CONTEXT, less where the program's max_seq leaves no room for the warm-up and timed steps after it."""
    return max(0, min(context, max_seq - steps - warmup - 1))


def kv_bytes(task: Task, program: MegakernelProgram, context: int) -> int:
    """KV cache bytes an attention task reads when `context` positions are cached (its sliding window's worth at
    most)."""
    c = program.constants
    window = getattr(task.params, "window", 0)
    per_cache = (min(context + 1, window) if window > 0 else context + 1) * c.head_dim * c.dtype.nbytes
    if task.opcode == Opcode.ATTN_DECODE:
        return 2 * per_cache
    if task.opcode in (Opcode.ATTN_SCORES, Opcode.ATTN_VALUES):
        return per_cache // max(1, task.params.parts)
    if task.opcode == Opcode.ATTN_PARTIAL:
        return 2 * per_cache // max(1, task.params.parts)
    return 0


def combine_bytes(task: Task, program: MegakernelProgram) -> int:
    """Bytes of attention partitions (the partials, fp32 or the model's dtype as attention.partials_dtype says,
    and their fp32 (max, sum)) `task` reads to combine them: an O matvec combining its input slice (o_input), an
    ATTN_COMBINE task (one KV head's q heads: stage) or a task of a join (last_partition), each of which is
    priced the combine of its head, as the last of them to arrive does it and which that is depends on the run
    (the O stage waits for it); 0 otherwise."""
    c, p = program.constants, task.params
    group = c.n_heads // c.n_kv_heads // getattr(p, "q_splits", 1)  # the q heads of a task group
    e = partial_bytes(program.build, c.dtype.nbytes)
    if task.opcode == Opcode.MATVEC and p.inp_parts > 0:
        heads = combine_heads(p.k0, p.klen, c.head_dim)
        return p.inp_parts * p.klen * e + (p.inp_parts * heads * 8 if p.inp_stats != NO_BUFFER else 0)
    if task.opcode == Opcode.ATTN_COMBINE:
        return p.parts * group * (c.head_dim * e + (8 if p.part_stats != NO_BUFFER else 0))
    if task.opcode in JOIN_OPCODES and p.join.active:  # ATTN_VALUES' partitions share one softmax
        return p.parts * group * (c.head_dim * e + (8 if task.opcode == Opcode.ATTN_PARTIAL else 0))
    return 0


def split_join_bytes(task: Task) -> int:
    """Bytes of fp32 partial sums a k-split matvec task of a join (matvec.<role>.reduce last_task) reads to finish
    its row block: every split's sums of its rows, priced on each task as the last of them to arrive reads them
    (which that is depends on the run); 0 for any other task."""
    p = task.params
    if task.opcode != Opcode.MATVEC or not p.join.active:
        return 0
    return p.join.splits * p.rows * (2 if p.epi.pair_offset else 1) * 4


def joins(task: Task) -> bool:
    """Whether `task` adds to a join's arrival counter (an L2 round trip before it signals)."""
    j = getattr(task.params, "join", None)
    return j is not None and j.active


def _sm_bytes_per_us(program: MegakernelProgram, target: GpuTarget, coef: CostCoefficients) -> float:
    """Unscaled streaming rate of one SM: its share of the spec bandwidth, capped by the bytes it keeps in
    flight over the memory latency: the pipeline's copies in flight (pipeline.inflight_kb, in pages), or threads x
    loads_in_flight x rows_in_flight x 16 B through registers."""
    share = target.spec_bandwidth_gbs * 1e3 / max(1, target.sm_count)  # GB/s -> bytes/us
    pages = int(program.build.get("PAGES", 0))
    loads = int(program.build.get("LOADS_IN_FLIGHT", 4)) * int(program.build.get("ROWS_IN_FLIGHT", 1))
    copies = int(program.build.get("PAGES_INFLIGHT", pages))  # a program saved before the cap: every page
    in_flight = (copies * int(program.build.get("PAGE_BYTES", 0)) if pages
                 else program.threads_per_block * loads * LOAD_BYTES)
    little = in_flight / (coef.memory_latency_ns * 1e-3)
    return min(share, little)


def warp_split(program: MegakernelProgram) -> WarpSplit | None:
    """How the program's register-path matvecs spread over consumer warps; None with pipeline pages."""
    b = program.build
    if int(b.get("PAGES", 0)) > 0:
        return None
    return WarpSplit(consumer_threads(program.threads_per_block, b) // 32, int(b.get("ROWS_IN_FLIGHT", 1)),
                     int(b.get("LOADS_IN_FLIGHT", 4)))


def task_stream_bytes(t: Task, split: WarpSplit | None, nbytes: int, step_floor: float = 0.0) -> float:
    """Weight bytes of `t` as its SM streams them: on the register path (`split`) a matvec's bytes as its busiest
    warp's steps on every consumer warp, each at least `step_floor` bytes (autotile.streamed_bytes: 18 rows on 16
    warps count as 32); else its weight bytes."""
    if split is None or t.opcode != Opcode.MATVEC or not t.weight_bytes:
        return t.weight_bytes
    p = t.params
    return streamed_bytes(p.rows * (2 if p.epi.pair_offset else 1), p.klen, nbytes, split, step_floor)


def predict(program: MegakernelProgram, target: GpuTarget | str, coef: CostCoefficients | None = None,
            context: int | None = None) -> Prediction:
    target = get_target(target)
    coef = coef or CostCoefficients()
    ctx = bench_context(program.constants.max_seq) if context is None else int(context)
    rate = _sm_bytes_per_us(program, target, coef)
    floor = rate * coef.memory_latency_ns * 1e-3  # a register-path step's bytes at least: one latency at `rate`
    pipelined = int(program.build.get("PAGES", 0)) > 0  # the pages hide the stream under the wait; L2 does not
    split, nbytes = warp_split(program), program.constants.dtype.nbytes
    tasks = program.tasks
    signals: dict[int, list[tuple[float, Features]]] = {k.id: [] for k in program.counters}
    sm_time = [0.0] * len(program.queues)
    sm_path = [_ZERO] * len(program.queues)
    ptr = [0] * len(program.queues)
    sm_bytes = [0] * len(program.queues)
    remaining = len(tasks)
    end, end_path = 0.0, _ZERO
    while remaining:
        progressed = False
        for s, queue in enumerate(program.queues):
            while ptr[s] < len(queue):
                t = tasks[queue[ptr[s]]]
                dep = _ready(t, signals)
                if dep is None:
                    break
                ready, ready_path = dep
                w_us = task_stream_bytes(t, split, nbytes, floor) / rate
                kv = kv_bytes(t, program, ctx)
                kv_us = (kv + combine_bytes(t, program) + split_join_bytes(t)) / rate
                sm_bytes[s] += t.weight_bytes + kv
                # a join's task adds to its arrival counter before it signals: one more round trip to L2
                rounds = len(t.waits) + (1 if joins(t) else 0)
                sync = coef.wait_us * rounds
                base_t, base = (sm_time[s], sm_path[s]) if sm_time[s] >= ready else (ready, ready_path)
                if pipelined and t.prefetch and sm_time[s] + w_us * coef.mem_scale >= base_t + sync:
                    # the weights, streamed from the SM's free time, arrive after the deps are met and
                    # polled: the poll hides under the stream
                    fin = sm_time[s] + (w_us + kv_us) * coef.mem_scale + coef.task_overhead_us
                    path = sm_path[s] + Features(w_us + kv_us, 1, 0)
                elif pipelined and t.prefetch:
                    # weights already on chip when the deps are met: only the KV read remains
                    fin = base_t + sync + kv_us * coef.mem_scale + coef.task_overhead_us
                    path = base + Features(kv_us, 1, rounds)
                else:
                    fin = base_t + sync + (w_us + kv_us) * coef.mem_scale + coef.task_overhead_us
                    path = base + Features(w_us + kv_us, 1, rounds)
                sm_time[s], sm_path[s] = fin, path
                for cid in t.signals:
                    bisect.insort(signals[cid], (fin, path), key=lambda x: x[0])
                if fin >= end:
                    end, end_path = fin, path
                ptr[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = [program.queues[s][ptr[s]] for s in range(len(ptr)) if ptr[s] < len(program.queues[s])]
            raise CostModelError(f"no SM can run its next task (tasks {stuck[:8]} wait forever): the program "
                                 "deadlocks")
    used = sum(1 for q in program.queues if q)
    depth = int(program.build.get("PIPELINE_DEPTH", 0))
    unpriced = () if pipelined or depth == 0 else (
        f"pipelining_depth={depth}: the cost model prices the L2 prefetch as none (measured slower on an H100 and "
        "an H200, schedule/cost.py), so the predicted latency does not change with it; only a GPU measures it",)
    return Prediction(end + coef.launch_us, end_path, ctx, used, max(sm_bytes, default=0), coef, unpriced)


def _ready(t: Task, signals: dict[int, list[tuple[float, Features]]]) -> tuple[float, Features] | None:
    """When the last of `t`'s waits is met (the count-th earliest signal of each counter), or None if some
    counter has not been signalled often enough yet."""
    ready, path = 0.0, _ZERO
    for w in t.waits:
        got = signals.get(w.counter, [])
        if len(got) < w.count:
            return None
        if w.count > 0 and got[w.count - 1][0] >= ready:
            ready, path = got[w.count - 1]
    return ready, path


def linear_latency(features: Features | dict, coef: CostCoefficients) -> float:
    """The latency the coefficients give a fixed critical path (what fit() minimises over)."""
    f = features if isinstance(features, Features) else Features(**features)
    return coef.mem_scale * f.mem_us + coef.task_overhead_us * f.tasks + coef.wait_us * f.waits + coef.launch_us


def fit(rows: list[dict], base: CostCoefficients | None = None) -> CostCoefficients:
    """Least squares of measured latency on the critical-path features, coefficients kept >= 0.

    `rows`: dicts with "features" (Features fields) and "latency_us" (measured on ONE GPU; the caller
    filters, since two GPUs differ). Needs MIN_FIT_ROWS rows."""
    base = base or CostCoefficients()
    usable = [r for r in rows if r.get("features") and _finite(r.get("latency_us"))]
    if len(usable) < MIN_FIT_ROWS:
        raise CostModelError(f"fit needs >= {MIN_FIT_ROWS} measured rows with features, got {len(usable)}")
    X = np.array([[r["features"]["mem_us"], r["features"]["tasks"], r["features"]["waits"], 1.0] for r in usable])
    y = np.array([float(r["latency_us"]) for r in usable])
    coef = _nonneg_lstsq(X, y)
    return replace(base, mem_scale=coef[0], task_overhead_us=coef[1], wait_us=coef[2], launch_us=coef[3],
                   fitted_rows=len(usable))


def _nonneg_lstsq(X: np.ndarray, y: np.ndarray) -> list[float]:
    # Active set on four columns: drop the most negative coefficient and refit until all are >= 0. A
    # negative cost per task or per byte would let the loop "win" by adding work.
    active = list(range(X.shape[1]))
    while active:
        sol, *_ = np.linalg.lstsq(X[:, active], y, rcond=None)
        if (sol >= 0).all():
            out = [0.0] * X.shape[1]
            for i, v in zip(active, sol):
                out[i] = float(v)
            return out
        active.pop(int(np.argmin(sol)))
    return [0.0] * X.shape[1]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def spearman(predicted: list[float], measured: list[float]) -> float | None:
    """Rank correlation (ties share their mean rank); None with fewer than 2 pairs or a constant side."""
    pairs = [(p, m) for p, m in zip(predicted, measured) if _finite(p) and _finite(m)]
    if len(pairs) < 2:
        return None
    rp, rm = _ranks([p for p, _ in pairs]), _ranks([m for _, m in pairs])
    if np.std(rp) == 0 or np.std(rm) == 0:
        return None
    return float(np.corrcoef(rp, rm)[0, 1])


def _ranks(xs: list[float]) -> np.ndarray:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = np.empty(len(xs))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks
