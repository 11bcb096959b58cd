"""fusion.rope_kv_into_attention on the ReferenceVM: the partition attention tasks normalise and rotate q, and this
step's k, from QKV's raw rows and append k and v; the RoPE stage leaves the chain. Its refusals name the knob."""

from __future__ import annotations

import pytest
from _checkpoints import SMALL, save_checkpoint

import amk
from amk.schedule.errors import LoweringError

FOLDED = {"fusion": {"rope_kv_into_attention": True}}


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from transformers import Qwen3Config

    path = tmp_path_factory.mktemp("qwen3") / "ckpt"
    return save_checkpoint(Qwen3Config(**SMALL, num_hidden_layers=2, head_dim=32, max_position_embeddings=256), path)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_a_qk_norm_model_folds_rope_into_the_attention_and_verifies(qwen3, dtype):
    model = amk.load_model(qwen3, dtype=dtype)
    split = {"matvec": {"qkv": {"head_splits": 2}}}  # split heads: where the RoPE stage stood
    folded = amk.lower(model, "h200", split, max_seq=128)
    staged = amk.lower(model, "h200", {**split, "fusion": {"rope_kv_into_attention": False}}, max_seq=128)
    assert folded.meta["derived"]["fusion.rope_kv_into_attention"] is True
    assert staged.meta["derived"]["fusion.rope_kv_into_qkv"] is False  # the RoPE stage it replaces
    assert folded.meta["stages"] == staged.meta["stages"] - model.dims.n_layers  # one stage fewer a layer
    for prog in (folded, staged):
        assert amk.validate(prog).ok
        assert amk.verify(prog, model, cases="full").ok
    # any order of the SMs: no task reads the appended row from the caches in the step that appends it
    assert amk.verify(folded, model, cases="reduced", adversarial=True, seed=7).ok


@pytest.mark.parametrize("cfg", [
    {**FOLDED, "attention": {"kv_partitions": 2}},
    {**FOLDED, "attention": {"kv_partitions": 4, "combine": "last_partition", "sync": "head"}},
    {**FOLDED, "attention": {"kv_partitions": 4, "combine": "stage"}},
], ids=["o-input", "last-partition", "stage"])
def test_a_model_without_a_qk_norm_verifies_folded_under_every_combine(cfg):
    model = amk.load_model("toy-2L")
    prog = amk.lower(model, "cpu-sim", cfg)
    assert amk.lower(model, "cpu-sim", {}).meta["derived"]["fusion.rope_kv_into_attention"] is False
    assert amk.validate(prog).ok and amk.verify(prog, model, cases="full").ok


@pytest.mark.parametrize("cfg, words", [
    ({"fusion": {"rope_kv_into_attention": True, "rope_kv_into_qkv": True}}, "rope_kv_into_qkv false"),
    ({**FOLDED, "attention": {"softmax": "global", "kv_partitions": 4}}, "softmax partition"),
    ({**FOLDED, "attention": {"kv_partitions": 1}}, "kv_partitions > 1"),
])
def test_a_fold_the_attention_cannot_take_is_refused_by_name(cfg, words):
    with pytest.raises(LoweringError, match=words) as e:
        amk.lower(amk.load_model("toy"), "cpu-sim", cfg)
    assert "fusion.rope_kv_into_attention" in str(e.value)
