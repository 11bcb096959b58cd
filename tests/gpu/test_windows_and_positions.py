"""Sliding-window attention and the position bound on the CUDA VM (skipped without CUDA and cupy)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import amk
from amk.eval.bench import prefill_random_kv
from amk.eval.cases import VerifyCase
from amk.eval.oracle import make_vm, verify
from amk.schedule.errors import ContextError, VmError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_checkpoints.py
from _checkpoints import llama, mistral_window, qwen2_window  # noqa: E402
from _stepwise import assert_steps_match  # noqa: E402

CONFIGS = [
    {},
    {"attention": {"kv_partitions": 1}},
    {"attention": {"softmax": "partition"}},
    {"attention": {"kv_partitions": 8, "combine": "stage"}},
    {"attention": {"kv_partitions": 8, "combine": "last_partition"}},
    {"attention": {"softmax": "partition", "kv_partitions": 2}, "smem_per_block": 24 * 1024},
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("windowed")
    return {"mistral": mistral_window(root / "mistral"), "qwen2": qwen2_window(root / "qwen2"),
            "mistral-long": mistral_window(root / "mistral-long", window=3000, max_pos=4096)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_sliding_window_verifies_on_the_cuda_vm(kind, dtype, checkpoints, target):
    model = amk.load_model(checkpoints[kind], dtype=dtype, device="cuda")
    assert any(model.dims.windows)
    for cfg in CONFIGS:
        prog = amk.lower(model, target, cfg, max_seq=64)
        assert amk.validate(prog, target).ok, cfg
        res = verify(prog, model, device="cuda", vm="cuda")  # positions 0, 1, 32, 61-63, 8 tokens, 32 greedy
        assert res.ok, (cfg, res.to_dict()["failures"])
    # and step for step against the ReferenceVM on the same device, from inside the window to well past it
    assert_steps_match(amk.lower(model, target, {}, max_seq=64), model, dtype, 20)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_window_longer_than_shared_memory_holds(dtype, checkpoints, target):
    # 3000 positions do not fit one block's shared memory at 24 KiB: scores go through the scratch buffer
    model = amk.load_model(checkpoints["mistral-long"], dtype=dtype, device="cuda")
    cases = [VerifyCase("pos0", 0, 1), VerifyCase("pos2000_inside", 2000, 2, seed=1),
             VerifyCase("pos3500_past", 3500, 3, seed=2), VerifyCase("greedy8_past", 4000, 2, generate=8, seed=3)]
    for cfg in ({"attention": {"kv_partitions": 1}, "smem_per_block": 24 * 1024},
                {"attention": {"kv_partitions": 2, "softmax": "partition"}, "smem_per_block": 24 * 1024},
                {"attention": {"kv_partitions": 4}, "smem_per_block": 24 * 1024}):
        prog = amk.lower(model, target, cfg, max_seq=4096)
        res = verify(prog, model, device="cuda", vm="cuda", cases=cases)
        assert res.ok, (cfg, res.to_dict()["failures"])


def test_generate_matches_transformers_past_the_window(checkpoints, tmp_path):
    model = amk.load_model(mistral_window(tmp_path / "m", window=8, max_pos=128), dtype="fp32", device="cuda")
    ids, n = [3, 17, 101, 42, 7], 80
    ref = model.eager.generate(torch.tensor([ids], device="cuda"), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert amk.generate(model, ids, max_new_tokens=n, device="cuda", stop_at_eos=False).tokens == ref


def test_a_step_past_the_last_position_raises(tmp_path, target):
    model = amk.load_model(llama(tmp_path / "l", max_position_embeddings=16), dtype="fp32", device="cuda")
    prog = amk.lower(model, target, {}, max_seq=16)
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    for t in range(16):
        vm.step(t + 1)
    k, v = (x.view(-1).clone() for x in (vm.tensors[b] for b in vm._kv))
    launched = vm.steps_launched
    with pytest.raises(ContextError, match="position 16"):
        vm.step(3)
    assert vm.steps_launched == launched  # refused before launch
    assert all(torch.equal(a, vm.tensors[b].view(-1)) for a, b in zip((k, v), vm._kv))
    # autonomous launches stop at the last slot too (a real prefix: reset poisons the cache with NaN, whose
    # argmax would feed the next launch a token outside the vocabulary)
    vm.reset()
    prefill_random_kv(vm, 14)
    vm.set_token(1)
    vm.launch()
    vm.launch()
    with pytest.raises(ContextError):
        vm.launch()
    vm.check()  # the two launched steps ran every task


def test_the_kernel_refuses_a_position_outside_the_cache(tmp_path, target):
    model = amk.load_model(llama(tmp_path / "l", max_position_embeddings=16), dtype="fp32", device="cuda")
    prog = amk.lower(model, target, {}, max_seq=16)
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    vm.tensors[prog.constants.pos].fill_(16)  # behind the host's back: the kernel's own guard must hold
    vm.set_token(1)
    vm.launch(advance=False)
    with pytest.raises(VmError, match="position 16 outside the KV cache"):
        vm.check()
    assert verify(prog, model, device="cuda", vm="cuda", cases="reduced").ok  # and the VM still works


def test_a_short_context_is_timed_within_its_slots(tmp_path):
    # the timed run launches one step per KV slot at most: 16 positions hold the warm-up and the timed steps
    model = amk.load_model(llama(tmp_path / "l", max_position_embeddings=16), dtype="bf16", device="cuda")
    v = amk.evaluate(model, "auto", {}, device="cuda")
    assert v["correct"], (v["failures"], v["notes"])
    assert not any("GPU failure" in n for n in v["notes"]), v["notes"]


def test_timing_stops_after_one_repeat_above_the_bound(tmp_path):
    # the racing bound of the search: a first repeat above it ends the timing, below it all five run
    model = amk.load_model(llama(tmp_path / "l", max_position_embeddings=256), dtype="bf16", device="cuda")
    raced = amk.evaluate(model, "auto", {}, device="cuda", stop_above_us=0.5)
    assert raced["correct"] and raced["timed_repeats"] == 1 and raced["latency_spread_us"] is None
    assert any("stopped after one repeat" in n for n in raced["notes"])
    full = amk.evaluate(model, "auto", {}, device="cuda", stop_above_us=1e9)
    assert full["timed_repeats"] == 5 and full["latency_spread_us"] is not None
    assert 0.5 * full["latency_us"] < raced["latency_us"] < 2 * full["latency_us"]
