"""Checkpoint contents refused by name before transformers turns them into something else: a bool, integer or
8-bit float tensor whatever its name (a Qwen2 bias, a Qwen3 q/k norm, a tensor saved without the `model.` prefix),
a llama3 RoPE factor transformers cannot build tables from, a Qwen2 `head_dim: null`, a sliding layer whose window
use_sliding_window drops, and a safetensors header whose shape disagrees with its own byte range. Each checkpoint
is saved by transformers (seeded, hidden 64, 2 layers) and edited the way a broken one arrives."""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest
import torch
from _checkpoints import SMALL, edit_tensors, save_checkpoint

import amk
from amk.models.checkpoint import load_config
from amk.models.rope_notes import rope_notes
from amk.schedule.errors import CheckpointError, UnsupportedModelError

BASE = dict(**SMALL, num_hidden_layers=2, max_position_embeddings=128)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One checkpoint a family, saved once for the module (copied before a test edits one)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    root = tmp_path_factory.mktemp("saved")
    return {"llama": save_checkpoint(LlamaConfig(**BASE), root / "llama"),
            "llama3": save_checkpoint(LlamaConfig(**BASE, rope_parameters=dict(LLAMA3)), root / "llama3"),
            "mistral": save_checkpoint(MistralConfig(**BASE), root / "mistral"),
            "qwen2": save_checkpoint(Qwen2Config(**BASE), root / "qwen2"),
            "qwen3": save_checkpoint(Qwen3Config(**BASE, head_dim=16), root / "qwen3")}


def _copy(saved, tmp_path, which: str):
    return shutil.copytree(saved[which], tmp_path / which)


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))  # NaN and Infinity as json writes them, as transformers reads
    return path


def _header(file):
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def _unprefixed(sd):
    # a save of the base model: its tensors without `model.`, which transformers adds on loading
    for k in list(sd):
        sd[k.removeprefix("model.")] = sd.pop(k)


# ---- tensors stored as bool, integers or 8-bit floats ----------------------------------------------------------

_Q_BIAS = "model.layers.0.self_attn.q_proj.bias"
_K_BIAS = "model.layers.0.self_attn.k_proj.bias"
_Q_NORM = "model.layers.0.self_attn.q_norm.weight"
_K_NORM = "model.layers.1.self_attn.k_norm.weight"
_UP = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("which, name, cast, stored, unprefix", [
    ("qwen2", _Q_BIAS, lambda t: (t * 100).round().to(torch.int32), "I32", False),
    ("qwen2", _K_BIAS, lambda t: t.to(torch.float8_e4m3fn), "F8_E4M3", False),
    ("qwen3", _Q_NORM, lambda t: torch.full_like(t, 3).to(torch.int8), "I8", False),
    ("qwen3", _K_NORM, lambda t: torch.ones_like(t).bool(), "BOOL", False),
    ("llama", _UP, lambda t: (t * 100).round().clamp(-127, 127).to(torch.int8), "I8", True),
], ids=["qwen2-q-bias-i32", "qwen2-k-bias-f8", "qwen3-q-norm-i8", "qwen3-k-norm-bool", "llama-unprefixed-up-i8"])
def test_a_tensor_not_stored_as_a_dense_float_is_refused_whatever_its_name(saved, tmp_path, which, name, cast,
                                                                           stored, unprefix):
    from transformers import AutoModelForCausalLM

    path = _copy(saved, tmp_path, which)

    def edit(sd):
        sd[name] = cast(sd[name])
        if unprefix:
            _unprefixed(sd)

    edit_tensors(path, edit)
    in_file = name.removeprefix("model.") if unprefix else name
    assert _header(path / "model.safetensors")[in_file]["dtype"] == stored
    # the reference: transformers loads it, the tensor cast to the model's dtype and no word said
    eager = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert eager.state_dict()[name].dtype == torch.float32
    for weights in (False, True):
        with pytest.raises(CheckpointError) as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == in_file and e.value.path == str(path / "model.safetensors")
        assert f"is stored as {stored}, not a dense float" in str(e.value)


