"""Fusion: group the graph's ops into stages, each of which tiles into tasks of one opcode.

A stage names the activation values it reads and writes; values are per-layer instances so that
the scratch allocator sees their real lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import AttentionCombine, AttentionSoftmax, FusionConfig, ScheduleConfig, SplitReduce
from .graph import Graph, OpKind


@dataclass(frozen=True)
class Value:
    name: str
    numel: int  # fp32 elements


@dataclass
class Stage:
    index: int
    kind: str  # embed, norm, qkv, rope_kv, attention, attention_combine, o, add, gate_up, silu_mul, down,
    #            reduce, lm_head, argmax
    layer: int
    reads: list[str] = field(default_factory=list)  # value names
    writes: list[str] = field(default_factory=list)
    # what the stage computes, for the tiler
    role: str = ""  # for matvec/reduce stages: qkv, o, gate_up, down, lm_head; for norms: attn, mlp, final
    norm: str | None = None  # fused RMSNorm weight name
    epilogue: str = ""  # store, rope_kv, silu_mul, residual_add, logits, partial
    src: str | None = None  # for reduce/elementwise stages: the value whose rows are finished
    splits: int = 1
    join_reduce: bool = False  # k-split matvec: each row block's last split task sums the splits and runs `epilogue`
    combine_parts: int = 0  # O with the attention combine fused: partitions its input arrives in
    combine_weighted: bool = False  # ... each weighed by its own softmax's (max, sum)
    window: int = 0  # attention stages: the layer's sliding window (0: every cached position)


def score_capacity(max_seq: int, parts: int) -> int:
    """Positions one attention partition can hold: partitions split the live length evenly."""
    return -(-max_seq // parts)


def value_sizes(graph: Graph, config: ScheduleConfig, max_seq: int) -> dict[str, int]:
    d = graph.dims
    parts = config.attention.kv_partitions
    return {
        "scores": parts * d.n_heads * score_capacity(max_seq, parts),
        "attn_stats": parts * d.n_heads * 2,
        "x": d.hidden,
        "xn": d.hidden,
        "qkv_raw": d.qkv_rows,
        "q": d.n_heads * d.head_dim,
        "attn_part": parts * d.n_heads * d.head_dim,
        "attn": d.n_heads * d.head_dim,
        "o_out": d.hidden,
        "gu": 2 * d.intermediate,
        "act": d.intermediate,
        "d_out": d.hidden,
        "xf": d.hidden,
        "argmax_pairs": 2 * -(-d.vocab // config.matvec.lm_head.rows_per_task),  # one (max, index) per task
        "split.qkv": config.matvec.qkv.k_splits * d.qkv_rows,
        "split.o": config.matvec.o.k_splits * d.hidden,
        "split.gate_up": config.matvec.gate_up.k_splits * 2 * d.intermediate,
        "split.down": config.matvec.down.k_splits * d.hidden,
        "split.lm_head": config.matvec.lm_head.k_splits * d.vocab,
    }


def plan_stages(graph: Graph, config: ScheduleConfig) -> list[Stage]:
    """Walk the graph's ops in order and emit stages, fusing neighbours as `config.fusion` says."""
    fusion: FusionConfig = config.fusion
    stages: list[Stage] = []
    ops = graph.ops
    pending_norm: str | None = None  # a fused norm waiting for its consumer matvec

    def emit(**kw) -> Stage:
        st = Stage(index=len(stages), **kw)
        stages.append(st)
        return st

    def inst(name: str, layer: int) -> str:
        return name if layer < 0 or name in ("x", "logits", "token") else f"L{layer}.{name}"

    i = 0
    while i < len(ops):
        op = ops[i]
        layer = op.layer
        if op.kind == OpKind.EMBED:
            emit(kind="embed", layer=-1, reads=["token"], writes=["x"])
        elif op.kind == OpKind.RMSNORM:
            if fusion.norm_into_matvec:
                pending_norm = op.weight
            else:
                role = "final" if layer < 0 else ("attn" if "attn" in op.weight else "mlp")
                out = "xf" if layer < 0 else "xn"
                emit(kind="norm", layer=layer, reads=["x"], writes=[inst(out, layer)], role=role, norm=op.weight)
        elif op.kind in (OpKind.LINEAR, OpKind.LM_HEAD):
            role = "lm_head" if op.kind == OpKind.LM_HEAD else op.weight.rsplit(".", 1)[1]
            i = _emit_matvec(emit, inst, role, op, layer, ops, i, config, pending_norm)
            pending_norm = None
        elif op.kind == OpKind.ATTENTION:
            parts = config.attention.kv_partitions
            q, kv, sc = inst("q", layer), f"kv.{layer}", inst("scores", layer)
            # folded: the partition tasks read QKV's raw rows, apply RoPE (and the q/k norm) and append k, v
            folded = bool(config.fusion.rope_kv_into_attention)
            appends = [kv] if folded else []
            if folded:
                q = inst("qkv_raw", layer)
            if parts == 1:
                emit(kind="attention", layer=layer, reads=[q, kv, sc], writes=[sc, inst("attn", layer)], window=op.window)
            else:
                stats, part = inst("attn_stats", layer), inst("attn_part", layer)
                weighted = config.attention.softmax == AttentionSoftmax.PARTITION
                combined = [part] + ([stats] if weighted else [])  # what a combine of the partitions reads
                how = config.attention.combine
                # the last partition task of each KV head combines the head: the stage also reads the partitions
                join = how == AttentionCombine.LAST_PARTITION
                j_reads, j_writes = (combined, [inst("attn", layer)]) if join else ([], [])
                if weighted:
                    emit(kind="attention", layer=layer, reads=[q, kv, sc] + j_reads,
                         writes=[sc, stats, part] + j_writes + appends, window=op.window)
                else:
                    emit(kind="attention", layer=layer, reads=[q, kv], writes=[sc, stats], window=op.window)
                    emit(kind="attention_values", layer=layer, reads=[sc, stats, kv] + j_reads,
                         writes=[part] + j_writes, window=op.window)
                if how == AttentionCombine.STAGE:
                    emit(kind="attention_combine", layer=layer, reads=combined, writes=[inst("attn", layer)])
        elif op.kind == OpKind.ARGMAX:
            emit(kind="argmax", layer=-1, reads=["argmax_pairs"], writes=["token"])
        # ROPE, KV_APPEND, SILU_MUL and ADD are consumed by _emit_matvec (fused or as their own stage)
        i += 1
    return stages


