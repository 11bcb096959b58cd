"""matvec.qkv.head_splits: a QKV head split over tasks by RoPE pairs (rows i and i + head_dim/2) gives what
the whole head gives, on the ReferenceVM against transformers; combinations that cannot work are refused
with the knob's name (tests/test_search_space.py: the search never proposes them)."""

from __future__ import annotations

import pytest
import torch

import amk
from amk.eval.oracle import verify
from amk.schedule import ScheduleConfig, lower
from amk.schedule.errors import LoweringError
from amk.schedule.opcodes import Epilogue
from amk.schedule.space import conflicts
from amk.schedule.validate import validate
from amk.vm.reference import ReferenceVM
from amk.vm.weights import pack_weights

SPLIT2 = {"matvec": {"qkv": {"head_splits": 2}}}


def _cfg(splits: int, **extra) -> dict:
    return {"matvec": {"qkv": {"head_splits": splits, **extra}}}


@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("name", ["toy", "toy-2L"])  # toy-2L: QKV bias on the paired rows, MQA
def test_split_heads_verify_against_transformers(name, splits):
    model = amk.load_model(name, dtype="fp32")
    prog = lower(model, "cpu-sim", _cfg(splits), max_seq=64)
    assert validate(prog, "cpu-sim").ok
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]


def test_split_tasks_hold_rope_pairs_and_the_whole_heads_between_them():
    model = amk.load_model("toy", dtype="fp32", weights=False)
    d = model.dims
    prog = lower(model, "cpu-sim", _cfg(2), max_seq=64)
    qkv = [t for t in prog.tasks if t.kind == "qkv"]  # toy has one layer
    half = d.head_dim // 2
    assert len(qkv) == 2 * (d.n_heads + 2 * d.n_kv_heads)
    rows = set()
    for t in qkv:
        p = t.params
        assert p.epi.kind == Epilogue.ROPE_KV and p.epi.pair_offset == half and p.rows == half // 2
        rows |= set(range(p.row0, p.row0 + p.rows)) | set(range(p.row0 + half, p.row0 + half + p.rows))
    assert rows == set(range(d.qkv_rows))  # every row of every head exactly once


def test_split_heads_give_the_same_step_as_whole_heads():
    model = amk.load_model("toy-2L", dtype="fp32")
    outs = []
    for cfg in ({}, _cfg(2)):
        prog = lower(model, "cpu-sim", cfg, max_seq=64)
        vm = ReferenceVM(prog, pack_weights(model.eager, prog, device="cpu"))
        outs.append(vm.step(3)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("extra, needs", [({"heads_per_task": 2}, "heads_per_task=1"), ({"k_splits": 2}, "k_splits=1")])
def test_conflicting_qkv_knobs_are_refused_by_name(extra, needs):
    model = amk.load_model("toy", dtype="fp32", weights=False)
    with pytest.raises(LoweringError) as e:
        lower(model, "cpu-sim", _cfg(2, **extra), max_seq=64)
    assert "matvec.qkv.head_splits" in str(e.value) and needs in str(e.value)
    assert conflicts(ScheduleConfig.from_dict(_cfg(2, **extra)))


def test_a_fused_qk_norm_needs_whole_heads():
    model = amk.load_model("qwen3-0.6b", dtype="bf16", weights=False)
    with pytest.raises(LoweringError, match="matvec.qkv.head_splits.*q/k norm"):
        lower(model, "h100-sxm", {**SPLIT2, "fusion": {"rope_kv_into_qkv": True}}, max_seq=256)
    # with RoPE in its own stage the norm sees whole heads again; left derived, split heads unfuse it
    for fusion in ({"rope_kv_into_qkv": False}, {}):
        prog = lower(model, "h100-sxm", {**SPLIT2, "fusion": fusion}, max_seq=256)
        assert validate(prog, "h100-sxm").ok
    assert prog.meta["derived"]["fusion.rope_kv_into_qkv"] is False


def test_a_split_that_does_not_divide_half_a_head_is_refused():
    model = amk.load_model("toy", dtype="fp32", weights=False)  # head_dim 16: half is 8
    with pytest.raises(LoweringError, match="does not divide head_dim/2"):
        lower(model, "cpu-sim", _cfg(3), max_seq=64)


def test_split_heads_of_a_qk_norm_model_verify_against_transformers(tmp_path):
    from _checkpoints import SMALL, save_checkpoint
    from transformers import Qwen3Config

    cfg = Qwen3Config(**SMALL, head_dim=16, num_hidden_layers=2, max_position_embeddings=64)
    model = amk.load_model(save_checkpoint(cfg, tmp_path))
    assert model.dims.qk_norm
    prog = lower(model, "cpu-sim", SPLIT2)  # RoPE left derived: unfused, so the norm sees whole heads
    assert prog.meta["derived"]["fusion.rope_kv_into_qkv"] is False
    res = verify(prog, model)
    assert res.ok, [(c.case, c.message[:160]) for c in res.cases if not c.passed]
