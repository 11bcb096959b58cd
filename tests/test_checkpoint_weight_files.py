"""Which weight files a checkpoint directory is read from, as transformers picks them: the files the index's
weight_map names, else model.safetensors alone, else pytorch_model.bin; a stray *.safetensors beside them is
neither read, nor checked against config.json, nor hashed. A malformed index is a CheckpointError naming the index
and its weight_map (exit 2 on the CLI, no traceback)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _cli import cli_json_err

import amk
from amk.models.checkpoint import weight_files
from amk.models.registry import checkpoint_fingerprint
from amk.schedule.errors import CheckpointError

INDEX = "model.safetensors.index.json"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))


def _save(path, layers: int = 2, **save):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path, **save)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Checkpoints saved once for the module (copied before a test changes one): a single file, shards with an
    index, and a 12-layer model whose model.safetensors is the stray file of the tests."""
    root = tmp_path_factory.mktemp("saved")
    return {"single": _save(root / "single"), "sharded": _save(root / "sharded", max_shard_size="50KB"),
            "other": _save(root / "other", layers=12)}


def _copy(saved, tmp_path, which: str):
    return shutil.copytree(saved[which], tmp_path / which)


def _add_stray(saved, path):
    # another model's weights under a name transformers never loads
    shutil.copy(saved["other"] / "model.safetensors", path / "old.safetensors")


# ---- a stray safetensors file -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_a_stray_safetensors_file_is_not_read_checked_or_hashed(saved, tmp_path, which):
    path = _copy(saved, tmp_path, which)
    before = weight_files(path).files
    clean = amk.load_model(path)
    _add_stray(saved, path)
    assert weight_files(path).files == before and path / "old.safetensors" not in before
    lean, model = amk.load_model(path, weights=False), amk.load_model(path)
    assert lean.dims == model.dims == clean.dims and model.dims.n_layers == 2
    assert lean.fingerprint == model.fingerprint == clean.fingerprint == checkpoint_fingerprint(saved[which])
    got, want = model.eager.state_dict(), clean.eager.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_stray_safetensors_file_beside_a_bin_checkpoint_is_not_read(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tmp_path / "bin"
    shutil.copytree(saved["single"], path, ignore=shutil.ignore_patterns("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(saved["single"])
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    _add_stray(saved, path)
    assert weight_files(path).files == [path / "pytorch_model.bin"]
    assert amk.load_model(path, weights=False).dims.n_layers == 2


def test_other_safetensors_names_without_model_safetensors_are_still_read(saved, tmp_path):
    # no name transformers looks for: the files there still size the model without loading it
    path = _copy(saved, tmp_path, "single")
    (path / "model.safetensors").rename(path / "weights.safetensors")
    assert weight_files(path).files == [path / "weights.safetensors"]
    assert amk.load_model(path, weights=False).dims.n_layers == 2


# ---- a malformed index ----------------------------------------------------------------------------------------


def _index(saved, tmp_path, edit):
    """The sharded checkpoint, its index rewritten by `edit` (index object -> the object to write)."""
    path = _copy(saved, tmp_path, "sharded")
    file = path / INDEX
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))
    return path


def _first_to(value):
    def edit(index):
        first = sorted(index["weight_map"])[0]
        index["weight_map"][first] = value
        return index
    return edit


MALFORMED = {  # how -> (edits the index, field named, words in the message)
    "weight_map an array": (lambda i: {**i, "weight_map": ["a"]}, "weight_map", "is a JSON array, not an object"),
    "a file name that is a number": (_first_to(5), "weight_map", "to 5, not to a shard's file name"),
    "a file name that is null": (_first_to(None), "weight_map", "to null, not to a shard's file name"),
    "a file name that is empty": (_first_to(""), "weight_map", 'to "", not to a shard'),
    "weight_map empty": (lambda i: {**i, "weight_map": {}}, "weight_map", "is empty: it names no tensors"),
    "no weight_map": (lambda i: {"metadata": i["metadata"]}, "weight_map", "missing: a safetensors index maps"),
    "an array, not an index": (lambda i: [i], None, "holds a JSON array, not a safetensors index"),
}


@pytest.mark.parametrize("how", sorted(MALFORMED))
def test_a_malformed_index_is_named_with_its_field(saved, tmp_path, how):
    edit, field, words = MALFORMED[how]
    path = _index(saved, tmp_path, edit)
    for weights in (False, True):
        with pytest.raises(CheckpointError, match=words) as e:
            amk.load_model(path, weights=weights)
        assert e.value.path == str(path / INDEX) and e.value.field == field
    assert "holds no weights" not in str(e.value)


def _first_to_another_shard(index):
    # a tensor of a shard that holds others too: the map still names its shard
    wm = index["weight_map"]
    first = next(t for t in sorted(wm) if list(wm.values()).count(wm[t]) > 1)
    wm[first] = next(f for f in sorted(set(wm.values())) if f != wm[first])
    return index


def _a_tensor_no_shard_holds(index):
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = sorted(index["weight_map"].values())[0]
    return index


@pytest.mark.parametrize("edit, where", [(_first_to_another_shard, r"\(it is in model-0000\d"),
                                         (_a_tensor_no_shard_holds, r"\(nor does any shard it names\)")],
                         ids=["another shard", "no shard"])
def test_an_index_mapping_a_tensor_to_a_shard_without_it_names_the_tensor(saved, tmp_path, edit, where):
    # transformers reads a tensor from the shard the map names: it would call this one missing and initialise it
    path = _index(saved, tmp_path, edit)
    for weights in (False, True):
        with pytest.raises(CheckpointError, match="whose header does not hold it " + where) as e:
            amk.load_model(path, weights=weights)
        assert e.value.path == str(path / INDEX) and e.value.field == "weight_map"


def test_an_index_naming_a_missing_shard_names_the_shard_and_its_tensor(saved, tmp_path):
    path = _index(saved, tmp_path, _first_to("model-00099-of-00099.safetensors"))
    first = sorted(json.loads((saved["sharded"] / INDEX).read_text())["weight_map"])[0]
    with pytest.raises(CheckpointError, match=f"named by {INDEX}'s weight_map .*{first}.* not in the directory") as e:
        weight_files(path)
    assert e.value.path == str(path / "model-00099-of-00099.safetensors")


def test_cli_reports_a_malformed_index_as_a_usage_error(saved, tmp_path, capsys):
    path = _index(saved, tmp_path, _first_to(5))
    code, obj, err = cli_json_err(capsys, "verify", "--model", str(path), "--gpu", "cpu-sim", "--out",
                                  str(tmp_path / "v.json"))
    assert code == 2 and obj["error_type"] == "usage"
    assert INDEX in obj["error"] and "weight_map" in obj["error"]
    assert "Traceback" not in obj["error"] and "Traceback" not in err
