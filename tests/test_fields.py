"""The config field table against the installed transformers: every field classified, refusals by name, and the
per-layer sliding windows each family's config describes."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from amk.models.fields import (
    FIELDS,
    SHARED_MODULES,
    Treatment,
    class_fields,
    layer_windows,
    model_dims,
    transformers_reads,
    unclassified,
)
from amk.schedule.errors import UnsupportedModelError
from amk.schedule.graph import Architecture

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)


def test_every_field_transformers_defines_or_reads_is_classified():
    assert unclassified() == {}
    for cls in (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config):
        assert class_fields(cls) <= set(FIELDS), cls.__name__


def test_the_walk_sees_the_modeling_files_and_the_shared_code():
    reads = transformers_reads()
    # names only the shared mask/cache code reads, and ones only a modeling file reads
    assert "attention_chunk_size" in reads and "is_causal" in reads and "per_layer_config" in reads
    assert {"modeling_qwen2", "masking_utils"} <= reads["layer_types"]
    assert "modeling_llama" in reads["mlp_bias"]
    assert len(SHARED_MODULES) == 3


CURRENT = [name for name, rule in FIELDS.items() if not rule.legacy]


def test_removing_any_field_from_the_table_fails_the_walk():
    for name in CURRENT:
        table = {k: v for k, v in FIELDS.items() if k != name}
        assert set(unclassified(table)) == {name}


def test_every_entry_is_found_in_transformers():
    # no stale rows: each name in the table is defined or read by the installed transformers (but for the
    # transformers 4 names, which the installed version folds into rope_parameters)
    assert set(unclassified({})) == set(CURRENT)
    assert all(FIELDS[n].legacy for n in set(FIELDS) - set(CURRENT))


def test_only_fields_say_what_they_refuse():
    for rule in FIELDS.values():
        assert rule.note
        if rule.refuse is not None:
            assert rule.treatment in (Treatment.ONLY, Treatment.LOWERED), rule.name


@pytest.mark.parametrize("cfg, field", [
    (LlamaConfig(**SMALL, hidden_act="gelu"), "hidden_act"),
    (LlamaConfig(**SMALL, mlp_bias=True), "mlp_bias"),
    (LlamaConfig(**SMALL, attention_bias=True), "attention_bias"),
    (Qwen3Config(**SMALL, head_dim=16, attention_bias=True), "attention_bias"),
    (LlamaConfig(**SMALL, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0,
                                           "original_max_position_embeddings": 32}), "rope_parameters"),
    (LlamaConfig(**SMALL, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "rope_parameters"),
    (LlamaConfig(**SMALL, attention_chunk_size=16), "attention_chunk_size"),
    (LlamaConfig(**SMALL, is_causal=False), "is_causal"),
    (LlamaConfig(**SMALL, kv_sharing_modes=["reuse"] * 3), "kv_sharing_modes"),
    (LlamaConfig(**SMALL, sliding_window=8), "sliding_window"),
    (LlamaConfig(**SMALL, layer_types=["full_attention", "sliding_attention", "full_attention"]), "layer_types"),
    (MistralConfig(**SMALL, sliding_window=8, layer_types=["full_attention", "sliding_attention", "full_attention"]),
     "layer_types"),
    (MistralConfig(**SMALL, sliding_window=0), "sliding_window"),
    (MistralConfig(**SMALL, sliding_window=1), "sliding_window"),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=1, max_window_layers=1), "sliding_window"),
    (Qwen2Config(**SMALL, layer_types=["full_attention", "sliding_attention", "full_attention"]), "layer_types"),
])
def test_values_not_lowered_are_refused_by_name(cfg, field):
    with pytest.raises(UnsupportedModelError) as e:
        model_dims(cfg)
    assert field in e.value.feature


def test_per_layer_config_is_refused_by_name():
    cfg = LlamaConfig(**SMALL, per_layer_config={1: {"rms_norm_eps": 1e-3}})
    with pytest.raises(UnsupportedModelError, match="per_layer_config"):
        model_dims(cfg)


def test_a_window_of_one_is_refused_only_where_a_layer_slides():
    assert model_dims(Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=1, max_window_layers=3)).windows == ()
    assert model_dims(Qwen2Config(**SMALL, sliding_window=1)).windows == ()  # dropped without use_sliding_window
    assert model_dims(MistralConfig(**SMALL, sliding_window=2)).windows == (2, 2, 2)


def test_fields_transformers_does_not_read_are_accepted():
    # Mistral and Qwen2 hard-wire their biases; pretraining_tp, attention_dropout and unknown keys are not read
    model_dims(MistralConfig(**SMALL, attention_bias=True))
    model_dims(Qwen2Config(**SMALL, attention_bias=True, mlp_bias=True))
    model_dims(LlamaConfig(**SMALL, pretraining_tp=4, attention_dropout=0.3, some_unknown_key=1))


@pytest.mark.parametrize("cfg, windows", [
    (LlamaConfig(**SMALL), ()),
    (MistralConfig(**SMALL, sliding_window=None), ()),
    (MistralConfig(**SMALL, sliding_window=8), (8, 8, 8)),
    (MistralConfig(**SMALL, sliding_window=8, layer_types=["sliding_attention"] * 3), (8, 8, 8)),
    # Qwen2/Qwen3 slide from layer max_window_layers on, and only with use_sliding_window
    (Qwen2Config(**SMALL, sliding_window=8, max_window_layers=1), ()),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1), (0, 8, 8)),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=3), ()),
    (Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8,
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"]), (8, 0, 8)),
    (Qwen3Config(**SMALL, head_dim=16, use_sliding_window=True, sliding_window=5, max_window_layers=2), (0, 0, 5)),
])
def test_layer_windows_follow_each_family(cfg, windows):
    dims = model_dims(cfg)
    assert dims.windows == windows
    assert layer_windows(cfg, dims.arch) == windows
    assert [dims.window(i) for i in range(3)] == list(windows or (0, 0, 0))


def test_windows_reach_the_graph():
    from amk.schedule.graph import OpKind, build_graph

    dims = model_dims(Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1))
    assert dims.arch == Architecture.QWEN2
    attn = [op.window for op in build_graph(dims).ops if op.kind == OpKind.ATTENTION]
    assert attn == [0, 8, 8]
