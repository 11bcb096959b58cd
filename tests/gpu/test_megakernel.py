"""The CUDA megakernel against the ReferenceVM and transformers (skipped without CUDA and cupy)."""

import random
import sys
from pathlib import Path

import pytest
import torch

import amk
from amk.eval.oracle import make_vm, verify
from amk.schedule import ScheduleConfig
from amk.schedule.config import iter_knobs, with_value
from amk.schedule.errors import AmkError
from amk.schedule.program import Wait
from amk.schedule.smem import max_dynamic_smem
from amk.schedule.space import conflicts

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_checkpoints.py
from _checkpoints import public_shape  # noqa: E402
from _schedules import assert_planted_deadlock_stops  # noqa: E402

MODELS = ["toy", "toy-2L", "smollm2-135m", "qwen3-0.6b", "llama-3.2-1b"]
SMALL = {"toy", "toy-2L"}


def _model(name, dtype):
    return amk.load_model(name, dtype=dtype, device="cuda")


def random_config(rng: random.Random, target, model, max_seq: int) -> ScheduleConfig:
    """A random point of the search space that lowers and validates for `model` on `target`."""
    while True:
        cfg = ScheduleConfig()
        for path, f, _ in iter_knobs():
            values = f.metadata.get("search")
            if not values or path == "sm.explicit_map":
                continue
            values = [v for v in values if path != "smem_per_block" or v <= max_dynamic_smem(target.smem_per_block_max)]
            cfg = with_value(cfg, path, rng.choice(values))
        if conflicts(cfg):
            continue
        try:
            if amk.validate(amk.lower(model, target, cfg, max_seq=max_seq), target).ok:
                return cfg
        except AmkError:
            continue


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_default_config_matches_transformers_and_reference(name, dtype, target):
    model = _model(name, dtype)
    prog = amk.lower(model, target, None, max_seq=min(1024, model.dims.max_positions))
    cases = "full" if name in SMALL else "reduced"
    res = verify(prog, model, device="cuda", vm="cuda", cases=cases)
    assert res.ok, res.to_dict()["failures"]
    # and step for step against the ReferenceVM on the same device
    gpu, ref = make_vm(prog, model, device="cuda", vm="cuda"), make_vm(prog, model, device="cuda")
    for tok in (1, 5, 9):
        a, na = gpu.step(tok)
        b, nb = ref.step(tok)
        tol = 1e-4 if dtype == "fp32" else 5e-2
        assert torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max()))), (tok, float((a - b).abs().max()))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_twenty_random_configs_verify(name, target):
    rng = random.Random(7)
    model = _model(name, "fp32")
    for i in range(20):
        cfg = random_config(rng, target, model, 128)
        prog = amk.lower(model, target, cfg, max_seq=128)
        assert amk.validate(prog, target).ok
        res = verify(prog, model, device="cuda", vm="cuda", cases="reduced")
        assert res.ok, (i, cfg.to_dict(), res.to_dict()["failures"])


