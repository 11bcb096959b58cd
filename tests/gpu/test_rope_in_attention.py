"""fusion.rope_kv_into_attention on the CUDA VM: the partition attention tasks normalise and rotate q and this
step's k from QKV's raw rows and append k and v (skipped without CUDA and cupy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import amk
from amk.eval.oracle import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_checkpoints.py
from _checkpoints import SMALL, save_checkpoint  # noqa: E402
from _stepwise import assert_steps_match  # noqa: E402

FOLDED = {"fusion": {"rope_kv_into_attention": True}}
CONFIGS = [  # partitions in shared memory, on the block-wide path (24 KiB), combined by O, a join or a stage
    {"matvec": {"qkv": {"head_splits": 2}}},  # split heads: on a q/k-norm model where the RoPE stage stood
    {**FOLDED, "attention": {"kv_partitions": 2}},
    {**FOLDED, "attention": {"kv_partitions": 4, "combine": "last_partition", "sync": "head"}},
    {**FOLDED, "attention": {"kv_partitions": 8, "combine": "stage"}, "matvec": {"qkv": {"head_splits": 1}}},
    {**FOLDED, "attention": {"kv_partitions": 2}, "smem_per_block": 24 * 1024},
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import LlamaConfig, Qwen3Config

    root = tmp_path_factory.mktemp("folded")
    return {"qwen3": save_checkpoint(Qwen3Config(**SMALL, num_hidden_layers=2, head_dim=32, max_position_embeddings=256),
                                     root / "qwen3"),
            "llama": save_checkpoint(LlamaConfig(**SMALL, num_hidden_layers=2, max_position_embeddings=256), root / "llama")}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_rope_in_the_attention_verifies_on_the_cuda_vm(kind, dtype, checkpoints, target):
    model = amk.load_model(checkpoints[kind], dtype=dtype, device="cuda")
    for cfg in CONFIGS:
        prog = amk.lower(model, target, cfg, max_seq=128)
        if cfg is CONFIGS[0]:  # derived: folded on the q/k-norm model only
            assert prog.meta["derived"]["fusion.rope_kv_into_attention"] is (kind == "qwen3")
        assert amk.validate(prog, target).ok, cfg
        res = verify(prog, model, device="cuda", vm="cuda")
        assert res.ok, (cfg, res.to_dict()["failures"])
    # step for step against the ReferenceVM on the same device: the appended rows are what later steps read
    assert_steps_match(amk.lower(model, target, CONFIGS[1], max_seq=128), model, dtype, 40)
