"""The refusal tests of the field table (fields.py): for a config field's value, why AMK does not lower it, or None.

Each test takes the value, the parsed transformers config it is in and the model's architecture, since a value may
be lowered for one family and not another. The per-layer sliding windows (layer_windows) are here too: the
sliding_window test refuses a window by the layers it would apply to, and model_dims lowers the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from amk.schedule.graph import Architecture

# (value, config, architecture) -> why this value is refused, or None when it is lowered
Refusal = Callable[[Any, Any, Architecture], "str | None"]


FULL, SLIDING = "full_attention", "sliding_attention"


def _is(*allowed) -> Refusal:
    def refuse(v, cfg, arch):
        return None if v in allowed else f"only {' or '.join(repr(a) for a in allowed)} " + \
            ("is" if len(allowed) == 1 else "are") + " lowered"
    return refuse


def _unset(what: str) -> Refusal:
    def refuse(v, cfg, arch):
        return None if v in (None, {}, []) else f"{what} is not lowered"
    return refuse


def _positive_int(nullable: bool = False, maximum: int | None = None, why: str = "") -> Refusal:
    # transformers builds a model from a zero or negative width and fails later, or computes NaN: refuse it here
    def refuse(v, cfg, arch):
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            return "must be a positive integer"
        if maximum is not None and v > maximum:
            return f"must be at most {maximum} ({why})"
        return None
    return refuse


def _head_dim(v, cfg, arch) -> str | None:
    # Llama's and Mistral's configs replace a null head_dim by hidden_size // num_attention_heads and Qwen3's
    # refuses it, so a null left in the parsed config is Qwen2's: its attention reads getattr(config, "head_dim",
    # default), finds the null, and fails on weights load with a TypeError naming no field
    if v is None:
        return ("null, which transformers' attention takes as the head width (it falls back to hidden_size // "
                "num_attention_heads only when head_dim is absent): leave it out or give the width")
    return _positive_int()(v, cfg, arch)


def _pad_in_vocabulary(v, cfg, arch) -> str | None:
    # transformers' nn.Embedding asserts on a padding_idx outside the table, a message that names no field
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        return "must be an integer or null"
    vocab = getattr(cfg, "vocab_size", None)
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 and not -vocab <= v < vocab:
        return f"must be a row of the vocabulary (below vocab_size {vocab}): the embedding's padding_idx"
    return None



def _positive_number(nullable: bool = False) -> Refusal:
    def refuse(v, cfg, arch):
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            return "must be a positive, finite number"
        return None
    return refuse


def _attention_bias(v, cfg, arch):
    # Llama and Qwen3 put the bias on q, k, v and o; Mistral and Qwen2 hard-wire theirs and never read the flag.
    if v and arch in (Architecture.LLAMA, Architecture.QWEN3):
        # q, k and v biases are lowered (Qwen2's); o_proj's is not
        return "it adds biases to q, k, v and the attention output projection; the output projection's is not lowered"
    return None


def _mlp_bias(v, cfg, arch):
    # only Llama's MLP reads the flag; the other three hard-wire bias=False
    return "bias on the MLP projections is not lowered" if v and arch == Architecture.LLAMA else None


def _sliding_window(v, cfg, arch):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return f"must be a whole number of positions >= 1, got {v!r}"
    if arch == Architecture.LLAMA:
        # LlamaModel masks every cached position, while transformers' cache keeps only the window for a
        # config that names one: prefill and decode would disagree
        return "a Llama config with a sliding window: LlamaForCausalLM does not window its mask"
    if v == 1 and 1 in layer_windows(cfg, arch):
        # transformers' decode through its cache and its own forward over the whole sequence disagree at a window
        # of one position (tests/test_sliding_window.py shows it), so no reference defines the model
        return "a window of 1 position: transformers' cached decode disagrees with its own full forward there"
    return None


def _layer_types(v, cfg, arch):
    if v is None:
        return None
    bad = [(i, t) for i, t in enumerate(v) if t not in (FULL, SLIDING)]
    if bad:
        return f"layer {bad[0][0]} is {bad[0][1]!r}: only {FULL!r} and {SLIDING!r} layers are lowered"
    if len(v) != cfg.num_hidden_layers:
        return f"{len(v)} entries for {cfg.num_hidden_layers} layers"
    window = getattr(cfg, "sliding_window", None)
    if SLIDING in v and window is None:
        if getattr(cfg, "use_sliding_window", None) is False:
            # Qwen2Config / Qwen3Config drop a sliding_window that config.json sets unless use_sliding_window is true
            return (f"layer {v.index(SLIDING)} is {SLIDING!r} but use_sliding_window is false, so transformers "
                    "drops sliding_window; set use_sliding_window true for a windowed layer")
        return f"layer {v.index(SLIDING)} is {SLIDING!r} but the config sets no sliding_window"
    if arch == Architecture.LLAMA and SLIDING in v:
        return "LlamaForCausalLM does not window its mask, while transformers' cache would follow layer_types"
    if arch == Architecture.MISTRAL and len(set(v)) > 1:
        return ("mixed layer types: MistralForCausalLM windows every layer alike, while transformers' cache would "
                "follow layer_types")
    return None


def _quantization(v, cfg, arch):
    if v is None:
        return None
    # transformers' loader acts on the field being there at all: it quantizes or dequantizes the weights on loading
    # (on CPU an fp8 checkpoint is dequantized with its warning off), so the model run is not the file's weights
    method = v.get("quant_method") if isinstance(v, dict) else getattr(v, "quant_method", None)
    return (f"quant_method={method!r}: a quantized checkpoint; AMK runs a checkpoint's dense weights in fp32, fp16 "
            f"or bf16 only (save the model dequantized, without quantization_config)")



def layer_windows(cfg, arch: Architecture) -> tuple[int, ...]:
    """Per layer, the positions it attends to with its own included (transformers' sliding mask keeps key
    positions k > q - window, so a window of W sees W positions), 0 for all. Mistral windows every layer by
    sliding_window; Qwen2/Qwen3 the layers layer_types marks (their config derives layer_types from
    use_sliding_window and max_window_layers); Llama none."""
    n = cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    if arch == Architecture.LLAMA or window is None:
        return ()
    if arch == Architecture.MISTRAL:
        return (int(window),) * n
    types = getattr(cfg, "layer_types", None) or [FULL] * n
    wins = tuple(int(window) if t == SLIDING else 0 for t in types)
    return wins if any(wins) else ()
