"""Tagged streams on the GPU (build.tagged_residual, build.tagged_hidden): the tagged reads give the polled path's
values exactly, every writer and reader of x and of the MLP's hidden row takes them, and a tag that never comes
stops the step with a named error."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import amk
from amk.eval.oracle import make_vm, verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_schedules.py
from _schedules import assert_planted_deadlock_stops  # noqa: E402

TAGS_OFF = {"build": {"tagged_residual": False}}
HIDDEN_ON = {"build": {"tagged_hidden": True}}
# readers and writers of x: fused norms and residual adds, their own RMSNORM and add tasks, a reduce stage's
# EPILOGUE tasks and a k-split's last task
LAYOUTS = [
    {},
    {"fusion": {"norm_into_matvec": False, "residual_into_matvec": False}},
    {"matvec": {"o": {"k_splits": 2}, "down": {"k_splits": 3, "reduce": "last_task"}}},
]


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _logits(prog, model, tokens):
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    return [vm.step(t)[0] for t in tokens]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m"])
def test_tagged_reads_give_the_polled_paths_logits_exactly(name, dtype, target):
    model = amk.load_model(name, dtype=dtype, device="cuda")
    for layout in LAYOUTS:
        tagged = amk.lower(model, target, layout, max_seq=128)
        polled = amk.lower(model, target, _merge(layout, TAGS_OFF), max_seq=128)
        assert any(t.carried for t in tagged.tasks) and not any(t.carried for t in polled.tasks), layout
        assert amk.validate(tagged, target).ok, layout
        assert verify(tagged, model, device="cuda", vm="cuda", cases="reduced").ok, layout
        # the same sums in the same order: only how the readers learn that x is ready differs
        tokens = [1, 5, 9, 2, 7, 3]
        for a, b in zip(_logits(tagged, model, tokens), _logits(polled, model, tokens)):
            assert torch.equal(a, b), layout


# writers and readers of the hidden row: the fused SiLU-mul, its own stage's EPILOGUE tasks, a k-split gate/up's
# last task, and a k-split down (whose slices read tagged, its wait polled)
HIDDEN_LAYOUTS = [
    {},
    {"fusion": {"silu_mul_into_gate_up": False}, "build": {"tagged_residual": False}},
    {"matvec": {"gate_up": {"k_splits": 2, "reduce": "last_task"}, "down": {"k_splits": 2}}},
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m"])
def test_the_hidden_rows_tagged_reads_give_the_polled_paths_logits_exactly(name, dtype, target):
    model = amk.load_model(name, dtype=dtype, device="cuda")
    for layout in HIDDEN_LAYOUTS:
        tagged = amk.lower(model, target, _merge(layout, HIDDEN_ON), max_seq=128)
        polled = amk.lower(model, target, layout, max_seq=128)
        assert tagged.build["H_TAGS"] >= 0 and polled.build["H_TAGS"] == -1, layout
        assert any(t.params.inp_tag >= 0 for t in tagged.tasks if t.kind == "down"), layout
        assert amk.validate(tagged, target).ok, layout
        assert verify(tagged, model, device="cuda", vm="cuda", cases="reduced").ok, layout
        tokens = [1, 5, 9, 2, 7, 3]
        for a, b in zip(_logits(tagged, model, tokens), _logits(polled, model, tokens)):
            assert torch.equal(a, b), layout


def test_a_hidden_row_tag_that_never_comes_times_out_by_name(target):
    model = amk.load_model("toy", dtype="fp32", device="cuda")
    prog = amk.lower(model, target, HIDDEN_ON, max_seq=64)
    t = next(t for t in prog.tasks if t.kind == "down" and t.carried)
    t.params = dataclasses.replace(t.params, inp_tag=int(prog.build["H_VERSIONS"]))
    said = assert_planted_deadlock_stops(prog, model, target, t.id)
    assert not said or "the MLP hidden row's tagged values" in said, said


def test_a_tag_that_never_comes_times_out_by_name(target):
    model = amk.load_model("toy", dtype="fp32", device="cuda")
    prog = amk.lower(model, target, None, max_seq=64)
    # built around the validator: a reader whose waits the tags carry expects a version no stage writes this step
    t = next(t for t in prog.tasks if t.carried)
    t.params = dataclasses.replace(t.params, inp_tag=int(prog.build["X_VERSIONS"]))
    # every task behind it waits too, on a counter or on tags; where the planted one times out first, it names the tags
    said = assert_planted_deadlock_stops(prog, model, target, t.id)
    assert not said or "the residual stream's tagged values" in said, said
