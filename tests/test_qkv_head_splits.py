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
from amk.schedule.opcodes import Epilogue, pair_row, pair_runs
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
    assert prog.meta["derived"]["matvec.qkv.pairs_per_task"] == half // 2
    rows = []
    for t in qkv:
        p = t.params  # row0 and rows count RoPE pairs
        assert p.epi.kind == Epilogue.ROPE_KV and p.epi.pair_offset == half and p.rows == half // 2
        (r, n), = pair_runs(p.row0, p.rows, half)  # a head split never crosses a head
        assert r // d.head_dim == (r + n - 1) // d.head_dim and r % d.head_dim + n <= half
        rows += list(range(r, r + n)) + list(range(r + half, r + half + n))
    assert sorted(rows) == list(range(d.qkv_rows))  # every row of every head exactly once


@pytest.mark.parametrize("pairs", [3, 5, 8, 11])
def test_pair_tasks_cross_heads_and_cover_every_row_once(pairs):
    model = amk.load_model("toy-2L", dtype="fp32", weights=False)
    d = model.dims
    half = d.head_dim // 2
    prog = lower(model, "cpu-sim", {"matvec": {"qkv": {"pairs_per_task": pairs}}}, max_seq=64)
    assert validate(prog, "cpu-sim").ok
    qkv = [t for t in prog.tasks if t.kind == "qkv"]
    qkv = [t for t in qkv if t.params.weight == qkv[0].params.weight]  # the first layer's
    total = d.qkv_rows // 2
    assert [t.params.row0 for t in qkv] == list(range(0, total, pairs))
    rows = []
    for t in qkv:
        runs = pair_runs(t.params.row0, t.params.rows, half)
        assert len(runs) == 1 + (t.params.row0 // half != (t.params.row0 + t.params.rows - 1) // half)
        for r, n in runs:
            rows += list(range(r, r + n)) + list(range(r + half, r + half + n))
    assert sorted(rows) == list(range(d.qkv_rows))


def test_pair_rows_follow_the_kernels_map():
    # vm/epilogue.cuh pair_row: main row p of blocks of 2P at p + (p // P) * P; SILU_MUL's one block unchanged
    assert [pair_row(p, 4) for p in range(10)] == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17]
    assert [pair_row(p, 100) for p in (0, 57, 99)] == [0, 57, 99] and pair_row(7, 0) == 7
    assert pair_runs(6, 5, 4) == [(10, 2), (16, 3)] and pair_runs(6, 5, 0) == [(6, 5)]


@pytest.mark.parametrize("pairs, extra", [(3, {}), (5, {"fusion": {"rope_kv_into_qkv": False}}), (11, {})])
@pytest.mark.parametrize("name", ["toy", "toy-2L"])
def test_pair_tasks_verify_against_transformers(name, pairs, extra):
    model = amk.load_model(name, dtype="fp32")
    prog = lower(model, "cpu-sim", {"matvec": {"qkv": {"pairs_per_task": pairs}}, **extra}, max_seq=64)
    res = verify(prog, model, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]


@pytest.mark.parametrize("qkv, field, needs", [
    ({"pairs_per_task": 3, "heads_per_task": 2}, "pairs_per_task", "heads_per_task=1"),
    ({"pairs_per_task": 3, "k_splits": 2}, "pairs_per_task", "k_splits=1"),
    ({"pairs_per_task": 3, "head_splits": 2}, "pairs_per_task", "disagrees with head_splits=2"),
])
def test_pair_tasks_refuse_conflicting_knobs_by_name(qkv, field, needs):
    model = amk.load_model("toy", dtype="fp32", weights=False)
    with pytest.raises(LoweringError) as e:
        lower(model, "cpu-sim", {"matvec": {"qkv": qkv}}, max_seq=64)
    assert f"matvec.qkv.{field}" in str(e.value) and needs in str(e.value)


def test_head_splits_and_the_pairs_they_give_agree():
    model = amk.load_model("toy", dtype="fp32", weights=False)  # head_dim 16: half is 8
    same = lower(model, "cpu-sim", _cfg(2, pairs_per_task=4), max_seq=64)
    split = lower(model, "cpu-sim", _cfg(2), max_seq=64)
    assert [t.params for t in same.tasks] == [t.params for t in split.tasks]
    whole = lower(model, "cpu-sim", _cfg(1), max_seq=64)  # head_splits=1 given: whole heads
    assert whole.meta["derived"]["matvec.qkv.pairs_per_task"] == 0


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
