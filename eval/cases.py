"""Verify cases and their eager ground truth (transformers with its own KV cache)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class VerifyCase:
    name: str
    prefix_len: int  # positions already in the KV cache (random keys and values)
    tokens: int  # tokens decoded teacher-forced from there
    generate: int = 0  # then this many greedy tokens, compared token for token
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def default_cases(max_seq: int, reduced: bool | str = False, seed: int = 0) -> list[VerifyCase]:
    """Positions 0, 1, a few hundred and near the context limit, several tokens, and greedy generation.
    `reduced`: three cases; "smoke": one step after a prefilled cache (the 0.6B-1B models on a CPU)."""
    mid = min(300, max_seq // 2)
    near = max(0, max_seq - 3)
    if reduced == "smoke":
        return [VerifyCase(f"pos{min(64, max_seq // 2)}", min(64, max_seq // 2), 1, seed=seed)]
    if reduced:
        return [VerifyCase("pos0", 0, 1, seed=seed), VerifyCase(f"pos{mid}", mid, 2, seed=seed + 1),
                VerifyCase("greedy8", 0, 3, generate=8, seed=seed + 2)]
    return [
        VerifyCase("pos0", 0, 1, seed=seed),
        VerifyCase("pos1", 1, 1, seed=seed + 1),
        VerifyCase(f"pos{mid}", mid, 2, seed=seed + 2),
        VerifyCase(f"pos{near}_near_limit", near, max_seq - near, seed=seed + 3),
        VerifyCase("tokens8", 0, 8, seed=seed + 4),
        VerifyCase("greedy32", 0, 4, generate=32, seed=seed + 5),
    ]


@dataclass
class CaseInputs:
    prefix_k: torch.Tensor  # [n_layers, n_kv_heads, P, head_dim], model dtype
    prefix_v: torch.Tensor
    tokens: list[int]


def case_inputs(case: VerifyCase, dims, dtype: torch.dtype, max_seq: int) -> CaseInputs:
    if case.prefix_len + case.tokens + case.generate > max_seq:
        raise ValueError(f"case {case.name} needs {case.prefix_len + case.tokens + case.generate} positions, "
                         f"the program holds {max_seq}")
    g = torch.Generator().manual_seed(1000 + case.seed)
    shape = (dims.n_layers, dims.n_kv_heads, case.prefix_len, dims.head_dim)
    k = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    toks = torch.randint(0, dims.vocab, (case.tokens,), generator=g).tolist()
    return CaseInputs(k, v, toks)


def cache_kwargs(hf, cache) -> dict:
    """The forward() keyword that passes a KV cache: `cache` on transformers releases that renamed it (they warn
    on `past_key_values`), `past_key_values` on the older ones the project still supports."""
    import inspect

    params = inspect.signature(type(hf).forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache, "use_cache": True}


def _cache_with_prefix(hf, k: torch.Tensor, v: torch.Tensor):
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    if k.shape[2]:
        dev = next(hf.parameters()).device
        for layer in range(k.shape[0]):
            cache.update(k[layer][None].to(dev), v[layer][None].to(dev), layer)
    return cache


@torch.no_grad()
def eager_decode(hf, inputs: CaseInputs, generate: int = 0, dtype: torch.dtype | None = None) -> tuple[list[torch.Tensor], list[int]]:
    """Decode `inputs.tokens` one at a time after the KV prefix, then `generate` greedy tokens.
    Returns (fp32 CPU logits per step, greedy tokens). `dtype` casts the prefix (for an fp32 reference)."""
    k, v = inputs.prefix_k, inputs.prefix_v
    if dtype is not None:
        k, v = k.to(dtype), v.to(dtype)
    cache = _cache_with_prefix(hf, k, v)
    dev = next(hf.parameters()).device
    pos = k.shape[2]
    logits: list[torch.Tensor] = []
    feed = list(inputs.tokens)
    generated: list[int] = []
    step = 0
    while step < len(feed):
        out = hf(torch.tensor([[feed[step]]], device=dev), **cache_kwargs(hf, cache),
                 position_ids=torch.tensor([[pos]], device=dev), cache_position=torch.tensor([pos], device=dev))
        lg = out.logits[0, -1].float().cpu()
        logits.append(lg)
        pos += 1
        step += 1
        if step >= len(inputs.tokens) and len(generated) < generate:
            nxt = int(torch.argmax(lg))
            generated.append(nxt)
            if len(generated) < generate:
                feed.append(nxt)
    return logits, generated
