"""A RoPE value of config.json that transformers replaces (a top-level rope_theta beside rope_parameters), and a key
of rope_parameters it passes over, are named in the verdict's notes: the model runs as transformers runs it, and
the edit that did not take is seen."""

from __future__ import annotations

import json

from _checkpoints import llama

import amk
from amk.harness.run_checks import misspelt_field_notes
from amk.models.rope_notes import replaced_values, unknown_keys


def _edit_config(path, **fields):
    file = path / "config.json"
    raw = json.loads(file.read_text())
    for name, value in fields.items():
        if "." in name:
            section, key = name.split(".")
            raw[section][key] = value
        else:
            raw[name] = value
    file.write_text(json.dumps(raw))
    return path


def test_a_top_level_rope_theta_that_transformers_replaces_is_named_with_the_value_it_runs(tmp_path):
    path = _edit_config(llama(tmp_path / "m"), rope_theta=500.0)
    model = amk.load_model(str(path), weights=False)
    used = model.hf_config.rope_parameters["rope_theta"]
    assert used != 500.0  # transformers kept rope_parameters' value: the edit does not run
    note = (f"config.json gives rope_theta = 500.0, but transformers runs rope_parameters.rope_theta = {used!r} "
            f"(it replaced the value given), and so does AMK")
    assert note in misspelt_field_notes(model)
    v = amk.evaluate(str(path), "cpu-sim", {}, device="cpu", cases="reduced")
    assert v["correct"] and note in v["notes"], v["notes"]


def test_a_misspelt_rope_parameters_key_is_named_with_the_key_meant(tmp_path):
    path = _edit_config(llama(tmp_path / "m"), **{"rope_parameters.rope_thetta": 3.0})
    model = amk.load_model(str(path), weights=False)
    assert unknown_keys(model.hf_config) == [("rope_thetta", "rope_theta")]
    assert ("rope_parameters key 'rope_thetta' is read by neither transformers nor AMK: passed over: did you mean "
            "'rope_theta'?") in misspelt_field_notes(model)


def test_a_factor_beside_rope_type_default_is_named_as_not_read(tmp_path):
    # transformers keeps it and logs "Unrecognized keys": a scaling meant but not run
    model = amk.load_model(str(_edit_config(llama(tmp_path / "m"), **{"rope_parameters.factor": 4.0})),
                           weights=False)
    assert model.config_notes == ("rope_parameters key 'factor' is read by neither transformers nor AMK: passed "
                                  "over (rope_type default does not read it)",)


def test_rope_parameters_that_rope_scaling_displaced_are_named(tmp_path):
    path = llama(tmp_path / "m")
    raw = json.loads((path / "config.json").read_text())
    raw["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    raw["rope_parameters"]["low_freq_factor"] = 1.0
    (path / "config.json").write_text(json.dumps(raw))
    model = amk.load_model(str(path), weights=False)
    assert model.hf_config.rope_parameters["rope_type"] == "linear"  # transformers took rope_scaling
    assert model.config_notes == (
        "config.json gives rope_parameters.rope_type = 'default', but transformers runs rope_parameters.rope_type = "
        "'linear' (it replaced the value given), and so does AMK",
        "config.json gives rope_parameters.low_freq_factor = 1.0, but transformers runs no "
        "rope_parameters.low_freq_factor (rope_scaling took rope_parameters' place), and neither does AMK")


def test_rope_values_that_run_as_written_have_no_note(tmp_path):
    same = llama(tmp_path / "same")
    theta = json.loads((same / "config.json").read_text())["rope_parameters"]["rope_theta"]
    _edit_config(same, rope_theta=theta)  # given twice, equal
    # transformers 4's spelling: rope_theta at the top, rope_scaling, no rope_parameters
    old = tmp_path / "old"
    llama(old)
    raw = json.loads((old / "config.json").read_text())
    raw.pop("rope_parameters")
    raw |= {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    (old / "config.json").write_text(json.dumps(raw))
    # transformers 4's llama3 scaling, as Llama 3.1 and 3.2 checkpoints carry it
    l3 = tmp_path / "l3"
    llama(l3, rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    for path in (same, old, l3):
        model = amk.load_model(str(path), weights=False)
        assert model.config_notes == () and not any("rope" in n for n in misspelt_field_notes(model)), path
    assert amk.load_model(str(old), weights=False).hf_config.rope_parameters["rope_theta"] == 500000.0


def test_replaced_values_compares_each_rope_section_with_what_transformers_parsed():
    class Parsed:
        rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}

    class PerLayerType:  # a dict of parameters a layer type: not compared key by key
        rope_parameters = {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}

    assert replaced_values({"rope_theta": 5.0}, PerLayerType()) == [] and unknown_keys(PerLayerType()) == []

    raw = {"rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
           "rope_scaling": {"rope_type": "linear", "factor": 2.0, "type": None}}
    assert [(r.name, r.written, r.used) for r in replaced_values(raw, Parsed())] == [
        ("rope_parameters.rope_type", "default", "linear")]
