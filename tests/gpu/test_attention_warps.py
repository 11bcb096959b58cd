"""The partition attention's shared-memory path at every warp layout it has (skipped without CUDA and cupy).

vm/attention_partitions.cuh partial_warp_heads gives a q head attention.head_warps warps (derived: two where the
block's NWARPS / G allow, else one, and then a warp may take several heads; set here to one and to NWARPS / G as
well) and reads V rows a warp-wide load at a time when a row is a power-of-two number of 16-byte vectors of at
most a warp, else one head dim a lane. Each shape below lands on another of those layouts
(tests/_checkpoints.py ATTENTION_WARP_SHAPES) in fp32 (4 values a vector) and bf16 (8), at the derived partition
count and at 16 partitions, where most warps of a partition near position 0 have no positions at all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import amk
from amk.eval.oracle import make_vm, verify
from amk.schedule.autotile import DERIVED_HEAD_WARPS, max_head_warps
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import UnsupportedModelError
from amk.schedule.opcodes import Opcode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_checkpoints.py
from _checkpoints import ATTENTION_WARP_SHAPES, TILE_SCRATCH_SHAPES, attention_warp_shape  # noqa: E402

# each shape's whole GQA group in one task (a derived q split would narrow the layout the shape stands for)
CONFIGS = [{"attention": {"q_splits": 1}}, {"attention": {"softmax": "partition", "kv_partitions": 16, "q_splits": 1}}]


def warp_configs(group: int) -> list[dict]:
    """CONFIGS, then the warps a q head other than the derived count: one (no block barrier) and the most the
    default's warps give the group (the layout that spreads a partition of few heads over every warp)."""
    most = max_head_warps(group, ScheduleConfig().threads_per_block // 32)
    other = sorted({1, most} - {min(DERIVED_HEAD_WARPS, most)})
    return CONFIGS + [{"attention": {"q_splits": 1, "head_warps": w}} for w in other]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention_warps")
    return {name: attention_warp_shape(root / name, name) for name in {**ATTENTION_WARP_SHAPES, **TILE_SCRATCH_SHAPES}}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", sorted(ATTENTION_WARP_SHAPES))
def test_every_warp_layout_matches_transformers_and_reference(shape, dtype, checkpoints, target):
    if (shape, dtype) == ("g1-hd256", "fp32"):  # 64 16-byte vectors a K row: refused, by name
        with pytest.raises(UnsupportedModelError, match="head_dim=256 in fp32"):
            amk.evaluate(str(checkpoints[shape]), target.name, {}, dtype="fp32", max_seq=256)
        return
    model = amk.load_model(str(checkpoints[shape]), dtype=dtype, device="cuda")
    for cfg in warp_configs(model.dims.group):
        prog = amk.lower(model, target, cfg, max_seq=256)
        assert any(t.opcode == Opcode.ATTN_PARTIAL for t in prog.tasks), (shape, cfg)
        _matches_transformers_and_reference(prog, model, dtype, (shape, cfg))


# the block-wide passes (ATTN_DECODE, the global softmax's scores and values) take more than 8 q heads a KV head in
# tiles of 8 (vm/attention.cuh GT): each tile its own passes over K and V, its stats, probabilities and values
TILED = ["g16-hd16", "g20-hd16", "g32-hd16", "g16-hd128"]  # g20: a ragged last tile (GT_RAGGED); g16-hd128: the
# value reduction's scratch (schedule/smem.py group_tile) fills most of the task's shared memory
BLOCK_WIDE = [({"attention": {"kv_partitions": 1}}, Opcode.ATTN_DECODE),
              ({"attention": {"softmax": "global"}}, Opcode.ATTN_SCORES)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", TILED)
def test_the_block_wide_passes_in_tiles_of_q_heads_match_transformers_and_reference(shape, dtype, checkpoints,
                                                                                    target):
    model = amk.load_model(str(checkpoints[shape]), dtype=dtype, device="cuda")
    assert model.dims.group > 8
    for cfg, opcode in BLOCK_WIDE:
        prog = amk.lower(model, target, cfg, max_seq=256)
        assert any(t.opcode == opcode for t in prog.tasks), (shape, cfg)
        _matches_transformers_and_reference(prog, model, dtype, (shape, cfg))


def _matches_transformers_and_reference(prog, model, dtype: str, label) -> None:
    """The CUDA VM's program verified against transformers, and its logits step for step against the ReferenceVM's."""
    res = verify(prog, model, device="cuda", vm="cuda", cases="full")
    assert res.ok, (label, res.to_dict()["failures"])
    gpu, ref = make_vm(prog, model, device="cuda", vm="cuda"), make_vm(prog, model, device="cuda")
    for tok in (1, 5, 9):
        a, _ = gpu.step(tok)
        b, _ = ref.step(tok)
        tol = 1e-4 if dtype == "fp32" else 5e-2
        assert torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))), (label, tok)