def _greedy_eager(model, ids, n):
    out = model.eager.generate(torch.tensor([ids], device="cuda"), max_new_tokens=n, do_sample=False,
                               min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m"])
def test_64_token_greedy_fp32(name, target):
    model = _model(name, "fp32")
    ids = [3, 14, 15, 9, 26]
    gen = amk.generate(model, ids, max_new_tokens=64, device="cuda", stop_at_eos=False)
    assert gen.tokens == _greedy_eager(model, ids, 64)


def test_64_token_greedy_real_weights_bf16(target):
    from amk.models.registry import gguf_path
    from amk.schedule.errors import EnvironmentProblem

    try:
        gguf_path()
    except EnvironmentProblem as e:  # the README's set-up installs it; a bare GPU image may lack it
        pytest.skip(str(e))
    model = _model("smollm2-135m-instruct", "bf16")
    ids = model.tokenizer("The capital of France is")["input_ids"]
    gen = amk.generate(model, ids, max_new_tokens=64, device="cuda", stop_at_eos=False)
    out = model.eager.generate(torch.tensor([ids], device="cuda"), max_new_tokens=64, min_new_tokens=64,
                               do_sample=False, eos_token_id=None, pad_token_id=0, output_scores=True,
                               return_dict_in_generate=True)
    ref = out.sequences[0, len(ids):].tolist()
    first = next((i for i, (a, b) in enumerate(zip(gen.tokens, ref)) if a != b), None)
    if first is not None:
        # a divergence is only allowed where bf16 eager itself cannot tell its choice from ours
        scores = out.scores[first][0].float()
        a, b = float(scores[ref[first]]), float(scores[gen.tokens[first]])
        assert abs(a - b) <= 2 * 2.0 ** -7 * max(abs(a), 1.0), (first, a, b, gen.tokens, ref)
    assert "Paris" in model.tokenizer.decode(gen.tokens[:8])


def test_generate_on_cuda_refuses_logits_past_fp16_range_by_name(tmp_path, target):
    from _checkpoints import edit_tensors, llama

    path = llama(tmp_path / "m", num_hidden_layers=2)
    # finite fp16 weights whose MLP output is not (the products past 65504): every step's logits NaN or infinite
    edit_tensors(path, lambda sd: sd.update({k: v * 2000.0 for k, v in sd.items() if ".mlp." in k}))
    # the kernel's argmax of NaN logits is no token, so the decode cannot go on: the error says why
    with pytest.raises(AmkError, match=r"logits are not finite .* argmax of such logits is no token"):
        amk.generate(str(path), [1, 5, 9], max_new_tokens=4, device="cuda", dtype="fp16", stop_at_eos=False)
    with pytest.raises(AmkError, match=r"logits are not finite .* argmax of such logits is no token"):
        amk.generate(str(path), [1, 5, 9], max_new_tokens=1, device="cuda", dtype="fp16", stop_at_eos=False)
    fine = amk.generate(str(path), [1, 5, 9], max_new_tokens=4, device="cuda", dtype="fp32", stop_at_eos=False)
    assert not any("not finite" in n for n in fine.notes), fine.notes


@pytest.mark.parametrize("name,dtype", [("llama-3.2-1b", "bf16"), ("toy", "fp32")])
def test_default_kernel_keeps_nothing_in_local_memory(name, dtype, target):
    # local memory lives in L1, which the weight stream sweeps: each access there became an L2 round trip on the
    # attention and dependency-wait paths (1286 -> 1221 us on llama-3.2-1b bf16 once it was gone, H100)
    model = _model(name, dtype)
    prog = amk.lower(model, target, None, max_seq=min(1024, model.dims.max_positions))
    vm = make_vm(prog, model, device="cuda", vm="cuda")
    assert vm.local_bytes == 0, vm.local_bytes


ATTENTION_PATHS = [None, {"attention": {"softmax": "global"}}, {"attention": {"kv_partitions": 1}}]
LARGE_GROUPS = {"qwen2.5-0.5b", "tinyllama-1.1b"}  # 7 and 8 q heads a KV head: the narrowed q, K and V slices


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b", "tinyllama-1.1b", "qwen3-1.7b"])
def test_every_group_size_keeps_nothing_in_local_memory(name, dtype, target):
    # group sizes 3, 7, 8 and 2 (head_dim 128): 7 or 8 q heads a KV head in bf16 once held 64 q values and 64
    # value accumulators a thread, which spilled (tinyllama-1.1b's attention ran about 4x its bytes' time).
    # Every attention path of the large groups; the default kernel of every group.
    import cupy

    from amk.vm.loader import KERNEL_NAME, build_module, nvrtc_version

    model = public_shape(name, dtype)
    drv = cupy.cuda.driver
    arch = "sm_{}{}".format(*torch.cuda.get_device_capability())
    for cfg in ATTENTION_PATHS if name in LARGE_GROUPS else [None]:
        prog = amk.lower(model, target, cfg, max_seq=1024)
        module, _, _ = build_module(prog, arch)
        kernel = module.get_function(KERNEL_NAME)
        local = drv.funcGetAttribute(drv.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, kernel.ptr)
        assert local == 0, (name, dtype, cfg, local, f"NVRTC {nvrtc_version()}")


def test_planted_deadlock_raises_quickly_and_gpu_stays_usable(target):
    model = _model("toy", "fp32")
    prog = amk.lower(model, target, None, max_seq=64)
    # built around the validator: make the first task that polls a counter wait for a count it never reaches (a
    # wait the tagged residual stream carries is never polled)
    t = next(t for t in prog.tasks if t.waits and t.waits[0].counter not in t.carried)
    w = t.waits[0]
    t.waits = (Wait(w.counter, w.count + 1),) + t.waits[1:]
    assert_planted_deadlock_stops(prog, model, target, t.id)


def _verify_configs(model, target, configs) -> None:
    for cfg in configs:
        prog = amk.lower(model, target, cfg, max_seq=256)
        assert amk.validate(prog, target).ok, cfg
        res = verify(prog, model, device="cuda", vm="cuda", cases="reduced")
        assert res.ok, (cfg, res.to_dict()["failures"])


# weight pages: whole rows a page and rows cut into pages, k-splits, depths, page sizes, and copies in flight (all
# of the pages, 2 of 4, 4 of 10, 1 of 3)
PIPELINE_CONFIGS = [
    {"pipeline": {"pages": 2, "page_kb": 8}, "pipelining_depth": 0},
    {"pipeline": {"pages": 4, "page_kb": 16, "inflight_kb": 0}, "pipelining_depth": 2,
     "matvec": {"down": {"rows_per_task": 8, "k_splits": 2}, "gate_up": {"rows_per_task": 128}}},
    {"pipeline": {"pages": 10, "page_kb": 16, "inflight_kb": 64}, "smem_per_block": 223 * 1024, "pipelining_depth": 8,
     "threads_per_block": 256, "matvec": {"o": {"rows_per_task": 8}, "gate_up": {"rows_per_task": 40}}},
    {"pipeline": {"pages": 3, "page_kb": 32}, "smem_per_block": 160 * 1024, "pipelining_depth": 4,
     "attention": {"softmax": "partition", "kv_partitions": 8}, "matvec": {"lm_head": {"k_splits": 2}}},
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SMALL) + ["smollm2-135m", "qwen3-0.6b"])
def test_weight_pipeline_configs_verify(name, dtype, target):
    if int(target.arch.split("_")[1]) < 90:
        pytest.skip("the weight pipeline needs bulk copies (sm_90+)")
    if name == "qwen3-0.6b" and dtype != "fp32":
        pytest.skip("qwen3-0.6b runs in fp32 here: its 12 KiB down-projection rows are cut into 8 KiB pages")
    _verify_configs(_model(name, dtype), target, PIPELINE_CONFIGS)


