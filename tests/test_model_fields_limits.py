"""What load_model refuses by name before any work, and what it no longer fails on unnamed: a quantization_config
(once loaded silently as if dense: transformers dequantized it on CPU, its warning off), sizes far past any model
(vocab_size 10**9 once loaded with weights=False and later blamed the user's empty schedule config:
"$.matvec.lm_head.rows_per_task: must be <= 1048576"), a null rope_type (once "KeyError: None" naming nothing;
AMK's rule reads it as the default RoPE, and so does the loader now), and the seed and device arguments (once a
raw ValueError or RuntimeError, or a negative seed taken)."""

from __future__ import annotations

import json

import pytest
import torch
from _checkpoints import SMALL, bench_shapes, forbid_transformers, llama
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.models.checkpoint import read_config_json
from amk.models.fields import MAX_HIDDEN, MAX_INTERMEDIATE, MAX_VOCAB
from amk.schedule.errors import ArgumentError, CheckpointError, EnvironmentProblem, UnsupportedModelError
from amk.schedule.graph import ModelDims


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return llama(tmp_path_factory.mktemp("base") / "ckpt")


def _variant(src, dst, **fields):
    """A copy of checkpoint `src` at `dst` with config.json fields set (None: removed)."""
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(fields)
    (dst / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return dst


# ---- 1. quantization_config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("quant", [
    {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 16]},
    {"quant_method": "nonsense"},
])
def test_a_quantization_config_is_refused_by_name_before_weights_load(checkpoint, tmp_path, monkeypatch, quant,
                                                                       weights):
    path = _variant(checkpoint, tmp_path / "q", quantization_config=quant)
    built = forbid_transformers(monkeypatch, config=False)
    with pytest.raises(UnsupportedModelError, match="quantization_config") as e:
        amk.load_model(path, weights=weights)
    assert f"quant_method={quant['quant_method']!r}" in str(e.value)
    assert "fp32, fp16 or bf16" in str(e.value)
    assert built == []


def test_a_quantization_config_is_refused_by_the_field_rules_too():
    # a config that reaches model_dims without config.json (a built-in, a config object) is refused the same way
    from transformers import LlamaConfig

    cfg = LlamaConfig(**SMALL, num_hidden_layers=1)
    cfg.quantization_config = {"quant_method": "fp8"}
    with pytest.raises(UnsupportedModelError, match="quantization_config.*quant_method='fp8'"):
        ModelDims.from_hf_config(cfg)


def test_a_null_quantization_config_loads(checkpoint, tmp_path):
    path = _variant(checkpoint, tmp_path / "q")
    raw = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**raw, "quantization_config": None}))
    assert amk.load_model(path, weights=False).dims.vocab == SMALL["vocab_size"]


# ---- 2. sizes past any model --------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize(("field", "value", "bound"), [
    ("vocab_size", 10**9, MAX_VOCAB),
    ("intermediate_size", 10**30, MAX_INTERMEDIATE),
    ("hidden_size", 2**40, MAX_HIDDEN),
    ("vocab_size", MAX_VOCAB + 1, MAX_VOCAB),
    ("num_attention_heads", 10**12, MAX_HIDDEN),  # transformers' own refusal named no field
    ("num_key_value_heads", 10**12, MAX_HIDDEN),
])
def test_a_size_past_its_bound_is_refused_by_name_at_load(checkpoint, tmp_path, monkeypatch, field, value, bound,
                                                          weights):
    path = _variant(checkpoint, tmp_path / "big", **{field: value})
    built = forbid_transformers(monkeypatch, config=False)
    with pytest.raises(CheckpointError) as e:
        amk.load_model(path, weights=weights)
    assert e.value.field == field
    assert f"must be at most {bound}" in str(e.value) and str(value) in str(e.value)
    assert built == []


@pytest.mark.parametrize("pad", [256, 10**6, -257])
def test_a_pad_token_outside_the_vocabulary_is_refused_by_name(checkpoint, tmp_path, pad):
    # nn.Embedding asserts on such a padding_idx ("Padding_idx must be within num_embeddings"), naming no field
    vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
    path = _variant(checkpoint, tmp_path / "pad", pad_token_id=pad + (vocab - 256 if pad == 256 else 0))
    with pytest.raises(UnsupportedModelError) as e:
        amk.load_model(path, weights=False)
    assert "pad_token_id" in str(e.value) and "vocab" in str(e.value)
    amk.load_model(_variant(checkpoint, tmp_path / "pad_ok", pad_token_id=vocab - 1), weights=False)


