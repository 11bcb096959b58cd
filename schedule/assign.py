"""SM assignment: place every task on one SM's queue. Queues keep task-id order, which is a
topological order of the program, so no queue can wait on a task queued behind it."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .config import SmAssignment, SmConfig
from .errors import LoweringError
from .opcodes import Opcode
from .program import Counter, ProgramConstants, Task

# A coarse per-SM speed for placement only (bytes per microsecond an SM streams, and a fixed cost per
# task); the cost model in amk.schedule.cost is what predicts latency.
SM_BYTES_PER_US = 20_000.0
TASK_OVERHEAD_US = 1.0


ATTENTION_OPCODES = (Opcode.ATTN_DECODE, Opcode.ATTN_SCORES, Opcode.ATTN_VALUES, Opcode.ATTN_PARTIAL)


def task_bytes(task: Task, c: ProgramConstants) -> int:
    """Bytes a task moves from memory, assuming a half-full KV cache for attention."""
    if task.opcode in ATTENTION_OPCODES:
        parts = getattr(task.params, "parts", 1)
        window = getattr(task.params, "window", 0)
        positions = min(c.max_seq // 2, window if window > 0 else c.max_seq) // parts
        per_cache = positions * c.head_dim * c.dtype.nbytes
        return per_cache * (2 if task.opcode in (Opcode.ATTN_DECODE, Opcode.ATTN_PARTIAL) else 1)
    return task.weight_bytes + 64


def assign_sms(tasks: list[Task], counters: list[Counter], c: ProgramConstants, num_sms: int,
               sm: SmConfig) -> list[list[int]]:
    if sm.assignment == SmAssignment.ROUND_ROBIN:
        for i, t in enumerate(tasks):
            t.sm = i % num_sms
    elif sm.assignment == SmAssignment.BYTES_BALANCED:
        _bytes_balanced(tasks, c, num_sms)
    elif sm.assignment == SmAssignment.LIST_SCHEDULING:
        _list_schedule(tasks, counters, c, num_sms)
    else:
        _explicit(tasks, num_sms, sm.explicit_map)
    queues: list[list[int]] = [[] for _ in range(num_sms)]
    for t in tasks:
        t.queue_pos = len(queues[t.sm])
        queues[t.sm].append(t.id)
    return queues


def _by_stage(tasks: list[Task]) -> list[list[Task]]:
    out: list[list[Task]] = []
    for t in tasks:
        if not out or out[-1][0].stage != t.stage:
            out.append([])
        out[-1].append(t)
    return out


def _bytes_balanced(tasks: list[Task], c: ProgramConstants, num_sms: int) -> None:
    """Per stage, largest task first onto the least-loaded SM (LPT); stages start balanced anew."""
    for group in _by_stage(tasks):
        heap = [(0, s) for s in range(num_sms)]
        for t in sorted(group, key=lambda t: (-task_bytes(t, c), t.id)):
            load, s = heapq.heappop(heap)
            t.sm = s
            heapq.heappush(heap, (load + task_bytes(t, c), s))


def _list_schedule(tasks: list[Task], counters: list[Counter], c: ProgramConstants, num_sms: int) -> None:
    """DAG-aware list scheduling: in topological order, each task goes to the SM where it can start
    earliest, given when its dependencies finish (estimated from bytes)."""
    producers: dict[int, list[int]] = {}
    last: dict[int, int] = {}  # counter -> the position of its last producer in `tasks`
    for i, t in enumerate(tasks):
        for s in t.signals:
            producers.setdefault(s, []).append(t.id)
            last[s] = i
    finish = [0.0] * len(tasks)
    # a counter's latest producer finish, once every producer is placed: a stage-wide counter (a reduce's, an
    # argmax's) has as many waiters as producers, and rescanning them all for each waiter was quadratic in tasks
    settled: dict[int, float] = {}
    sm_free = [(0.0, s) for s in range(num_sms)]
    heapq.heapify(sm_free)
    for i, t in enumerate(tasks):
        ready = 0.0
        for w in t.waits:
            r = settled.get(w.counter)
            if r is None:
                r = max((finish[p] for p in producers.get(w.counter, ())), default=0.0)
                if last.get(w.counter, -1) < i:
                    settled[w.counter] = r
            ready = max(ready, r)
        free_at, s = heapq.heappop(sm_free)
        # prefer an SM already free by `ready`; among those the heap's lowest free time is as good as any
        start = max(free_at, ready)
        t.sm = s
        finish[t.id] = start + TASK_OVERHEAD_US + task_bytes(t, c) / SM_BYTES_PER_US
        heapq.heappush(sm_free, (finish[t.id], s))


def _explicit(tasks: list[Task], num_sms: int, explicit_map: dict) -> None:
    cursors: dict[str, int] = {}
    for kind, sms in explicit_map.items():
        bad = [s for s in sms if s >= num_sms]
        if bad:
            raise LoweringError(f"sm.explicit_map.{kind}", f"SM ids {bad} out of range for {num_sms} SMs")
    default = list(range(num_sms))
    for t in tasks:
        sms = explicit_map.get(t.kind, default)
        i = cursors.get(t.kind, 0)
        t.sm = sms[i % len(sms)]
        cursors[t.kind] = i + 1


@dataclass(frozen=True)
class StageFill:
    """How well one kind of stage (qkv, attention, o, ...) keeps the SMs streaming, from the placement alone,
    averaged over the program's stages of that kind. `tasks` and `sms_busy` are per stage; `fill` is the mean
    SM's bytes over the busiest SM's (weights, or KV rows at a half-full cache as task_bytes counts them), so
    1.0 means every SM streams as long as the busiest and 0.25 that three quarters of the stage's SM time is
    idle, whatever the bandwidth."""

    kind: str
    stages: int
    tasks: float
    sms_busy: float
    fill: float


def stage_fill(tasks: list[Task], c: ProgramConstants, num_sms: int) -> list[StageFill]:
    """Per stage kind, in program order: see StageFill. Stages that move no bytes are left out."""
    per_kind: dict[str, list[tuple[int, int, float]]] = {}
    for group in _by_stage(tasks):
        per_sm = [0] * num_sms
        for t in group:  # the 64 bytes task_bytes adds a task are no stream of bytes
            per_sm[t.sm] += task_bytes(t, c) if t.opcode in ATTENTION_OPCODES else t.weight_bytes
        top = max(per_sm)
        if top == 0:
            continue
        per_kind.setdefault(group[0].kind, []).append(
            (len(group), sum(1 for b in per_sm if b), sum(per_sm) / (num_sms * top)))
    return [StageFill(kind, len(v), sum(x[0] for x in v) / len(v), sum(x[1] for x in v) / len(v),
                      sum(x[2] for x in v) / len(v)) for kind, v in per_kind.items()]