SPLIT_JOIN_CONFIGS = [  # k-splits whose row block's last split task reduces them (matvec.<role>.reduce last_task)
    {"matvec": {"o": {"k_splits": 2, "reduce": "last_task"}, "down": {"k_splits": 3, "reduce": "last_task"}}},
    {"matvec": {"gate_up": {"k_splits": 2, "reduce": "last_task"}, "lm_head": {"k_splits": 2, "reduce": "last_task"}},
     "build": {"loads_in_flight": 8, "rows_in_flight": 2}},  # short rows of 1-3 loads a lane, two units at once
    {"matvec": {"o": {"k_splits": 3, "reduce": "last_task", "rows_per_task": 8}}, "attention": {"kv_partitions": 1}},
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SMALL) + ["smollm2-135m"])
def test_split_join_configs_verify(name, dtype, target):
    configs = SPLIT_JOIN_CONFIGS
    if int(target.arch.split("_")[1]) >= 90:  # the join after a task streamed from the weight pipeline's pages
        configs = configs + [{"pipeline": {"pages": 4, "page_kb": 16},
                              "matvec": {"o": {"k_splits": 2, "reduce": "last_task"}}}]
    _verify_configs(_model(name, dtype), target, configs)


def test_o_split_over_kv_heads_verifies_on_a_public_shape(target, tmp_path):
    # llama-3.2-1b's shape, two layers, saved with seeded random weights: O split over its 8 KV heads (256
    # weights a row, the short-row walk) and reduced by each row block's last split
    from _checkpoints import llama

    model = amk.load_model(llama(tmp_path / "m", hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                                 num_key_value_heads=8, head_dim=64, num_hidden_layers=2, max_position_embeddings=256),
                           dtype="bf16",
                           device="cuda")
    for cfg in [{"matvec": {"o": {"k_splits": 8, "reduce": "last_task"}}},
                {"matvec": {"o": {"k_splits": 4, "reduce": "last_task"}}, "build": {"rows_in_flight": 2}}]:
        prog = amk.lower(model, target, cfg, max_seq=256)
        o = [t for t in prog.tasks if t.kind == "o"]
        assert all(len(t.waits) == 8 // cfg["matvec"]["o"]["k_splits"] for t in o)  # its KV heads' attention only
        assert amk.validate(prog, target).ok, cfg
        res = verify(prog, model, device="cuda", vm="cuda", cases="reduced")
        assert res.ok, (cfg, res.to_dict()["failures"])


SPLIT_HEAD_CONFIGS = [  # split QKV heads at a few step shapes of the register path
    {"matvec": {"qkv": {"head_splits": 2}}, "sm": {"assignment": "list_scheduling"},
     "build": {"rows_in_flight": 2, "loads_in_flight": 2}},
    {"matvec": {"qkv": {"head_splits": 4}, "down": {"rows_per_task": 8, "k_splits": 2}},
     "build": {"rows_in_flight": 4, "loads_in_flight": 1}},
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(SMALL) + ["smollm2-135m"])
def test_split_head_configs_verify(name, dtype, target):
    _verify_configs(_model(name, dtype), target, SPLIT_HEAD_CONFIGS)


SOFTMAX_CONFIGS = [  # the default is one task per partition under its own softmax, then a rescaling combine
    {"attention": {"softmax": "global"}},  # scores, values from the global (max, sum), then a sum
    {"attention": {"softmax": "partition", "combine": "stage"}},
    {"attention": {"softmax": "partition", "combine": "last_partition"}},  # the last partition of a head combines it
    {"attention": {"softmax": "global", "combine": "last_partition", "kv_partitions": 16}},
    {"attention": {"softmax": "partition", "kv_partitions": 16}, "matvec": {"qkv": {"head_splits": 2}}},
    {"attention": {"softmax": "partition", "kv_partitions": 2}, "smem_per_block": 24 * 1024},  # scores in scratch
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(SMALL) + ["smollm2-135m"])
def test_softmax_configs_verify(name, dtype, target):
    _verify_configs(_model(name, dtype), target, SOFTMAX_CONFIGS)


PARTIALS_CONFIGS = [  # partition outputs stored in the model's dtype, through every writer and reader
    {"attention": {"partials_dtype": "model"}},  # O combines them while staging its input
    {"attention": {"partials_dtype": "model", "combine": "stage"}},
    {"attention": {"partials_dtype": "model", "combine": "last_partition"}},
    {"attention": {"partials_dtype": "model", "kv_partitions": 16}, "threads_per_block": 128},  # a warp a q head
]
EDGE_PARTIALS_CONFIGS = [
    {"attention": {"partials_dtype": "model", "softmax": "global", "kv_partitions": 16}},  # ATTN_VALUES' outputs
    {"attention": {"partials_dtype": "model", "kv_partitions": 2}, "smem_per_block": 24 * 1024},  # block-wide
]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["toy-2L", "smollm2-135m"])
def test_model_dtype_partials_verify(name, dtype, target):
    # smollm2-135m's greedy8 in bf16 sits near a tie at its fifth token (eager's logits 3.984 against 3.891, the
    # fp32 reference's 3.959 against 3.878, where verify forgives 1.6%): one rounding more moves it across, on
    # the ReferenceVM under the global softmax and on the GPU on the block-wide path. Those two writers are
    # verified on the other three
    edge = EDGE_PARTIALS_CONFIGS if (name, dtype) != ("smollm2-135m", "bf16") else []
    _verify_configs(_model(name, dtype), target, PARTIALS_CONFIGS + edge)
