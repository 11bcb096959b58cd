"""The shared memory an attention task reserves (schedule/smem.py) follows the kernel's layout: the value
reduction's scratch holds one partial output per consumer warp and q head of a tile of at most 8 heads
(vm/attention.cuh GROUP_TILES, GT), not of the whole KV group."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import amk
import amk.vm
from amk.schedule import DType, lower_dims
from amk.schedule.errors import LoweringError
from amk.schedule.smem import attention_partial_smem_bytes, attention_smem_bytes, group_tile
from amk.schedule.validate import validate

KERNEL = Path(amk.vm.__file__).parent / "attention.cuh"


def _kernel_tile(group: int) -> int:
    """GT as vm/attention.cuh defines it, evaluated for AMK_GROUP = group (read from the source, so the two
    cannot drift apart unnoticed)."""
    src = KERNEL.read_text()
    tiles_expr = re.search(r"constexpr int GROUP_TILES = (.+);", src).group(1)
    gt_expr = re.search(r"constexpr int GT = (.+);", src).group(1)
    tiles = eval(tiles_expr.replace("AMK_GROUP", str(group)).replace("/", "//"))
    return eval(gt_expr.replace("AMK_GROUP", str(group)).replace("GROUP_TILES", str(tiles)).replace("/", "//"))


@pytest.mark.parametrize("group", range(1, 65))
def test_group_tile_is_the_kernels(group):
    gt = group_tile(group)
    assert gt == _kernel_tile(group)
    tiles = -(-group // gt)
    assert gt <= 8 and (tiles - 1) * gt < group <= tiles * gt


def _dims(group: int, head_dim: int):
    d = amk.load_model("llama-3.2-1b", weights=False).dims
    return dataclasses.replace(d, n_heads=group, n_kv_heads=1, head_dim=head_dim, hidden=group * head_dim)


@pytest.mark.parametrize("group", [1, 4, 8])
def test_groups_of_one_tile_reserve_as_before(group):
    """Up to 8 q heads a KV head the tile is the group: the reservation is warps x group x head_dim."""
    dims = _dims(group, 128)
    area = 32 * group * 128
    assert attention_smem_bytes(1, dims, 1024) == 2048 + (2 * group * 128 + 2 * group + area) * 4
    assert attention_partial_smem_bytes(0, 0, dims, 1024, 2) >= 2048 + (2 * group * 128 + 2 * group + area) * 4


def test_a_wide_group_lowers_where_its_tiles_fit():
    """16 q heads of head_dim 128 on the global softmax: the tiles' scratch (16 warps x 8 x 128 floats) fits the
    default shared memory where the whole group's (16 x 16 x 128) did not, so the schedule lowers and validates;
    32 heads still name smem_per_block."""
    prog = lower_dims(_dims(16, 128), DType.BF16, "h200", {"attention": {"softmax": "global"}}, max_seq=1024)
    assert validate(prog, "h200").ok
    with pytest.raises(LoweringError) as err:
        lower_dims(_dims(32, 128), DType.BF16, "h200", {"attention": {"softmax": "global"}}, max_seq=1024)
    assert err.value.knob == "smem_per_block"
