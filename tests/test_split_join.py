"""matvec.<role>.reduce = last_task: the last split task of each row block to finish sums the k-splits' partial sums
in split order and runs the epilogue (a join of the program), where reduce = stage has a reduce stage do it. The
ReferenceVM gives the same fp32 step either way in any task order; the lowering gives one join a row block and no
reduce stage, an O split waits only for its KV heads' attention, and the validator refuses a join whose tasks
could not all be summed by its last one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import amk
from amk.eval.oracle import verify
from amk.schedule import get_target, lower
from amk.schedule.opcodes import Opcode
from amk.schedule.program import MegakernelProgram
from amk.schedule.validate import IssueKind, validate
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights

SPLITS = {"o": 2, "gate_up": 2, "down": 3, "lm_head": 2}


def _cfg(reduce: str, **extra) -> dict:
    return {"matvec": {role: {"k_splits": k, "reduce": reduce} for role, k in SPLITS.items()}, **extra}


def _steps(model, prog, order_seed: int | None) -> list[torch.Tensor]:
    """fp32 logits of four steps; `order_seed`: SMs run in a random order drawn from it (None: in turn)."""
    vm = ReferenceVM(prog, pack_weights(model.eager, prog, device="cpu"), adversarial=order_seed is not None,
                     seed=order_seed or 0)
    return [vm.step(tok)[0].clone() for tok in (3, 17, 5, 11)]


@pytest.mark.parametrize("extra", [{}, {"attention": {"kv_partitions": 1}},
                                   {"attention": {"softmax": "global", "combine": "stage"}}],
                         ids=["partition", "decode", "global"])
def test_last_task_reduce_is_the_reduce_stage_bit_for_bit_in_any_order(extra):
    model = amk.load_model("toy", dtype="fp32")
    stage = _steps(model, lower(model, "cpu-sim", _cfg("stage", **extra), max_seq=64), None)
    joined = lower(model, "cpu-sim", _cfg("last_task", **extra), max_seq=64)
    for seed in (None, 1, 2):
        for a, b in zip(stage, _steps(model, joined, seed)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name, dtype", [("toy", "fp32"), ("toy-2L", "bf16")])
def test_last_task_reduce_verifies_against_transformers(name, dtype):
    model = amk.load_model(name, dtype=dtype)
    prog = lower(model, "cpu-sim", _cfg("last_task"), max_seq=128)
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced", adversarial=True, seed=5)
    assert res.ok, res.to_dict()["failures"]


def test_one_join_a_row_block_and_no_reduce_stage():
    model = amk.load_model("toy-2L", dtype="fp32", weights=False)
    stage = lower(model, "cpu-sim", _cfg("stage"), max_seq=64)
    prog = lower(model, "cpu-sim", _cfg("last_task"), max_seq=64)
    assert [t for t in stage.tasks if t.opcode == Opcode.EPILOGUE]
    assert not [t for t in prog.tasks if t.opcode == Opcode.EPILOGUE]
    assert prog.meta["stages"] < stage.meta["stages"]
    split = [t for t in prog.tasks if t.opcode == Opcode.MATVEC and t.params.join.active]
    assert {t.kind for t in split} == set(SPLITS)
    assert sum(len(j.tasks) for j in prog.joins) == len(split)
    for j in prog.joins:
        members = [prog.tasks[i] for i in j.tasks]
        assert sorted(t.params.join.split for t in members) == list(range(SPLITS[members[0].kind]))
        assert len({(t.params.row0, t.params.rows) for t in members}) == 1
        assert prog.counters[j.counter].producers == len(members)
        assert all(w.counter != j.counter for t in prog.tasks for w in t.waits)  # nothing waits on arrivals
    assert validate(prog, "cpu-sim").ok


def test_o_splits_wait_only_for_their_kv_heads_attention():
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)  # 8 KV heads of 4 q heads
    for k in (8, 4, 2):
        prog = lower(model, get_target("h200"), {"matvec": {"o": {"k_splits": k, "reduce": "last_task"}}},
                     max_seq=256)
        o = [t for t in prog.tasks if t.kind == "o" and "layers.0." in prog.buffers[t.params.weight].name]
        for t in o:
            heads = {int(prog.counters[w.counter].name.rsplit(".g", 1)[1]) for w in t.waits}
            first = t.params.k0 // (4 * 64)
            assert heads == set(range(first, first + 8 // k)), (k, t.params.k0)
        assert validate(prog).ok


def test_a_join_mixing_row_blocks_is_refused():
    # split 1 of row blocks 0 and 1 swapped between their joins, arrival counters and reads moved along: each join
    # still counts two arrivals of splits 0 and 1, but its last task would sum partials none of its tasks stored
    model = amk.load_model("toy", dtype="fp32", weights=False)
    prog = lower(model, "cpu-sim", {"matvec": {"down": {"k_splits": 2, "reduce": "last_task", "rows_per_task": 32}}},
                 max_seq=64)
    j0, j1 = [j for j in prog.joins if prog.tasks[j.tasks[0]].kind == "down"][:2]
    a = next(t for t in j0.tasks if prog.tasks[t].params.join.split == 1)
    b = next(t for t in j1.tasks if prog.tasks[t].params.join.split == 1)
    for tid, j in ((a, j1), (b, j0)):
        t = prog.tasks[tid]
        t.params = dataclasses.replace(t.params, join=dataclasses.replace(t.params.join, arrivals=j.counter))
    i0, i1 = prog.joins.index(j0), prog.joins.index(j1)
    prog.joins[i0] = dataclasses.replace(j0, tasks=tuple(b if t == a else t for t in j0.tasks))
    prog.joins[i1] = dataclasses.replace(j1, tasks=tuple(a if t == b else t for t in j1.tasks))
    res = validate(prog, "cpu-sim")
    assert not res.ok and IssueKind.ABI in res.kinds()
    assert "row blocks" in res.first_message() or any("row blocks" in i.message for i in res.issues)


def test_a_join_whose_splits_do_not_add_up_is_refused():
    model = amk.load_model("toy", dtype="fp32", weights=False)
    prog = lower(model, "cpu-sim", {"matvec": {"down": {"k_splits": 2, "reduce": "last_task"}}}, max_seq=64)
    t = prog.tasks[prog.joins[0].tasks[0]]
    t.params = dataclasses.replace(t.params, join=dataclasses.replace(t.params.join, split=1 - t.params.join.split))
    res = validate(prog, "cpu-sim")
    assert not res.ok and IssueKind.UNSATISFIABLE_WAIT in res.kinds()


def test_a_program_written_before_the_join_field_loads():
    model = amk.load_model("toy", dtype="fp32", weights=False)
    prog = lower(model, "cpu-sim", {}, max_seq=64)
    d = json.loads(json.dumps(prog.to_dict()))
    for t in d["tasks"]:
        if t["opcode"] == int(Opcode.MATVEC):
            del t["params"]["join"]
    back = MegakernelProgram.from_dict(d)
    assert back.fingerprint() == prog.fingerprint()
    assert validate(back, "cpu-sim").ok


def test_the_split_lm_head_keeps_about_one_task_a_sm():
    model = amk.load_model("llama-3.2-1b", dtype="bf16", weights=False)
    target = get_target("h200")
    for k in (1, 2, 4):
        prog = lower(model, target, {"matvec": {"lm_head": {"k_splits": k, "reduce": "last_task"}}}, max_seq=64)
        tasks = [t for t in prog.tasks if t.kind == "lm_head"]
        assert len(tasks) <= 1.1 * target.sm_count, (k, len(tasks))


def test_reduce_without_splits_is_noted_inert():
    from amk.schedule.config import ScheduleConfig
    from amk.schedule.inert import inert_knobs

    cfg = ScheduleConfig.from_dict({"matvec": {"down": {"reduce": "last_task"}}})
    notes = [k.note() for k in inert_knobs(cfg)]
    assert any(n.startswith("matvec.down.reduce=last_task has no effect") for n in notes), notes
    split = ScheduleConfig.from_dict({"matvec": {"down": {"reduce": "last_task", "k_splits": 2}}})
    assert not [k for k in inert_knobs(split) if k.path == "matvec.down.reduce"]


@pytest.mark.parametrize("change, why", [({"part_off": 10**8}, "reach element"), ("weight", "not fp32 activations"),
                                         ({"split": None}, "does not declare writing")])
def test_split_partials_outside_fp32_activations_are_refused(change, why):
    model = amk.load_model("toy", dtype="fp32", weights=False)
    prog = lower(model, "cpu-sim", {"matvec": {"down": {"k_splits": 2, "reduce": "last_task"}}}, max_seq=64)
    t = prog.tasks[prog.joins[0].tasks[0]]
    j = t.params.join
    if change == "weight":  # the partial sums pointed at the task's own weights
        j = dataclasses.replace(j, part=t.params.weight, part_off=0)
    elif "split" in change:  # the task's own rows dropped from the regions it declares writing
        t.writes = tuple(w for w in t.writes if w.buffer != j.part)
    else:
        j = dataclasses.replace(j, **change)
    t.params = dataclasses.replace(t.params, join=j)
    res = validate(prog, "cpu-sim")
    assert not res.ok and any(why in i.message for i in res.issues), [i.message for i in res.issues]


def test_the_stand_in_search_leaves_o_reduce_alone_and_a_gpu_searches_it():
    # the cost model ranks the O split with the last split's reduce faster; an H200 measured it slower
    from amk.schedule.space import search_space

    def knob(target, path):
        return next(k for k in search_space(target) if k.path == path)

    o = knob("cpu-sim", "matvec.o.reduce")
    assert o.search == () and "1.05-1.06x slower" in o.unsearched
    assert knob("cpu-sim", "matvec.down.reduce").search == ("stage", "last_task")
    assert knob("h200", "matvec.o.reduce").search == ("stage", "last_task")
