"""A config.json name that transformers and AMK both ignore but that is a near spelling of a field they read is
named in the verdict's notes, with the field meant: its value was never used. Any other name neither reads is
named too, as passed over."""

from __future__ import annotations

from _checkpoints import llama
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

import amk
from amk.models.fields import misspelt_fields, unread_fields


def test_the_config_classes_defaults_have_no_near_spellings():
    for cls in (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config):
        assert misspelt_fields(cls()) == [], cls.__name__
        assert unread_fields(cls()) == [], cls.__name__


def test_transformers_4_fields_of_a_whole_config_dump_are_not_misspellings():
    """A config saved whole by transformers 4 carries its base class's generation and encoder-decoder fields:
    tie_encoder_decoder is one letter-pair from is_encoder_decoder, and spelt right."""
    cfg = LlamaConfig(tie_encoder_decoder=False, num_beams=1, top_k=50, torch_dtype="bfloat16", max_length=20)
    assert misspelt_fields(cfg) == []


def test_a_misspelt_field_is_named_with_the_field_meant(tmp_path):
    path = llama(tmp_path / "m", num_key_value_head=1, transformers_version_note="x")
    assert misspelt_fields(amk.load_model(str(path), weights=False).hf_config) == [
        ("num_key_value_head", "num_key_value_heads")]
    v = amk.evaluate(str(path), "cpu-sim", {}, device="cpu", cases="reduced")
    notes = [n for n in v["notes"] if "did you mean" in n]
    assert v["correct"] and notes == ["config field 'num_key_value_head' is read by neither transformers nor AMK, "
                                      "and 'num_key_value_heads' keeps its value 2: did you mean "
                                      "'num_key_value_heads'?"], v["notes"]


def test_a_misspelt_rope_field_names_the_value_transformers_5_keeps_in_rope_parameters(tmp_path):
    from amk.harness.run_checks import misspelt_field_notes

    model = amk.load_model(str(llama(tmp_path / "m", rope_thetaa=500.0)), weights=False)
    theta = model.hf_config.rope_parameters["rope_theta"]
    assert misspelt_field_notes(model) == [f"config field 'rope_thetaa' is read by neither transformers nor AMK, and "
                                           f"'rope_theta' keeps its value {theta}: did you mean 'rope_theta'?"]


def test_a_field_neither_reads_is_named_as_passed_over(tmp_path):
    from amk.harness.run_checks import misspelt_field_notes

    path = llama(tmp_path / "m", my_tool_setting=5, rope_thetaa=500.0, _loader_metadata="x")
    model = amk.load_model(str(path), weights=False)
    assert unread_fields(model.hf_config) == ["my_tool_setting"]  # the misspelling has its own note
    notes = misspelt_field_notes(model)
    assert len(notes) == 2 and notes[1] == ("config field 'my_tool_setting' is read by neither transformers nor AMK: "
                                            "passed over"), notes


def test_a_field_with_one_word_written_out_is_named_with_the_field_meant(tmp_path):
    """A word of the field written in full (`epsilon` for `eps`) makes a name more than two letters longer, but it
    is the same slip; a name with a word added to a field is not."""
    path = llama(tmp_path / "m", rms_norm_epsilon=1e-6, head_dimension=32, rms_norm_eps_note="x")
    model = amk.load_model(str(path), weights=False)
    assert sorted(misspelt_fields(model.hf_config)) == [("head_dimension", "head_dim"), ("rms_norm_epsilon", "rms_norm_eps")]
    assert unread_fields(model.hf_config) == ["rms_norm_eps_note"]