def _emit_matvec(emit, inst, role, op, layer, ops, i, config: ScheduleConfig, pending_norm):
    """Emit the matvec for `op` and the ops that follow it and belong to its epilogue. Returns the index
    of the last graph op consumed."""
    fusion = config.fusion
    tiling = config.matvec.qkv if role == "qkv" else getattr(config.matvec, role)
    splits = tiling.k_splits
    if pending_norm is None:
        src_in = {"qkv": inst("xn", layer), "o": inst("attn", layer), "gate_up": inst("xn", layer),
                  "down": inst("act", layer), "lm_head": "xf"}[role]
        reads = [src_in]
    else:
        reads = ["x"]
    combine = {}
    if role == "o" and config.attention.kv_partitions > 1 and config.attention.combine == AttentionCombine.O_INPUT:
        weighted = config.attention.softmax == AttentionSoftmax.PARTITION
        reads = [inst("attn_part", layer)] + ([inst("attn_stats", layer)] if weighted else [])
        combine = {"combine_parts": config.attention.kv_partitions, "combine_weighted": weighted}
    # what the epilogue computes when fused, and what it stores otherwise
    fused_epi, stored, follow = {
        "qkv": ("rope_kv", "qkv_raw", "rope_kv"),
        "o": ("residual_add", "o_out", "add"),
        "gate_up": ("silu_mul", "gu", "silu_mul"),
        "down": ("residual_add", "d_out", "add"),
        "lm_head": ("logits", None, None),
    }[role]
    # folded into the attention, RoPE has no stage of its own either
    fuse = {"qkv": fusion.rope_kv_into_qkv or fusion.rope_kv_into_attention, "o": fusion.residual_into_matvec,
            "gate_up": fusion.silu_mul_into_gate_up, "down": fusion.residual_into_matvec, "lm_head": True}[role]
    folded = role == "qkv" and fusion.rope_kv_into_attention  # RoPE and the KV append run in the attention
    epi = "store" if folded or not fuse else fused_epi
    final_writes = _epilogue_writes(epi, role, layer, inst, stored)
    consumed = i
    if role == "qkv":
        consumed = i + 2  # ROPE and KV_APPEND
    elif role in ("o", "down"):
        consumed = i + 1  # ADD
    elif role == "gate_up":
        consumed = i + 1  # SILU_MUL
    assert all(ops[j].layer == layer for j in range(i, consumed + 1))

    if splits == 1:
        rmw = ["x"] if epi == "residual_add" and "x" not in reads else []
        emit(kind=role, layer=layer, reads=reads + rmw, writes=final_writes, role=role, norm=pending_norm,
             epilogue=epi, **combine)
    elif getattr(tiling, "reduce", SplitReduce.STAGE) == SplitReduce.LAST_TASK:
        # the row block's last split task reads every split's partials and finishes the rows: no reduce stage
        part = f"L{layer}.split.{role}" if layer >= 0 else f"split.{role}"
        rmw = ["x"] if epi == "residual_add" and "x" not in reads else []
        emit(kind=role, layer=layer, reads=reads + [part] + rmw, writes=[part] + final_writes, role=role,
             norm=pending_norm, epilogue=epi, splits=splits, join_reduce=True, **combine)
    else:
        part = f"L{layer}.split.{role}" if layer >= 0 else f"split.{role}"
        emit(kind=role, layer=layer, reads=reads, writes=[part], role=role, norm=pending_norm, epilogue="partial",
             splits=splits, **combine)
        emit(kind="reduce", layer=layer, reads=[part] + (["x"] if epi == "residual_add" else []), writes=final_writes,
             role=role, epilogue=epi, src=part, splits=splits)
    if not fuse:
        src = inst(stored, layer)
        emit(kind=follow, layer=layer, reads=[src] + (["x"] if follow == "add" else []),
             writes=_epilogue_writes(fused_epi, role, layer, inst, stored), role=role, epilogue=fused_epi, src=src)
    return consumed


def _epilogue_writes(epi, role, layer, inst, stored):
    if epi == "store":
        return [inst(stored, layer)]
    return {
        "rope_kv": [inst("q", layer), f"kv.{layer}"],
        "residual_add": ["x"],
        "silu_mul": [inst("act", layer)],
        "logits": ["logits", "argmax_pairs"],
    }[epi]
