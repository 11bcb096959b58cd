"""A local checkpoint directory, checked before and after transformers loads it.

Before: config.json parses and states the fields that size the model, each a positive integer; the weight files
exist, every safetensors file is whole (its header parses, each tensor's byte range is the size its shape and dtype
give, and the ranges end exactly at the end of the file), and its tensors hold the layers num_hidden_layers names.
After: transformers loaded every tensor the model has from the checkpoint (none missing and filled by
initialisation, none left over, none of another shape). Every problem is a CheckpointError that names the
file and the field or tensor.

The weight files are picked in weight_files.py (callers import its names from here), and their safetensors
headers read and checked whole in safetensors_header.py.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
from pathlib import Path

from amk.schedule.errors import CheckpointError, UnsupportedModelError

from .fields import FIELDS, LOADING_FIELDS, REQUIRED_IN_CHECKPOINT, normalise_rope_type
from .weight_files import WeightFiles
from .weight_files import weight_files as weight_files

log = logging.getLogger("amk.models")

_SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# the sizing fields whose FIELDS rule is _positive_int: checked on the raw values, since transformers' own parsing
# of a zero fails unnamed (hidden_size % num_attention_heads: "integer modulo by zero"), and a size past the rule's
# maximum (fields.MAX_VOCAB, ...) fails as an allocation of terabytes, or not at all with weights=False
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings")
# a decoder layer's tensors: model.layers.<i>.*, or layers.<i>.* as saved from the base model (transformers adds
# the prefix on loading)
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")


def read_config_json(path: Path) -> dict:
    """config.json of a checkpoint directory as a dict. Raises CheckpointError when it is missing, not JSON, not
    an object, lacks a field that sizes the model (transformers would put the default of another model
    there) or states one as an integer below 1 or past its bound (fields.MAX_VOCAB, MAX_HIDDEN, MAX_INTERMEDIATE),
    or a storage dtype that names no torch dtype,
    and UnsupportedModelError for a model_type AMK does not lower or a quantization_config (before transformers'
    loader quantizes or dequantizes the weights). A value of another type is left to transformers' validation, which
    names the field and the type."""
    file = path / "config.json"
    if not file.is_file():
        if file.exists():  # a directory of that name, a FIFO: not "no config.json"
            raise CheckpointError(file, "is not a regular file (a directory?): a checkpoint's config.json is a JSON "
                                        "file")
        raise CheckpointError(path, "holds no config.json (a checkpoint directory needs config.json and weights)")
    try:
        raw = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(file, f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(file, f"holds a JSON {type(raw).__name__}, not an object")
    if "model_type" in raw and raw["model_type"] not in _SUPPORTED_TYPES:
        raise UnsupportedModelError(f"architecture {raw['model_type']!r}", "supported: " + ", ".join(_SUPPORTED_TYPES))
    quant = raw.get("quantization_config")
    why = LOADING_FIELDS["quantization_config"].refuse(quant, None, None)
    if why:
        raise UnsupportedModelError(f"quantization_config={quant!r}", f"quantization_config: {why}")
    for name in REQUIRED_IN_CHECKPOINT:
        if raw.get(name) is None:
            given = "null" if name in raw else "missing"
            raise CheckpointError(file, f"{given}: transformers would use its class default, the shape of some other "
                                  "model", field=name)
    for name in _POSITIVE_INTS:
        v = raw.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            why = FIELDS[name].refuse(v, None, None)
            if why:
                raise CheckpointError(file, f"{why}, got {v}", field=name)
    _check_storage_dtype(file, raw)
    return raw


def check_layer_count(path: Path, raw: dict, weights: WeightFiles) -> None:
    """Refuse a config.json whose num_hidden_layers differs from the decoder layers the safetensors files hold
    (the distinct <i> of their model.layers.<i>.* tensors), before transformers parses the config or builds a
    model of that many layers: a count far past the weights' would take minutes and gigabytes to fail. Only the
    layer count is compared (the head, the embedding and the norms are check_loading_info's); a .bin checkpoint,
    whose tensor names are not known without loading it, and a count of another type (transformers' validation
    names it) are left as they are."""
    n = raw.get("num_hidden_layers")
    if not weights.keys or not isinstance(n, int) or isinstance(n, bool):
        return
    held = sorted({int(m[1]) for k in weights.keys for m in [_LAYER.match(k)] if m})
    contiguous = not held or held[-1] == len(held) - 1  # 0, 1, ..., k-1 (never a list of n: n may be 10**9)
    if contiguous and len(held) == n:
        return
    if not held:
        what = "no layer tensors (model.layers.<i>.*)"
    elif len(held) == 1:
        what = f"1 layer (model.layers.{held[0]})"
    elif contiguous:
        what = f"{len(held)} layers (model.layers.0 to model.layers.{held[-1]})"
    else:
        shown = ", ".join(map(str, held[:8])) + (f", +{len(held) - 8} more" if len(held) > 8 else "")
        what = f"{len(held)} layers (model.layers.<i> for i in {shown})"
    raise CheckpointError(path / "config.json", f"{n} layers, but the weight files hold {what}",
                          field="num_hidden_layers")


def _check_storage_dtype(file: Path, raw: dict) -> None:
    """CheckpointError naming the field where config.json's `dtype` or `torch_dtype` is a string that names no
    torch dtype: transformers looks it up on the torch module and says only "module 'torch' has no attribute"."""
    import torch

    for key in ("dtype", "torch_dtype"):
        v = raw.get(key)
        # transformers looks the name up on the torch module as it is: "torch.bfloat16" fails there too
        if isinstance(v, str) and v != "auto" and not isinstance(getattr(torch, v, None), torch.dtype):
            raise CheckpointError(file, f"{v!r} is not a torch dtype name (float32, float16, bfloat16, ..., without "
                                  "'torch.')", field=key)


def load_config(path: Path):
    """transformers' config of the directory; its validation errors become CheckpointErrors naming the field. A
    null rope_type reads as the default RoPE, as AMK's rule reads it (fields.normalise_rope_type): the model is to be
    built from this config, not from config.json again."""
    from transformers import AutoConfig

    file = path / "config.json"
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # strict-dataclass validation, bad values: all of them about this one file
        text = str(e)
        m = re.search(r"field '(\w+)'", text)
        raise CheckpointError(file, " ".join(text.split()), field=m[1] if m else None) from None
    normalise_rope_type(cfg)
    return cfg


def _expected_shapes(dims) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Tensor name -> (its shape under config.json, the config fields of each axis), for the Llama-family layout
    (schedule/graph.py ModelDims). An attention axis of heads x head_dim is named by its head count here;
    check_tensor_shapes names head_dim instead where that count divides the tensor's."""
    q, kv = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
    h, i, v = dims.hidden, dims.intermediate, dims.vocab
    out = {"model.embed_tokens.weight": ((v, h), ("vocab_size", "hidden_size")),
           "lm_head.weight": ((v, h), ("vocab_size", "hidden_size")),
           "model.norm.weight": ((h,), ("hidden_size",))}
    for n in range(dims.n_layers):
        a, m = f"model.layers.{n}.self_attn.", f"model.layers.{n}.mlp."
        out.update({
            a + "q_proj.weight": ((q, h), ("num_attention_heads", "hidden_size")),
            a + "k_proj.weight": ((kv, h), ("num_key_value_heads", "hidden_size")),
            a + "v_proj.weight": ((kv, h), ("num_key_value_heads", "hidden_size")),
            a + "o_proj.weight": ((h, q), ("hidden_size", "num_attention_heads")),
            m + "gate_proj.weight": ((i, h), ("intermediate_size", "hidden_size")),
            m + "up_proj.weight": ((i, h), ("intermediate_size", "hidden_size")),
            m + "down_proj.weight": ((h, i), ("hidden_size", "intermediate_size")),
            f"model.layers.{n}.input_layernorm.weight": ((h,), ("hidden_size",)),
            f"model.layers.{n}.post_attention_layernorm.weight": ((h,), ("hidden_size",))})
    return out


def _blamed(field: str, got: int, dims, head_dim_given: bool, nulls: frozenset[str] = frozenset()) -> str:
    """The config field an attention axis of `got` rows contradicts: the axis's own field where config.json gives
    it as null (`nulls`: transformers put a value of its own there), else head_dim where config.json gives one and
    the axis is a whole number of heads of another size, else the head count."""
    if field in nulls:
        return field
    heads = {"num_attention_heads": dims.n_heads, "num_key_value_heads": dims.n_kv_heads}.get(field)
    if heads and head_dim_given and got % heads == 0 and got // heads != dims.head_dim:
        return "head_dim"
    return field


def check_tensor_shapes(path: Path, dims, weights: WeightFiles, head_dim_given: bool = False,
                        nulls: frozenset[str] = frozenset()) -> None:
    """CheckpointError naming config.json's field where a safetensors tensor's shape (read from its file's header,
    no data loaded) is not the one config.json's dimensions give it: config.json edited or from another model.
    `head_dim_given`: config.json sets head_dim (then an attention axis of whole heads of another size names it);
    `nulls`: the fields config.json gives as null (an axis of such a field names it, with the value read for it).
    Found before any lowering, which would otherwise refuse the config's shared memory or tiling for a shape the
    weights do not have. A tensor saved without the `model.` prefix is checked as the model names it. A .bin
    checkpoint (no header) is checked by transformers' loading report instead."""
    held = {model_name: (tuple(weights.headers[name].get("shape") or ()), file, name)
            for model_name, (name, file) in _by_model_name(weights).items()}
    for model_name, (shape, fields) in _expected_shapes(dims).items():  # the first tensor in model order is named
        if model_name not in held or held[model_name][0] == shape:
            continue
        got, file, name = held[model_name]
        axes = [_blamed(f, g, dims, head_dim_given, nulls) for f, g, w in zip(fields, got, shape) if g != w] \
            if len(got) == len(shape) else []
        named = list(dict.fromkeys(fields)) + (["head_dim"] if head_dim_given and "head_dim" in axes else [])
        blamed = axes[0] if axes else fields[0]
        if blamed in nulls:  # not another model: a null transformers filled in
            raise CheckpointError(path / "config.json", f"null, which transformers reads as "
                                  f"{_null_reads(blamed, dims)}: then {name} would be {list(shape)}, but it is "
                                  f"{list(got)} in {file.name}; give the value the weights have", field=blamed)
        raise CheckpointError(path / "config.json", f"{name} is {list(got)} in {file.name}, where config.json's "
                              f"{', '.join(named)} make it {list(shape)}: the config and the weights are of "
                              "different models", field=blamed)


def _null_reads(field: str, dims) -> str:
    """What transformers' config takes for `field` given as null, from the dimensions it produced."""
    value = {"num_key_value_heads": dims.n_kv_heads, "num_attention_heads": dims.n_heads, "head_dim": dims.head_dim,
             "hidden_size": dims.hidden, "intermediate_size": dims.intermediate, "vocab_size": dims.vocab}.get(field)
    return "its default" if value is None else str(value)


# safetensors dtype names ("Format" in the safetensors README) of dense floating-point weights, which transformers
# casts to the dtype asked for; integer, bool and 8-bit (or narrower) float tensors are quantised or not weights
DENSE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def check_tensor_dtypes(dims, weights: WeightFiles) -> None:
    """CheckpointError naming the first tensor whose safetensors dtype is not a dense float (DENSE_DTYPES): the
    model's matrices and norms in model order, then every other tensor of the headers (Qwen2's q/k/v biases,
    Qwen3's q/k norms, a tensor the model does not use) in file order. transformers would cast a bool, integer or
    float8 tensor into the model's dtype without a word, and AMK would run weights of another value than the ones
    saved. A .bin checkpoint (no header) is not checked here: its tensors are cast as they load."""
    by_model = _by_model_name(weights)
    first = [by_model[m][0] for m in _expected_shapes(dims) if m in by_model]
    for name in dict.fromkeys(first + list(weights.keys)):
        dtype = str(weights.headers[name].get("dtype"))
        if dtype not in DENSE_DTYPES:
            raise CheckpointError(weights.keys[name], f"is stored as {dtype}, not a dense float "
                                  f"({', '.join(sorted(DENSE_DTYPES))}): AMK runs dense fp32, fp16 or bf16 weights, "
                                  "and a quantised or integer tensor would be cast without its scales", field=name)


def check_bin_files(weights: WeightFiles) -> None:
    """For a pytorch_model*.bin checkpoint, each .bin file read as transformers reads it (torch.load with
    weights_only, memory-mapped where the file's format allows): CheckpointError naming the file in one line where
    it cannot be read so (random bytes, a pickle of code; torch's own message advises turning weights_only off, which
    runs the file's code) or holds no tensors, and naming the first tensor that is not a dense float, as
    check_tensor_dtypes does for safetensors (transformers would cast a bool, integer or float8 tensor into the
    model's dtype without a word). Read once a process while a file keeps its size and modification time."""
    for f in weights.files:
        if f.suffix == ".bin":
            st = f.stat()
            problem = _bin_problem(str(f), st.st_size, st.st_mtime_ns)
            if problem is not None:
                raise CheckpointError(f, problem[0], field=problem[1])


@functools.lru_cache(maxsize=64)
def _bin_problem(file: str, size: int, mtime_ns: int) -> tuple[str, str | None] | None:
    """(what is wrong, the tensor named or None) for one .bin file, else None; `size` and `mtime_ns` key the
    cache."""
    import torch

    dense = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    try:
        with warnings.catch_warnings():  # torch warns of a pickle's protocol on stderr, under -q too
            warnings.simplefilter("ignore")
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap can only be used" not in str(e):
                    raise
                state = torch.load(file, map_location="cpu", weights_only=True)  # the legacy format, or no zip
    except Exception as e:
        return (f"torch.load(weights_only=True) cannot read it ({type(e).__name__}): it is no PyTorch weight file, or "
                "one that runs code when loaded; save the model again (as safetensors, best)", None)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        return "holds no tensors (no state dict of a model)", None
    for name, t in tensors.items():
        if t.dtype not in dense:
            return (f"is stored as {str(t.dtype).removeprefix('torch.')}, not a dense float (float64, float32, "
                    "float16, bfloat16): AMK runs dense fp32, fp16 or bf16 weights, and a quantised or integer tensor "
                    "would be cast without its scales", name)
    return None


def check_tensors_present(path: Path, cfg, weights: WeightFiles) -> None:
    """CheckpointError naming the checkpoint's file and its first missing tensor where a parameter of the model (as
    transformers names them: the model of `cfg` built on the meta device, no memory) is in no safetensors file:
    transformers would fill it by initialisation. Found from the headers, before any weight loads, so that the
    commands that read no weights (compile, propose, bench without verify) refuse it as evaluate does. A head tied
    to the embedding (tie_word_embeddings) needs no lm_head.weight. A .bin checkpoint (no header) is checked by
    transformers' loading report instead (check_loading_info), and so is a config transformers cannot build."""
    if not weights.keys:
        return
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception as e:  # transformers' own load names the problem
        log.debug("%s: no meta model to list its parameters (%s: %s)", path, type(e).__name__, e)
        return
    tied = getattr(model, "_tied_weights_keys", None) or ()
    tied = set(tied) if getattr(cfg, "tie_word_embeddings", False) else set()
    held = _by_model_name(weights)
    missing = [n for n in model.state_dict() if n not in held and n not in tied]
    if missing:
        shown = ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        where = weights.files[0] if len(weights.files) == 1 else path
        raise CheckpointError(where, f"{len(missing)} tensor(s) not in the checkpoint; transformers would fill them "
                                     f"by initialisation: {shown}", field=missing[0])


def _by_model_name(weights: WeightFiles) -> dict[str, tuple[str, Path]]:
    """The name each safetensors tensor has in the causal LM -> (its name in the file, the file). A checkpoint saved
    from the base model names its tensors without the `model.` prefix (layers.0..., embed_tokens.weight), which
    transformers adds on loading; a name the file holds with the prefix wins over the same name without it."""
    out: dict[str, tuple[str, Path]] = {}
    for name, file in weights.keys.items():
        if name.startswith(("model.", "lm_head.")):
            out[name] = (name, file)
        else:
            out.setdefault("model." + name, (name, file))
    return out


def _find(keys: dict[str, Path], suffix: str) -> str | None:
    hits = [k for k in keys if k == suffix or k.endswith("." + suffix)]
    return hits[0] if len(hits) == 1 else None


def head_is_tied(cfg, weights: WeightFiles) -> bool:
    """Whether transformers will tie the LM head to the embedding for this checkpoint: when the config asks for
    it, unless the checkpoint stores an lm_head.weight that differs from the embedding (transformers then keeps
    both, untied). For a .bin checkpoint (no header to read) the flag stands until the loaded module is seen."""
    flag = bool(getattr(cfg, "tie_word_embeddings", False))
    head = _find(weights.keys, "lm_head.weight")
    if not flag or head is None:
        return flag
    embed = _find(weights.keys, "embed_tokens.weight")
    if embed is None:
        return False
    from safetensors import safe_open

    with safe_open(weights.keys[head], "pt") as a, safe_open(weights.keys[embed], "pt") as b:
        ta, tb = a.get_tensor(head), b.get_tensor(embed)
    return ta.shape == tb.shape and bool((ta == tb).all())


def check_loading_info(path: Path, info: dict, weights: WeightFiles) -> None:
    """Refuse what transformers' from_pretrained(output_loading_info=True) reports: tensors it filled by
    initialisation (missing), tensors of the checkpoint it did not use (unexpected), and shape mismatches."""
    where = weights.files[0] if len(weights.files) == 1 else path
    for kind, why in (("missing_keys", "not in the checkpoint; transformers would fill them by initialisation"),
                      ("unexpected_keys", "in the checkpoint but not parameters of the model"),
                      ("mismatched_keys", "of another shape than the model's")):
        # mismatched entries are (name, checkpoint shape, model shape)
        names = sorted(k if isinstance(k, str) else f"{k[0]} {tuple(k[1])} vs the model's {tuple(k[2])}"
                       for k in info.get(kind) or ())
        if names:
            shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
            raise CheckpointError(where, f"{len(names)} tensor(s) {why}: {shown}", field=names[0].split(" ")[0])
    errors = info.get("error_msgs") or []
    if errors:
        raise CheckpointError(where, "transformers reported: " + "; ".join(map(str, errors[:3])))


def check_finite(path: Path, module) -> None:
    """Refuse weights holding NaN or Inf in the dtype they were loaded in (CheckpointError naming the first such
    tensor): no output computed from them is finite, transformers' reference included, so no config could verify
    on them. A value past fp16's range (65504) becomes Inf when an fp32 or bf16 checkpoint loads as fp16."""
    import torch

    for name, p in module.named_parameters():
        bad = ~torch.isfinite(p) if p.is_floating_point() else None
        if bad is not None and bool(bad.any()):
            hint = (": fp16 holds values up to 65504, and larger ones load as Inf; the checkpoint may be finite as "
                    "bf16 or fp32" if p.dtype == torch.float16 else "")
            raise CheckpointError(path, f"{int(bad.sum())} of {p.numel()} values are NaN or Inf as "
                                  f"{str(p.dtype).removeprefix('torch.')}{hint}", field=name)
