"""Happens-before as lane clocks: linear in the tasks, where ancestor bitsets grow with their square.

Each task sits at one position of one lane: its SM queue (where it is queued first), or a lane of its own when
it is on no queue. A task happens before the next task of its queue, so what happens before any node is, on each
lane, a prefix of that lane: one integer a lane (the last position reached, -1 for none) says it all. A node's
clock is the lane-wise maximum of its predecessors' clocks, with a task's own position set. Then task `w` happens
before node `x` exactly when clock[x][lane(w)] >= pos(w).

A join (hazards._join_edges) has no lane: its last task to arrive runs it. Node x follows join j when x follows
one of the counters j reaches; x follows a counter when it follows one of the counter's waiters (a clock
comparison against each lane's first waiter), or a join the counter feeds (the same question again, joins being
few and their chains short). Memory: one int32 a node and lane (a 455,000-task program on 132 SMs: 240 MB).
"""

from __future__ import annotations

import numpy as np

from .program import is_task_id

MAX_CLOCK_BYTES = 1 << 30  # 1 GiB: about 2 million nodes (tasks, counters, joins) on 132 SMs
MAX_QUEUELESS = 64  # tasks on no queue that get a lane each; more and the sweep does not run
SMALL_CHECK = 64  # nodes x lanes up to which a happens-before check runs in plain Python


class ClockBudgetError(RuntimeError):
    """Lane clocks cannot be built within budget: more than MAX_QUEUELESS tasks on no SM queue (each would need a
    lane of its own; the structure check names them), or a clock matrix past MAX_CLOCK_BYTES."""


class Members:
    """A set of accessors in the sweep's numbering (task ids, then n + j for join j), summarised for clock checks:
    the highest position a lane holds among its tasks (`pairs`, (lane, position) by lane), and its joins apart.
    `lanes` and `top` are the pairs as numpy arrays, made when a check large enough for numpy asks."""

    __slots__ = ("ids", "pairs", "joins", "_arrays")

    def __init__(self, ids: list[int], pairs: list[tuple[int, int]], joins: list[int] | None = None):
        self.ids, self.pairs, self.joins = ids, pairs, joins if joins is not None else []
        self._arrays = None

    def _numpy(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.fromiter((ln for ln, _ in self.pairs), np.int64, len(self.pairs)),
                            np.fromiter((p for _, p in self.pairs), np.int32, len(self.pairs)))
        return self._arrays

    @property
    def lanes(self) -> np.ndarray:  # int64 [k]: the distinct lanes of its tasks
        return self._numpy()[0]

    @property
    def top(self) -> np.ndarray:  # int32 [k]: the last position of its tasks on each of those lanes
        return self._numpy()[1]


