"""Opcodes, parameter layouts and ABI sizes: defined here once.

The CUDA header (`vm/abi.py` generates it) and the packed instruction table are both derived from
these dataclasses, field by field, in declaration order. A nested dataclass is flattened in place.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from enum import IntEnum


class Opcode(IntEnum):
    EMBED = 1  # x = embed[token]
    RMSNORM = 2  # out = w * norm(x)
    MATVEC = 3  # rows of W @ in (optionally normed), then an epilogue
    EPILOGUE = 4  # sum k-split partials (or read stored rows), then an epilogue
    ATTN_DECODE = 5  # one KV head, every position it attends to (its window): scores, softmax, values
    ATTN_SCORES = 6  # one KV head x one partition: scores and their (max, sum)
    ATTN_VALUES = 7  # one KV head x one partition: probabilities from the global (max, sum), times V
    ATTN_COMBINE = 8  # sum the partitions' values of one KV head
    ARGMAX = 9  # reduce per-task (max, index) pairs into the next token
    ATTN_PARTIAL = 10  # one KV head x one partition: scores, softmax under the partition's own (max, sum), values


class Epilogue(IntEnum):
    STORE = 0  # out[r] = round(acc + bias)
    ROPE_KV = 1  # rows are whole heads of [q | k | v]: q/k norm, RoPE; q to out, k/v appended to the cache
    SILU_MUL = 2  # out[r] = round(round(silu(g[r])) * u[r]), u at row r + pair_offset
    RESIDUAL_ADD = 3  # out[r] = round(out[r] + round(acc + bias))
    LOGITS = 4  # out[r] = round(acc); (max, argmax) of the task's rows into argmax slot
    PARTIAL = 5  # k-split: out[split * split_stride + r] = acc, unrounded


DTYPE_NAMES = ("fp32", "fp16", "bf16")  # the dtypes AMK runs, as amk.models.registry.dtype_name spells them


class DType(IntEnum):
    F32 = 0
    F16 = 1
    BF16 = 2
    I32 = 3

    @property
    def nbytes(self) -> int:
        return {DType.F32: 4, DType.F16: 2, DType.BF16: 2, DType.I32: 4}[self]

    @property
    def torch(self):
        import torch

        return {DType.F32: torch.float32, DType.F16: torch.float16, DType.BF16: torch.bfloat16,
                DType.I32: torch.int32}[self]

    @classmethod
    def from_torch(cls, dtype) -> DType:
        import torch

        table = {torch.float32: cls.F32, torch.float16: cls.F16, torch.bfloat16: cls.BF16, torch.int32: cls.I32}
        return table[dtype]


NO_BUFFER = -1


@dataclass(frozen=True)
class EpilogueParams:
    kind: int
    out: int  # buffer id
    out_off: int  # element offset of row 0 in `out`
    bias: int = NO_BUFFER
    pair_offset: int = 0  # SILU_MUL: rows of `up` start here
    kcache: int = NO_BUFFER
    vcache: int = NO_BUFFER
    layer: int = 0
    qnorm: int = NO_BUFFER  # Qwen3 per-head RMSNorm weights
    knorm: int = NO_BUFFER
    argmax: int = NO_BUFFER  # LOGITS: buffer of (value, index) pairs
    argmax_slot: int = 0
    split: int = 0  # PARTIAL: which split this task is
    split_stride: int = 0  # PARTIAL: elements between splits
    x_tag: int = -1  # RESIDUAL_ADD into the tagged residual stream: the version of x it writes (it reads x_tag - 1)
    h_tag: int = -1  # SILU_MUL into the tagged hidden row (build.tagged_hidden): the version it writes, its layer's


@dataclass(frozen=True)
class JoinCombine:
    """ATTN_PARTIAL / ATTN_VALUES: the last partition task of a KV head to finish combines the head's partitions
    (as ATTN_COMBINE would, weighted by the partitions' (max, sum) under the partition softmax) into `out`."""
    out: int = NO_BUFFER  # combined attention output [n_heads * head_dim]; NO_BUFFER: the task only stores its part
    out_off: int = 0
    arrivals: int = 0  # counter the head's partition tasks add 1 to when their part is stored (the program's join)

    @property
    def active(self) -> bool:
        return self.out != NO_BUFFER


@dataclass(frozen=True)
class SplitJoin:
    """MATVEC under matvec.<role>.reduce = last_task: the task is split `split` of `splits` of its row block's
    reduction dimension. It stores its fp32 sums as an Epilogue.PARTIAL would, and the last split task of the row
    block to finish sums every split's sums in split order and runs the task's `epi` on them, as the EPILOGUE task
    of a reduce stage would."""
    splits: int = 0  # 0: no join, `epi` runs on the task's own sums
    split: int = 0
    part: int = NO_BUFFER  # partial sums [splits, stride], fp32
    part_off: int = 0
    stride: int = 0  # elements between splits: the role's rows, paired rows included
    arrivals: int = 0  # counter the row block's split tasks add 1 to once their sums are stored (the program's join)

    @property
    def active(self) -> bool:
        return self.splits > 0


@dataclass(frozen=True)
class EmbedParams:
    table: int
    token: int  # I32 buffer holding the token id
    out: int
    out_off: int
    dim: int
    tag: int = -1  # the tagged residual stream's version 0 it writes; -1: untagged


@dataclass(frozen=True)
class RmsNormParams:
    inp: int
    inp_off: int
    weight: int
    out: int
    out_off: int
    dim: int
    inp_tag: int = -1  # the tagged residual stream's version it reads, spinning on each value's tag; -1: untagged


@dataclass(frozen=True)
class MatvecParams:
    weight: int  # [N, K] row-major
    row0: int
    rows: int
    k0: int
    klen: int
    inp: int
    inp_off: int
    norm_weight: int  # NO_BUFFER: the input is used as it is
    epi: EpilogueParams
    inp_parts: int = 0  # > 0: the input is attention output in this many partitions, combined while staged
    inp_stats: int = NO_BUFFER  # with inp_parts: per-partition (max, sum) to weigh them by; NO_BUFFER: a plain sum
    inp_stats_off: int = 0
    inp_slots: int = 0  # with inp_parts: 16-byte shared-memory slots a consumer thread has for partitions in flight
    join: SplitJoin = SplitJoin()
    # the input is a tagged stream at this version, read spinning on each value's tag: x where the RMSNorm is fused,
    # the MLP's hidden row where it is not (schedule/tags.py); -1: untagged
    inp_tag: int = -1


@dataclass(frozen=True)
class EpilogueTaskParams:
    src: int  # partial sums [splits, stride] or stored rows
    src_off: int
    splits: int
    stride: int
    row0: int
    rows: int
    epi: EpilogueParams


@dataclass(frozen=True)
class AttnDecodeParams:
    layer: int
    kv_head: int
    q: int  # roped q, heads contiguous
    q_off: int
    kcache: int
    vcache: int
    scores: int  # fp32 [n_heads, max_seq] scratch
    scores_off: int
    out: int  # attention output rows
    out_off: int
    chunk: int  # positions a block scores per shared-memory round
    window: int = 0  # positions attended, the current one included (a sliding window); 0: every cached one


@dataclass(frozen=True)
class AttnScoresParams:
    layer: int
    kv_head: int
    q: int
    q_off: int
    kcache: int
    part: int
    parts: int
    scores: int
    scores_off: int
    stats: int  # (max, sum) per (part, q head)
    stats_off: int
    chunk: int
    window: int = 0  # positions attended, the current one included (a sliding window); 0: every cached one


@dataclass(frozen=True)
class AttnValuesParams:
    layer: int
    kv_head: int
    vcache: int
    part: int
    parts: int
    scores: int
    scores_off: int
    stats: int
    stats_off: int
    out: int  # partial values per (part, q head): fp32, or the model dtype (attention.partials_dtype)
    out_off: int
    chunk: int
    window: int = 0  # positions attended, the current one included (a sliding window); 0: every cached one
    join: JoinCombine = JoinCombine()


@dataclass(frozen=True)
class AttnPartialParams:
    layer: int
    kv_head: int
    q: int
    q_off: int
    kcache: int
    vcache: int
    part: int
    parts: int
    scores: int  # fp32 scratch for a partition longer than `chunk` (shorter ones stay in shared memory)
    scores_off: int
    stats: int  # (max, sum) per (part, q head), of this partition alone
    stats_off: int
    out: int  # fp32 values per (part, q head), normalised by this partition's sum
    out_off: int
    chunk: int
    stage: int  # K and V rows of earlier steps copied into shared memory before the dependency wait
    window: int = 0  # positions attended, the current one included (a sliding window); 0: every cached one
    join: JoinCombine = JoinCombine()
    # 1 (fusion.rope_kv_into_attention): `q` holds QKV's raw rows, KV group by group ([q heads, k, v] x head_dim);
    # the task normalises (qnorm, knorm: a q/k norm's weights) and rotates its q heads, and the task whose
    # partition holds the step's position does the same to the raw k and appends k and v to the caches
    rope: int = 0
    qnorm: int = NO_BUFFER
    knorm: int = NO_BUFFER
    # attention.q_splits: KV head `kv_head` is a task group of G / q_splits q heads (G the model's GQA group), the
    # (kv_head % q_splits)-th share of physical KV head kv_head // q_splits, whose K and V rows it reads; its q
    # heads, scores, (max, sum) and outputs are those of q heads kv_head * G / q_splits on. The kernel reads the
    # split from AMK_Q_SPLITS (its AMK_GROUP is the task group)
    q_splits: int = 1


@dataclass(frozen=True)
class AttnCombineParams:
    kv_head: int
    partial: int
    partial_off: int
    parts: int
    out: int
    out_off: int
    part_stats: int  # NO_BUFFER: partitions share one softmax and are summed; else weighted by their (max, sum)
    part_stats_off: int
    q_splits: int = 1  # kv_head counts task groups of G / q_splits q heads (AttnPartialParams.q_splits)


@dataclass(frozen=True)
class ArgmaxParams:
    pairs: int
    pairs_off: int
    slots: int
    token: int


PARAMS_OF: dict[Opcode, type] = {
    Opcode.EMBED: EmbedParams,
    Opcode.RMSNORM: RmsNormParams,
    Opcode.MATVEC: MatvecParams,
    Opcode.EPILOGUE: EpilogueTaskParams,
    Opcode.ATTN_DECODE: AttnDecodeParams,
    Opcode.ATTN_SCORES: AttnScoresParams,
    Opcode.ATTN_VALUES: AttnValuesParams,
    Opcode.ATTN_COMBINE: AttnCombineParams,
    Opcode.ATTN_PARTIAL: AttnPartialParams,
    Opcode.ARGMAX: ArgmaxParams,
}
# every params dataclass, nested ones included: what to_dict and flat_values recurse into
PARAMS_TYPES = frozenset(PARAMS_OF.values()) | {EpilogueParams, JoinCombine, SplitJoin}


@functools.cache
def field_defaults(cls) -> dict:
    """{field name: default} of the fields of a params dataclass that have one (a nested one's default instance)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@functools.cache
def nested_type(cls, name: str) -> type:
    """The params dataclass of field `name` of params dataclass `cls` (KeyError when it is no nested one)."""
    tp = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    resolved = _resolve(tp) if isinstance(tp, str) else tp
    if resolved not in PARAMS_TYPES:
        raise KeyError(f"{cls.__name__}.{name} is not a nested params dataclass")
    return resolved

# ---- ABI ------------------------------------------------------------------------------------------
INSTR_WORDS = 64  # int32 words per packed instruction
MAX_WAITS = 6
MAX_SIGNALS = 4
MAX_PREFETCH = 2
HEADER_WORDS = 4  # opcode, task id, n_waits, n_signals
WAIT_BASE = HEADER_WORDS
SIGNAL_BASE = WAIT_BASE + 2 * MAX_WAITS
PREFETCH_BASE = SIGNAL_BASE + MAX_SIGNALS
PARAM_BASE = PREFETCH_BASE + 3 * MAX_PREFETCH
MAX_PARAM_WORDS = INSTR_WORDS - PARAM_BASE
MAX_TASKS = 1 << 20
MAX_COUNTERS = 1 << 20
INT32_MAX = (1 << 31) - 1


def flat_fields(cls, prefix: str = "") -> list[str]:
    """Field names of a params dataclass in packed order, nested dataclasses flattened."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        tp = f.type if not isinstance(f.type, str) else _resolve(f.type)
        if dataclasses.is_dataclass(tp):
            names += flat_fields(tp, f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


@functools.cache
def field_names(cls) -> tuple[str, ...]:
    """The field names of a params dataclass, in declaration order (dataclasses.fields() is slow per call)."""
    return tuple(f.name for f in dataclasses.fields(cls))


def flat_values(params) -> list[int]:
    out: list[int] = []
    for name in field_names(type(params)):
        v = getattr(params, name)
        if type(v) in PARAMS_TYPES:
            out += flat_values(v)
        else:
            out.append(int(v))
    return out


def _resolve(name: str):
    return globals()[name] if name in globals() else int


for _op, _cls in PARAMS_OF.items():
    assert len(flat_fields(_cls)) <= MAX_PARAM_WORDS, _op
    assert all(f.type in {t.__name__ for t in PARAMS_TYPES} or not dataclasses.is_dataclass(_resolve(f.type))
               for f in dataclasses.fields(_cls)), f"{_cls.__name__}: a nested params type missing from PARAMS_TYPES"
