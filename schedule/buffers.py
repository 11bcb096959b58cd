"""Buffer planning: model weights, KV cache and I/O, and the scratch allocation of activation values."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ScratchPolicy
from .graph import ModelDims
from .opcodes import NO_BUFFER, DType
from .program import Buffer, BufferKind
from .stages import Stage
from .sync import StageGraph

ARENA_ALIGN = 64  # elements (256 bytes): keeps every value 16-byte aligned for vector loads
NON_ARENA = ("token", "logits")


@dataclass(frozen=True)
class Placement:
    buffer: int
    offset: int


class BufferTable:
    def __init__(self):
        self.buffers: list[Buffer] = []
        self.by_name: dict[str, int] = {}

    def add(self, name: str, kind: BufferKind, dtype: DType, numel: int, cols: int = 1,
            arena: int = NO_BUFFER, arena_off: int = 0) -> int:
        bid = len(self.buffers)
        self.buffers.append(Buffer(bid, name, kind, dtype, int(numel), int(cols), arena, arena_off))
        self.by_name[name] = bid
        return bid

    def __getitem__(self, name: str) -> int:
        return self.by_name[name]

    def get(self, name: str) -> int:
        return self.by_name.get(name, NO_BUFFER)


def plan_model_buffers(dims: ModelDims, dtype: DType, max_seq: int) -> BufferTable:
    t = BufferTable()
    h, hd = dims.hidden, dims.head_dim
    t.add("embed", BufferKind.WEIGHT, dtype, dims.vocab * h, h)
    for layer in range(dims.n_layers):
        p = f"layers.{layer}."
        t.add(p + "attn_norm", BufferKind.WEIGHT, dtype, h, h)
        t.add(p + "qkv", BufferKind.WEIGHT, dtype, dims.qkv_rows * h, h)
        if dims.qkv_bias:
            t.add(p + "qkv_bias", BufferKind.WEIGHT, dtype, dims.qkv_rows)
        if dims.qk_norm:
            t.add(p + "q_norm", BufferKind.WEIGHT, dtype, hd, hd)
            t.add(p + "k_norm", BufferKind.WEIGHT, dtype, hd, hd)
        t.add(p + "o", BufferKind.WEIGHT, dtype, h * dims.n_heads * hd, dims.n_heads * hd)
        t.add(p + "mlp_norm", BufferKind.WEIGHT, dtype, h, h)
        t.add(p + "gate_up", BufferKind.WEIGHT, dtype, 2 * dims.intermediate * h, h)
        t.add(p + "down", BufferKind.WEIGHT, dtype, h * dims.intermediate, dims.intermediate)
    t.add("final_norm", BufferKind.WEIGHT, dtype, h, h)
    if not dims.tied_embeddings:
        t.add("lm_head", BufferKind.WEIGHT, dtype, dims.vocab * h, h)
    t.add("rope_cos", BufferKind.WEIGHT, dtype, max_seq * hd, hd)
    t.add("rope_sin", BufferKind.WEIGHT, dtype, max_seq * hd, hd)
    kv = dims.n_layers * dims.n_kv_heads * max_seq * hd
    t.add("kcache", BufferKind.KV, dtype, kv, hd)
    t.add("vcache", BufferKind.KV, dtype, kv, hd)
    t.add("token", BufferKind.IO, DType.I32, 1)
    t.add("pos", BufferKind.IO, DType.I32, 1)
    t.add("logits", BufferKind.IO, DType.F32, dims.vocab)
    return t


def lm_head_buffer(t: BufferTable) -> int:
    return t.get("lm_head") if t.get("lm_head") != NO_BUFFER else t["embed"]


def arena_values(stages: list[Stage]) -> dict[str, tuple[int, int]]:
    """value name -> (first stage, last stage) for every activation that lives in scratch."""
    spans: dict[str, tuple[int, int]] = {}
    for st in stages:
        for v in st.reads + st.writes:
            if v in NON_ARENA or v.startswith("kv."):
                continue
            a, b = spans.get(v, (st.index, st.index))
            spans[v] = (min(a, st.index), max(b, st.index))
    return spans


def allocate_scratch(t: BufferTable, stages: list[Stage], sizes: dict[str, int], policy: ScratchPolicy,
                     graph: StageGraph) -> dict[str, Placement]:
    spans = arena_values(stages)
    touching: dict[str, list[int]] = {v: [] for v in spans}
    for st in stages:
        for v in set(st.reads + st.writes):
            if v in touching:
                touching[v].append(st.index)
    order = sorted(spans, key=lambda v: (spans[v][0], v))
    numel = {v: max(1, sizes[v.split(".", 1)[1] if v.startswith("L") else v]) for v in order}

    if policy == ScratchPolicy.NONE:
        return {v: Placement(t.add(f"value.{v}", BufferKind.SCRATCH, DType.F32, numel[v]), 0) for v in order}

    offsets: dict[str, int] = {}
    cursor = 0
    if policy == ScratchPolicy.LINEAR:
        for v in order:
            offsets[v] = cursor
            cursor += _align(numel[v])
    else:
        free: list[tuple[int, int, str]] = []  # (offset, size, value that last held it)
        released: set[str] = set()
        for v in order:
            start = spans[v][0]
            for d in offsets:
                if d not in released and spans[d][1] < start:
                    released.add(d)
                    free.append((offsets[d], _align(numel[d]), d))
            need = _align(numel[v])
            # reuse a range only if this value's first stage has fully waited for every stage that
            # touched the range's last holder: then no write of ours can overtake one of its reads
            chosen = next((i for i, (_, size, old) in enumerate(free)
                           if size >= need and all(graph.fully_after(start, s) for s in touching[old])), None)
            if chosen is None:
                offsets[v] = cursor
                cursor += need
            else:
                off, size, old = free.pop(chosen)
                offsets[v] = off
                if size > need:
                    free.append((off + need, size - need, old))
                touching[v] = touching[v] + touching[old]
    arena_id = t.add("arena", BufferKind.ARENA, DType.F32, max(cursor, ARENA_ALIGN))
    return {v: Placement(arena_id, offsets[v]) for v in order}


def _align(n: int) -> int:
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN
