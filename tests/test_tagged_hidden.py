"""The tagged hidden row (build.tagged_hidden, schedule/tags.py): the versions of the MLP's hidden row that gate/up
writes and down reads, the waits the tags carry, and the validator's refusals of tags that could read stale values
or carry a wait they cannot."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _schedules import tagged_read_issues, tasks_of

import amk
from amk.eval.oracle import make_vm
from amk.schedule import lower
from amk.schedule import opcodes as oc
from amk.schedule.errors import TaggedReadError
from amk.schedule.program import BufferKind, Region
from amk.schedule.validate import validate

ON = {"build": {"tagged_hidden": True}}


def _program(config=None, name="toy-2L", dtype="bf16"):
    cfg = {**(config or {}), "build": {**(config or {}).get("build", {}), "tagged_hidden": True}}
    return lower(amk.load_model(name, dtype=dtype, weights=False), "h200", cfg, max_seq=128)


def test_each_layers_gate_up_writes_a_version_and_its_down_reads_it():
    prog = _program()
    layers = prog.constants.n_layers
    assert prog.build["H_VERSIONS"] == layers
    words = prog.buffers[prog.build["H_TAGS"]]
    assert (words.name, words.kind, words.dtype, words.numel) == \
        ("h_tags", BufferKind.SCRATCH, oc.DType.I32, 2 * prog.constants.intermediate)
    stage_of = {}
    for t in tasks_of(prog, "gate_up"):
        assert t.params.epi.kind == oc.Epilogue.SILU_MUL
        stage_of.setdefault(t.params.epi.h_tag, set()).add(t.stage)
    assert sorted(stage_of) == list(range(layers)) and all(len(s) == 1 for s in stage_of.values())
    for t in tasks_of(prog, "down"):
        v = t.params.inp_tag
        assert 0 <= v < layers and min(stage_of[v]) < t.stage
        assert not any(min(stage_of[w]) < t.stage for w in range(v + 1, layers))  # the last write before it
    assert validate(prog).ok


def test_downs_wait_on_gate_up_is_carried_and_x_readers_keep_theirs():
    prog = _program()
    for t in tasks_of(prog, "down"):
        assert t.carried and set(t.carried) == {w.counter for w in t.waits}, t.id
    x_only = lower(amk.load_model("toy-2L", dtype="bf16", weights=False), "h200", {}, max_seq=128)
    assert [t.carried for t in x_only.tasks if t.kind != "down"] == [t.carried for t in prog.tasks if t.kind != "down"]


def test_it_is_off_by_default():
    prog = lower(amk.load_model("toy-2L", dtype="bf16", weights=False), "h200", {}, max_seq=128)
    assert prog.build["H_TAGS"] == -1 and prog.build["H_VERSIONS"] == 0
    assert "h_tags" not in {b.name for b in prog.buffers}
    assert all(t.params.epi.h_tag == -1 for t in prog.tasks if hasattr(t.params, "epi"))
    assert all(t.params.inp_tag == -1 for t in tasks_of(prog, "down"))


def test_a_k_split_down_reads_its_slice_tagged_and_polls():
    # each slice sees only its own writers' tags, while its counter counts every gate/up task
    prog = _program({"matvec": {"down": {"k_splits": 2}}})
    downs = [t for t in prog.tasks if t.opcode == oc.Opcode.MATVEC and t.kind == "down"]
    assert len({t.params.k0 for t in downs}) == 2
    assert all(t.params.inp_tag >= 0 and not t.carried for t in downs)
    assert validate(prog).ok


@pytest.mark.parametrize("config", [
    {"fusion": {"silu_mul_into_gate_up": False}},  # the SiLU-mul's own EPILOGUE tasks write the row
    {"matvec": {"gate_up": {"k_splits": 2}}},  # a reduce stage's EPILOGUE tasks
    {"matvec": {"gate_up": {"k_splits": 2, "reduce": "last_task"}, "down": {"k_splits": 2, "reduce": "last_task"}}},
    {"build": {"tagged_residual": False}, "fusion": {"norm_into_matvec": False}},
    {"pipeline": {"pages": 2, "page_kb": 8}},
])
def test_every_layout_of_writers_and_readers_validates(config):
    prog = _program(config)
    assert validate(prog).ok, tagged_read_issues(prog)
    writers = [t for t in prog.tasks if t.params.__class__.__name__ in ("MatvecParams", "EpilogueTaskParams")
               and t.params.epi.kind == oc.Epilogue.SILU_MUL]
    assert writers and all(t.params.epi.h_tag >= 0 for t in writers)
    assert any(t.params.inp_tag >= 0 for t in tasks_of(prog, "down"))


def test_the_reference_vm_reads_the_same_row_either_way():
    # with the tags on it takes down's input, and x, from the words: the same values, in any order the waits allow
    model = amk.load_model("toy-2L", dtype="fp32")
    logits = []
    for config, adversarial in (({}, False), (ON, False), (ON, True)):
        vm = make_vm(lower(model, "cpu-sim", config, max_seq=32), model, adversarial=adversarial, seed=3)
        logits.append([vm.step(t)[0] for t in (1, 4, 2)])
    for other in logits[1:]:
        assert all(torch.equal(a, b) for a, b in zip(logits[0], other))


@pytest.mark.parametrize("kind,field", [("down", "inp_tag"), ("gate_up", "inp_tag"), ("o", "x_tag")])
def test_the_reference_vm_stops_at_a_word_the_kernel_would_spin_on(kind, field):
    # built around the validator: a reader expecting a version no write of this step makes
    model = amk.load_model("toy-2L", dtype="fp32")
    prog = lower(model, "cpu-sim", ON, max_seq=32)
    t = tasks_of(prog, kind)[0]
    if field == "x_tag":  # a residual add reads the version before its own
        _set_epi(t, x_tag=t.params.epi.x_tag + 2)
    else:
        t.params = dataclasses.replace(t.params, inp_tag=t.params.inp_tag + 1)
    vm = make_vm(prog, model)
    with pytest.raises(TaggedReadError, match=rf"task {t.id} reads .* would spin on it") as e:
        vm.step(1)
    assert e.value.tasks == (t.id,)


def test_the_reference_vm_clears_the_words_when_it_resets():
    model = amk.load_model("toy-2L", dtype="fp32")
    vm = make_vm(lower(model, "cpu-sim", ON, max_seq=32), model)
    first = [vm.step(t)[0] for t in (1, 4)]
    vm.reset()
    assert all(torch.equal(a, vm.step(t)[0]) for a, t in zip(first, (1, 4)))


# ---- the validator ----------------------------------------------------------------------------------
def _first(prog, kind):
    return next(t for t in prog.tasks if t.kind == kind)


def _set_epi(t, **kw):
    t.params = dataclasses.replace(t.params, epi=dataclasses.replace(t.params.epi, **kw))


def test_a_down_expecting_another_layers_row_is_refused():
    prog = _program()
    t = tasks_of(prog, "down")[-1]  # the last layer's: version 0 is long overwritten
    t.params = dataclasses.replace(t.params, inp_tag=0)
    assert any("reads version 0 of the hidden row (inp_tag)" in m for m in tagged_read_issues(prog))


def test_a_silu_mul_without_tags_is_refused():
    prog = _program()
    _set_epi(_first(prog, "gate_up"), h_tag=-1)
    assert any("writes the hidden row without its tags" in m for m in tagged_read_issues(prog))


def test_a_tag_on_an_epilogue_that_is_no_silu_mul_is_refused():
    prog = _program()
    _set_epi(_first(prog, "qkv"), h_tag=0)
    assert any("no SiLU-mul" in m for m in tagged_read_issues(prog))


def test_writers_of_one_version_at_two_places_are_refused():
    prog = _program()
    t = _first(prog, "gate_up")
    _set_epi(t, out_off=t.params.epi.out_off + 4)
    assert any("the kernel indexes the words by row" in m for m in tagged_read_issues(prog))


def test_a_version_out_of_stage_order_is_refused():
    prog = _program()
    for t in tasks_of(prog, "gate_up"):
        _set_epi(t, h_tag=prog.constants.n_layers - 1 - t.params.epi.h_tag)
    assert any("they must be 0, 1, ... in stage order" in m for m in tagged_read_issues(prog))


def test_a_tagged_read_of_another_value_is_refused():
    prog = _program()
    t = _first(prog, "down")
    t.params = dataclasses.replace(t.params, inp_off=t.params.inp_off + 8)
    assert any("would read the words of other values" in m for m in tagged_read_issues(prog))


def test_a_slice_the_kernel_would_read_short_is_refused():
    prog = _program()
    t = _first(prog, "down")
    t.params = dataclasses.replace(t.params, klen=t.params.klen - 2)
    assert any("four at a time" in m for m in tagged_read_issues(prog))


def test_an_untagged_write_into_the_row_before_its_read_is_refused():
    prog = _program()
    gate_up, down = _first(prog, "gate_up"), _first(prog, "down")
    row = Region(gate_up.params.epi.out, gate_up.params.epi.out_off, 4)
    down.writes = down.writes + (row,)
    assert any("writes version 0's hidden row without its tags before" in m for m in tagged_read_issues(prog))


def test_a_carried_wait_on_producers_that_write_more_is_refused():
    prog = _program()
    down = _first(prog, "down")
    gate_up = next(s for s in prog.tasks if down.carried[0] in s.signals)
    gate_up.writes = gate_up.writes + (Region(down.params.epi.out, down.params.epi.out_off, 4),)
    assert any("the tags cannot" in m for m in tagged_read_issues(prog))


def test_a_carried_wait_of_a_k_split_slice_is_refused():
    prog = _program({"matvec": {"down": {"k_splits": 2}}})
    t = next(t for t in prog.tasks if t.kind == "down" and t.params.k0 > 0)
    t.carried = (t.waits[0].counter,)  # the counter counts gate/up tasks whose rows this slice does not read
    assert any("the tags cannot" in m for m in tagged_read_issues(prog))


def test_a_hidden_read_without_a_words_buffer_is_refused():
    prog = _program()
    prog.build = {**prog.build, "H_TAGS": -1}
    assert any("names no h_tags buffer" in m for m in tagged_read_issues(prog))


def test_a_words_buffer_of_the_wrong_size_is_refused():
    prog = _program()
    words = prog.build["H_TAGS"]
    prog.buffers[words] = dataclasses.replace(prog.buffers[words], numel=prog.constants.intermediate)
    assert any("must be an int32 scratch buffer" in m for m in tagged_read_issues(prog))


def _all_issues(prog) -> list[str]:
    return [i.message for i in validate(prog).issues]


def test_one_words_buffer_for_both_streams_is_refused():
    prog = _program()
    prog.build = {**prog.build, "X_TAGS": prog.build["H_TAGS"]}
    assert any("name one buffer" in m for m in tagged_read_issues(prog))


def test_a_params_field_naming_a_words_buffer_is_refused():
    # only tags write the words: down's fp32 output stored there would land on words its siblings spin on
    prog = _program()
    words = prog.buffers[prog.build["H_TAGS"]]
    _set_epi(_first(prog, "down"), out=words.id, out_off=0)
    assert any("names the h_tags buffer" in m for m in tagged_read_issues(prog))


def test_the_words_are_declared_and_the_hazard_check_orders_them():
    prog = _program()
    words = prog.build["H_TAGS"]
    for t in prog.tasks:
        if t.kind == "gate_up":
            assert Region(words, 2 * t.params.row0, 2 * t.params.rows) in t.writes
        if t.kind == "down":
            assert Region(words, 2 * t.params.k0, 2 * t.params.klen) in t.reads
    # every layer's row shares the words: a later layer's gate/up no longer ordered after an earlier down races
    prog = _program({"scratch": "none"})
    gate_up1 = [t for t in tasks_of(prog, "gate_up") if t.params.epi.h_tag == 1]
    for t in gate_up1:
        t.waits, t.carried = _first(prog, "qkv").waits, ()
    assert any("h_tags[" in m and "no happens-before path" in m for m in _all_issues(prog))


def test_a_writer_whose_words_are_undeclared_is_refused():
    prog = _program()
    t = max((t for t in tasks_of(prog, "gate_up") if t.params.epi.h_tag == 0), key=lambda t: t.params.row0)
    t.params = dataclasses.replace(t.params, rows=t.params.rows + 4)  # past the row's end
    assert any("declares that it writes h_tags" in m for m in tagged_read_issues(prog))


def test_a_slice_no_writer_of_the_version_covers_is_refused():
    prog = _program()
    words = prog.build["H_TAGS"]
    t = max((t for t in tasks_of(prog, "gate_up") if t.params.epi.h_tag == 0), key=lambda t: t.params.row0)
    rows = t.params.rows - 4
    t.params = dataclasses.replace(t.params, rows=rows)
    t.writes = tuple(Region(w.buffer, w.start, 2 * rows if w.buffer == words else rows) for w in t.writes)
    assert any(f"reads {prog.buffers[words].name}[" in m and "no earlier task of the step writes" in m
               for m in _all_issues(prog))


def test_words_a_task_declares_beyond_what_its_tags_touch_are_refused():
    # the hazard check would take them as written: a read of words no tag stores would pass it and spin
    prog = _program()
    att = _first(prog, "attention")
    att.writes = att.writes + (Region(prog.build["H_TAGS"], 0, 8),)
    assert any("declares that it writes h_tags [(0, 8)], where its tags make the kernel write none" in m
               for m in tagged_read_issues(prog))


def test_an_rmsnorm_of_part_of_x_is_refused():
    # its tags say nothing of the writers of the rest of x, whose wait it would carry
    prog = _program({"fusion": {"norm_into_matvec": False}})
    t = next(t for t in prog.tasks if t.opcode == oc.Opcode.RMSNORM and t.carried)
    t.params = dataclasses.replace(t.params, dim=t.params.dim // 2)
    assert any("on an RMSNorm of" in m for m in tagged_read_issues(prog))


def test_an_untagged_residual_add_of_a_k_split_join_is_refused():
    prog = _program({"matvec": {"down": {"k_splits": 2, "reduce": "last_task"}}})
    for t in tasks_of(prog, "down"):
        _set_epi(t, x_tag=-1)
    assert any("writes x without its tags" in m for m in tagged_read_issues(prog))
