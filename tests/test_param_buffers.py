"""The validator holds a task's params to its declared regions buffer by buffer (schedule/param_buffers.py): a
params field that writes a weight, or a buffer the task does not declare writing, or reads an activation as
weights, is refused by name; every lowered program passes."""

from __future__ import annotations

import dataclasses

import pytest

import amk
from amk.schedule import lower
from amk.schedule.opcodes import Epilogue, Opcode
from amk.schedule.program import BufferKind
from amk.schedule.validate import IssueKind, validate

CONFIGS = [{}, {"attention": {"kv_partitions": 1}}, {"attention": {"softmax": "global"}},
           {"attention": {"combine": "stage"}}, {"attention": {"combine": "last_partition"}},
           {"fusion": {"rope_kv_into_attention": True, "rope_kv_into_qkv": False}},
           {"fusion": {"norm_into_matvec": False}}, {"matvec": {"o": {"k_splits": 2, "reduce": "last_task"}}},
           {"matvec": {"down": {"k_splits": 2}}}, {"matvec": {"lm_head": {"k_splits": 2, "reduce": "last_task"}}},
           {"pipeline": {"pages": 4}}]


def _program(config=None, name="toy-2L"):
    return lower(amk.load_model(name, dtype="bf16", weights=False), "h200", config or {}, max_seq=128)


def _first(prog, pred):
    return next(t for t in prog.tasks if pred(t))


def _abi_messages(prog) -> list[str]:
    res = validate(prog, "h200")
    assert not res.ok and IssueKind.ABI in res.kinds()
    return [i.message for i in res.issues if i.kind == IssueKind.ABI]


@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m", "qwen3-0.6b"])
@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_every_lowered_program_names_only_declared_buffers(name, config):
    assert validate(_program(config, name), "h200").ok


def _weight_id(prog, name: str) -> int:
    return next(b.id for b in prog.buffers if b.name == name and b.kind == BufferKind.WEIGHT)


def test_an_epilogue_writing_a_weight_is_refused():
    prog = _program()
    t = _first(prog, lambda t: t.kind == "down")
    w = _weight_id(prog, "layers.0.down")
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, out=w))
    msgs = _abi_messages(prog)
    assert any(f"epi.out={w} names weight buffer layers.0.down" in m for m in msgs), msgs


def test_a_write_the_task_does_not_declare_is_refused():
    # the gate_up task's SILU_MUL pointed at the logits: a buffer its regions never name, so no hazard is seen
    prog = _program()
    logits = next(b.id for b in prog.buffers if b.name == "logits")
    t = _first(prog, lambda t: t.kind == "gate_up")
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, out=logits))
    msgs = _abi_messages(prog)
    assert any(f"epi.out={logits} names buffer logits, which the task does not declare writing" in m
               for m in msgs), msgs


def test_activations_read_as_weights_are_refused():
    prog = _program()
    arena = next(b.id for b in prog.buffers if b.kind == BufferKind.ARENA)
    t = _first(prog, lambda t: t.opcode == Opcode.MATVEC)
    t.params = dataclasses.replace(t.params, weight=arena)
    msgs = _abi_messages(prog)
    assert any(f"weight={arena} names arena buffer arena, read as model weights" in m for m in msgs), msgs


def test_a_kv_append_outside_the_kv_cache_is_refused():
    prog = _program()
    arena = next(b.id for b in prog.buffers if b.kind == BufferKind.ARENA)
    t = _first(prog, lambda t: t.opcode == Opcode.MATVEC and t.params.epi.kind == Epilogue.ROPE_KV)
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, vcache=arena))
    msgs = _abi_messages(prog)
    assert any(f"epi.vcache={arena} names arena buffer arena, not a KV cache" in m for m in msgs), msgs


def test_an_epilogue_writing_past_its_declared_rows_is_refused():
    # the same buffer (every activation shares the arena), rows moved off the declared range
    prog = _program()
    t = _first(prog, lambda t: t.kind == "down")
    e = t.params.epi
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(e, out_off=e.out_off + 64))
    lo = e.out_off + 64 + t.params.row0
    msgs = _abi_messages(prog)
    assert any(f"epi.out={e.out} writes arena[{lo}:{lo + t.params.rows}), which the task's regions do not cover" in m
               for m in msgs), msgs


def _o_join_without_residual(access: str) -> tuple:
    """An O projection split over K and reduced by its row block's last split, with the residual add's rows of x
    dropped from the tasks' and the join's declared `access` ("reads" or "writes"): (program, (buffer, start, len))."""
    prog = _program({"matvec": {"o": {"k_splits": 2, "reduce": "last_task"}}})
    j = next(j for j in prog.joins if prog.tasks[j.tasks[0]].kind == "o")
    p = prog.tasks[j.tasks[0]].params
    x = (p.epi.out, p.epi.out_off + p.row0, p.rows)

    def drop(regions):
        return [r for r in regions if not (r.buffer == x[0] and r.start <= x[1] and r.start + r.length >= x[1] + x[2])]

    before = sum(len(getattr(prog.tasks[t], access)) for t in j.tasks) + len(getattr(j, access))
    for tid in j.tasks:
        setattr(prog.tasks[tid], access, drop(getattr(prog.tasks[tid], access)))
    i = prog.joins.index(j)
    prog.joins[i] = dataclasses.replace(j, **{access: tuple(drop(getattr(j, access)))})
    after = sum(len(getattr(prog.tasks[t], access)) for t in j.tasks) + len(getattr(prog.joins[i], access))
    assert after < before  # the rows were declared
    return prog, x


