"""The dependency graph of a program, its deadlock witness and each buffer's access groups; the data-hazard
sweep over them is hazard_sweep.py.

Nodes are the tasks (ids 0..N-1) and the counters (N + counter id). Edges run from each signaller to
its counter, from a counter to each task that waits on it, and from each task to the next on its SM
queue. With every wait for all of a counter's producers (checked before the sweep), a path in this
graph is exactly a happens-before guarantee, answered by lane clocks (clocks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .program import BufferKind, is_task_id


@dataclass
class DepGraph:
    n_tasks: int
    preds: list[list[int]]  # counter edges: a task's counters, a counter's signallers
    qpreds: list[list[int]]  # queue edges: the task(s) queued just before each task
    queue_edge: dict[tuple[int, int], int]  # (earlier task, later task) -> SM
    order: list[int]  # topological order of the nodes that are not on or behind a cycle
    cycle: list[tuple[int, bool]] | None  # (node, edge from it to the next node is a queue edge)
    n_joins: int = 0  # the last nodes: one per join of the program (_join_edges)

    @property
    def acyclic(self) -> bool:
        return self.cycle is None


def build_graph(program) -> DepGraph:
    tasks, n_counters, joins = program.tasks, len(program.counters), program.joins
    n = len(tasks)
    nodes = n + n_counters + len(joins)
    preds: list[list[int]] = [[] for _ in range(nodes)]
    qpreds: list[list[int]] = [[] for _ in range(nodes)]
    for tid, t in enumerate(tasks):
        for c in t.signals:
            if 0 <= c < n_counters:
                preds[n + c].append(tid)
        p = preds[tid]
        for w in t.waits:
            if 0 <= w.counter < n_counters:
                p.append(n + w.counter)
    _join_edges(program, preds)
    queue_edge: dict[tuple[int, int], int] = {}
    for sm, q in enumerate(program.queues):
        prev = None
        for tid in q:
            if not is_task_id(tid, n):
                continue
            if prev is not None:
                qpreds[tid].append(prev)
                queue_edge[(prev, tid)] = sm
            prev = tid
    order = _id_order(preds, qpreds, n, n_counters)
    if order is not None:
        return DepGraph(n, preds, qpreds, queue_edge, order, None, len(joins))
    order, left = _kahn([a + b for a, b in zip(preds, qpreds)])
    cycle = None
    if left:
        # prefer a witness made of counter edges alone; when there is none, every cycle uses a queue edge
        _, left_c = _kahn(preds)
        if left_c:
            cycle = _cycle_witness(preds, left_c, n, {})
        else:
            cycle = _cycle_witness([a + b for a, b in zip(preds, qpreds)], left, n, queue_edge)
    return DepGraph(n, preds, qpreds, queue_edge, order, cycle, len(joins))


def _join_edges(program, preds: list[list[int]]) -> None:
    """Join j is node n + n_counters + j (after the counters): its tasks reach its arrival counter, the counter
    reaches the join, and the join reaches every counter that all of its tasks signal (the last of them combines
    before it signals). Call after the signal edges are in."""
    tasks, n_counters = program.tasks, len(program.counters)
    n = len(tasks)
    for j, jn in enumerate(program.joins):
        node = n + n_counters + j
        members = [t for t in jn.tasks if 0 <= t < n]
        if 0 <= jn.counter < n_counters:
            preds[n + jn.counter] += members
            preds[node].append(n + jn.counter)
        if not members:
            continue
        common = set(tasks[members[0]].signals)
        for t in members[1:]:
            common &= set(tasks[t].signals)
        for c in sorted(common):
            if 0 <= c < n_counters:
                preds[n + c].append(node)


def _kahn(preds: list[list[int]]) -> tuple[list[int], set[int]]:
    """(topological order of what can be ordered, the nodes left on or behind a cycle)."""
    m = len(preds)
    indeg = [len(p) for p in preds]
    succ: list[list[int]] = [[] for _ in range(m)]
    for v, ps in enumerate(preds):
        for p in ps:
            succ[p].append(v)
    stack = [v for v in range(m) if indeg[v] == 0]
    order: list[int] = []
    while stack:
        v = stack.pop()
        order.append(v)
        for s in succ[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                stack.append(s)
    return order, {v for v in range(m) if indeg[v] > 0}


def _id_order(preds, qpreds, n, n_counters) -> list[int] | None:
    """The fast path: when every edge runs from a lower task id to a higher one (a lowered program's
    queues keep task-id order), task-id order with each counter (and each join, see _join_edges) just before
    its first waiter is a topological order. None when some edge runs backwards."""
    m = len(preds)
    maxsig = [-1] * m  # per counter and join: the highest task id behind it
    for v in range(n, m):  # a join's counter comes before it, and its node before the counters it reaches
        maxsig[v] = max((p if p < n else maxsig[p] for p in preds[v]), default=-1)
    for v in range(n, n + n_counters if m > n + n_counters else n):  # a counter a join reaches: the join's own
        for p in preds[v]:                                               # tasks are behind it too
            if p >= n + n_counters:
                maxsig[v] = max(maxsig[v], maxsig[p])
    emitted = [False] * m
    order: list[int] = []

    def emit(v: int) -> None:
        emitted[v] = True
        for p in preds[v]:
            if p >= n and not emitted[p]:
                emit(p)
        order.append(v)

    for t in range(n):
        for p in preds[t]:
            if maxsig[p] >= t:
                return None
            if not emitted[p]:
                emit(p)
        for p in qpreds[t]:
            if p >= t:
                return None
        order.append(t)
    for v in range(n, m):
        if not emitted[v]:
            emit(v)
    return order


def _cycle_witness(preds, left: set[int], n, queue_edge) -> list[tuple[int, bool]]:
    """Walk predecessors among the nodes Kahn could not remove until one repeats: that loop is a cycle."""
    v = min(left)
    path: list[int] = []
    seen: dict[int, int] = {}
    while v not in seen:
        seen[v] = len(path)
        path.append(v)
        v = next(p for p in preds[v] if p in left)
    loop = path[seen[v]:][::-1]  # forward order: each node is a predecessor of the next
    k = loop.index(min(loop))  # start at the lowest task id (tasks are numbered below counters)
    loop = loop[k:] + loop[:k]
    out = []
    for i, a in enumerate(loop):
        b = loop[(i + 1) % len(loop)]
        out.append((a, a < n and b < n and (a, b) in queue_edge))
    return out


def report_cycle(program, graph: DepGraph, report, tname) -> None:
    """CYCLE when the witness runs through counters alone, else QUEUE_ORDER naming the SM and two tasks."""
    n, cyc = graph.n_tasks, graph.cycle
    task_ids = [v for v, _ in cyc if v < n]
    names = program.counters
    nc = len(names)

    def node(v: int) -> str:  # the sweep's id of join j is n + j, its node's n + nc + j
        return tname(v) if v < n else f"counter {v - n} ({names[v - n].name})" if v < n + nc else tname(v - nc)

    hops = " -> ".join(node(v) for v, _ in cyc)
    q = next(((v, cyc[(i + 1) % len(cyc)][0]) for i, (v, is_q) in enumerate(cyc) if is_q), None)
    if q is None:
        report("CYCLE", f"deadlock: tasks wait on each other's counters: {hops} -> back", tuple(task_ids))
        return
    a, b = q
    report("QUEUE_ORDER", f"SM {graph.queue_edge[q]} runs {tname(a)} before {tname(b)}, but {tname(b)} must "
           f"happen before {tname(a)}: deadlock cycle {hops} -> back", (a, b, *(t for t in task_ids if t not in q)))


Groups = dict[tuple, list[int]]  # (stage, 0 read | 1 write | 2 prefetch, start, end) -> task ids


def collect(program, on_error) -> dict[object, Groups]:
    """Every task's reads, writes and prefetches, grouped per buffer id by identical (stage, access, range).
    A task whose regions cannot be read is passed to `on_error(tid, exc)` and skipped from there on."""
    per: dict[object, Groups] = {}
    for tid, t in enumerate(program.tasks):
        try:
            st = t.stage
            for w, regions in ((0, t.reads), (1, t.writes), (2, t.prefetch)):
                for r in regions:
                    a = r.start
                    key = (st, w, a, a + r.length)
                    g = per.get(r.buffer)
                    if g is None:
                        g = per[r.buffer] = {}
                    lst = g.get(key)
                    if lst is None:
                        g[key] = [tid]
                    elif lst[-1] != tid:
                        lst.append(tid)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            on_error(tid, e)
    n = len(program.tasks)
    for j, jn in enumerate(program.joins):  # between its tasks' stage and the next: the combine reads their parts
        first = jn.tasks[0] if jn.tasks and 0 <= jn.tasks[0] < n else None
        if first is None:
            continue
        st = program.tasks[first].stage + 0.5
        for w, regions in ((0, jn.reads), (1, jn.writes)):
            for r in regions:
                per.setdefault(r.buffer, {}).setdefault((st, w, r.start, r.start + r.length), []).append(n + j)
    return per


def check_regions(program, per: dict[object, Groups], report, tname) -> None:
    """Bounds of every distinct (buffer, access, range), and that nothing writes a weight."""
    bufs = program.buffers
    nb = len(bufs)
    verbs = ("reads", "writes", "prefetches")

    def who(tids) -> str:
        return tname(tids[0]) + (f" (and {len(tids) - 1} more tasks)" if len(tids) > 1 else "")

    for bid, groups in per.items():
        if not (isinstance(bid, int) and 0 <= bid < nb):
            for (_, w, _, _), tids in groups.items():
                report("ABI", f"{who(tids)} {verbs[w]} buffer id {bid!r}, which does not exist", tids[:2])
            continue
        b = bufs[bid]
        numel, is_weight = b.numel, b.kind == BufferKind.WEIGHT
        for (_, w, s, e), tids in groups.items():
            if s < 0 or e < s or e > numel:
                report("OUT_OF_BOUNDS", f"{who(tids)} {verbs[w]} {b.name}[{s}:{e}), outside [0, {numel})",
                       tids[:2], (b.name,))
            if w == 1 and is_weight:
                report("OUT_OF_BOUNDS", f"{who(tids)} writes the weight buffer {b.name}", tids[:2], (b.name,))
