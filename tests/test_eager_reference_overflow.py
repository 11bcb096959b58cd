"""A model whose own transformers forward overflows in the dtype asked for (an fp16 activation past 65504, from
finite fp16 weights): no config can be checked against non-finite logits, so evaluate, verify and the loop refuse
it by the model and dtype (EagerReferenceError, exit 2), and no trial is recorded against a config."""

from __future__ import annotations

import pytest
from _checkpoints import edit_tensors, llama
from _cli import cli_json_err

import amk
from amk.flywheel.results import read_rows
from amk.schedule.errors import EagerReferenceError


@pytest.fixture
def overflowing(tmp_path):
    """Finite in fp16 (checked at load), yet the first layer's MLP input is scaled past fp16's range."""
    path = llama(tmp_path / "ck")

    def scale(sd):
        sd["model.layers.0.post_attention_layernorm.weight"] *= 1e4
    edit_tensors(path, scale)
    return path


def test_evaluate_refuses_a_model_whose_eager_logits_are_not_finite(overflowing, capsys):
    with pytest.raises(EagerReferenceError, match="fp16 forward gives non-finite logits") as e:
        amk.evaluate(str(overflowing), "cpu-sim", {}, dtype="fp16")
    assert (e.value.dtype, e.value.step) == ("fp16", 0) and str(overflowing) in str(e.value)
    code, out, _ = cli_json_err(capsys, "evaluate", "--model", str(overflowing), "--dtype", "fp16")
    assert code == 2 and out["error_type"] == "usage" and "bf16 or fp32" in out["error"]


def test_the_same_model_in_fp32_verifies(overflowing):
    v = amk.evaluate(str(overflowing), "cpu-sim", {}, dtype="fp32")
    assert v["correct"], v.get("failures")


def test_a_loop_stops_at_its_first_trial_and_records_no_config_as_failed(overflowing, tmp_path, capsys):
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    code, out, _ = cli_json_err(capsys, "loop", "--model", str(overflowing), "--dtype", "fp16", "--budget", "2",
                                "--results", str(res), "--corpus", str(cor))
    assert code == 2 and out["error_type"] == "usage" and "non-finite logits" in out["error"]
    assert not res.exists() or read_rows(res) == []
    assert not cor.exists() or cor.read_text().strip() == ""