class HappensBefore:
    """Lane clocks of an acyclic DepGraph (hazards.build_graph) and the questions the hazard sweep asks.
    Raises ClockBudgetError past MAX_QUEUELESS tasks on no queue or MAX_CLOCK_BYTES of clocks."""

    def __init__(self, graph, queues):
        n = graph.n_tasks
        self.n = n
        nodes = len(graph.preds)
        self.first_join = nodes - graph.n_joins
        lane = np.full(n, -1, np.int64)
        pos = np.full(n, -1, np.int32)
        for sm, q in enumerate(queues):
            k = 0
            for tid in q:
                if is_task_id(tid, n) and lane[tid] < 0:
                    lane[tid], pos[tid] = sm, k
                    k += 1
        lanes = len(queues)
        queueless = np.nonzero(lane < 0)[0]
        if len(queueless) > MAX_QUEUELESS:
            raise ClockBudgetError(f"{len(queueless)} tasks are on no SM queue, more than the {MAX_QUEUELESS} "
                                   "the hazard sweep orders on lanes of their own")
        for tid in queueless:  # on no queue: a lane of its own
            lane[tid], pos[tid] = lanes, 0
            lanes += 1
        if nodes * max(lanes, 1) * 4 > MAX_CLOCK_BYTES:
            raise ClockBudgetError(f"{nodes} nodes on {lanes} SM queues take {nodes * lanes * 4 >> 20} MiB of lane "
                                   f"clocks, past the {MAX_CLOCK_BYTES >> 20} MiB the hazard sweep allows itself")
        self.lane, self.pos, self.n_lanes = lane, pos, lanes
        self._lane, self._pos = lane.tolist(), pos.tolist()  # as Python ints, for the sweep's many small lookups
        clock = np.full((nodes, max(lanes, 1)), -1, np.int32)
        preds, qpreds = graph.preds, graph.qpreds
        for v in graph.order:
            ps = preds[v] + qpreds[v]
            if len(ps) == 1:
                clock[v] = clock[ps[0]]
            elif ps:
                clock[v] = clock[ps].max(axis=0)
            if v < n:
                clock[v, lane[v]] = max(clock[v, lane[v]], pos[v])
        self.clock = clock
        self._waiters, self._feeds, self._reaches = self._counter_edges(graph)

    def _counter_edges(self, graph):
        """Per counter node: (lanes, first waiter position on each) of the tasks that wait on it, and the join
        nodes whose arrival counter it is; per join node, the counter nodes it reaches."""
        n, first_join = self.n, self.first_join
        waiters: dict[int, dict[int, int]] = {}
        feeds: dict[int, list[int]] = {}
        reaches: dict[int, list[int]] = {}
        for v, ps in enumerate(graph.preds):
            for p in ps:
                if p < n:
                    continue  # a signal edge: task -> counter
                if v < n:  # counter -> its waiter
                    first = waiters.setdefault(p, {})
                    ln, ps_ = int(self.lane[v]), int(self.pos[v])
                    if first.get(ln, ps_ + 1) > ps_:
                        first[ln] = ps_
                elif v >= first_join:  # arrival counter -> join
                    feeds.setdefault(p, []).append(v)
                else:  # join -> a counter all its tasks signal
                    reaches.setdefault(p, []).append(v)
        arrays = {c: (np.fromiter(d.keys(), np.int64, len(d)), np.fromiter(d.values(), np.int32, len(d)))
                  for c, d in waiters.items()}
        return arrays, feeds, reaches

    def node(self, x: int) -> int:
        """The graph node of sweep id `x` (a task id, or n + j for join j)."""
        return x if x < self.n else self.first_join + (x - self.n)

    def members(self, ids: list[int]) -> Members:
        n = self.n
        if len(ids) == 1:  # most access groups are one task
            x = ids[0]
            if x < n:
                return Members(ids, [(self._lane[x], self._pos[x])])
            return Members(ids, [], [x - n])
        top: dict[int, int] = {}
        joins = []
        for x in ids:
            if x < n:
                ln, p = self._lane[x], self._pos[x]
                if top.get(ln, -1) < p:
                    top[ln] = p
            else:
                joins.append(x - n)
        return Members(ids, sorted(top.items()), joins)

    def follows_join(self, v: int, j: int, seen: set | None = None) -> bool:
        """Does graph node `v` happen after join j (or is it that join)?"""
        jn = self.first_join + j
        if v == jn:
            return True
        seen = set() if seen is None else seen
        return any(self._follows_counter(v, c, seen) for c in self._reaches.get(jn, ()))

    def _follows_counter(self, v: int, c: int, seen: set) -> bool:
        if c in seen:
            return False
        seen.add(c)
        w = self._waiters.get(c)
        if w is not None and bool((self.clock[v, w[0]] >= w[1]).any()):
            return True
        return any(self.follows_join(v, jn - self.first_join, seen) for jn in self._feeds.get(c, ()))

    def unordered(self, ids: list[int], required: list[Members]) -> list[int]:
        """The ids among `ids` (sweep ids) that do not happen after every member of `required`, in order."""
        if not required or not ids:
            return []
        nodes = [self.node(x) for x in ids]
        if len(ids) * sum(len(m.pairs) for m in required) <= SMALL_CHECK:
            ok = self._after_all_small(nodes, required)
        else:
            ok = self._after_all(nodes, required)
        joins = sorted({j for m in required for j in m.joins}) if any(m.joins for m in required) else []
        if not joins:
            return [x for x, good in zip(ids, ok) if not good]
        return [x for x, v, good in zip(ids, nodes, ok) if not good or any(not self.follows_join(v, j) for j in joins)]

    def _after_all(self, nodes: list[int], required: list[Members]):
        """Per node: whether its clock reaches, on every lane, the last position `required`'s tasks hold there."""
        if len(required) == 1:
            lanes, need = required[0].lanes, required[0].top
        else:
            dense = np.full(self.clock.shape[1], -1, np.int32)
            for m in required:
                dense[m.lanes] = np.maximum(dense[m.lanes], m.top)
            lanes = np.flatnonzero(dense >= 0)
            need = dense[lanes]
        if not len(lanes):
            return [True] * len(nodes)
        if len(nodes) == 1:
            return [bool((self.clock[nodes[0], lanes] >= need).all())]
        return (self.clock[np.asarray(nodes)[:, None], lanes] >= need).all(axis=1)

    def _after_all_small(self, nodes: list[int], required: list[Members]) -> list[bool]:
        """_after_all in plain Python, for the few lanes and nodes most checks have (numpy's cost a call was most
        of a small program's sweep)."""
        item = self.clock.item
        if len(required) == 1:
            need = required[0].pairs
        else:
            top: dict[int, int] = {}
            for m in required:
                for ln, p in m.pairs:
                    if top.get(ln, -1) < p:
                        top[ln] = p
            need = top.items()
        return [all(item(v, ln) >= p for ln, p in need) for v in nodes]

    def first_unreached(self, x: int, required: list[Members]) -> int:
        """The lowest sweep id among `required`'s members that `x` does not happen after (-1: none)."""
        v = self.node(x)
        best = -1
        for m in required:
            for y in m.ids:
                if best != -1 and y >= best:
                    continue
                if y < self.n:
                    missed = self.clock[v, self.lane[y]] < self.pos[y]
                else:
                    missed = not self.follows_join(v, y - self.n)
                if missed:
                    best = y
        return best
