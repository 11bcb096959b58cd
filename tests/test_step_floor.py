"""The roofline floor counts the weight bytes one decode step reads (MegakernelProgram.step_weight_bytes): every
layer, the final norm and the LM head, and of an untied embedding table only the row of the step's token. A
floor over the whole untied table sat above the cost model's own prediction on a model whose vocabulary
outweighs its layers, and every latency of it was withheld."""

from __future__ import annotations

import pytest
from _checkpoints import llama

import amk
from amk.eval.roofline import Floor
from amk.schedule import get_target


@pytest.mark.parametrize("name", ["toy", "toy-2L"])
def test_step_bytes_are_the_parameters_a_step_reads(name):
    model = amk.load_model(name, weights=False)
    prog = amk.lower(model, "cpu-sim", {}, max_seq=64)
    nbytes, d = prog.constants.dtype.nbytes, model.dims
    row = 0 if d.tied_embeddings else d.hidden  # the embedding row a step looks up, where no LM head reads it
    assert prog.step_weight_bytes == (d.step_weight_params() + row) * nbytes
    embed = prog.buffer("embed").nbytes
    assert prog.weight_bytes - prog.step_weight_bytes == (0 if d.tied_embeddings else embed - d.hidden * nbytes)


def test_an_untied_model_heavy_in_vocabulary_gets_its_latency(tmp_path):
    """2 layers of hidden 512 against an untied 4096 x 512 vocabulary: the whole embedding table is 30% of the
    weights, and counting it put the floor above the prediction."""
    path = llama(tmp_path / "m", hidden_size=512, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                 num_hidden_layers=2, vocab_size=4096, tie_word_embeddings=False)
    v = amk.evaluate(str(path), "cpu-sim", {}, device="cpu", cases="reduced")
    assert v["correct"] and v["latency_us"] is not None, v["notes"]
    prog = amk.lower(amk.load_model(str(path), weights=False), "cpu-sim", {}, max_seq=64)
    assert v["spec_floor_us"] == pytest.approx(prog.step_weight_bytes / (get_target("cpu-sim").spec_bandwidth_gbs * 1e3))
    assert v["spec_floor_us"] < v["latency_us"]


def test_a_withheld_prediction_is_called_a_prediction():
    floor = Floor(10_000_000, 50.0, None)
    assert floor.below_floor(10.0, "prediction").endswith("the prediction is wrong")
    assert floor.below_floor(10.0).endswith("the measurement is wrong")
    assert floor.below_floor(1000.0) is None
