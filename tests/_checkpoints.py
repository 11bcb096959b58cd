"""Small checkpoints built the way bug reports build them: seeded random weights, save_pretrained to a
directory, loaded back by path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)

# one checkpoint for each warp layout of the partition attention's shared-memory path (vm/attention_partitions.cuh
# partial_warp_heads): name -> LlamaConfig fields, by q heads a KV head (G) and head_dim
ATTENTION_WARP_SHAPES = {
    "g16-hd16": dict(hidden_size=256, num_attention_heads=16, num_key_value_heads=1),  # one warp a q head
    "g32-hd16": dict(hidden_size=512, num_attention_heads=32, num_key_value_heads=1),  # two q heads a warp
    "g20-hd16": dict(hidden_size=320, num_attention_heads=20, num_key_value_heads=1),  # block-wide tiles of 7, 7, 6
    "g2-hd96": dict(hidden_size=192, num_attention_heads=2, num_key_value_heads=1),  # 12 or 24 vectors a row
    "g2-hd128": dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1),  # 16 or 32 vectors a row
    "g1-hd256": dict(hidden_size=512, num_attention_heads=2, num_key_value_heads=2),  # 32 or 64 vectors a row
}
# block-wide tiles whose value-reduction scratch (warps x 8 heads x head_dim) is most of the task's shared memory:
# lowered only since schedule/smem.py reserves it a tile of q heads, not the whole group (GPU tests only)
TILE_SCRATCH_SHAPES = {"g16-hd128": dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=1)}


def save_checkpoint(cfg, path: Path, seed: int = 0) -> Path:
    """A model of `cfg` with seeded random weights (norms perturbed, so a dropped norm shows), saved to `path`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.weight.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    return path


def mistral_window(path: Path, window: int = 8, layers: int = 1, max_pos: int = 64) -> Path:
    from transformers import MistralConfig

    cfg = MistralConfig(**SMALL, num_hidden_layers=layers, max_position_embeddings=max_pos, sliding_window=window)
    return save_checkpoint(cfg, path)


def qwen2_window(path: Path, window: int = 8, max_pos: int = 64) -> Path:
    """Two layers, the second one sliding (max_window_layers=1)."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(**SMALL, num_hidden_layers=2, max_position_embeddings=max_pos, use_sliding_window=True,
                      sliding_window=window, max_window_layers=1)
    return save_checkpoint(cfg, path)


def edit_tensors(path: Path, fn) -> None:
    """Rewrite the checkpoint's model.safetensors after `fn` edits its state dict in place."""
    from safetensors.torch import load_file, save_file

    file = path / "model.safetensors"
    sd = load_file(file)
    fn(sd)
    save_file(sd, file, metadata={"format": "pt"})


def llama(path: Path, **kw) -> Path:
    from transformers import LlamaConfig

    return save_checkpoint(LlamaConfig(**{**SMALL, "num_hidden_layers": 1, "max_position_embeddings": 64, **kw}), path)


def attention_warp_shape(path: Path, name: str) -> Path:
    """One layer of ATTENTION_WARP_SHAPES[name] (or TILE_SCRATCH_SHAPES[name]), 256 positions."""
    return llama(path, intermediate_size=128, vocab_size=256, max_position_embeddings=256,
                 **{**ATTENTION_WARP_SHAPES, **TILE_SCRATCH_SHAPES}[name])


def with_windows(model, windows: tuple[int, ...]):
    """The same model with other per-layer windows: what a lowering that got the window wrong would run."""
    from amk.schedule.graph import build_graph

    dims = dataclasses.replace(model.dims, windows=windows)
    return dataclasses.replace(model, dims=dims, graph=build_graph(dims))


def bench_shapes():
    """The bench/shapes.py module (a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_shapes", Path(__file__).parents[1] / "bench" / "shapes.py")
    shapes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shapes)
    return shapes


def public_shape(name: str, dtype: str, device: str = "cuda"):
    """A public Llama-family shape of bench/shapes.py, dimensions only (no weights): enough to lower and build."""
    import transformers

    from amk.models.registry import Model, resolve_dtype
    from amk.schedule.graph import ModelDims, build_graph

    cls, fields = bench_shapes().SHAPES[name]
    cfg = getattr(transformers, cls)(**fields)
    dims = ModelDims.from_hf_config(cfg)
    return Model(name, dims, build_graph(dims), resolve_dtype(dtype), cfg, None, None, "path", 0, name, device)


def forbid_transformers(monkeypatch, config: bool = True) -> list[str]:
    """From here on, records (and refuses) every way transformers would build a model or load weights, and parse the
    config too where `config`; returns the list the refused calls are recorded in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    calls: list[str] = []

    def refuse(what):
        def call(*a, **k):
            calls.append(what)
            raise AssertionError(f"{what} called")
        return call

    if config:
        monkeypatch.setattr(AutoConfig, "from_pretrained", refuse("AutoConfig.from_pretrained"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse("AutoModelForCausalLM.from_pretrained"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", refuse("AutoModelForCausalLM.from_config"))
    return calls
