"""The derived tiling prices a register-path task as its busiest warp streams it (vm/matvec.cuh matvec_walk)."""

from __future__ import annotations

import pytest
from _checkpoints import public_shape

from amk.schedule import ScheduleConfig, get_target
from amk.schedule.autotile import WarpSplit, matvec_rows, resolve, streamed_bytes

SPLIT = WarpSplit(warps=16, rows_in_flight=1, loads_in_flight=4)


def _busiest_warp_steps(rows: int, k: int, nbytes: int, split: WarpSplit) -> list[int]:
    """Lane 0's loads in each step of the busiest warp, walked unit by unit as the kernel hands them out (an
    independent count): `rows_in_flight` units a group, a unit's last step only the vectors inside it."""
    nvec = k // (16 // nbytes)
    s = 1
    while rows * s < split.warps * split.rows_in_flight and nvec % (2 * s) == 0 and nvec // (2 * s) >= 32:
        s *= 2
    lpr = -(-nvec // 32)
    rpu = min(split.loads_in_flight // lpr, -(-rows // (split.warps * split.rows_in_flight)))
    if rpu >= 2:  # short rows: units of rpu rows, one step each; warp 0 holds the most
        owned = list(range(0, -(-rows // rpu), split.warps))
        return [sum(min(rpu, rows - u * rpu) * lpr for u in owned[g:g + split.rows_in_flight])
                for g in range(0, len(owned), split.rows_in_flight)]
    lane0 = list(range(0, nvec // s, 32))  # lane 0's vectors of one unit
    units = [0] * split.warps
    for u in range(rows * s):
        units[u % split.warps] += 1
    steps = []
    left = max(units)
    while left > 0:
        live = min(split.rows_in_flight, left)
        for first in range(0, len(lane0), split.loads_in_flight):
            steps.append(live * len(lane0[first:first + split.loads_in_flight]))
        left -= live
    return steps


@pytest.mark.parametrize("rows,k", [(16, 2048), (18, 2048), (32, 2048), (7, 8192), (8, 8192), (243, 2048), (5, 576),
                                    (8, 896), (3, 64), (128, 256), (33, 512), (100, 96)])
@pytest.mark.parametrize("loads,rows_in_flight", [(1, 1), (4, 1), (8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize("floor", [0.0, 25_000.0])
def test_streamed_bytes_prices_each_step_of_the_busiest_warp(rows, k, loads, rows_in_flight, floor):
    split = WarpSplit(warps=16, rows_in_flight=rows_in_flight, loads_in_flight=loads)
    load = split.warps * 32 * 16  # one 16-byte load on every lane of every warp
    want = sum(max(n * load, floor) for n in _busiest_warp_steps(rows, k, 2, split))
    assert streamed_bytes(rows, k, 2, split, floor) == pytest.approx(want)


def test_loads_in_flight_do_not_change_the_bytes_a_short_row_streams():
    # a 64-weight row is 8 vectors, one load of lane 0: 4 loads in flight make no more loads than 1 (the kernel
    # skips the rest), and a step costs at least a latency's bytes however few loads it holds
    for floor in (0.0, 4000.0, 30_000.0):
        assert streamed_bytes(3, 64, 2, WarpSplit(16, 1, 4), floor) == streamed_bytes(3, 64, 2, WarpSplit(16, 1, 1),
                                                                                       floor)
    assert streamed_bytes(8, 896, 2, WarpSplit(16, 1, 4)) == 2 * 16 * 32 * 16  # 56-vector units: two loads a lane
    assert streamed_bytes(8, 896, 2, WarpSplit(16, 1, 4), 25_000.0) == 25_000.0  # ... in one step, under a latency


def test_a_task_two_rows_past_the_warps_costs_a_second_round():
    assert streamed_bytes(16, 2048, 2, SPLIT) == 16 * 2048 * 2  # one row a warp: nothing wasted
    assert streamed_bytes(18, 2048, 2, SPLIT) == streamed_bytes(32, 2048, 2, SPLIT)
    assert streamed_bytes(18, 2048, 2, None) == 18 * 2048 * 2  # pages: the weight bytes


@pytest.mark.parametrize("threads", [256, 512, 1024])
def test_derived_o_rows_divide_over_the_warps(threads):
    h200 = get_target("h200")
    rows = matvec_rows(2048, 2048, 2, h200, WarpSplit(threads // 32, 1, 4))
    assert rows % (threads // 32) == 0 or (threads // 32) % rows == 0, rows


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen2.5-0.5b", "smollm2-135m"])
def test_resolve_prices_by_the_configs_warps(name):
    dims = public_shape(name, "bf16", device="meta").dims
    h200 = get_target("h200")
    _, derived = resolve(ScheduleConfig(), dims, 2, h200, 1088)
    rows = derived["matvec.o.rows_per_task"]
    assert rows % 16 == 0 or 16 % rows == 0, rows  # whole units on every warp: no warp runs a second round
    paged = ScheduleConfig.from_dict({"pipeline": {"pages": 4, "page_kb": 32}, "smem_per_block": 230000})
    _, derived_paged = resolve(paged, dims, 2, h200, 1088)
    assert derived_paged["matvec.o.rows_per_task"] == matvec_rows(dims.hidden, dims.n_heads * dims.head_dim, 2,
                                                                  h200, None)


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen2.5-0.5b", "qwen3-1.7b", "tinyllama-1.1b", "smollm2-135m"])
@pytest.mark.parametrize("gpu", ["h200", "l4", "cpu-sim"])
def test_the_lm_head_runs_one_round_of_tasks(name, gpu):
    # every LM-head task becomes ready within one boundary's spread and each SM's queue is fixed: a second round
    # balances nothing and stages the normed input again (llama-3.2-1b 890.1 against 899.1 us with four rounds,
    # bench/results/20261204-0137_h200_lm_head_rounds.json). Split like every other matvec, it has about one
    # task a SM, never more than the SMs
    dims = public_shape(name, "bf16", device="meta").dims
    target = get_target(gpu)
    _, derived = resolve(ScheduleConfig(), dims, 2, target, 1088)
    tasks = -(-dims.vocab // derived["matvec.lm_head.rows_per_task"])
    assert 0.9 * target.sm_count <= tasks <= target.sm_count, tasks
    assert derived["matvec.lm_head.rows_per_task"] == matvec_rows(dims.vocab, dims.hidden, 2, target, SPLIT)


def test_the_lm_head_adds_rounds_where_its_rows_would_not_fit_beside_the_pages():
    # 8 SMs and 2 pages of 32 KiB in 90 KiB: one task a SM (6144 rows of smollm2-135m's vocabulary) needs more than
    # the pages leave; the derived split takes more rounds, and the program lowers and validates
    import amk

    model = amk.load_model("smollm2-135m", dtype="fp32", weights=False)
    cfg = {"pipeline": {"pages": 2, "page_kb": 32}, "smem_per_block": 90 * 1024}
    prog = amk.lower(model, "cpu-sim", cfg, max_seq=256)
    rows = prog.meta["derived"]["matvec.lm_head.rows_per_task"]
    assert rows < -(-model.dims.vocab // 8) and (-(-model.dims.vocab // rows)) % 8 == 0  # whole rounds
    assert amk.validate(prog, "cpu-sim").ok
    unpaged = amk.lower(model, "cpu-sim", {}, max_seq=256).meta["derived"]["matvec.lm_head.rows_per_task"]
    assert unpaged == -(-model.dims.vocab // 8)


def test_the_cost_model_prices_a_task_as_its_busiest_warp_streams():
    import amk
    from amk.schedule.cost import predict

    model = public_shape("llama-3.2-1b", "bf16", device="meta")

    def us(cfg: dict) -> float:
        return predict(amk.lower(model, "h200", ScheduleConfig.from_dict(cfg), max_seq=1088), "h200").latency_us

    o = lambda rows, **kw: {"matvec": {"o": {"rows_per_task": rows}}, **kw}  # noqa: E731
    assert us(o(16)) < us(o(18)) == pytest.approx(us(o(32)))  # 18 rows on 16 warps stream two rounds
    # the partitions held at 16, where O's rows decide the critical path (at the 8 derived where they fit this
    # much shared memory, the 32-row program's path runs through one SM's queue instead)
    paged = {"pipeline": {"pages": 4, "page_kb": 32}, "smem_per_block": 230000, "attention": {"kv_partitions": 16}}
    assert us(o(18, **paged)) < us(o(32, **paged))  # the pages' consumers split pages, not rows


@pytest.mark.parametrize("name", ["qwen3-1.7b", "qwen3-0.6b", "llama-3.2-1b", "qwen2.5-0.5b"])
def test_rope_is_unfused_where_a_qk_norm_would_keep_qkv_heads_whole(name):
    import amk

    dims = (amk.load_model(name, dtype="bf16", weights=False) if name == "qwen3-0.6b"
            else public_shape(name, "bf16", device="meta")).dims
    _, derived = resolve(ScheduleConfig(), dims, 2, get_target("h200"), 1024)
    fused, splits = derived["fusion.rope_kv_into_qkv"], derived["matvec.qkv.head_splits"]
    if dims.qk_norm:  # 32 whole heads on 132 SMs: a quarter of the SMs stream QKV
        assert fused is False and splits >= 2
    else:  # fused RoPE does not stop the heads from splitting
        assert fused is True


def test_a_qk_norm_shape_whose_whole_heads_fill_the_sms_keeps_rope_fused():
    import dataclasses

    dims = public_shape("qwen3-1.7b", "bf16", device="meta").dims
    wide = dataclasses.replace(dims, n_heads=88, n_kv_heads=22)  # 132 whole heads: one round on 132 SMs
    _, derived = resolve(ScheduleConfig(), wide, 2, get_target("h200"), 1024)
    assert derived["fusion.rope_kv_into_qkv"] is True and derived["matvec.qkv.head_splits"] == 1


@pytest.mark.parametrize("fused", [True, False])
def test_a_rope_fusion_the_config_sets_is_not_derived(fused):
    dims = public_shape("qwen3-1.7b", "bf16", device="meta").dims
    cfg = ScheduleConfig.from_dict({"fusion": {"rope_kv_into_qkv": fused}})
    out, derived = resolve(cfg, dims, 2, get_target("h200"), 1024)
    assert "fusion.rope_kv_into_qkv" not in derived and out.fusion.rope_kv_into_qkv is fused
    assert (derived["matvec.qkv.head_splits"] == 1) is fused


def _program_partitions(name: str, cfg: dict, max_seq: int = 2048) -> int:
    import amk
    from amk.schedule.opcodes import Opcode

    prog = amk.lower(public_shape(name, "bf16", device="meta"), "h200", cfg, max_seq=max_seq)
    parts = {t.params.parts for t in prog.tasks if t.opcode == Opcode.ATTN_PARTIAL}
    assert len(parts) == 1, parts
    return parts.pop()


@pytest.mark.parametrize("name,parts", [("llama-3.2-1b", 8), ("tinyllama-1.1b", 8),  # 128 KiB of partials at 16
                                        ("qwen3-1.7b", 16), ("qwen2.5-3b", 16),  # 256 positions do not fit at 8
                                        ("qwen2.5-0.5b", 16), ("smollm2-135m", 16)])  # 56 and 36 KiB at 16
def test_partitions_are_halved_while_o_combines_over_64_kib_and_they_fit(name, parts):
    from amk.schedule.smem import attention_partial_smem_bytes

    assert _program_partitions(name, {}) == parts
    model = public_shape(name, "bf16", device="meta")
    d = model.dims
    combined = lambda p: p * d.n_heads * d.head_dim * 4  # noqa: E731  the fp32 partials one O task reads
    assert combined(parts) <= 64 * 1024 or attention_partial_smem_bytes(
        2048 // (parts // 2), 2048 // (parts // 2), d, 512, 2) > ScheduleConfig().smem_per_block
    if parts == 8:
        # not where O does not combine the partitions, nor where the halved partitions would not fit whole
        assert _program_partitions(name, {"attention": {"combine": "stage"}}) == 16
        assert _program_partitions(name, {"smem_per_block": 48 * 1024}) == 16
        assert _program_partitions(name, {}, max_seq=4096) == 16  # 512 positions a partition at 8
