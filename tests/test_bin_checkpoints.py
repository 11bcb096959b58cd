"""A pytorch_model.bin checkpoint is checked as a safetensors one is: a bool, integer or float8 tensor is refused by
name (transformers cast it into the model's dtype, and AMK reported the model correct), and a file torch.load cannot
read with weights_only is refused in one line naming it (the error was torch's many lines, advising to turn
weights_only off, which runs the file's code)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from _checkpoints import llama
from _cli import cli_json

import amk
from amk.schedule.errors import CheckpointError


def _as_bin(path, edit=None, legacy: bool = False):
    from safetensors.torch import load_file

    sd = load_file(path / "model.safetensors")
    if edit:
        edit(sd)
    (path / "model.safetensors").unlink()
    torch.save(sd, path / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return path


# (torch.load cannot read float8 from the legacy format at all: such a file is refused as unreadable, below)
@pytest.mark.parametrize("dtype, legacy", [(torch.int8, False), (torch.bool, False), (torch.float8_e4m3fn, False),
                                           (torch.int8, True), (torch.bool, True)])
def test_a_bin_tensor_that_is_no_dense_float_is_refused_by_name(tmp_path, capsys, dtype, legacy):
    def cast(sd):
        sd["model.norm.weight"] = sd["model.norm.weight"].to(dtype)

    path = _as_bin(llama(tmp_path / "m"), cast, legacy)
    with pytest.raises(CheckpointError) as e:
        amk.load_model(str(path), weights=False)
    assert e.value.field == "model.norm.weight" and e.value.path.endswith("pytorch_model.bin")
    code, out = cli_json(capsys, "evaluate", "--model", str(path), "--gpu", "cpu-sim")
    assert code == 2 and "model.norm.weight: is stored as" in out["error"], out


@pytest.mark.parametrize("content", [os.urandom(2000), pickle.dumps({"x": 1}), pickle.dumps([1, 2])])
def test_a_bin_file_torch_cannot_read_as_weights_is_refused_in_one_line(tmp_path, capsys, content):
    path = _as_bin(llama(tmp_path / "m"))
    (path / "pytorch_model.bin").write_bytes(content)
    code, out = cli_json(capsys, "evaluate", "--model", str(path), "--gpu", "cpu-sim")
    assert code == 2 and "pytorch_model.bin" in out["error"] and "\n" not in out["error"], out
    assert "weights_only` set to `False`" not in out["error"]


def test_a_dense_bin_checkpoint_still_loads_and_runs(tmp_path):
    path = _as_bin(llama(tmp_path / "m"))
    v = amk.evaluate(str(path), "cpu-sim", {}, cases="reduced")
    assert v["valid"] and v["correct"], v
