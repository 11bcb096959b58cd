"""attention.combine = last_partition: the last partition task of each KV head to finish combines the head (a
join of the program). The lowering gives one join and one arrival counter per (layer, KV head); the ReferenceVM
combines once per head and step in any task order; the validator counts the arrivals and orders the combine
between its tasks and whatever waits for all of them, and refuses a join whose bookkeeping is off."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import amk
from amk.eval.oracle import verify
from amk.schedule import lower
from amk.schedule.opcodes import Opcode
from amk.schedule.program import MegakernelProgram
from amk.schedule.validate import IssueKind, validate
from amk.vm.abi import generate_header
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights


def _cfg(softmax: str, parts: int = 4, how: str = "last_partition") -> dict:
    return {"attention": {"kv_partitions": parts, "softmax": softmax, "combine": how}}


@pytest.mark.parametrize("softmax", ["partition", "global"])
def test_one_join_per_layer_and_kv_head_and_o_reads_one_combined_input(softmax):
    model = amk.load_model("toy-2L", dtype="fp32", weights=False)
    d = model.dims
    prog = lower(model, "cpu-sim", _cfg(softmax), max_seq=64)
    joined = Opcode.ATTN_PARTIAL if softmax == "partition" else Opcode.ATTN_VALUES
    assert len(prog.joins) == d.n_layers * d.n_kv_heads
    assert not [t for t in prog.tasks if t.opcode == Opcode.ATTN_COMBINE]
    assert all(t.params.inp_parts == 0 for t in prog.tasks if t.kind == "o")
    for j in prog.joins:
        members = [prog.tasks[i] for i in j.tasks]
        assert len(members) == 4 and prog.counters[j.counter].producers == 4
        assert {t.opcode for t in members} == {joined}
        assert {t.params.kv_head for t in members} == {members[0].params.kv_head}
        assert sorted(t.params.part for t in members) == [0, 1, 2, 3]
        assert all(t.params.join.arrivals == j.counter for t in members)
        (w,) = j.writes
        assert w.length == d.group * d.head_dim
        assert len(j.reads) == 4 * (2 if softmax == "partition" else 1)  # every part (and its stats)
        assert all(w.counter != j.counter for t in prog.tasks for w in t.waits)  # nothing waits on arrivals
    assert validate(prog, "cpu-sim").ok


@pytest.mark.parametrize("softmax", ["partition", "global"])
@pytest.mark.parametrize("name, dtype", [("toy", "fp32"), ("toy-2L", "bf16")])
def test_last_partition_combine_verifies_against_transformers_in_any_task_order(name, dtype, softmax):
    model = amk.load_model(name, dtype=dtype)
    prog = lower(model, "cpu-sim", _cfg(softmax), max_seq=128)
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced", adversarial=True, seed=3)
    assert res.ok, res.to_dict()["failures"]


def test_the_three_combines_give_the_same_step_in_fp32():
    model = amk.load_model("toy-2L", dtype="fp32")
    outs = []
    for how in ("o_input", "stage", "last_partition"):
        prog = lower(model, "cpu-sim", _cfg("partition", 8, how), max_seq=64)
        vm = ReferenceVM(prog, pack_weights(model.eager, prog, device="cpu"), adversarial=True, seed=1)
        outs.append(torch.stack([vm.step(t)[0] for t in (3, 5, 7)]))
    assert torch.allclose(outs[0], outs[2], atol=1e-5) and torch.allclose(outs[1], outs[2], atol=1e-5)


def _joined_program() -> MegakernelProgram:
    model = amk.load_model("toy-2L", dtype="fp32", weights=False)
    return lower(model, "cpu-sim", _cfg("partition"), max_seq=64)


def test_a_join_survives_the_json_round_trip_and_the_header_declares_its_params():
    prog = _joined_program()
    back = MegakernelProgram.from_dict(prog.to_dict())
    assert back.joins == prog.joins and back.fingerprint() == prog.fingerprint()
    assert next(t for t in back.tasks if t.opcode == Opcode.ATTN_PARTIAL).params.join.arrivals == prog.joins[0].counter
    header = generate_header(prog)
    assert "struct JoinCombine {" in header and "  JoinCombine join;" in header


def test_a_join_missing_from_the_program_is_refused_by_its_tasks_arrivals():
    prog = _joined_program()
    prog.joins = prog.joins[1:]
    res = validate(prog, "cpu-sim")
    assert not res.ok and IssueKind.UNSATISFIABLE_WAIT in res.kinds()
    assert any("no join of the program lists it" in i.message for i in res.issues)


def test_a_join_that_does_not_write_leaves_o_reading_what_nothing_wrote():
    prog = _joined_program()
    prog.joins = [dataclasses.replace(j, writes=()) for j in prog.joins]
    res = validate(prog, "cpu-sim")
    assert not res.ok and IssueKind.RACE_NO_WRITER in res.kinds()


def test_o_that_waits_for_part_of_a_head_races_with_the_combine():
    # the combine happens before a counter only when every task of the join signals it: an O task that waits on a
    # counter one of the head's partitions does not signal cannot know the combine is done
    prog = _joined_program()
    j = prog.joins[0]
    first = prog.tasks[j.tasks[0]]
    o = next(t for t in prog.tasks if t.kind == "o" and any(w.counter in first.signals for w in t.waits))
    cid = next(w.counter for w in o.waits if w.counter in first.signals)
    last = prog.tasks[j.tasks[-1]]
    last.signals = tuple(s for s in last.signals if s != cid)
    prog.counters[cid] = dataclasses.replace(prog.counters[cid], producers=prog.counters[cid].producers - 1)
    o_waits = [w for t in prog.tasks for w in t.waits if w.counter == cid]
    for t in prog.tasks:
        t.waits = tuple(type(w)(w.counter, w.count - 1) if w.counter == cid else w for w in t.waits)
    assert o_waits
    res = validate(prog, "cpu-sim")
    assert not res.ok and IssueKind.RACE_NO_WRITER in res.kinds()
    assert any("the combine of counter" in i.message for i in res.issues)

