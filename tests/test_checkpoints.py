"""Checkpoint directories as transformers loads them: a tied flag beside a separate head, malformed and
incomplete checkpoints refused by name (exit 2 on the CLI, no traceback), and a fingerprint of the weights."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
from _checkpoints import SMALL, bench_shapes, edit_tensors, llama
from _cli import cli_json_err
from safetensors.torch import load_file

import amk
from amk.eval.oracle import verify
from amk.models.registry import _head_tied
from amk.schedule.errors import CheckpointError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMK_CACHE_DIR", str(tmp_path / "amk_cache"))




# ---- the head: tied as transformers ties it ---------------------------------------------------------------


def test_tied_flag_with_a_separate_head_in_the_checkpoint_is_untied(tmp_path):
    path = llama(tmp_path, tie_word_embeddings=True)
    head = torch.randn(256, 64, generator=torch.Generator().manual_seed(5))
    edit_tensors(path, lambda sd: sd.__setitem__("lm_head.weight", head))
    model = amk.load_model(path)
    assert not _head_tied(model.eager) and torch.equal(model.eager.lm_head.weight, head)
    assert model.dims.tied_embeddings is False
    lean = amk.load_model(path, weights=False)  # what lowering sees without loading the weights
    assert lean.dims == model.dims and lean.fingerprint == model.fingerprint
    res = verify(amk.lower(model, "cpu-sim", {}), model)
    assert res.ok, [(c.case, c.message) for c in res.cases if not c.passed]
    ids, n = [5, 9, 11], 16
    ref = model.eager.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert amk.generate(model, ids, max_new_tokens=n, device="cpu", stop_at_eos=False).tokens == ref
    # what AMK did before: the embedding as the head, every case off
    import dataclasses

    from amk.schedule.graph import build_graph

    dims = dataclasses.replace(model.dims, tied_embeddings=True)
    flag = dataclasses.replace(model, dims=dims, graph=build_graph(dims))
    assert not verify(amk.lower(flag, "cpu-sim", {}), flag, cases="reduced").ok


def test_tied_flag_with_an_identical_head_stays_tied(tmp_path):
    path = llama(tmp_path, tie_word_embeddings=True)
    edit_tensors(path, lambda sd: sd.__setitem__("lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    model = amk.load_model(path)
    assert model.dims.tied_embeddings and _head_tied(model.eager)


def test_untied_flag_without_a_head_is_refused_by_name(tmp_path):
    path = llama(tmp_path, tie_word_embeddings=False)
    edit_tensors(path, lambda sd: sd.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="initialisation") as e:
        amk.load_model(path)
    assert e.value.field == "lm_head.weight" and e.value.path.endswith("model.safetensors")


# ---- incomplete or malformed checkpoints ---------------------------------------------------------------------


def test_a_tied_flag_overridden_by_a_separate_head_is_logged(tmp_path, caplog):
    path = llama(tmp_path, tie_word_embeddings=True)
    edit_tensors(path, lambda sd: sd.__setitem__("lm_head.weight", torch.randn(256, 64)))
    with caplog.at_level("WARNING", logger="amk.models"):
        amk.load_model(path)
    assert any("tie_word_embeddings=true" in r.getMessage() and "untied" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="amk.models"):
        amk.load_model(llama(tmp_path / "tied", tie_word_embeddings=True))
    assert not caplog.records


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(tmp_path, capsys, value):
    path = llama(tmp_path)

    def poison(sd):
        sd["model.layers.0.mlp.up_proj.weight"][3, 5] = value
    edit_tensors(path, poison)
    with pytest.raises(CheckpointError, match="1 of 8192 values are NaN or Inf as float32") as e:
        amk.load_model(path)
    assert e.value.field == "model.layers.0.mlp.up_proj.weight"
    code, out, _ = cli_json_err(capsys, "evaluate", "--model", str(path))
    assert code == 2 and out["error_type"] == "usage" and "up_proj" in out["error"]


def test_a_loop_on_a_checkpoint_that_fails_its_load_checks_writes_nothing(tmp_path, capsys):
    # evaluate refuses it by name; the loop wrote a crash row a trial, a traceback each, and exited 0
    path = llama(tmp_path / "ck")

    def poison(sd):
        sd["model.layers.0.mlp.up_proj.weight"][3, 5] = float("nan")
    edit_tensors(path, poison)
    res, cor = tmp_path / "r.tsv", tmp_path / "c.jsonl"
    code, out, _ = cli_json_err(capsys, "loop", "--model", str(path), "--budget", "2", "--results", str(res),
                                "--corpus", str(cor))
    assert code == 2 and out["error_type"] == "usage" and "up_proj" in out["error"]
    assert not res.exists() and not cor.exists()


@pytest.mark.parametrize("how", ["symlink loop", "dangling symlink", "directory"])
def test_a_weight_file_that_cannot_be_opened_is_named(tmp_path, capsys, how):
    path = llama(tmp_path / "ck")
    st = path / "model.safetensors"
    st.unlink()
    if how == "symlink loop":
        st.symlink_to(st.name)
    elif how == "dangling symlink":
        st.symlink_to("gone.safetensors")
    else:
        st.mkdir()
    with pytest.raises(CheckpointError, match="cannot be read") as e:
        amk.load_model(path)
    assert e.value.path.endswith("model.safetensors")
    code, out, err = cli_json_err(capsys, "loop", "--model", str(path), "--budget", "1", "--results",
                                  str(tmp_path / "r.tsv"), "--corpus", str(tmp_path / "c.jsonl"))
    assert code == 2 and out["error_type"] == "usage" and "model.safetensors" in out["error"]
    assert "Traceback" not in err and not (tmp_path / "r.tsv").exists()


def test_a_value_past_fp16_range_is_named_as_such(tmp_path):
    path = llama(tmp_path)

    def big(sd):
        sd["model.layers.0.mlp.up_proj.weight"][0, 0] = 1e6
    edit_tensors(path, big)
    assert amk.load_model(path, "bf16").dims.n_layers == 1
    with pytest.raises(CheckpointError, match="as float16: fp16 holds values up to 65504"):
        amk.load_model(path, "fp16")


def test_a_missing_weight_is_refused_not_filled_in(tmp_path):
    path = llama(tmp_path)
    edit_tensors(path, lambda sd: sd.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match="fill them by initialisation") as e:
        amk.load_model(path)
    assert e.value.field == "model.layers.0.self_attn.k_proj.weight"
    assert "model.safetensors" in str(e.value)


def test_an_unexpected_weight_is_refused(tmp_path):
    path = llama(tmp_path)
    edit_tensors(path, lambda sd: sd.__setitem__("model.layers.0.mlp.gate_proj.bias", torch.zeros(128)))
    with pytest.raises(CheckpointError, match="not parameters of the model") as e:
        amk.load_model(path)
    assert e.value.field == "model.layers.0.mlp.gate_proj.bias"


def test_a_weight_of_another_shape_is_refused(tmp_path):
    path = llama(tmp_path)
    edit_tensors(path, lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.weight", torch.zeros(64, 96)))
    with pytest.raises(CheckpointError, match="down_proj"):
        amk.load_model(path)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.float8_e4m3fn], ids=["bool", "int8", "float8"])
def test_a_weight_that_is_no_dense_float_is_refused_by_name(tmp_path, dtype):
    # transformers casts such a tensor into the model's dtype without a word: the model would run other weights
    path = llama(tmp_path)
    name = "model.layers.0.self_attn.q_proj.weight"

    def store(sd):
        sd[name] = torch.ones_like(sd[name], dtype=torch.float32).to(dtype)

    edit_tensors(path, store)
    for weights in (True, False):
        with pytest.raises(CheckpointError, match="not a dense float") as e:
            amk.load_model(path, weights=weights)
        assert e.value.field == name and e.value.path.endswith("model.safetensors")
    edit_tensors(path, lambda sd: sd.__setitem__(name, sd[name].to(torch.float32).to(torch.float64)))
    assert amk.load_model(path).dims.n_layers  # a dense float of another width is cast, as transformers does


def _truncated(path):
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])


def _no_weights(path):
    os.remove(path / "model.safetensors")


def _no_hidden_size(path):
    cfg = json.loads((path / "config.json").read_text())
    del cfg["hidden_size"]
    (path / "config.json").write_text(json.dumps(cfg))


def _null_hidden_size(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_size"] = None
    (path / "config.json").write_text(json.dumps(cfg))


def _null_kv_heads(path):
    # transformers reads it as num_attention_heads: the K and V weights of 2 heads then have another shape (an
    # axis of whole heads of head_dim 8 too, which named head_dim)
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_key_value_heads"] = None
    (path / "config.json").write_text(json.dumps(cfg))


def _string_width(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg["hidden_size"] = "64"
    (path / "config.json").write_text(json.dumps(cfg))


def _storage_dtype(key, value):
    def edit(path):
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop("dtype", None)
        cfg[key] = value
        (path / "config.json").write_text(json.dumps(cfg))
    return edit


def _config_of_another_width(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] *= 4  # the weights keep theirs: lowering would size shared memory for a model not there
    (path / "config.json").write_text(json.dumps(cfg))


def _other_head_dim(path):
    cfg = json.loads((path / "config.json").read_text())
    cfg["head_dim"] = 2 * (cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    (path / "config.json").write_text(json.dumps(cfg))


def _not_json(path):
    (path / "config.json").write_text('{"model_type": "llama",')


def _index_without_shard(path):
    (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
    keys = load_file(path / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00002.safetensors" for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def _single_file_beside_an_index(path):
    # the same weights as shards too: transformers loads model.safetensors, so a change to it alone would run
    # unchecked and unhashed
    shutil.copy(path / "model.safetensors", path / "model-00001-of-00001.safetensors")
    keys = load_file(path / "model.safetensors")
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


BROKEN = {  # how -> (file named, field named, words in the message)
    "truncated safetensors": (_truncated, "model.safetensors", None, "truncated"),
    "no weight files": (_no_weights, None, None, "holds no weights"),
    "config without hidden_size": (_no_hidden_size, "config.json", "hidden_size", "missing"),
    "config with hidden_size null": (_null_hidden_size, "config.json", "hidden_size", "null: transformers would"),
    "config with num_key_value_heads null": (_null_kv_heads, "config.json", "num_key_value_heads",
                                             "null, which transformers reads as 4: then"),
    "config with a string width": (_string_width, "config.json", "hidden_size", "expected int"),
    "config not JSON": (_not_json, "config.json", None, "not valid JSON"),
    "config wider than its weights": (_config_of_another_width, "config.json", "intermediate_size",
                                      "model.layers.0.mlp.gate_proj.weight is"),
    "config with an unknown dtype": (_storage_dtype("dtype", "float8"), "config.json", "dtype", "'float8' is not a torch"),
    "config with a torch.-prefixed dtype": (_storage_dtype("dtype", "torch.bfloat16"), "config.json", "dtype",
                                            "'torch.bfloat16' is not a torch dtype name"),
    "config with another head_dim": (_other_head_dim, "config.json", "head_dim", "q_proj.weight is"),
    "config with an unknown torch_dtype": (_storage_dtype("torch_dtype", "bogus"), "config.json", "torch_dtype",
                                           "'bogus' is not a torch dtype"),
    "index naming a missing shard": (_index_without_shard, "model-00001-of-00002.safetensors", None, "not in the"),
    "single file beside an index": (_single_file_beside_an_index, None, None, "holds both model.safetensors and"),
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_malformed_checkpoints_are_named_refusals(tmp_path, how):
    breaks, file, field, words = BROKEN[how]
    path = llama(tmp_path / "ckpt")
    breaks(path)
    for weights in (False, True):
        with pytest.raises(CheckpointError, match=words) as e:
            amk.load_model(path, weights=weights)
        assert e.value.path.endswith(file) if file else e.value.path == str(path)
        assert e.value.field == field


@pytest.mark.parametrize("how", ["truncated safetensors", "no weight files", "config without hidden_size"])
def test_cli_reports_a_broken_checkpoint_as_a_usage_error(tmp_path, capsys, how):
    breaks, file, field, _ = BROKEN[how]
    path = llama(tmp_path / "ckpt")
    breaks(path)
    code, obj, err = cli_json_err(capsys, "verify", "--model", str(path), "--gpu", "cpu-sim", "--out",
                          str(tmp_path / "v.json"))
    assert code == 2 and obj["error_type"] == "usage"
    assert (file or str(path)) in obj["error"] and "Traceback" not in obj["error"]
    assert field is None or field in obj["error"]
    assert "Traceback" not in err


def test_cli_reports_a_missing_weight_as_a_usage_error(tmp_path, capsys):
    path = llama(tmp_path / "ckpt")
    edit_tensors(path, lambda sd: sd.pop("model.layers.0.self_attn.o_proj.weight"))
    code, obj, err = cli_json_err(capsys, "evaluate", "--model", str(path), "--gpu", "cpu-sim")
    assert code == 2 and "model.layers.0.self_attn.o_proj.weight" in obj["error"] and "Traceback" not in err


# ---- the fingerprint ------------------------------------------------------------------------------------------


def test_fingerprint_covers_the_weights_content(tmp_path):
    path = llama(tmp_path)
    before = amk.load_model(path, weights=False).fingerprint
    edit_tensors(path, lambda sd: sd["model.norm.weight"].mul_(1.5))  # same names, shapes and sizes
    assert amk.load_model(path, weights=False).fingerprint != before
    assert amk.load_model(path).fingerprint == amk.load_model(path, weights=False).fingerprint


def test_a_saved_shape_is_reused_only_for_its_own_seed(tmp_path, monkeypatch):
    """bench/shapes.py: the same shape and seed reuse the directory; another seed, another shape's directory or
    a directory it did not write are refused by name, and nothing is overwritten."""
    shapes = bench_shapes()
    monkeypatch.setitem(shapes.SHAPES, "tiny", ("LlamaConfig", dict(SMALL, num_hidden_layers=1)))
    out = shapes.save_shape("tiny", tmp_path, seed=3)
    weights = (out / "model.safetensors").read_bytes()
    assert shapes.save_shape("tiny", tmp_path, seed=3) == out
    with pytest.raises(SystemExit, match="'seed': 3.*'seed': 7"):  # another seed: refused
        shapes.save_shape("tiny", tmp_path, seed=7)
    assert (out / "model.safetensors").read_bytes() == weights
    assert amk.load_model(out).dims.n_layers == 1  # the marker file beside the checkpoint is no weight
    (tmp_path / "other" / "tiny").mkdir(parents=True)
    (tmp_path / "other" / "tiny" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="without a readable amk_shape.json"):
        shapes.save_shape("tiny", tmp_path / "other")
    (out / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="has lost model.safetensors"):
        shapes.save_shape("tiny", tmp_path, seed=3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    with pytest.raises(SystemExit, match="unknown shape 'tiny2'"):
        shapes.save_shape("tiny2", tmp_path)


def test_a_saved_shape_cut_to_fewer_layers_keeps_its_widths_beside_the_whole_one(tmp_path, monkeypatch):
    """bench/shapes.py --layers: the shape's widths, heads and vocabulary with that many layers, in a directory of
    its own (the whole shape's is never reused for it, nor it for the whole), readable by other users as a plain
    mkdir's would be."""
    shapes = bench_shapes()
    monkeypatch.setitem(shapes.SHAPES, "tiny", ("LlamaConfig", dict(SMALL, num_hidden_layers=3)))
    whole = shapes.save_shape("tiny", tmp_path, seed=3)
    cut = shapes.save_shape("tiny", tmp_path, seed=3, layers=2)
    assert cut == tmp_path / "tiny-2l" and whole == tmp_path / "tiny"
    a, b = amk.load_model(whole, weights=False).dims, amk.load_model(cut, weights=False).dims
    assert (a.n_layers, b.n_layers) == (3, 2)
    assert dataclasses.replace(a, n_layers=2) == b
    assert shapes.save_shape("tiny", tmp_path, seed=3, layers=2) == cut  # reused
    umask = os.umask(0)
    os.umask(umask)
    assert (cut.stat().st_mode & 0o777) == 0o777 & ~umask
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="layers must be a whole number"):
            shapes.save_shape("tiny", tmp_path, layers=bad)



