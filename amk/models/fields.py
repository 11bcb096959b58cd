"""The config fields transformers reads when it runs a Llama, Mistral, Qwen2 or Qwen3 decoder, each classified.

Every field of LlamaConfig, MistralConfig, Qwen2Config and Qwen3Config, every name their modeling files read
from the config, and every name the shared code of a decode step (masks, KV cache, RoPE) reads from any config,
has one entry here:

- LOWERED: the value shapes the graph, the ReferenceVM and the CUDA VM (where is in the note);
- ONLY: lowered at the values AMK supports; any other value is refused by name with UnsupportedModelError;
- INERT: transformers' forward in eval mode never reads it (why is in the note).

A name a config carries that is not in the table is read by none of that code (tests/test_fields.py walks the
installed transformers to prove it), so transformers ignores it and so does AMK. LOADING_FIELDS holds the names
transformers' from_pretrained reads instead (it changes the weights it loads, not the forward): those AMK does not
take are refused there. `model_dims` is the only way a config becomes ModelDims: it refuses first, then derives
the dims and the per-layer sliding windows.

Each rule's refusal test is in field_refusals.py and the RoPE rule in rope_scaling.py; callers import their
public names from here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import re
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from amk.schedule.errors import UnsupportedModelError
from amk.schedule.graph import Architecture, ModelDims

from .field_refusals import (
    Refusal,
    _attention_bias,
    _head_dim,
    _is,
    _layer_types,
    _mlp_bias,
    _pad_in_vocabulary,
    _positive_int,
    _positive_number,
    _quantization,
    _sliding_window,
    _unset,
    layer_windows,
)
from .rope_scaling import _rope
from .rope_scaling import normalise_rope_type as normalise_rope_type
from .rope_scaling import rope_kind as rope_kind


class Treatment(str, Enum):
    LOWERED = "lowered"
    ONLY = "only"
    INERT = "inert"


@dataclass(frozen=True)
class FieldRule:
    name: str
    treatment: Treatment
    note: str
    refuse: Refusal | None = None  # ONLY (and LOWERED fields with invalid values): the refusal test
    legacy: bool = False  # a field of transformers 4 configs that transformers 5 folds into another one


# Upper bounds on the sizes, far above any Llama-family model (the largest public ones: vocab 262144, hidden 16384,
# intermediate 53248), so that a nonsense size is refused by its name at load instead of failing later where it
# names something else: a task never holds more rows than its matrix, so with intermediate_size (gate_up's rows)
# at most 2**20 and hidden_size (o's and down's rows) at most 2**16, every rows_per_task the schedule derives stays
# within the knob's maximum of 1048576 (schedule/config.py MAX_ROWS_PER_TASK; past it the user's config was
# blamed: "$.matvec.lm_head.rows_per_task: must be <= 1048576"; the LM head's, vocab_size at most 2**22 rows over
# the SMs, is held to it by schedule/autotile.derive_tiling), and every row index within the VM's int32 task params.
# hidden_size is also the length of the input row every matvec task stages in shared memory: 65536 is already
# past what a GPU holds (the lowering names smem_per_block there), well before torch's allocation would fail.
MAX_VOCAB = 1 << 22
MAX_HIDDEN = 1 << 16
MAX_INTERMEDIATE = 1 << 20


_F = FieldRule
_L, _O, _I = Treatment.LOWERED, Treatment.ONLY, Treatment.INERT

FIELDS: dict[str, FieldRule] = {r.name: r for r in (
    # --- what the model is
    _F("model_type", _L, "the family: llama, mistral, qwen2 or qwen3 (anything else is refused)"),
    _F("vocab_size", _L, "rows of the embedding and of the LM head",
       _positive_int(maximum=MAX_VOCAB, why="2**22 rows: the LM head's tasks stay within rows_per_task's range")),
    _F("hidden_size", _L, "the residual width",
       _positive_int(maximum=MAX_HIDDEN, why="2**16, 4x the widest model: the input row every matvec task stages")),
    _F("intermediate_size", _L, "the MLP width",
       _positive_int(maximum=MAX_INTERMEDIATE, why="2**20 rows: the MLP's tasks stay within rows_per_task's range")),
    _F("num_hidden_layers", _L, "the decoder layers", _positive_int()),
    _F("num_attention_heads", _L, "q heads",
       _positive_int(maximum=MAX_HIDDEN, why="2**16: more q heads than the widest residual has elements")),
    _F("num_key_value_heads", _L, "KV heads (GQA groups)",
       _positive_int(nullable=True, maximum=MAX_HIDDEN, why="2**16: more KV heads than the widest residual has "
                                                               "elements")),
    _F("head_dim", _L, "the head width (Qwen2 reads it through getattr when a config carries it)", _head_dim),
    _F("hidden_act", _O, "the MLP activation: silu, or swish, transformers' other name for it (ACT2CLS maps both to "
                         "x * sigmoid(x))", _is("silu", "swish")),
    _F("rms_norm_eps", _L, "every RMSNorm (and Qwen3's q/k norms)", _positive_number()),
    _F("max_position_embeddings", _L, "the default context of a program (capped at 2048 by lower()) and the "
                                      "RoPE tables' range", _positive_int(nullable=True)),
    _F("tie_word_embeddings", _L, "LM head = embedding, as the loaded module has it: a checkpoint that stores its "
                                  "own lm_head.weight is untied whatever the flag says, as transformers loads it"),
    _F("rope_parameters", _O, "rope_theta, rope_type and its factors: the cos/sin tables come from the model's "
                              "own rotary module (vm/weights.rope_tables)", _rope),
    _F("default_theta", _L, "rope_theta when a config names none: into the RoPE tables",
       _positive_number(nullable=True)),
    _F("rope_scaling", _O, "transformers 4's rope_parameters: the same rule", _rope, legacy=True),
    _F("rope_theta", _L, "transformers 4: into the RoPE tables", _positive_number(nullable=True), legacy=True),
    _F("attention_bias", _O, "Llama and Qwen3: bias on q, k, v and o; Mistral and Qwen2 never read it",
       _attention_bias),
    _F("mlp_bias", _O, "Llama: bias on the MLP projections; the other three never read it", _mlp_bias),
    # --- which positions each layer attends to
    _F("sliding_window", _L, "Mistral: every layer attends to the last sliding_window positions (its own "
                             "included); Qwen2/Qwen3: the layers layer_types marks sliding_attention",
       _sliding_window),
    _F("use_sliding_window", _L, "Qwen2/Qwen3: without it the config drops sliding_window (into layer_types)"),
    _F("max_window_layers", _L, "Qwen2/Qwen3: layers from this index on slide (into layer_types)"),
    _F("layer_types", _L, "Qwen2/Qwen3: full_attention or sliding_attention per layer; a Mistral config.json "
       "that sets it is read by transformers as Ministral, refused by this name",
       _layer_types),
    _F("attention_chunk_size", _O, "chunked attention (masks and cache)", _unset("chunked attention")),
    _F("is_causal", _O, "masks: a non-causal decoder", _is(True)),
    _F("kv_sharing_modes", _O, "KV cache shared between layers", _unset("KV cache sharing")),
    _F("per_layer_config", _O, "per-layer overrides of any field", _unset("a per-layer config")),
    _F("is_encoder_decoder", _O, "an encoder-decoder model", _is(False)),
    # --- read by transformers, but not by the eval-mode forward of a decode step
    _F("number_of_conv_states", _I, "cache of linear-attention layers, which layer_types would have to name"),
    _F("attention_dropout", _I, "dropout runs in training mode only; eval() forward skips it"),
    _F("initializer_range", _I, "initialisation only: a loaded checkpoint overwrites it, random models seed theirs"),
    _F("use_cache", _I, "AMK always decodes with its own KV cache"),
    _F("pad_token_id", _O, "nn.Embedding(padding_idx) only zeroes that row at initialisation and in the "
                           "gradient; the lookup reads whatever the checkpoint holds", _pad_in_vocabulary),
    _F("bos_token_id", _I, "tokenisation and generation only"),
    _F("eos_token_id", _I, "generation only: amk.generate stops at it, or at generation_config.json's eos ids "
                                 "where that file gives them, as transformers' generate does"),
    _F("pretraining_tp", _I, "transformers 5 no longer splits the projections by it"),
    _F("chunk_size_feed_forward", _I, "no module of these four families reads it"),
    _F("architectures", _I, "the class name; AMK builds the causal LM of model_type"),
    _F("dtype", _I, "the checkpoint's storage dtype; AMK casts to the dtype asked for"),
    _F("transformers_version", _I, "provenance"),
    _F("_name_or_path", _I, "provenance"),
    _F("id2label", _I, "classification heads only"),
    _F("label2id", _I, "classification heads only"),
    _F("problem_type", _I, "classification heads only"),
    _F("output_attentions", _I, "extra outputs; the logits do not change"),
    _F("output_hidden_states", _I, "extra outputs; the logits do not change"),
    _F("return_dict", _I, "output container only"),
    _F("_attn_implementation", _I, "AMK's reference runs transformers' eager attention; the others compute the "
                                   "same function"),
    # --- the keys of rope_parameters (refused values are named by the rope_parameters rule)
    _F("rope_parameters.rope_type", _O, "default, llama3 or linear: tables of the position alone; dynamic: the "
                                        "default tables, in a context of at most max_position_embeddings"),
    _F("rope_parameters.rope_theta", _L, "into the RoPE tables"),
    _F("rope_parameters.factor", _L, "linear and llama3: into the RoPE tables (dynamic: only past "
                                     "max_position_embeddings, where it is refused)"),
    _F("rope_parameters.low_freq_factor", _L, "llama3: into the RoPE tables"),
    _F("rope_parameters.high_freq_factor", _L, "llama3: into the RoPE tables"),
    _F("rope_parameters.original_max_position_embeddings", _L, "llama3: into the RoPE tables"),
    _F("rope_parameters.partial_rotary_factor", _O, "1.0 only: RoPE over part of a head is not lowered"),
    _F("rope_parameters.attention_factor", _I, "yarn and longrope only, which are refused"),
    _F("rope_parameters.beta_fast", _I, "yarn only, which is refused"),
    _F("rope_parameters.beta_slow", _I, "yarn only, which is refused"),
    _F("rope_parameters.mscale", _I, "yarn only, which is refused"),
    _F("rope_parameters.mscale_all_dim", _I, "yarn only, which is refused"),
    _F("rope_parameters.truncate", _I, "yarn only, which is refused"),
    _F("rope_parameters.short_factor", _I, "longrope only, which is refused"),
    _F("rope_parameters.long_factor", _I, "longrope only, which is refused"),
    _F("rope_parameters.mrope_section", _I, "multimodal RoPE of vision-language models; these decoders never "
                                            "read it"),
)}


# Fields transformers' from_pretrained reads, not the forward: they change which weights are loaded.
LOADING_FIELDS: dict[str, FieldRule] = {r.name: r for r in (
    _F("quantization_config", _O, "a quantized checkpoint (fp8, gptq, awq, bitsandbytes, ...): refused, whatever its "
                                  "quant_method", _quantization),
)}

# Fields a checkpoint's config.json must state: transformers' defaults for them describe some 7B model, never
# the checkpoint next to it.
REQUIRED_IN_CHECKPOINT = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size")


def architecture(cfg) -> Architecture:
    mt = getattr(cfg, "model_type", None)
    try:
        return Architecture(mt)
    except ValueError:
        if mt == "ministral" and getattr(cfg, "layer_types", None) is not None:
            # transformers' AutoConfig reads a mistral config.json that sets layer_types as Ministral: the field the
            # user wrote is the one to name
            raise UnsupportedModelError("layer_types", "transformers reads a mistral config that sets layer_types "
                                        "as the ministral architecture, which AMK does not lower; per-layer "
                                        "attention types are lowered for qwen2 and qwen3 (a mistral model windows "
                                        "every layer by sliding_window)") from None
        raise UnsupportedModelError(f"architecture {mt!r}", "supported: llama, mistral, qwen2, qwen3") from None


def config_fields(cfg) -> dict[str, Any]:
    """Every field and extra attribute the config carries, by name (what transformers' to_dict writes)."""
    out = {}
    for k, v in cfg.to_dict().items():
        try:
            out[k] = getattr(cfg, k, v)
        except Exception:  # a heterogeneous config refuses global reads of per-layer fields: take the saved value
            out[k] = v
    return out


def refusals(cfg) -> list[tuple[str, Any, str]]:
    """(field, value, reason) for every field whose value AMK does not lower."""
    arch = architecture(cfg)
    out = []
    for name, value in config_fields(cfg).items():
        rule = FIELDS.get(name) or LOADING_FIELDS.get(name)
        if rule is not None and rule.refuse is not None:
            why = rule.refuse(value, cfg, arch)
            if why:
                out.append((name, value, why))
    return out


# the keywords of transformers 4's PretrainedConfig that the table does not hold (generation, encoder-decoder and
# task fields): a config.json saved whole by transformers 4 carries them, spelt right
TRANSFORMERS_4_BASE_FIELDS = frozenset((
    "add_cross_attention bad_words_ids begin_suppress_tokens cross_attention_hidden_size decoder_start_token_id "
    "diversity_penalty do_sample early_stopping encoder_no_repeat_ngram_size exponential_decay_length_penalty "
    "finetuning_task forced_bos_token_id forced_eos_token_id is_decoder length_penalty max_length min_length "
    "no_repeat_ngram_size num_beam_groups num_beams num_labels num_return_sequences output_scores prefix "
    "pruned_heads remove_invalid_values repetition_penalty return_dict_in_generate sep_token_id suppress_tokens "
    "task_specific_params temperature tf_legacy_loss tie_encoder_decoder tokenizer_class top_k top_p torch_dtype "
    "torchscript typical_p use_bfloat16").split())


def _word_slip(name: str, field: str) -> bool:
    """Whether `name` is `field` with one of its underscore-separated words written another way (`rms_norm_epsilon`
    for `rms_norm_eps`, `rope_thetta` for `rope_theta`): the same number of words, all equal but one, and that one
    either begins with the other (an abbreviation written out, or cut short, of at least three letters) or within
    difflib ratio 0.75 of it. A name with a word more (`transformers_version_note`) is not a slip."""
    import difflib

    a, b = name.split("_"), field.split("_")
    if len(a) != len(b):
        return False
    odd = [(x, y) for x, y in zip(a, b) if x != y]
    if len(odd) != 1:
        return False
    x, y = odd[0]
    short, long_ = sorted((x, y), key=len)
    return (len(short) >= 3 and long_.startswith(short)) or difflib.SequenceMatcher(None, x, y).ratio() >= 0.75


def misspelt_fields(cfg) -> list[tuple[str, str]]:
    """(name, likely meant) for each name the config carries that neither the table nor transformers knows but
    that is a near spelling of a field in the table: within difflib ratio 0.85 of it and at most two letters
    longer or shorter, or the field with one word written another way (_word_slip). Transformers stores such a
    name and reads it nowhere, so the value the user meant is left at its default. Nothing is refused for it."""
    import difflib

    known = set(FIELDS) | set(LOADING_FIELDS)
    out = []
    for name in config_fields(cfg):
        if name in known or name in TRANSFORMERS_4_BASE_FIELDS or "." in name:
            continue
        # a slip of a letter or two, not a name that extends a field (`transformers_version_note`)
        close = [m for m in difflib.get_close_matches(name, known, n=3, cutoff=0.85) if abs(len(m) - len(name)) <= 2]
        close = close or sorted(m for m in known if _word_slip(name, m))
        if close:
            out.append((name, close[0]))
    return out


def unread_fields(cfg) -> list[str]:
    """Each name the config carries that neither the table nor transformers knows and that is no near spelling of a
    field (misspelt_fields names those): transformers stores it and reads it nowhere, and neither does AMK. Listed
    so that a field meant for another tool, or a field of a newer transformers, is seen to be passed over. A name
    starting with an underscore is a loader's own metadata (a GGUF conversion's _model_name_or_path), not listed.
    Nothing is refused for it."""
    known = set(FIELDS) | set(LOADING_FIELDS)
    misspelt = {name for name, _ in misspelt_fields(cfg)}
    return [name for name in config_fields(cfg) if name not in known and name not in TRANSFORMERS_4_BASE_FIELDS
            and "." not in name and not name.startswith("_") and name not in misspelt]


def check_config(cfg) -> Architecture:
    """Raise UnsupportedModelError naming every field whose value AMK does not lower; return the family."""
    arch = architecture(cfg)
    bad = refusals(cfg)
    if bad:
        raise UnsupportedModelError(", ".join(f"{n}={v!r}" for n, v, _ in bad), "; ".join(f"{n}: {w}" for n, _, w in bad))
    return arch


def model_dims(cfg) -> ModelDims:
    """ModelDims of a transformers config. Raises UnsupportedModelError for a field value AMK does not lower
    (named), or for a shape the VM's kernels do not take (head_dim and widths multiples of 8, head_dim <= 256,
    q heads a multiple of KV heads)."""
    arch = check_config(cfg)
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    if n_heads % n_kv:
        raise UnsupportedModelError(f"num_key_value_heads={n_kv}", f"must divide num_attention_heads={n_heads}: "
                                    "each KV head serves a whole group of q heads")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    if head_dim % 8 or head_dim > 256:
        raise UnsupportedModelError(f"head_dim={head_dim}", "must be a multiple of 8, at most 256")
    for name in ("hidden_size", "intermediate_size"):
        if getattr(cfg, name) % 8:  # the kernels read weight rows in 16-byte vectors
            raise UnsupportedModelError(f"{name}={getattr(cfg, name)}", "must be a multiple of 8")
    return ModelDims(
        arch=arch,
        hidden=cfg.hidden_size,
        intermediate=cfg.intermediate_size,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab=cfg.vocab_size,
        rms_eps=float(cfg.rms_norm_eps),
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        qkv_bias=arch == Architecture.QWEN2,  # Llama/Qwen3 with attention_bias are refused (its o_proj bias)
        qk_norm=arch == Architecture.QWEN3,
        max_positions=int(getattr(cfg, "max_position_embeddings", 2048)),
        windows=layer_windows(cfg, arch),
    )


# --- the walk over the installed transformers: what the table must classify ---------------------------------

CONFIG_CLASSES = {Architecture.LLAMA: "LlamaConfig", Architecture.MISTRAL: "MistralConfig",
                  Architecture.QWEN2: "Qwen2Config", Architecture.QWEN3: "Qwen3Config"}
# the code a decode step runs besides the modeling file: masks, the KV cache, RoPE
SHARED_MODULES = ("transformers.masking_utils", "transformers.cache_utils", "transformers.modeling_rope_utils")
_READ = re.compile(r'getattr\(\s*[\w.]*config\w*\s*,\s*"(\w+)"|\b[\w.]*config\.([A-Za-z_]\w*)\b')
_NOT_FIELDS = {"json"}  # "config.json", the file name, in messages and docstrings


def class_fields(cls) -> set[str]:
    """Every field a config class defines: its dataclass fields (transformers 5) or __init__ keywords, and what
    to_dict writes for a default instance."""
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    else:
        names = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    return names | set(cls().to_dict())


@functools.cache
def transformers_reads() -> dict[str, frozenset[str]]:
    """Config attribute name -> the modules of the installed transformers that read it, for the four modeling
    files and SHARED_MODULES (methods of the config class left out)."""
    import transformers
    from transformers import PreTrainedConfig

    modules = [f"transformers.models.{a.value}.modeling_{a.value}" for a in CONFIG_CLASSES] + list(SHARED_MODULES)
    out: dict[str, set[str]] = {}
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"transformers {transformers.__version__} has no {mod}")
        for m in _READ.finditer(Path(spec.origin).read_text()):
            name = m[1] or m[2]
            if name in _NOT_FIELDS or callable(getattr(PreTrainedConfig, name, None)):
                continue
            out.setdefault(name, set()).add(mod.rsplit(".", 1)[1])
    return {k: frozenset(v) for k, v in out.items()}


def unclassified(table: dict[str, FieldRule] | None = None) -> dict[str, set[str]]:
    """Names the installed transformers defines on the four config classes or reads in a decode step that the
    table does not classify, each with where it was found. Empty when the table is complete."""
    import transformers

    table = FIELDS if table is None else table
    found: dict[str, set[str]] = {}
    for cls_name in CONFIG_CLASSES.values():
        for name in class_fields(getattr(transformers, cls_name)):
            found.setdefault(name, set()).add(cls_name)
    for name, where in transformers_reads().items():
        found.setdefault(name, set()).update(where)
    from transformers.modeling_rope_utils import RopeParameters

    for key in typing.get_type_hints(RopeParameters):
        found.setdefault(f"rope_parameters.{key}", set()).add("RopeParameters")
    return {name: where for name, where in sorted(found.items()) if name not in table}
