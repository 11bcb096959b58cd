"""Config fields with values no model can have (a zero width, a negative head count, a NaN theta) are refused
by name when the config is read, not reported later as a rejected schedule or a failed verify."""

import math

import pytest
from transformers import LlamaConfig

from amk.models.fields import model_dims
from amk.schedule.errors import UnsupportedModelError

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


@pytest.mark.parametrize("field, value", [
    ("num_key_value_heads", -2), ("head_dim", -16), ("intermediate_size", 0), ("vocab_size", 0),
    ("hidden_size", -64), ("num_hidden_layers", 0), ("rms_norm_eps", -1.0),
    ("rms_norm_eps", math.nan), ("max_position_embeddings", 0),
])
def test_a_field_with_an_impossible_value_is_refused_by_name(field, value):
    cfg = LlamaConfig(**{**BASE, field: value})
    with pytest.raises(UnsupportedModelError, match=field):
        model_dims(cfg)


@pytest.mark.parametrize("theta", [-10000.0, math.nan, math.inf])
def test_an_impossible_rope_theta_is_refused_by_name(theta):
    cfg = LlamaConfig(**BASE, rope_parameters={"rope_type": "default", "rope_theta": theta})
    with pytest.raises(UnsupportedModelError, match="rope_theta"):
        model_dims(cfg)


@pytest.mark.parametrize("kind", ["linear", "dynamic"])
@pytest.mark.parametrize("factor", [0.0, 0.5, -2.0, math.inf, "2"])
def test_a_rope_scaling_factor_below_one_is_refused_by_name(kind, factor):
    """factor 0 gave RoPE tables of inf, NaN logits, and every config a failed verify with a cache-internal
    message; transformers itself only warns below 1."""
    cfg = LlamaConfig(**BASE, rope_parameters={"rope_type": kind, "factor": 2.0, "rope_theta": 10000.0})
    cfg.rope_parameters["factor"] = factor  # past transformers' own check, as a config.json edited by hand
    with pytest.raises(UnsupportedModelError, match="factor"):
        model_dims(cfg)
    cfg.rope_parameters["factor"] = 1
    assert model_dims(cfg).n_kv_heads == 2


def test_the_base_config_is_accepted():
    assert model_dims(LlamaConfig(**BASE)).n_kv_heads == 2


@pytest.mark.parametrize("field, value, message", [
    ("num_key_value_heads", 3, "num_key_value_heads=3 (must divide num_attention_heads=4"),
    ("hidden_size", 60, "hidden_size=60 (must be a multiple of 8)"),
    ("intermediate_size", 100, "intermediate_size=100 (must be a multiple of 8)"),
])
def test_a_shape_the_kernels_do_not_take_is_refused_naming_its_field(field, value, message):
    head = {"head_dim": 16} if field == "hidden_size" else {}  # a head width the kernels take
    cfg = LlamaConfig(**{**BASE, field: value, **head})
    with pytest.raises(UnsupportedModelError) as e:
        model_dims(cfg)
    assert message in str(e.value) and e.value.feature.startswith(field)

