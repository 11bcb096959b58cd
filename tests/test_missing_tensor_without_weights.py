"""A checkpoint missing a tensor is refused by every command, not only by those that load the weights: compile,
propose and a model loaded without weights read the safetensors headers, where they ran on (transformers would fill
the tensor by initialisation, which only evaluate's load reported)."""

from __future__ import annotations

import pytest
from _checkpoints import edit_tensors, llama
from _cli import cli_json

import amk
from amk.schedule.errors import CheckpointError


@pytest.mark.parametrize("drop, tied", [("model.layers.0.mlp.down_proj.weight", True),
                                        ("lm_head.weight", False), ("model.norm.weight", True)])
def test_a_missing_tensor_is_refused_without_loading_the_weights(tmp_path, capsys, drop, tied):
    path = llama(tmp_path / "m", tie_word_embeddings=tied)
    edit_tensors(path, lambda sd: sd.pop(drop))
    with pytest.raises(CheckpointError) as e:
        amk.load_model(str(path), weights=False)
    assert e.value.field == drop and "not in the checkpoint" in str(e.value)
    for argv in (["compile", "--model", str(path), "--gpu", "h100-sxm", "--out", str(tmp_path / "k")],
                 ["propose", "--model", str(path), "--gpu", "h100-sxm"]):
        code, out = cli_json(capsys, *argv)
        assert code == 2 and f"{drop}" in out["error"] and "not in the checkpoint" in out["error"], (argv, out)


def test_a_tied_head_needs_no_lm_head_tensor(tmp_path):
    path = llama(tmp_path / "m", tie_word_embeddings=True)
    edit_tensors(path, lambda sd: sd.pop("lm_head.weight", None))
    assert amk.load_model(str(path), weights=False).dims.tied_embeddings
