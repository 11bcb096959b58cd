"""Lay a transformers model's weights out as a program's buffers (grouped QKV, stacked gate/up, RoPE tables)."""

from __future__ import annotations

import torch

from amk.schedule.errors import UnsupportedModelError
from amk.schedule.program import BufferKind, MegakernelProgram


def _decoder(hf):
    return hf.model if hasattr(hf, "model") else hf


def grouped_qkv(attn, n_heads: int, n_kv: int, head_dim: int, what: str = "weight") -> torch.Tensor | None:
    """[q heads of group 0, k0, v0, q heads of group 1, k1, v1, ...] rows of the Q/K/V projections."""
    q, k, v = (getattr(getattr(attn, n), what) for n in ("q_proj", "k_proj", "v_proj"))
    if q is None:
        return None
    g = n_heads // n_kv
    rows = []
    for kv in range(n_kv):
        rows.append(q[kv * g * head_dim:(kv + 1) * g * head_dim])
        rows.append(k[kv * head_dim:(kv + 1) * head_dim])
        rows.append(v[kv * head_dim:(kv + 1) * head_dim])
    return torch.cat(rows, 0)


def rope_tables(hf, max_seq: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_seq, head_dim] from the model's own rotary module, in the model dtype (as eager casts them):
    row p equals what the module gives eager for the one position p of a decode step. Raises UnsupportedModelError
    for a dynamic (NTK) RoPE past max_position_embeddings."""
    dec = _decoder(hf)
    rotary = getattr(dec, "rotary_emb", None)
    if rotary is None:
        raise UnsupportedModelError("rotary embedding", "model has no shared rotary_emb module")
    kind = getattr(rotary, "rope_type", "default")
    limit = getattr(rotary, "original_max_seq_len", None)
    if "dynamic" in str(kind) and limit is not None and max_seq > limit:
        # past max_position_embeddings transformers rescales every position's frequencies to the sequence length
        # it is given (a prefill differs from the steps that follow it): no table of the position alone
        raise UnsupportedModelError(
            "rope_type dynamic", f"a context of {max_seq} positions is past max_position_embeddings ({limit}), "
                                 f"where transformers rescales RoPE by the sequence length; use max_seq <= {limit}")
    dev = next(hf.parameters()).device
    probe = torch.zeros(1, dtype=dtype, device=dev)
    if "dynamic" in str(kind) and getattr(rotary, "max_seq_len_cached", 0) > (limit or 0):
        # the model ran past max_position_embeddings before (its rescaled frequencies are kept until a call shorter
        # than that): one position lets transformers restore the unscaled ones, which eager's next decode within
        # the context also does
        rotary(probe, torch.zeros(1, 1, dtype=torch.long, device=dev))
    pos = torch.arange(max_seq, device=dev)[None]
    # On the CPU one thread computes the table, as eager computes each decode step's one row: split over threads,
    # the rows of the second half now and then came out a few ulps of the angle apart from eager's (toy, fp32: one
    # process in about 20 failed verify on every case past 256 positions)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        cos, sin = rotary(probe, pos)
    finally:
        if dev.type == "cpu":
            torch.set_num_threads(threads)
    return cos[0].to(dtype), sin[0].to(dtype)


def pack_weights(hf, program: MegakernelProgram, device=None) -> dict[int, torch.Tensor]:
    """Buffer id -> flat tensor for every WEIGHT buffer of `program`, taken from the transformers model `hf`.

    A weight already in the program's dtype, on `device` and contiguous is returned as a view of `hf`'s own
    parameter, not a copy (a model's weights are not held twice): a change to that tensor changes `hf`, the
    reference it is verified against, too. Clone a tensor before planting a fault in it.
    Raises UnsupportedModelError for a buffer the model has no parameter for, or one of another size."""
    c = program.constants
    dtype = c.dtype.torch
    dec = _decoder(hf)
    named: dict[str, torch.Tensor] = {"embed": dec.embed_tokens.weight, "final_norm": dec.norm.weight}
    if hasattr(hf, "lm_head"):
        named["lm_head"] = hf.lm_head.weight
    for i, layer in enumerate(dec.layers):
        a, m, p = layer.self_attn, layer.mlp, f"layers.{i}."
        named[p + "attn_norm"] = layer.input_layernorm.weight
        named[p + "qkv"] = grouped_qkv(a, c.n_heads, c.n_kv_heads, c.head_dim)
        bias = grouped_qkv(a, c.n_heads, c.n_kv_heads, c.head_dim, "bias")
        if bias is not None:
            named[p + "qkv_bias"] = bias
        if c.qk_norm:
            named[p + "q_norm"] = a.q_norm.weight
            named[p + "k_norm"] = a.k_norm.weight
        named[p + "o"] = a.o_proj.weight
        named[p + "mlp_norm"] = layer.post_attention_layernorm.weight
        named[p + "gate_up"] = torch.cat([m.gate_proj.weight, m.up_proj.weight], 0)
        named[p + "down"] = m.down_proj.weight
    cos, sin = rope_tables(hf, c.max_seq, dtype)
    named["rope_cos"], named["rope_sin"] = cos, sin
    out: dict[int, torch.Tensor] = {}
    for b in program.buffers:
        if b.kind != BufferKind.WEIGHT:
            continue
        if b.name not in named:
            raise UnsupportedModelError(f"weight {b.name}", "the model has no such parameter")
        t = named[b.name].detach().to(dtype=dtype)
        if device is not None:
            t = t.to(device)
        t = t.reshape(-1).contiguous()
        if t.numel() != b.numel:
            raise UnsupportedModelError(f"weight {b.name}", f"has {t.numel()} elements, program expects {b.numel}")
        out[b.id] = t
    return out
