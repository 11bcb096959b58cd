"""Verify cases and their eager ground truth (transformers with its own KV cache)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from amk.harness.arguments import SEED_LIMIT, integral
from amk.schedule.errors import ArgumentError, ContextError


@dataclass(frozen=True)
class VerifyCase:
    name: str
    prefix_len: int  # positions already in the KV cache (random keys and values)
    tokens: int  # tokens decoded teacher-forced from there
    generate: int = 0  # then this many greedy tokens, compared token for token
    seed: int = 0
    scaled_from: str = ""  # the full-size case this one was cut down from to fit a short context

    def __post_init__(self):
        # a numpy integer from a sweep is the int it holds (as every other integer argument takes it), so that the
        # field checks, the case's seed and its JSON see an int; anything else stays for check_case_fields to refuse
        for field in _FIELD_LEAST:
            object.__setattr__(self, field, integral(getattr(self, field)))

    @property
    def positions(self) -> int:
        """KV positions the case decodes into: the prefix, the fed tokens, and every greedy token but the last
        (which is compared, never fed back)."""
        return self.prefix_len + self.tokens + max(0, self.generate - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["scaled_from"]:
            del d["scaled_from"]  # a full-size case keeps the identity (and cache key) it always had
        return d


def default_cases(max_seq: int, reduced: bool | str = False, seed: int = 0) -> list[VerifyCase]:
    """Positions 0, 1, a few hundred and near the context limit, several tokens, and greedy generation.
    `reduced`: three cases; "smoke": one step after a prefilled cache (the 0.6B-1B models on a CPU).

    Every case fits `max_seq` positions: in a short context the token and greedy counts shrink (the name gives
    the size run, `scaled_from` the full-size case), and a case that would repeat another is left out."""
    if max_seq < 1:
        raise ContextError(f"a context of {max_seq} positions holds no verify case", needed=1, max_seq=max_seq)
    if reduced == "smoke":
        p = min(64, max_seq // 2)
        return [VerifyCase(f"pos{p}", p, 1, seed=seed)]
    return _distinct(_candidates(max_seq, reduced, seed), max_seq)


def _candidates(max_seq: int, reduced: bool, seed: int) -> list[VerifyCase]:
    """The default cases cut down to fit `max_seq`, before the repeats are left out."""
    mid = min(300, max_seq // 2)
    near = max(0, max_seq - 3)

    def case(name, full, prefix, tokens, generate=0, s=0):
        # a case's own seed wraps below 2**63: the largest seed the argument check takes is a case seed too
        return VerifyCase(name, prefix, tokens, generate, (seed + s) % SEED_LIMIT, "" if name == full else full)

    def greedy(full_tokens, full_gen, s):
        t = min(full_tokens, max(1, max_seq // 2))
        g = min(full_gen, max_seq - t + 1)
        return case(f"greedy{g}", f"greedy{full_gen}" + ("" if t == full_tokens else f" ({full_tokens} prompt tokens)"),
                    0, t, g, s)

    def mid_case(s):  # the full-size case is pos300 with 2 tokens
        t = min(2, max_seq - mid)
        full = "pos300" + ("" if t == 2 else " (2 tokens)")
        return case(f"pos{mid}", full, mid, t, 0, s)

    if reduced:
        out = [VerifyCase("pos0", 0, 1, seed=seed), mid_case(1), greedy(3, 8, 2)]
    else:
        out = [VerifyCase("pos0", 0, 1, seed=seed), case("pos1", "pos1", 1, 1, 0, 1), mid_case(2),
               VerifyCase(f"pos{near}_near_limit", near, max_seq - near, seed=(seed + 3) % SEED_LIMIT),
               case(f"tokens{min(8, max_seq)}", "tokens8", 0, min(8, max_seq), 0, 4), greedy(4, 32, 5)]
    return out


def _distinct(out: list[VerifyCase], max_seq: int) -> list[VerifyCase]:
    seen: set = set()
    kept = []
    for c in out:
        shape = (c.prefix_len, c.tokens, c.generate)
        if c.positions <= max_seq and shape not in seen and c.name not in seen:
            seen |= {shape, c.name}
            kept.append(c)
    return kept


def left_out_cases(max_seq: int, reduced: bool = False) -> list[str]:
    """The default cases a context of `max_seq` positions leaves out, each named as cut down, with the full-size
    case it comes from and why: "repeats <a case run>", or "needs <n> positions" where even cut down it does not
    fit (pos1 in a context of one position). E.g. "tokens3 (from tokens8, repeats pos0_near_limit)"."""
    cands = _candidates(max_seq, reduced, 0)
    kept = _distinct(cands, max_seq)
    out = []
    for c in cands:
        if any(c is k for k in kept):
            continue
        if c.positions > max_seq:
            why = f"needs {c.positions} positions"
        else:  # _distinct kept a case of its name or its shape
            why = "repeats " + next(k.name for k in kept if k.name == c.name
                                    or (k.prefix_len, k.tokens, k.generate) == (c.prefix_len, c.tokens, c.generate))
        out.append(f"{c.name} ({', '.join(([f'from {c.scaled_from}'] if c.scaled_from else []) + [why])})")
    return out


def check_case_list(cases) -> None:
    """ArgumentError naming `cases` unless it is a non-empty list (or tuple) of VerifyCase whose fields a run can
    use (check_case_fields): an empty one would check nothing, and anything else would fail deep inside the run."""
    if not isinstance(cases, list | tuple):
        raise ArgumentError("cases", f"expected a list of VerifyCase, got {type(cases).__name__}")
    if not cases:
        raise ArgumentError("cases", "an empty list runs no verify case: pass VerifyCases, 'full' or 'reduced'")
    bad = next((i for i, c in enumerate(cases) if not isinstance(c, VerifyCase)), None)
    if bad is not None:
        raise ArgumentError("cases", f"item {bad}, {cases[bad]!r:.60} of type {type(cases[bad]).__name__}, is not "
                                     "a VerifyCase")
    for i, case in enumerate(cases):
        check_case_fields(i, case)


# the least each integer field of a VerifyCase takes: tokens at least 1, since a case with no fed token has no step
# to compare (greedy tokens only follow a fed one); an empty prefix and no greedy tokens are ordinary cases
_FIELD_LEAST = {"prefix_len": 0, "tokens": 1, "generate": 0, "seed": 0}


def check_case_fields(index: int, case: VerifyCase) -> None:
    """ArgumentError naming `cases` and the field, `cases[index].<field>`, with its value, for a field no run can use:
    a name that is not a non-empty str, a scaled_from that is not a str, an integer field that is not an int (a bool
    is not one) or is under its least (_FIELD_LEAST), a seed of 2**63 or more. The dataclass checks no types, and
    such a case would otherwise fail inside the run as an incorrect config (tokens=0: an empty stack of logits)."""
    def refuse(field: str, expected: str) -> None:
        value = getattr(case, field)
        raise ArgumentError("cases", f"cases[{index}].{field}: expected {expected}, got {value!r:.60}")

    if not isinstance(case.name, str) or not case.name:
        refuse("name", "a non-empty str")
    if not isinstance(case.scaled_from, str):
        refuse("scaled_from", "a str")
    for field, least in _FIELD_LEAST.items():
        value = getattr(case, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            refuse(field, "a positive integer" if least == 1 else f"an integer of at least {least}")
    if case.seed >= SEED_LIMIT:  # the case's Generator is seeded with 1000 + seed, which must fit 64 bits
        refuse("seed", "an integer below 2**63")


def check_cases_fit(cases: list[VerifyCase], max_seq: int) -> None:
    """Raise ContextError (a usage error, not a correctness failure) naming every case that needs more positions
    than the program's context holds, and ArgumentError naming `cases` when there is none."""
    check_case_list(cases)
    bad = [c for c in cases if c.positions > max_seq]
    if bad:
        names = ", ".join(f"{c.name} needs {c.positions}" for c in bad)
        raise ContextError(f"verify cases do not fit the program's context of {max_seq} positions: {names}; lower "
                           "the program with a larger max_seq or pass cases that fit",
                           needed=max(c.positions for c in bad), max_seq=max_seq)


