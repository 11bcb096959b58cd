"""Tiling from the shape: the default task split of every stage, derived from the model's dimensions and the
GPU's SM count, so that each stage keeps every SM streaming whatever the model.

A stage of T tasks on N SMs takes ceil(T / N) rounds; a round costs its task's weight bytes over one SM's
share of the bandwidth plus a fixed cost a task pays whatever its size (dependency wait, input staging,
epilogue and signal: about 1.5 us on an H100 or H200, read off bench/trace.py's per-stage exec times). Each
split below minimises that estimate over its candidates. Nothing here names a model.

On the register path each consumer warp streams its own (row, chunk) units with a fixed number of loads in
flight, so a warp's stream runs at its share of the SM's, and a task lasts as long as its busiest warp: a task
of 18 rows on 16 warps takes as long as one of 32 (vm/matvec.cuh matvec_walk). The task's bytes below are
counted that way.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from .config import MAX_ROWS_PER_TASK, AttentionCombine, AttentionSoftmax, ScheduleConfig
from .graph import ModelDims
from .smem import (
    consumer_threads,
    matvec_smem_bytes,
    page_partials,
    partial_positions,
    program_work_smem_bytes,
)
from .targets import GpuTarget
from .tile import build_defines

TASK_FIXED_US = 1.5  # per-task cost besides its bytes (see the module docstring)
MEMORY_LATENCY_NS = 700.0  # DRAM latency under a streaming load: a register-path step waits this long at least
MIN_PARTITION_POSITIONS = 32  # a KV partition below this many positions costs more to combine than it saves
MAX_KV_PARTITIONS = 16  # each O task combines every partition (partitions x heads x head_dim fp32 from L2) while
#                        it stages its input: more cost O more than they save the attention stage
# ...and where O combines them, partitions are halved while those partials exceed this many bytes a task and the
# halved partitions still fit shared memory whole: O's input staging follows the bytes through L2 (llama-3.2-1b,
# H200, a middle layer: 4.0 / 2.6 / 1.6 us at 128 / 64 / 32 KiB), while fewer, longer partitions lengthen the
# attention (2.0 / 2.7 / 3.7 us); the step took 906.0 / 896.3 / 912.0 us at 16 / 8 / 4 partitions, and the
# tinyllama-1.1b shape 958.8 / 953.7 / 1031.3 (bench/results/20261201-2003_h200_attention_warps_per_head.json)
# The bytes are counted as fp32 partials whatever attention.partials_dtype says: with bf16 partials, half the
# bytes, llama-3.2-1b still took 893.5 / 900.8 us at 8 / 16 partitions (fp32: 894.2 / 912.4; one process,
# bench/results/20261202-0120_h200_partials_dtype.json): partitions cost more than their bytes
MAX_COMBINE_BYTES = 64 * 1024
NEAR_BEST_US = 0.25  # splits this close to the best estimate count as equal; the one with the fewest tasks wins


@dataclass(frozen=True)
class WarpSplit:
    """How the register path spreads a matvec task over its consumer warps (vm/matvec.cuh); None with pipeline
    pages, whose consumers split pages instead."""

    warps: int
    rows_in_flight: int
    loads_in_flight: int


def streamed_bytes(rows: int, k: int, nbytes: int, split: WarpSplit | None, step_floor: float = 0.0) -> float:
    """Bytes a task of `rows` computed rows of `k` weights streams at its SM's rate in the time its busiest warp
    takes (mirrors matvec_walk and row_chunks). The busiest warp walks its units `rows_in_flight` at a time in
    steps of up to `loads_in_flight` 16-byte loads a lane; a unit's last step makes only the loads inside the unit
    (walk_load skips the rest); rows of half a step's loads or fewer, two or more a warp, are walked up to
    `loads_in_flight // lpr` rows a unit in one step, lpr being a row's loads a lane (matvec_walk's short rows).
    A step is priced as its loads on every warp, but never below `step_floor`: the
    bytes an SM streams in one memory latency, since a step waits a latency however few loads it holds (with no
    floor, toy's 64-weight rows priced 4 loads in flight at 4x the bytes of 1 where both are one load; with whole
    steps as the price, an H200 measured the shapes whose rows end mid-step slower than priced). No `split`
    (pipeline pages): the weight bytes."""
    if split is None:
        return rows * k * nbytes
    vec = 16 // nbytes
    nvec, w, nr, nl = k // vec, split.warps, split.rows_in_flight, split.loads_in_flight
    load = w * 32 * 16  # one load on every lane of every warp
    lpr, rpu = short_row_units(rows, nvec, split)
    if rpu:  # short rows: a unit is `rpu` rows in one step of `lpr` loads a row (matvec_walk); warp 0's
        units = range(0, -(-rows // rpu), w)  # units are the busiest, the last of them maybe short of rows
        steps = [sum(min(rpu, rows - u * rpu) * lpr for u in units[g:g + nr]) for g in range(0, len(units), nr)]
        return sum(max(n * load, step_floor) for n in steps)
    s = 1
    while rows * s < w * nr and nvec % (2 * s) == 0 and nvec // (2 * s) >= 32:
        s *= 2
    mine = -(-rows * s // w)  # units of the busiest warp
    lane_loads = -(-(nvec // s) // 32)  # lane 0's loads of one unit

    def group(live: int) -> float:  # the steps of a group of `live` units
        whole, rest = divmod(lane_loads, nl)
        return whole * max(live * nl * load, step_floor) + (max(live * rest * load, step_floor) if rest else 0.0)

    full, last = divmod(mine, nr)
    return full * group(nr) + (group(last) if last else 0.0)


def short_row_units(rows: int, nvec: int, split: WarpSplit) -> tuple[int, int]:
    """(loads a lane a row, rows a unit) of a register-path matvec task of `rows` computed rows of `nvec` 16-byte
    vectors that the kernel walks as short rows (vm/matvec.cuh matvec_walk): rows of half a step's loads or fewer,
    two or more of them a warp, walked up to loads_in_flight // lpr rows a unit in one step. (0, 0) for any other."""
    lpr = -(-nvec // 32)
    rpu = min(split.loads_in_flight // lpr, -(-rows // (split.warps * split.rows_in_flight)))
    return (lpr, rpu) if rpu >= 2 else (0, 0)


def step_floor_bytes(target: GpuTarget) -> float:
    """Bytes one SM streams at its share of the spec bandwidth in one memory latency (streamed_bytes' floor)."""
    return _sm_bytes_per_us(target) * MEMORY_LATENCY_NS * 1e-3


def _priced(rows: int, k: int, nbytes: int, split: WarpSplit | None, target: GpuTarget) -> float:
    return streamed_bytes(rows, k, nbytes, split, step_floor_bytes(target))


@dataclass(frozen=True)
class Tiling:
    """The derived split of one model on one GPU (the values the config's derived knobs take)."""

    o_rows: int
    gate_up_rows: int
    down_rows: int
    lm_head_rows: int
    qkv_head_splits: int
    kv_partitions: int


def _sm_bytes_per_us(target: GpuTarget) -> float:
    return target.spec_bandwidth_gbs * 1e3 / max(1, target.sm_count)


def stage_us(tasks: int, task_bytes: float, target: GpuTarget) -> float:
    """Estimated time of a stage of `tasks` equal tasks of `task_bytes` each (see the module docstring)."""
    rounds = math.ceil(tasks / max(1, target.sm_count))
    return rounds * (task_bytes / _sm_bytes_per_us(target) + TASK_FIXED_US)


def matvec_rows(rows: int, k: int, nbytes: int, target: GpuTarget, split: WarpSplit | None, paired: bool = False,
                k_splits: int = 1) -> int:
    """Rows a task of a matvec with `rows` output rows of `k` weights each (`paired`: each row computed with its
    pair, gate with up; `k_splits`: each row block split over that many tasks of k / k_splits weights, as
    tile.py cuts them): the fewest tasks whose estimate is within NEAR_BEST_US of the best split's. Fewer tasks
    cost fewer dependency waits and input stagings than the estimate counts, and the ReferenceVM runs them
    faster."""
    if all(type(x) is int for x in (rows, k, nbytes, k_splits)) and type(paired) is bool:
        return _matvec_rows(rows, k, nbytes, target, split, paired, k_splits)
    return _matvec_rows.__wrapped__(rows, k, nbytes, target, split, paired, k_splits)


@functools.lru_cache(maxsize=4096)
def _matvec_rows(rows: int, k: int, nbytes: int, target: GpuTarget, split: WarpSplit | None, paired: bool,
                 k_splits: int) -> int:
    # kept: the search derives the tiling of every candidate it builds, from a handful of shapes and warp splits,
    # and each estimate prices up to 64 task heights an SM
    n, pair = target.sm_count, 2 if paired else 1
    klen = (-(-k // k_splits) + 7) // 8 * 8
    cands = {-(-rows // t) for t in range(1, min(rows, 64 * n) + 1)}  # every distinct task height
    est = {per: stage_us(k_splits * -(-rows // per), _priced(pair * per, klen, nbytes, split, target), target)
           for per in cands}
    best = min(est.values())
    return max(per for per, t in est.items() if t <= best + NEAR_BEST_US)


def qkv_head_splits(dims: ModelDims, nbytes: int, target: GpuTarget, can_split: bool, split: WarpSplit | None) -> int:
    """Splits of each q/k/v head (RoPE pairs stay together) that minimise the QKV stage's estimate."""
    heads = dims.n_heads + 2 * dims.n_kv_heads
    splits = [1]
    while can_split and splits[-1] * 2 <= dims.head_dim // 2 and (dims.head_dim // 2) % (splits[-1] * 2) == 0:
        splits.append(splits[-1] * 2)
    est = {s: stage_us(heads * s, _priced(dims.head_dim // s, dims.hidden, nbytes, split, target), target) for s in splits}
    best = min(est.values())
    return min(s for s, t in est.items() if t <= best + NEAR_BEST_US)


def fuse_rope(dims: ModelDims, nbytes: int, target: GpuTarget, split: WarpSplit | None, explicit_splits: int | None,
              can_split: bool) -> bool:
    """Whether RoPE, the q/k norm and the KV append run in QKV's epilogue (fusion.rope_kv_into_qkv left null).
    Fused unless the model has a q/k norm, which needs each head whole in one task while fused: then unfused
    where the config splits heads itself (`explicit_splits` > 1), or where QKV with its best head split plus the
    stage that applies them (one task per KV head: a round of the fixed task cost) is estimated faster than QKV
    with whole heads. On qwen3-1.7b and qwen3-0.6b on an H200 unfused measured 0.89x the step of fused
    (bench/results/20261201-1733_h200_qk_norm_rope_unfused.json)."""
    if not dims.qk_norm:
        return True
    if explicit_splits is not None:
        return explicit_splits == 1
    if not can_split:
        return True
    heads = dims.n_heads + 2 * dims.n_kv_heads
    whole = stage_us(heads, _priced(dims.head_dim, dims.hidden, nbytes, split, target), target)
    s = qkv_head_splits(dims, nbytes, target, True, split)
    apart = (stage_us(heads * s, _priced(dims.head_dim // s, dims.hidden, nbytes, split, target), target)
             + stage_us(dims.n_kv_heads, 0, target))
    return whole <= apart + NEAR_BEST_US


def fold_rope(dims: ModelDims, config: ScheduleConfig, parts: int) -> bool:
    """Whether RoPE, the q/k norm and the KV append may run in the partition attention tasks: on a q/k-norm
    model, where the attention is the partition softmax over more than one partition and the config does not
    fuse them into QKV. Derived (fusion.rope_kv_into_attention left null) where QKV's epilogue is not estimated
    the better place (fuse_rope): there the RoPE stage that split heads need otherwise leaves the chain from QKV
    to attention, and QKV's heads still split. The qwen3-1.7b shape on an H200: 1435.4 against 1478.5 us a step
    (bench/results/20261203-2125_h200_qwen3-1.7b_rope_in_attention.json)."""
    return (dims.qk_norm and config.fusion.rope_kv_into_qkv is not True and parts > 1
            and config.attention.softmax == AttentionSoftmax.PARTITION)


def kv_partitions(dims: ModelDims, target: GpuTarget, max_seq: int, fits_whole: Callable[[int], bool] | None = None
                  ) -> int:
    """A power of two that gives about one attention task per SM, with partitions of at least
    MIN_PARTITION_POSITIONS positions. With `fits_whole` (whether a partition of that many positions fits an
    attention task's shared memory whole; given where O combines the partitions), halved while the partials
    an O task combines exceed MAX_COMBINE_BYTES and the halved partitions fit."""
    p = 1
    while (2 * p * dims.n_kv_heads <= target.sm_count and 2 * p <= MAX_KV_PARTITIONS
           and max_seq // (2 * p) >= MIN_PARTITION_POSITIONS):
        p *= 2
    while (fits_whole is not None and p > 1 and p * dims.n_heads * dims.head_dim * 4 > MAX_COMBINE_BYTES
           and fits_whole(-(-max_seq // (p // 2)))):
        p //= 2
    return p


def _partitioned(softmax: AttentionSoftmax, parts: int) -> bool:
    """Whether the attention runs partition tasks (ATTN_PARTIAL) at `parts` KV partitions."""
    return softmax == AttentionSoftmax.PARTITION and parts > 1


def q_splits(dims: ModelDims, target: GpuTarget, parts: int, softmax: AttentionSoftmax) -> int:
    """The most tasks a partition that a KV head's GQA group of q heads splits over (a divisor of the group)
    while the attention tasks, n_kv_heads x parts x splits, stay at one per two SMs or fewer; 1 where the
    attention is not the partition softmax over more than one partition. On an H200 (132 SMs), same process each,
    the step against no split: tinyllama-1.1b shape (32 tasks unsplit) 930.5 against 954.8 us at 2 splits (64
    tasks), 943.8 at 4 (128); qwen2.5-3b shape 2262.0 against 2320.7 at 2 (64 tasks); llama-3.2-1b 891.0 against
    887.1 at 2 (128 tasks); qwen3-1.7b 1638.5 against 1430.6 at 2 (256 tasks)
    (bench/results/20261204-0420_h200_q_splits.json)."""
    if not _partitioned(softmax, parts):
        return 1
    tasks = dims.n_kv_heads * parts
    return max(s for s in range(1, dims.group + 1) if dims.group % s == 0 and tasks * s <= max(tasks, target.sm_count // 2))


DERIVED_HEAD_WARPS = 2


def max_head_warps(task_group: int, warps: int) -> int:
    """The most warps a q head of an ATTN_PARTIAL task can take: its `warps` consumer warps over the `task_group`
    q heads it holds (each warp keeps one head's values in shared memory: vm/attention_partitions.cuh)."""
    return max(1, warps // task_group)


def head_warps(task_group: int, warps: int) -> int:
    """Warps a q head of an ATTN_PARTIAL task takes on its shared-memory path: two where the warps allow. One
    process a shape on an H100, against the earlier `warps // task_group` (four to eight): two gave 0.983-0.998 of
    the step on five public shapes; one gave 0.974 on smollm2-135m (five before) but 1.003 on llama-3.2-1b and
    tinyllama-1.1b (four), so the search tries it (bench/results/20261205-1500_h100_attention_head_warps.json)."""
    return min(DERIVED_HEAD_WARPS, max_head_warps(task_group, warps))


def _partition_fits(config: ScheduleConfig, dims: ModelDims, nbytes: int, build: dict,
                    work: int) -> Callable[[int], bool] | None:
    """Whether a partition of n positions fits an ATTN_PARTIAL task's shared memory whole under `config` (`build`
    its build defines, `work` the working shared memory they leave); None where O does not combine the partitions
    itself (a global softmax, or a combine elsewhere)."""
    a = config.attention
    if a.softmax != AttentionSoftmax.PARTITION or a.combine != AttentionCombine.O_INPUT:
        return None
    threads = consumer_threads(config.threads_per_block, build)
    # a task holds one task group's q heads: a KV head's, or a q split's share of them (attention.q_splits)
    task_dims = dims.split_groups(a.q_splits or 1)
    return lambda n: partial_positions(work, n, task_dims, threads, nbytes) >= n


def lm_head_rows(dims: ModelDims, target: GpuTarget, nbytes: int, split: WarpSplit | None,
                 rows_fit: Callable[[int], bool] | None = None, k_splits: int = 1) -> int:
    """Rows of an LM-head task: split as every other matvec (matvec_rows), about one task a SM. Its tasks all
    start within a boundary's spread (the final norm waits for the whole residual) and each SM's queue is
    fixed, so more rounds balance nothing, and each task stages the normed input and runs an epilogue again:
    one task a SM against four measured llama-3.2-1b 890.1 against 899.1 us, qwen3-1.7b 1438.3 against 1444.1,
    qwen2.5-0.5b 753.0 against 754.6 (two a SM; bench/results/20261204-0137_h200_lm_head_rounds.json). Another
    round of tasks is added while a task's rows do not fit (`rows_fit`: its shared memory, where the config's
    pages leave little) or pass the knob's bound. `k_splits`: each row block split over that many tasks
    (matvec_rows), so that the split LM head still takes about one task a SM."""
    v = dims.vocab
    rows = matvec_rows(v, dims.hidden, nbytes, target, split, k_splits=k_splits)
    tasks = -(-v // rows)
    while rows > 1 and (rows > MAX_ROWS_PER_TASK or (rows_fit is not None and not rows_fit(rows))):
        tasks += target.sm_count
        rows = -(-v // tasks)
    return rows


def derive_tiling(dims: ModelDims, target: GpuTarget, nbytes: int, max_seq: int, split_heads_ok: bool,
                  split: WarpSplit | None = None, partition_fits: Callable[[int], bool] | None = None,
                  lm_rows_fit: Callable[[int], bool] | None = None, k_splits: dict[str, int] | None = None) -> Tiling:
    """The shape-derived split. `nbytes`: bytes of one weight; `split_heads_ok`: whether QKV heads may be split
    (not with a q/k norm fused into the QKV epilogue, which needs whole heads); `split`: the register path's
    warps (None: tasks cost their weight bytes); `partition_fits`: kv_partitions' `fits_whole`; `lm_rows_fit`:
    whether an LM-head task of that many rows fits its shared memory; `k_splits`: role -> the config's k_splits
    (1 where absent)."""
    h, i = dims.hidden, dims.intermediate
    ks = k_splits or {}
    return Tiling(
        o_rows=matvec_rows(h, dims.n_heads * dims.head_dim, nbytes, target, split, k_splits=ks.get("o", 1)),
        gate_up_rows=matvec_rows(i, h, nbytes, target, split, paired=True, k_splits=ks.get("gate_up", 1)),
        down_rows=matvec_rows(h, i, nbytes, target, split, k_splits=ks.get("down", 1)),
        lm_head_rows=lm_head_rows(dims, target, nbytes, split, lm_rows_fit, ks.get("lm_head", 1)),
        qkv_head_splits=qkv_head_splits(dims, nbytes, target, split_heads_ok, split),
        kv_partitions=kv_partitions(dims, target, max_seq, partition_fits),
    )


def resolve(config: ScheduleConfig, dims: ModelDims, nbytes: int, target: GpuTarget, max_seq: int
            ) -> tuple[ScheduleConfig, dict[str, int | bool]]:
    """`config` with every derived (null) knob set to the shape-derived value, and {dotted path: value} of what
    was derived. Whether RoPE is fused comes first (fuse_rope), as it decides whether a q/k-norm model's heads
    may split. A split of QKV heads is derived only where the config allows one (heads_per_task=1,
    qkv.k_splits=1, and no q/k norm fused into the QKV epilogue, which needs whole heads); elsewhere it is 1."""
    q = config.matvec.qkv
    b = config.build
    split = None if config.pipeline.pages > 0 else WarpSplit(config.threads_per_block // 32, b.rows_in_flight,
                                                                 b.loads_in_flight)
    shape_ok = q.heads_per_task == 1 and q.k_splits == 1
    build = build_defines(config)
    work = program_work_smem_bytes(config.smem_per_block, build)
    fits = _partition_fits(config, dims, nbytes, build, work)
    rope_fused = config.fusion.rope_kv_into_qkv
    in_epilogue = rope_fused if rope_fused is not None else fuse_rope(dims, nbytes, target, split, q.head_splits,
                                                                      shape_ok)
    folded = config.fusion.rope_kv_into_attention
    if folded is None:  # in place of the RoPE stage, where QKV's epilogue is not the better place
        parts = config.attention.kv_partitions
        folded = not in_epilogue and fold_rope(dims, config, kv_partitions(dims, target, max_seq, fits)
                                               if parts is None else parts)
    if rope_fused is None:
        rope_fused = in_epilogue and not folded
    split_ok = shape_ok and not (dims.qk_norm and rope_fused)

    def lm_rows_fit(rows: int) -> bool:  # the staged (normed) input row and the rows' sums, as tile.py counts them
        return matvec_smem_bytes(dims.hidden, rows, page_partials(dims.hidden, rows, build, nbytes)) <= work

    ks = {role: getattr(config.matvec, role).k_splits for role in ("o", "gate_up", "down", "lm_head")}
    t = derive_tiling(dims, target, nbytes, max_seq, split_ok, split, fits, lm_rows_fit, ks)
    values = {"fusion.rope_kv_into_attention": folded, "fusion.rope_kv_into_qkv": rope_fused,
              "matvec.o.rows_per_task": t.o_rows, "matvec.gate_up.rows_per_task": t.gate_up_rows,
              "matvec.down.rows_per_task": t.down_rows, "matvec.lm_head.rows_per_task": t.lm_head_rows,
              "matvec.qkv.head_splits": t.qkv_head_splits if split_ok else 1,
              # RoPE in the attention needs its partition tasks: two at least where it is asked for
              "attention.kv_partitions": max(t.kv_partitions, 2) if folded and max_seq > 1 else t.kv_partitions}
    parts = config.attention.kv_partitions
    parts = values["attention.kv_partitions"] if parts is None else parts
    values["attention.q_splits"] = q_splits(dims, target, parts, config.attention.softmax)
    splits = config.attention.q_splits or values["attention.q_splits"]
    # 1 where no partition task runs, as q_splits: the knob acts on nothing there
    values["attention.head_warps"] = head_warps(dims.group // splits if dims.group % splits == 0 else dims.group,
                                                consumer_threads(config.threads_per_block, build) // 32
                                                ) if _partitioned(config.attention.softmax, parts) else 1
    out = copy.deepcopy(config)
    derived = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = getattr(node, part)
        if getattr(node, leaf) is None:
            setattr(node, leaf, value)
            derived[path] = value
    return out, derived