def test_a_split_join_whose_residual_write_is_undeclared_is_refused():
    # the residual add's rows of x, dropped from the regions, were unseen by the hazard check (an earlier writer of
    # x always exists)
    prog, x = _o_join_without_residual("writes")
    msgs = _abi_messages(prog)
    assert any(f"writes arena[{x[1]}:{x[1] + x[2]})" in m for m in msgs), msgs


def test_a_matvec_reading_an_undeclared_input_slice_is_refused():
    # the down task's input moved past the MLP's hidden row it declares reading: a read the hazard check never orders
    prog = _program({"fusion": {"norm_into_matvec": False}})
    t = _first(prog, lambda t: t.kind == "down")
    p = t.params
    t.params = dataclasses.replace(p, inp_off=p.inp_off + 4096)
    lo = p.inp_off + 4096 + p.k0
    msgs = _abi_messages(prog)
    assert any(f"inp={p.inp} reads arena[{lo}:{lo + p.klen}), which the task's regions do not cover" in m
               for m in msgs), msgs


def test_a_split_join_whose_residual_read_is_undeclared_is_refused():
    # the residual add reads the rows of x it adds to; dropped from the regions, no wait would order that read
    # after x's last writer
    prog, x = _o_join_without_residual("reads")
    msgs = _abi_messages(prog)
    assert any(f"epi.out={x[0]} reads arena[{x[1]}:{x[1] + x[2]})" in m for m in msgs), msgs


def test_the_attention_outputs_a_step_may_write_are_held_to_their_buffers():
    # the values pass's combine (last_partition), a partition's score scratch (written only past `chunk`), and a
    # QKV task's q rows (every step, where its rows hold a q head)
    prog = _program({"attention": {"softmax": "global", "combine": "last_partition", "kv_partitions": 2}})
    logits = next(b.id for b in prog.buffers if b.name == "logits")
    t = _first(prog, lambda t: t.opcode == Opcode.ATTN_VALUES)
    t.params = dataclasses.replace(t.params, join=dataclasses.replace(t.params.join, out=logits))
    assert any("join.out=" in m and "does not declare writing" in m for m in _abi_messages(prog))

    prog = _program({"attention": {"kv_partitions": 2}})
    embed = _weight_id(prog, "embed")
    t = _first(prog, lambda t: t.opcode == Opcode.ATTN_PARTIAL)
    t.params = dataclasses.replace(t.params, scores=embed)
    assert any(f"scores={embed} names weight buffer embed" in m for m in _abi_messages(prog))

    prog = _program()
    logits = next(b.id for b in prog.buffers if b.name == "logits")
    t = _first(prog, lambda t: t.opcode == Opcode.MATVEC and t.params.epi.kind == Epilogue.ROPE_KV
               and t.params.row0 == 0)  # group 0's first q head
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, out=logits))
    assert any(f"epi.out={logits} names buffer logits, which the task does not declare writing" in m
               for m in _abi_messages(prog))


def test_a_malformed_task_hides_no_other_tasks_issue():
    # the embedding's dim is not an int (the ABI check names it); the down task's weight write is still reported
    prog = _program()
    emb = _first(prog, lambda t: t.opcode == Opcode.EMBED)
    emb.params = dataclasses.replace(emb.params, dim=None)
    t = _first(prog, lambda t: t.kind == "down")
    w = _weight_id(prog, "layers.0.down")
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, out=w))
    res = validate(prog, "h200")
    assert IssueKind.INTERNAL not in res.kinds(), res.issues
    msgs = [i.message for i in res.issues]
    assert any("dim=None" in m for m in msgs) and any("names weight buffer layers.0.down" in m for m in msgs), msgs


@pytest.mark.parametrize("config", [{}, {"attention": {"kv_partitions": 1}}, {"attention": {"softmax": "global"}}])
def test_a_kv_cache_read_from_another_buffer_is_refused(config):
    # read-only cache fields too: the kernel indexes them as a layer's rows, past the end of any other buffer
    prog = _program(config)
    token = next(b.id for b in prog.buffers if b.name == "token")
    t = _first(prog, lambda t: hasattr(t.params, "vcache"))
    t.params = dataclasses.replace(t.params, vcache=token)
    assert any("vcache" in m and "not a KV cache" in m for m in _abi_messages(prog))


def test_argmax_pairs_past_their_declared_region_are_refused():
    prog = _program()
    t = _first(prog, lambda t: t.opcode == Opcode.ARGMAX)
    t.params = dataclasses.replace(t.params, slots=t.params.slots + 8)
    assert any("pairs=" in m and "do not cover" in m for m in _abi_messages(prog))
