"""Lane clocks (schedule/clocks.py) answer happens-before exactly as a walk of the dependency graph does, joins
included, and the hazard sweep built on them stays linear in memory on a program of tens of thousands of tasks."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from _schedules import clone

import amk
from amk.schedule import hazard_sweep, hazards
from amk.schedule.clocks import HappensBefore
from amk.schedule.program import Wait

CONFIGS = [
    {},
    {"matvec": {"lm_head": {"k_splits": 2, "reduce": "last_task"}, "down": {"k_splits": 2, "reduce": "last_task"}}},
    {"matvec": {"o": {"k_splits": 2, "reduce": "last_task"}}, "sm": {"assignment": "round_robin"}},
    {"attention": {"softmax": "global"}, "scratch": "none"},
]


def _ancestors(graph, node: int) -> set[int]:
    """Every node with a path to `node`, `node` included: the definition the clocks must match."""
    seen, stack = {node}, [node]
    while stack:
        v = stack.pop()
        for p in graph.preds[v] + graph.qpreds[v]:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def _check_against_walk(prog) -> int:
    graph = hazards.build_graph(prog)
    assert graph.acyclic
    hb = HappensBefore(graph, prog.queues)
    n = graph.n_tasks
    ids = list(range(n)) + [n + j for j in range(graph.n_joins)]  # the sweep's numbering
    checked = 0
    for y in ids:
        before = _ancestors(graph, hb.node(y))
        late = hb.unordered([y], [hb.members([x]) for x in ids])  # y itself, or [] when y follows everything
        for x in ids:
            expect = hb.node(x) in before
            assert (hb.unordered([y], [hb.members([x])]) == []) == expect, (x, y)
            checked += 1
        assert late == ([] if all(hb.node(x) in before for x in ids) else [y])
        missed = [x for x in ids if hb.node(x) not in before]
        assert hb.first_unreached(y, [hb.members(ids)]) == (min(missed) if missed else -1)
    return checked


@pytest.mark.parametrize("model", ["toy", "toy-2L"])
@pytest.mark.parametrize("config", CONFIGS, ids=["default", "last_task joins", "round_robin", "global scratch none"])
def test_clocks_match_a_walk_of_the_graph(model, config):
    prog = amk.lower(amk.load_model(model, weights=False), "cpu-sim", config, max_seq=32)
    if config.get("matvec", {}).get("lm_head"):
        assert prog.joins  # the join path of the clocks is exercised
    assert _check_against_walk(prog) > 1000


def test_clocks_match_a_walk_after_waits_are_dropped():
    """Fewer edges: the pairs that stop being ordered must stop being ordered in the clocks too."""
    rng = random.Random(5)
    base = amk.lower(amk.load_model("toy-2L", weights=False), "cpu-sim",
                     {"matvec": {"down": {"k_splits": 2, "reduce": "last_task"}}}, max_seq=32)
    for _ in range(3):
        prog = clone(base)
        waiting = [t for t in prog.tasks if t.waits]
        for t in rng.sample(waiting, 4):
            t.waits = [w for w in t.waits if rng.random() < 0.5] or [Wait(t.waits[0].counter, t.waits[0].count)]
        _check_against_walk(prog)


def test_the_hazard_sweep_is_linear_in_memory():
    """smollm2-135m with an LM-head task every 2 rows: about 37,000 tasks. Ancestor bitsets would hold about
    250 MB (one bit a pair of tasks, and one a task for each task's own bit); the lane clocks about 20 MB."""
    prog = amk.lower(amk.load_model("smollm2-135m", weights=False), "h200",
                     {"matvec": {"lm_head": {"rows_per_task": 2}}}, max_seq=64)
    assert len(prog.tasks) > 35_000
    graph = hazards.build_graph(prog)
    per = hazards.collect(prog, lambda tid, e: None)
    found = []
    tracemalloc.start()
    try:
        hb = HappensBefore(graph, prog.queues)
        hazard_sweep.sweep(prog, per, hb, lambda *issue: found.append(issue), str)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == []
    assert peak < 80 << 20, f"{peak >> 20} MiB"


def test_tasks_on_no_queue_get_lanes_up_to_a_bound_then_the_sweep_says_it_did_not_run():
    from amk.schedule.clocks import MAX_QUEUELESS
    from amk.schedule.validate import IssueKind

    base = amk.lower(amk.load_model("toy-2L", weights=False), "cpu-sim", max_seq=32)
    few = clone(base)
    dropped = few.queues[0][-2:]
    del few.queues[0][-2:]
    kinds = {(i.kind, i.message.split(":")[0]) for i in amk.validate(few).issues}
    assert all(k == IssueKind.ABI for k, _ in kinds) and not any("did not run" in m for _, m in kinds)
    assert {t for i in amk.validate(few).issues for t in i.tasks} >= set(dropped)
    _check_against_walk(few)  # their own lanes keep the clocks exact
    many = clone(base)
    for q in many.queues:
        del q[:]
    assert len(many.tasks) > MAX_QUEUELESS
    messages = [i.message for i in amk.validate(many).issues if i.kind != IssueKind.INTERNAL]
    assert any(m.startswith(f"the data-hazard sweep did not run: {len(many.tasks)} tasks are on no SM queue")
               for m in messages), messages[-3:]
    assert not [i for i in amk.validate(many).issues if i.kind == IssueKind.INTERNAL]
