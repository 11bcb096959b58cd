"""Arguments of the wrong kind given to the Python API are usage errors that name the argument, not failures of a
program or tracebacks from inside: a model of the wrong type beside a malformed config, a runner or reference that is
no VM or callable, and tokens a dynamic RoPE cannot hold when max_seq was never given."""

from __future__ import annotations

import pytest
from _checkpoints import llama

import amk
from amk.schedule.errors import ArgumentError


@pytest.mark.parametrize("model", [None, 3, ["toy"], b"toy"], ids=["none", "int", "list", "bytes"])
def test_a_model_of_the_wrong_type_is_named_even_beside_a_malformed_config(model):
    with pytest.raises(ArgumentError) as e:
        amk.evaluate(model, "cpu-sim", None)
    assert e.value.argument == "model"


def test_a_malformed_config_still_comes_back_as_a_verdict_for_a_model_name():
    v = amk.evaluate("no-such-model", "cpu-sim", None)
    assert v["valid"] is False and "config object" in v["rejected_reason"]


@pytest.fixture(scope="module")
def toy_program():
    model = amk.load_model("toy")
    return amk.lower(model, "cpu-sim", {}, max_seq=16), model


@pytest.mark.parametrize("argument,value", [("runner", 5), ("runner", object()), ("reference", 5)])
def test_verify_names_a_runner_or_reference_it_cannot_use(toy_program, argument, value):
    prog, model = toy_program
    with pytest.raises(ArgumentError) as e:
        amk.verify(prog, model, cases="smoke", **{argument: value})
    assert e.value.argument == argument


@pytest.fixture(scope="module")
def dynamic_rope(tmp_path_factory):
    return llama(tmp_path_factory.mktemp("dyn") / "m", max_position_embeddings=32,
                 rope_scaling={"rope_type": "dynamic", "factor": 4.0})


def test_tokens_past_a_dynamic_rope_blame_max_new_tokens_when_max_seq_was_derived(dynamic_rope):
    ids = [1] + list(range(10, 40))  # 31 tokens: 2 new tokens reach position 32
    with pytest.raises(ArgumentError) as e:
        amk.generate(dynamic_rope, ids, max_new_tokens=20)
    assert e.value.argument == "max_new_tokens" and "at most 2 new tokens" in str(e.value)
    assert len(amk.generate(dynamic_rope, ids, max_new_tokens=2).tokens) == 2  # the advice holds


def test_a_prompt_past_a_dynamic_rope_blames_the_prompt(dynamic_rope):
    with pytest.raises(ArgumentError) as e:
        amk.generate(dynamic_rope, list(range(1, 40)), max_new_tokens=1)
    assert e.value.argument == "prompt" and "at most 32 tokens" in str(e.value)


def test_a_given_max_seq_past_a_dynamic_rope_is_still_named(dynamic_rope):
    with pytest.raises(ArgumentError) as e:
        amk.generate(dynamic_rope, [1, 2, 3], max_new_tokens=2, max_seq=64)
    assert e.value.argument == "max_seq"
