"""A config.json name that transformers and AMK both ignore but that is a near spelling of a field they read is
named in the verdict's notes, with the field meant: its value was never used."""

from __future__ import annotations

from _checkpoints import llama
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

import amk
from amk.models.fields import misspelt_fields


def test_the_config_classes_defaults_have_no_near_spellings():
    for cls in (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config):
        assert misspelt_fields(cls()) == [], cls.__name__


def test_a_misspelt_field_is_named_with_the_field_meant(tmp_path):
    path = llama(tmp_path / "m", num_key_value_head=1, transformers_version_note="x")
    assert misspelt_fields(amk.load_model(str(path), weights=False).hf_config) == [
        ("num_key_value_head", "num_key_value_heads")]
    v = amk.evaluate(str(path), "cpu-sim", {}, device="cpu", cases="reduced")
    notes = [n for n in v["notes"] if "did you mean" in n]
    assert v["correct"] and notes == ["config field 'num_key_value_head' is read by neither transformers nor AMK, "
                                      "and 'num_key_value_heads' keeps its value 2: did you mean "
                                      "'num_key_value_heads'?"], v["notes"]
