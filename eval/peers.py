"""Peers on the same model and weights: transformers eager, plain torch with a static KV cache replayed as a
CUDA graph, and that step under torch.compile(mode="max-autotune-no-cudagraphs") replayed as a CUDA graph."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from amk.vm.weights import _decoder, rope_tables


class StaticDecoder:
    """One decode step in plain torch over a static KV cache; token and position live on the device so the
    step can be captured in a CUDA graph and replayed."""

    def __init__(self, model, max_seq: int):
        hf = model.eager
        d = model.dims
        self.d, self.hf, self.max_seq = d, hf, max_seq
        dev = next(hf.parameters()).device
        dt = next(hf.parameters()).dtype
        self.dec = _decoder(hf)
        self.k = torch.zeros(d.n_layers, 1, d.n_kv_heads, max_seq, d.head_dim, dtype=dt, device=dev)
        self.v = torch.zeros_like(self.k)
        self.cos, self.sin = rope_tables(hf, max_seq, dt)
        self.tok = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.arange = torch.arange(max_seq, device=dev)
        self.lm = hf.lm_head.weight if hasattr(hf, "lm_head") else self.dec.embed_tokens.weight

    def _norm(self, x, w, eps):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def _rope(self, t, cos, sin):
        half = t.shape[-1] // 2
        rot = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * cos + rot * sin

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        d = self.d
        eps = d.rms_eps
        x = self.dec.embed_tokens.weight[self.tok][None]  # [1, 1, hidden]
        cos, sin = self.cos[self.pos][None], self.sin[self.pos][None]
        mask = (self.arange > self.pos).view(1, 1, 1, -1)
        for i, layer in enumerate(self.dec.layers):
            a = layer.self_attn
            h = self._norm(x, layer.input_layernorm.weight, eps)
            q = a.q_proj(h).view(1, 1, d.n_heads, d.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(1, 1, d.n_kv_heads, d.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(1, 1, d.n_kv_heads, d.head_dim).transpose(1, 2)
            if d.qk_norm:
                q = self._norm(q, a.q_norm.weight, eps)
                k = self._norm(k, a.k_norm.weight, eps)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            self.k[i].index_copy_(2, self.pos, k)
            self.v[i].index_copy_(2, self.pos, v)
            o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=~mask, enable_gqa=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            h = self._norm(x, layer.post_attention_layernorm.weight, eps)
            m = layer.mlp
            x = x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))
        logits = F.linear(self._norm(x, self.dec.norm.weight, eps), self.lm)
        self.tok.copy_(torch.argmax(logits[0, -1], -1, keepdim=True))
        self.pos.add_(1)
        return logits


def _events_ms(fn, steps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def _graphed(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def time_static_graph(model, max_seq: int, context: int, steps: int = 200, compiled: bool = False) -> dict:
    dec = StaticDecoder(model, max_seq)
    fn = dec.step
    if compiled:
        fn = torch.compile(dec.step, mode="max-autotune-no-cudagraphs", fullgraph=False)
    replay = _graphed(lambda: (dec.pos.fill_(context), fn()))
    samples = []
    for _ in range(3):
        dec.pos.fill_(context)
        # the captured step resets the position first so every replay decodes at `context`
        samples.append(_events_ms(replay, steps) * 1e3)
    return {"latency_us": statistics.median(samples), "samples_us": samples}


@torch.no_grad()
def time_eager(model, context: int, steps: int = 30) -> dict:
    from transformers import DynamicCache

    from .cases import cache_kwargs

    hf = model.eager
    d = model.dims
    dev = next(hf.parameters()).device
    dt = next(hf.parameters()).dtype
    samples = []
    for _ in range(3):
        cache = DynamicCache(config=hf.config)
        kv = torch.randn(1, d.n_kv_heads, context, d.head_dim, dtype=dt, device=dev)
        for i in range(d.n_layers):
            cache.update(kv, kv, i)
        tok = torch.ones(1, 1, dtype=torch.long, device=dev)
        pos = [context]

        def step(tok=tok, cache=cache, pos=pos):
            out = hf(tok, **cache_kwargs(hf, cache), position_ids=torch.tensor([[pos[0]]], device=dev))
            tok.copy_(out.logits[:, -1].argmax(-1, keepdim=True))
            pos[0] += 1

        step()
        samples.append(_events_ms(step, steps) * 1e3)
    return {"latency_us": statistics.median(samples), "samples_us": samples}