@pytest.mark.parametrize("damage", [{"tokenizer.json": '{"not": "a tokenizer"'}, {"tokenizer.json": '{"version": "1.0"}'},
                                    {"tokenizer_config.json": '{"tokenizer_class": "NoSuchTokenizer"}'}],
                         ids=["cut-short", "no-tokens", "unknown-class"])
def test_a_damaged_tokenizer_costs_text_prompts_only(tmp_path, capsys, caplog, damage):
    """A tokenizer file transformers cannot read made every command that loads weights an internal error (exit 3,
    a traceback), evaluate and loop too, which need no tokenizer. Now the model loads with a warning naming the
    file; token ids run, and a text prompt is a CheckpointError naming it (exit 2)."""
    path = llama(tmp_path / "ckpt")
    for name, text in damage.items():
        (path / name).write_text(text)
    with caplog.at_level("WARNING", logger="amk.models"):
        model = amk.load_model(path)
    assert model.tokenizer is None and "could not load the tokenizer" in caplog.text
    assert verify(amk.lower(model, "cpu-sim"), model, cases="smoke").ok
    out = amk.generate(model, [1, 2, 3], max_new_tokens=2, device="cpu", stop_at_eos=False)
    assert len(out.tokens) == 2
    with pytest.raises(CheckpointError, match="could not load the tokenizer") as e:
        amk.generate(model, "hello", max_new_tokens=2, device="cpu")
    assert os.path.basename(e.value.path) in damage
    code, obj, _ = cli_json_err(capsys, "-q", "generate", "--model", str(path), "--prompt", "hello", "--device", "cpu")
    assert code == 2 and obj["error_type"] != "internal", obj
