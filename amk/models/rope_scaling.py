"""RoPE scaling in a config: the RoPE type its rope_parameters dict (transformers 4: rope_scaling) names, and the
field table's rule for both dicts: which RoPE types and parameter values AMK lowers."""

from __future__ import annotations

import math

from .field_refusals import _positive_number

# the types whose tables depend on the position alone; dynamic (NTK) only within max_position_embeddings, where
# transformers leaves its frequencies unscaled (vm/weights.rope_tables refuses a longer context)
ROPE_TYPES = ("default", "llama3", "linear", "dynamic")


def rope_kind(params: dict | None) -> str:
    """The RoPE type a rope_parameters (or transformers 4 rope_scaling) dict names: rope_type, else the older
    `type`, else default (a null rope_type included, as transformers' config classes write "default" for none)."""
    params = params or {}
    return params.get("rope_type") or params.get("type") or "default"


def normalise_rope_type(cfg) -> None:
    """Write rope_kind into a config's RoPE dict whose rope_type is null: transformers' config parsing keeps the
    null, and its rotary module then looks None up (KeyError: None) where AMK's rule reads the default."""
    for name in ("rope_parameters", "rope_scaling"):
        params = getattr(cfg, name, None)
        if isinstance(params, dict) and "rope_type" in params and params["rope_type"] is None:
            params["rope_type"] = rope_kind(params)


_LLAMA3_KEYS = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope(v, cfg, arch):
    params = v or {}
    kind = rope_kind(params)
    if kind not in ROPE_TYPES:
        return (f"rope_type={kind!r}: only {', '.join(ROPE_TYPES[:-1])} (tables of the position alone) and "
                f"{ROPE_TYPES[-1]} (within max_position_embeddings) are lowered")
    theta = params.get("rope_theta")
    if theta is not None and _positive_number()(theta, cfg, arch):
        return f"rope_theta={theta!r} must be a positive, finite number"
    factor = params.get("factor")
    if kind in ("linear", "dynamic", "llama3") and factor is not None and not (
            isinstance(factor, (int, float)) and not isinstance(factor, bool) and 1 <= factor < math.inf):
        # transformers takes a factor below 1 with a warning; at 0 its tables hold inf and every logit is NaN
        return f"factor={factor!r}: {kind} RoPE scaling needs a finite number >= 1"
    if kind == "llama3":
        for key in _LLAMA3_KEYS:
            value = params.get(key)
            # transformers divides original_max_position_embeddings by each factor (a 0 raises a ZeroDivisionError
            # naming no field) and takes no range check of its own: a NaN gives NaN tables, so every logit is NaN,
            # and an inf or a negative value bounds no band of wavelengths. Equal factors are left to it: it divides
            # by their difference only inside the band between them, which is then empty
            if value is not None and _positive_number()(value, cfg, arch):
                return f"{key}={value!r}: llama3 RoPE scaling needs a positive, finite number"
    partial = params.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        return f"partial_rotary_factor={partial}: RoPE over part of a head is not lowered"
    return None