def test_the_bounds_keep_derived_row_tiling_within_the_knob():
    # the bounds' reason (fields.py): every derived rows_per_task stays within the knob's maximum
    import dataclasses

    from amk.schedule.config import RowTiling

    knob_max = next(f for f in dataclasses.fields(RowTiling) if f.name == "rows_per_task").metadata["maximum"]
    assert MAX_INTERMEDIATE <= knob_max and MAX_HIDDEN <= knob_max and MAX_VOCAB <= 4 * knob_max


@pytest.mark.parametrize("cls", ["LlamaConfig", "Qwen2Config"])
@pytest.mark.parametrize(("vocab", "hidden", "intermediate"), [
    (151936, 3584, 18944),  # qwen2.5-7b
    (152064, 8192, 29568),  # qwen2.5-72b
    (128256, 16384, 53248),  # llama-3.1-405b
    (MAX_VOCAB, MAX_HIDDEN, MAX_INTERMEDIATE),  # the bounds themselves
])
def test_real_and_boundary_sizes_pass(tmp_path, cls, vocab, hidden, intermediate):
    import transformers

    cfg = getattr(transformers, cls)(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                     num_attention_heads=hidden // 128, num_key_value_heads=4, num_hidden_layers=2)
    dims = ModelDims.from_hf_config(cfg)
    assert (dims.vocab, dims.hidden, dims.intermediate) == (vocab, hidden, intermediate)
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    assert read_config_json(tmp_path)["vocab_size"] == vocab


def test_every_public_bench_shape_passes():
    import transformers

    for name, (cls, fields) in bench_shapes().SHAPES.items():
        assert ModelDims.from_hf_config(getattr(transformers, cls)(**fields)).vocab == fields["vocab_size"], name


# ---- 3. a null rope_type ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def null_rope(checkpoint, tmp_path_factory):
    return _variant(checkpoint, tmp_path_factory.mktemp("rope") / "ckpt",
                    rope_parameters={"rope_type": None, "rope_theta": 10000.0})


def test_a_null_rope_type_loads_as_the_default_rope(checkpoint, null_rope, tmp_path):
    default = _variant(checkpoint, tmp_path / "default", rope_parameters={"rope_type": "default",
                                                                          "rope_theta": 10000.0})
    m = amk.load_model(null_rope)
    ref = amk.load_model(default)
    assert m.hf_config.rope_parameters["rope_type"] == "default"
    assert m.eager.model.rotary_emb.rope_type == "default"
    ids = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(m.eager(ids).logits, ref.eager(ids).logits)
    assert m.dims == ref.dims
    assert amk.load_model(null_rope, weights=False).hf_config.rope_parameters["rope_type"] == "default"


def test_a_null_rope_type_with_a_refused_legacy_type_is_refused_by_name(checkpoint, tmp_path):
    # `type` is what a null rope_type falls back to, in AMK's rule and the loader alike
    path = _variant(checkpoint, tmp_path / "yarn", rope_parameters={"rope_type": None, "type": "yarn",
                                                                    "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(UnsupportedModelError, match="rope_type='yarn'"):
        amk.load_model(path, weights=False)


# ---- 4. seed and device -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["a", -1, True, 1.0, None, 2**63])
def test_a_bad_seed_is_an_argument_error_before_any_work(monkeypatch, seed):
    built = forbid_transformers(monkeypatch, config=False)
    with pytest.raises(ArgumentError) as e:
        amk.load_model("toy", seed=seed)
    assert e.value.argument == "seed"
    assert built == []


@pytest.mark.parametrize("device", ["bogus", "CPU", "cuda:x", "", None, 0, "cuda:-1", "auto"])
def test_a_bad_device_is_an_argument_error_before_any_work(monkeypatch, device):
    built = forbid_transformers(monkeypatch, config=False)
    with pytest.raises(ArgumentError) as e:
        amk.load_model("toy", device=device)
    assert e.value.argument == "device"
    assert "cpu, cuda, cuda:<index>" in str(e.value)
    assert built == []


def test_good_seeds_and_devices_load():
    assert amk.load_model("toy", seed=2**63 - 1, weights=False).seed == 2**63 - 1
    assert amk.load_model("toy", seed=7, device=torch.device("cpu")).device == "cpu"
    # without weights the device only labels the model
    assert amk.load_model("toy", device="cuda:1", weights=False).device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_environment_problem(monkeypatch):
    built = forbid_transformers(monkeypatch, config=False)
    with pytest.raises(EnvironmentProblem, match="device 'cuda'"):
        amk.load_model("toy", device="cuda")
    assert built == []