def test_a_base_model_save_is_shape_checked_by_the_names_transformers_gives_it(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    clean = _copy(saved, tmp_path, "llama")
    edit_tensors(clean, _unprefixed)
    reference = AutoModelForCausalLM.from_pretrained(saved["llama"], dtype=torch.float32)
    model = amk.load_model(clean)
    got, want = model.eager.state_dict(), reference.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    reshaped = shutil.copytree(clean, tmp_path / "reshaped")
    edit_tensors(reshaped, lambda sd: sd.__setitem__("layers.0.mlp.up_proj.weight", torch.zeros(96, 64)))
    with pytest.raises(CheckpointError) as e:
        amk.load_model(reshaped, weights=False)
    # named before any model is built, by the config field that sizes the tensor, as for a prefixed name
    assert e.value.field == "intermediate_size" and e.value.path == str(reshaped / "config.json")
    assert "layers.0.mlp.up_proj.weight is [96, 64] in model.safetensors" in str(e.value)


# ---- a safetensors header that contradicts itself --------------------------------------------------------------


def test_a_header_shape_that_disagrees_with_its_byte_range_is_named_corrupt(saved, tmp_path):
    from safetensors import SafetensorError, safe_open

    path = _copy(saved, tmp_path, "llama")
    file = path / "model.safetensors"
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    begin, end = header[_UP]["data_offsets"]
    assert end - begin == 128 * 64 * 4
    header[_UP]["shape"] = [64, 64]  # its data_offsets still span 128 x 64 F32
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # the header's length kept: the data after it stays where it was
    assert len(text) == n
    file.write_bytes(struct.pack("<Q", n) + text + raw[8 + n:])
    # the reference: the safetensors library refuses the file itself
    with pytest.raises(SafetensorError):
        with safe_open(file, "pt") as f:
            f.get_tensor(_UP)
    for weights in (False, True):
        with pytest.raises(CheckpointError) as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == _UP and e.value.path == str(file)
        assert "corrupt" in str(e.value) and "[64, 64]" in str(e.value) and str(end - begin) in str(e.value)
        assert "intermediate_size" not in str(e.value) and "different models" not in str(e.value)


# ---- llama3 RoPE factors ---------------------------------------------------------------------------------------


def test_llama3_factors_transformers_cannot_build_tables_from_are_refused_by_name(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    # the reference: a zero factor fails inside transformers naming no field; a NaN one gives NaN tables
    zero = _edit_config(_copy(saved, tmp_path, "llama3"), lambda c: c["rope_parameters"].update(low_freq_factor=0.0))
    with pytest.raises(ZeroDivisionError):
        AutoModelForCausalLM.from_pretrained(zero)
    nan = _edit_config(shutil.copytree(saved["llama3"], tmp_path / "nan"),
                       lambda c: c["rope_parameters"].update(low_freq_factor=math.nan))
    rotary = AutoModelForCausalLM.from_pretrained(nan).model.rotary_emb
    assert not torch.isfinite(rotary(torch.zeros(1), torch.arange(4)[None])[0]).all()

    for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        for value in (math.nan, math.inf, 0, -1.0):
            path = _edit_config(shutil.copytree(saved["llama3"], tmp_path / f"{key}-{value}"),
                                lambda c, kv={key: value}: c["rope_parameters"].update(kv))
            with pytest.raises(UnsupportedModelError) as e:
                amk.load_model(path, weights=False)
            assert f"{key}={value!r}: llama3 RoPE scaling needs a positive, finite number" in str(e.value), str(e.value)

    # equal factors leave transformers' interpolation band empty: its tables are finite, and AMK runs them
    equal = _edit_config(shutil.copytree(saved["llama3"], tmp_path / "equal"),
                         lambda c: c["rope_parameters"].update(low_freq_factor=2.0, high_freq_factor=2.0))
    model = amk.load_model(equal)
    reference = AutoModelForCausalLM.from_pretrained(equal, dtype=torch.float32).model.rotary_emb
    args = (torch.zeros(1), torch.arange(8)[None])
    assert torch.equal(model.eager.model.rotary_emb(*args)[0], reference(*args)[0])


def test_a_nan_rope_value_transformers_keeps_is_no_replaced_value(saved, tmp_path):
    path = _edit_config(_copy(saved, tmp_path, "llama3"), lambda c: (c["rope_parameters"].update(
        low_freq_factor=math.nan), c.update(rope_theta=500.0)))
    raw = json.loads((path / "config.json").read_text())
    cfg = load_config(path)
    assert math.isnan(cfg.rope_parameters["low_freq_factor"])  # transformers runs the NaN written
    notes = rope_notes(raw, cfg)
    assert not any("low_freq_factor" in n for n in notes), notes
    # a value transformers does replace is still noted: the top-level rope_theta beside rope_parameters' own
    assert any(n.startswith("config.json gives rope_theta = 500.0, but transformers runs rope_parameters.rope_theta "
                            "= 10000.0") for n in notes), notes


# ---- head_dim: null ---------------------------------------------------------------------------------------------


def test_a_null_head_dim_is_refused_where_transformers_attention_reads_the_null(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    qwen2 = _edit_config(_copy(saved, tmp_path, "qwen2"), lambda c: c.update(head_dim=None))
    # the reference: Qwen2Attention takes getattr(config, "head_dim", hidden // heads), the null, and fails
    with pytest.raises(TypeError):
        AutoModelForCausalLM.from_pretrained(qwen2)
    for weights in (False, True):
        with pytest.raises(UnsupportedModelError) as e:
            amk.load_model(qwen2, weights=weights)
        assert "head_dim=None" in str(e.value) and "head_dim: null" in str(e.value)

    # Llama's and Mistral's configs replace the null by hidden // heads, and AMK loads them as transformers does
    for which in ("llama", "mistral"):
        path = _edit_config(_copy(saved, tmp_path, which), lambda c: c.update(head_dim=None))
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = amk.load_model(path)
        assert model.dims.head_dim == reference.model.layers[0].self_attn.head_dim == 16


# ---- a sliding layer whose window use_sliding_window drops ------------------------------------------------------


def test_a_sliding_layer_without_use_sliding_window_names_use_sliding_window(saved, tmp_path):
    path = _edit_config(_copy(saved, tmp_path, "qwen2"), lambda c: c.update(
        use_sliding_window=False, sliding_window=8, layer_types=["sliding_attention", "full_attention"]))
    # the reference: Qwen2Config drops the window config.json gives, since use_sliding_window is false
    assert json.loads((path / "config.json").read_text())["sliding_window"] == 8
    assert load_config(path).sliding_window is None
    with pytest.raises(UnsupportedModelError) as e:
        amk.load_model(path, weights=False)
    assert "layer 0 is 'sliding_attention' but use_sliding_window is false" in str(e.value)
    assert "sets no sliding_window" not in str(e.value)
