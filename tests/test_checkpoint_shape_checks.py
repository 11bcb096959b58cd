"""A config.json that does not describe its weights, refused by name before transformers parses it or builds a
model: num_hidden_layers against the layers the safetensors files hold (a count of a million once took minutes
and gigabytes inside LlamaModel.__init__), and sizing fields below 1 (num_attention_heads 0 once failed as
transformers' unnamed "integer modulo by zero")."""

from __future__ import annotations

import json
import time

import pytest
import torch
from _checkpoints import SMALL, edit_tensors, forbid_transformers, llama, qwen2_window
from _cli import cli_json_err

import amk
from amk.schedule.errors import CheckpointError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))


def _set(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(fields)
    (path / "config.json").write_text(json.dumps(cfg))
    return path




# ---- num_hidden_layers against the layers the weights hold ----------------------------------------------------


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("layers", [2, 1_000_000])
def test_more_layers_than_the_weights_hold_are_refused_before_any_model(tmp_path, monkeypatch, layers, weights):
    path = _set(llama(tmp_path / "ckpt"), num_hidden_layers=layers)
    nothing_built = forbid_transformers(monkeypatch)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="the weight files hold 1 layer") as e:
        amk.load_model(path, weights=weights)
    assert time.monotonic() - start < 10
    assert e.value.path == str(path / "config.json") and e.value.field == "num_hidden_layers"
    assert f"num_hidden_layers: {layers} layers" in str(e.value)
    assert nothing_built == []


def test_a_qwen2_config_of_a_million_layers_is_refused_before_transformers_parses_it(tmp_path, monkeypatch):
    # Qwen2's config builds a layer_types list per layer: parsing a million takes seconds, a billion gigabytes
    path = qwen2_window(tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("layer_types", None)
    (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1_000_000}))
    nothing_built = forbid_transformers(monkeypatch)
    for weights in (False, True):
        with pytest.raises(CheckpointError, match=r"hold 2 layers \(model.layers.0 to model.layers.1\)") as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == "num_hidden_layers" and e.value.path.endswith("config.json")
    assert nothing_built == []


def test_the_layer_count_is_compared_without_a_list_of_that_many(tmp_path):
    from amk.models.checkpoint import check_layer_count, read_config_json, weight_files

    path = _set(llama(tmp_path / "ckpt"), num_hidden_layers=10**12)
    with pytest.raises(CheckpointError, match="hold 1 layer"):
        check_layer_count(path, read_config_json(path), weight_files(path))


def test_fewer_layers_than_the_weights_hold_are_refused_by_count(tmp_path):
    # weights=True refused it before too, by its unexpected tensors, but only after building the model
    path = _set(llama(tmp_path / "ckpt", num_hidden_layers=2), num_hidden_layers=1)
    for weights in (False, True):
        with pytest.raises(CheckpointError, match="1 layers, but the weight files hold 2 layers") as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == "num_hidden_layers"


def test_a_layer_missing_from_the_middle_is_refused_with_the_indices_held(tmp_path):
    path = llama(tmp_path / "ckpt", num_hidden_layers=3)
    edit_tensors(path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("model.layers.1.")])
    for weights in (False, True):
        with pytest.raises(CheckpointError, match=r"hold 2 layers \(model.layers.<i> for i in 0, 2\)") as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == "num_hidden_layers"


def test_compile_reports_a_layer_count_the_weights_lack_as_a_usage_error(tmp_path, capsys):
    path = _set(llama(tmp_path / "ckpt"), num_hidden_layers=2)
    code, obj, err = cli_json_err(capsys, "compile", "--model", str(path), "--gpu", "cpu-sim", "--out",
                          str(tmp_path / "p.json"))
    assert code == 2 and obj["error_type"] == "usage"
    assert "config.json" in obj["error"] and "num_hidden_layers" in obj["error"] and "hold 1 layer" in obj["error"]
    assert "Traceback" not in err and not (tmp_path / "p.json").exists()


def _base_model_prefix(path):
    """Saved from the base LlamaModel: tensors named layers.<i>.* (transformers adds model. on loading), tied."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(**SMALL, num_hidden_layers=2, max_position_embeddings=64, tie_word_embeddings=True)
    LlamaModel(cfg).save_pretrained(path)
    return path


def _sharded(path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(**SMALL, num_hidden_layers=3, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path, max_shard_size="50KB")
    assert (path / "model.safetensors.index.json").is_file()
    return path


CORRECT = {  # how -> (writes the checkpoint, its layers)
    "llama, untied head": (lambda p: llama(p), 1),
    "llama, tied head": (lambda p: llama(p, num_hidden_layers=2, tie_word_embeddings=True), 2),
    "qwen2, a sliding layer": (qwen2_window, 2),
    "base-model tensor names": (_base_model_prefix, 2),
    "sharded with an index": (_sharded, 3),
}


@pytest.mark.parametrize("how", sorted(CORRECT))
def test_a_checkpoint_that_holds_its_layers_still_loads(tmp_path, how):
    write, layers = CORRECT[how]
    path = write(tmp_path / "ckpt")
    lean = amk.load_model(path, weights=False)
    model = amk.load_model(path)
    assert lean.dims == model.dims and model.dims.n_layers == layers
    assert len(model.eager.model.layers) == layers


def test_a_bin_checkpoint_keeps_its_check_after_loading(tmp_path):
    # no tensor names without loading a pytorch_model.bin: its layers are compared when transformers loads it
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL, num_hidden_layers=1, max_position_embeddings=64))
    path = tmp_path / "ckpt"
    path.mkdir()
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    assert amk.load_model(path).dims.n_layers == 1
    _set(path, num_hidden_layers=2)
    assert amk.load_model(path, weights=False).dims.n_layers == 2
    with pytest.raises(CheckpointError, match="model.layers.1"):
        amk.load_model(path)


# ---- sizing fields below 1, named before transformers parses them ---------------------------------------------


ZERO = [("num_attention_heads", 0), ("num_attention_heads", -4), ("num_key_value_heads", 0), ("hidden_size", 0),
        ("head_dim", 0), ("intermediate_size", 0), ("vocab_size", 0), ("num_hidden_layers", 0)]


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize(("field", "value"), ZERO)
def test_a_sizing_field_below_one_is_named(tmp_path, monkeypatch, field, value, weights):
    path = _set(llama(tmp_path / "ckpt"), **{field: value})
    nothing_built = forbid_transformers(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        amk.load_model(path, weights=weights)
    assert e.value.path == str(path / "config.json") and e.value.field == field
    assert f"{field}: must be a positive integer, got {value}" in str(e.value)
    assert nothing_built == []


def test_a_width_of_another_type_is_still_named_by_transformers(tmp_path):
    path = _set(llama(tmp_path / "ckpt"), num_attention_heads=4.0)
    with pytest.raises(CheckpointError, match="expected int") as e:
        amk.load_model(path, weights=False)
    assert e.value.field == "num_attention_heads"


def test_verify_reports_zero_heads_as_a_usage_error_naming_the_field(tmp_path, capsys):
    path = _set(llama(tmp_path / "ckpt"), num_attention_heads=0)
    code, obj, err = cli_json_err(capsys, "verify", "--model", str(path), "--gpu", "cpu-sim", "--out",
                          str(tmp_path / "v.json"))
    assert code == 2 and obj["error_type"] == "usage"
    assert "config.json: num_attention_heads: must be a positive integer" in obj["error"]
    assert "modulo" not in obj["error"] and "Traceback" not in err