@dataclass
class CaseInputs:
    prefix_k: torch.Tensor  # [n_layers, n_kv_heads, P, head_dim], model dtype
    prefix_v: torch.Tensor
    tokens: list[int]


def case_inputs(case: VerifyCase, dims, dtype: torch.dtype, max_seq: int) -> CaseInputs:
    """The case's random KV prefix ([n_layers, n_kv_heads, prefix_len, head_dim], `dtype`) and fed tokens, from
    its seed. Raises ContextError when the case needs more than `max_seq` positions. The prefix tensors are
    shared between calls (every trial of a search verifies the same cases): read them, never write them."""
    if case.positions > max_seq:
        raise ContextError(f"case {case.name} needs {case.positions} positions, the program holds {max_seq}",
                           needed=case.positions, max_seq=max_seq)
    k, v, toks = _random_inputs(case.seed, case.prefix_len, case.tokens, dims.n_layers, dims.n_kv_heads,
                                dims.head_dim, dims.vocab, dtype)
    return CaseInputs(k, v, list(toks))


@functools.lru_cache(maxsize=8)  # one default case set; a near-limit prefix of a 3B shape is about 40 MB
def _random_inputs(seed: int, prefix_len: int, tokens: int, n_layers: int, n_kv_heads: int, head_dim: int,
                   vocab: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    g = torch.Generator().manual_seed(1000 + seed)
    shape = (n_layers, n_kv_heads, prefix_len, head_dim)
    k = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    return k, v, tuple(torch.randint(0, vocab, (tokens,), generator=g).tolist())


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
            # copies: the prefix is shared between calls (case_inputs), and a cache layer may write into what it holds
            cache.update(k[layer][None].to(dev, copy=True), v[layer][None].to(dev, copy=True), layer)
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
