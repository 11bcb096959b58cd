"""The tagged residual stream (build.tagged_residual, schedule/tags.py): the versions of x each task writes and
reads, the waits the tags carry, how they are packed, and the validator's refusals of tags that could read stale
values or carry a wait they cannot."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _schedules import tagged_read_issues, tasks_of

import amk
from amk.eval.oracle import make_vm
from amk.schedule import lower
from amk.schedule import opcodes as oc
from amk.schedule.program import BufferKind, MegakernelProgram, Region
from amk.schedule.validate import validate

TAGS_OFF = {"build": {"tagged_residual": False}}


def _program(config=None, name="toy-2L"):
    return lower(amk.load_model(name, dtype="bf16", weights=False), "h200", config or {}, max_seq=128)


def test_each_write_of_x_is_a_version_and_each_norm_reads_the_last_one():
    prog = _program()
    layers = prog.constants.n_layers
    assert prog.build["X_VERSIONS"] == 1 + 2 * layers
    words = prog.buffers[prog.build["X_TAGS"]]
    assert (words.name, words.dtype, words.numel) == ("x_tags", oc.DType.I32, 2 * prog.constants.hidden)
    assert [t.params.tag for t in tasks_of(prog, "embed")] == [0]
    for kind, first, writes in (("qkv", 0, False), ("o", 1, True), ("gate_up", 1, False), ("down", 2, True)):
        for t in tasks_of(prog, kind):
            layer = prog.tasks[t.id].stage  # stages run embed, then a layer's stages in order
            version = t.params.epi.x_tag if writes else t.params.inp_tag
            assert version >= 0, (kind, t.id)
            assert (version - first) % 2 == 0, (kind, layer, version)
    assert {t.params.inp_tag for t in tasks_of(prog, "lm_head")} == {2 * layers}
    # the two writes of each layer, in order
    assert sorted({t.params.epi.x_tag for t in tasks_of(prog, "o")}) == list(range(1, 2 * layers, 2))
    assert sorted({t.params.epi.x_tag for t in tasks_of(prog, "down")}) == list(range(2, 2 * layers + 1, 2))


def test_the_norms_waits_are_carried_and_no_other():
    prog = _program()
    for t in prog.tasks:
        if t.kind in ("qkv", "gate_up", "lm_head"):
            assert t.carried and set(t.carried) == {w.counter for w in t.waits}, (t.kind, t.id)
        else:
            assert not t.carried, (t.kind, t.id)
    assert validate(prog).ok


def test_tags_off_is_the_polled_program():
    prog = _program(TAGS_OFF)
    assert prog.build["X_TAGS"] == -1 and prog.build["X_VERSIONS"] == 0
    assert "x_tags" not in {b.name for b in prog.buffers}
    assert not any(t.carried for t in prog.tasks)
    assert all(oc_tag(t) == -1 for t in prog.tasks)
    assert validate(prog).ok


def oc_tag(t) -> int:
    p = t.params
    return max(getattr(p, "tag", -1), getattr(p, "inp_tag", -1), getattr(getattr(p, "epi", None), "x_tag", -1))


@pytest.mark.parametrize("config", [
    {"fusion": {"norm_into_matvec": False, "residual_into_matvec": False}},  # RMSNORM and add tasks
    {"matvec": {"o": {"k_splits": 2}, "down": {"k_splits": 2, "reduce": "last_task"}}},  # reduce stage, last split
    {"pipeline": {"pages": 2, "page_kb": 8}, "matvec": {"lm_head": {"k_splits": 2}}},
])
def test_every_layout_of_readers_and_writers_validates(config):
    prog = _program(config)
    assert validate(prog).ok, [i.message for i in validate(prog).issues]
    assert any(t.carried for t in prog.tasks)
    # a k-split's partial sums are no write of x: a wait on those tasks is polled
    x_and_words = {prog.tasks[0].params.out, prog.build["X_TAGS"]}
    for t in prog.tasks:
        for k in t.carried:
            for s in prog.tasks:
                if k in s.signals:
                    assert all(w.buffer in x_and_words for w in s.writes), (t.id, s.id)


def test_the_packed_instructions_hold_only_the_polled_waits():
    prog = _program()
    table, _, _ = prog.pack()
    order = [tid for q in prog.queues for tid in q]
    carried = 0
    for row, tid in zip(table, order):
        t = prog.tasks[tid]
        polled = [w for w in t.waits if w.counter not in t.carried]
        assert int(row[2]) == len(polled), tid
        assert [tuple(int(v) for v in row[oc.WAIT_BASE + 2 * w: oc.WAIT_BASE + 2 * w + 2]) for w in range(len(polled))] \
            == [tuple(w) for w in polled], tid
        carried += len(t.carried)
    assert carried > 0


def test_a_program_json_keeps_its_carried_waits():
    prog = _program()
    back = MegakernelProgram.from_dict(json.loads(prog.to_json()))
    assert [t.carried for t in back.tasks] == [t.carried for t in prog.tasks]
    assert back.fingerprint() == prog.fingerprint()


def test_the_reference_vm_reads_the_same_x_either_way():
    model = amk.load_model("toy-2L", dtype="fp32")
    logits = []
    for config in ({}, TAGS_OFF):
        vm = make_vm(lower(model, "cpu-sim", config, max_seq=32), model)
        logits.append([vm.step(t)[0] for t in (1, 4, 2)])
    assert all(torch.equal(a, b) for a, b in zip(*logits))


# ---- the validator ----------------------------------------------------------------------------------
def _first(prog, kind):
    return next(t for t in prog.tasks if t.kind == kind)


def test_a_reader_expecting_an_older_version_is_refused():
    prog = _program()
    t = [t for t in prog.tasks if t.kind == "qkv"][-1]  # the last layer's: version 0 is long overwritten
    t.params = dataclasses.replace(t.params, inp_tag=0)
    assert any("reads version 0 of x (inp_tag)" in m for m in tagged_read_issues(prog))


def test_a_writer_without_tags_is_refused():
    prog = _program()
    t = _first(prog, "o")
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, x_tag=-1))
    assert any("writes x without its tags" in m for m in tagged_read_issues(prog))


def test_a_writer_at_another_version_than_its_stage_is_refused():
    prog = _program()
    t = _first(prog, "down")
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, x_tag=t.params.epi.x_tag + 2))
    assert any("where its stage writes" in m for m in tagged_read_issues(prog))


def test_a_carried_wait_on_producers_that_write_more_than_x_is_refused():
    prog = _program()
    t = _first(prog, "gate_up")  # waits on O, which writes x: give one O task another write
    o = next(s for s in prog.tasks if t.carried[0] in s.signals)
    o.writes = o.writes + (Region(o.writes[0].buffer, o.writes[0].start + prog.constants.hidden, 4),)
    assert any("the tags cannot" in m for m in tagged_read_issues(prog))


def test_a_carried_wait_on_an_untagged_read_is_refused():
    prog = _program()
    t = _first(prog, "down")  # waits on gate_up, and reads the MLP's hidden row untagged (tagged_hidden false)
    t.carried = (t.waits[0].counter,)
    assert any("reads no tagged input" in m for m in tagged_read_issues(prog))


def test_a_carried_counter_the_task_does_not_wait_on_is_refused():
    prog = _program()
    t = _first(prog, "gate_up")
    other = _first(prog, "qkv").waits[0].counter
    t.carried = t.carried + (other,)
    assert any(f"carries counter {other}, which it does not wait on" in m for m in tagged_read_issues(prog))


def test_carried_waits_without_a_tags_buffer_are_refused():
    prog = _program()
    prog.build = {**prog.build, "X_TAGS": -1}
    assert any("names no x_tags buffer" in m for m in tagged_read_issues(prog))


def test_a_tagged_matvec_without_a_fused_norm_is_refused():
    # the kernel stages an unnormed input untagged: its carried wait would leave the read unordered
    prog = _program()
    for t in tasks_of(prog, "qkv"):
        t.params = dataclasses.replace(t.params, norm_weight=oc.NO_BUFFER)
    assert any("without a fused RMSNorm of x" in m for m in tagged_read_issues(prog))


def test_a_tagged_read_of_another_input_than_x_is_refused():
    # the kernel would normalise x's tagged words in place of O's attention input
    prog = _program()
    gate_up = _first(prog, "gate_up")
    for t in tasks_of(prog, "o"):
        t.params = dataclasses.replace(t.params, norm_weight=gate_up.params.norm_weight, inp_tag=t.params.epi.x_tag - 1)
    assert any("on an input that is not x" in m for m in tagged_read_issues(prog))


def test_a_tag_on_an_epilogue_that_adds_no_residual_is_refused():
    # the kernel stores tags only in a residual add: version 1 would never come and gate/up would spin to a time-out
    prog = _program()
    for t in tasks_of(prog, "o"):
        t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, kind=int(oc.Epilogue.STORE)))
    assert any("no residual add into x" in m for m in tagged_read_issues(prog))


def test_a_tags_buffer_that_is_no_scratch_buffer_is_refused():
    prog = _program()
    words = prog.build["X_TAGS"]
    prog.buffers[words] = dataclasses.replace(prog.buffers[words], kind=BufferKind.WEIGHT)
    assert any("must be an int32 scratch buffer" in m for m in tagged_read_issues(prog))

