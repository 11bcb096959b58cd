"""The kernel source compiles for sm_90 with the local nvcc, for a sliding-window model under each attention
layout, with nothing on the stack (skipped where nvcc is absent, as on CI)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from _checkpoints import ATTENTION_WARP_SHAPES, attention_warp_shape, mistral_window

import amk
from amk.schedule import get_target, lower
from amk.schedule.smem import kernel_static_smem_bytes
from amk.vm.abi import generate_header
from amk.vm.loader import kernel_source

NVCC = shutil.which("nvcc")
# each shape's own GQA group in one task: the layout the shape stands for (a derived q split would narrow it)
WHOLE_GROUPS = {"attention": {"q_splits": 1}}


def _ptxas_report(prog, tmp_path) -> subprocess.CompletedProcess:
    """nvcc's build of the kernel for `prog` at sm_90, with ptxas's resource report on stderr."""
    src = tmp_path / "k.cu"
    src.write_text(generate_header(prog) + "\n" + kernel_source())
    return subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                           str(src)], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("cfg", [{"attention": {"kv_partitions": 1}},
                                 {"attention": {"softmax": "partition", "combine": "stage"}},
                                 {"attention": {"softmax": "global"}}], ids=["decode", "partition", "scores-values"])
def test_windowed_kernel_compiles_for_sm90(tmp_path, cfg):
    model = amk.load_model(mistral_window(tmp_path / "m"), dtype="bf16", weights=False)
    prog = lower(model, get_target("h100-sxm"), cfg, max_seq=128)
    assert {t.params.window for t in prog.tasks if hasattr(t.params, "window")} == {8}
    out = _ptxas_report(prog, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 bytes stack frame" in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("heads,kv_heads", [(32, 8), (14, 2), (16, 2)], ids=["group4", "group7", "group8"])
def test_large_gqa_groups_keep_nothing_on_the_stack(tmp_path, heads, kv_heads, dtype):
    # 7 or 8 q heads a KV head once held G x 8 q values and as many value accumulators a thread in 16-bit
    # rows and spilled to the stack (what the weight stream then evicted from L1); 4 of them (llama-3.2-1b's
    # attention) kept 8 bytes there while the values pass had eight 16-byte V loads in flight
    from _checkpoints import llama

    model = amk.load_model(llama(tmp_path / "m", hidden_size=heads * 64, num_attention_heads=heads,
                                 num_key_value_heads=kv_heads, head_dim=64), dtype=dtype, weights=False)
    assert model.dims.group == heads // kv_heads
    for cfg in [{}, {"attention": {"softmax": "global"}}, {"attention": {"kv_partitions": 1}}]:
        prog = lower(model, get_target("h200"), cfg, max_seq=128)
        out = _ptxas_report(prog, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "0 bytes stack frame" in out.stderr, (cfg, out.stderr[-2000:])


# stack bytes a build of more than 8 q heads a KV head may hold: its block-wide passes take the group in tiles of
# 8 heads at ptxas's 128-register cap, where nvcc 13.0 leaves 0-16 bytes (32 q heads held 160-528 in one tile); the
# GPU image's NVRTC is held to the same budget (test_kernel_local_memory.py)
TILED_GROUP_STACK_BYTES = 16


def _warp_layouts():
    for shape in sorted(ATTENTION_WARP_SHAPES):
        for dtype in ("bf16", "fp32"):
            if (shape, dtype) == ("g1-hd256", "fp32"):
                continue  # refused: test_a_k_row_wider_than_a_warp_is_refused_before_the_build
            yield pytest.param(shape, dtype, id=f"{shape}-{dtype}")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("shape,dtype", list(_warp_layouts()))
def test_every_attention_warp_layout_keeps_nothing_on_the_stack(tmp_path, shape, dtype):
    # warps of a q head, heads of a warp, V rows a warp-wide load or a head dim a lane (tests/gpu/
    # test_attention_warps.py runs the same shapes)
    model = amk.load_model(attention_warp_shape(tmp_path / "m", shape), dtype=dtype, weights=False)
    prog = lower(model, get_target("h200"), WHOLE_GROUPS, max_seq=256)
    out = _ptxas_report(prog, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    budget = TILED_GROUP_STACK_BYTES if model.dims.group > 8 else 0
    assert _stack_bytes(out.stderr) <= budget, out.stderr[-2000:]
    # the validator's bound of the static shared memory beside smem_per_block holds at every head_dim (16-256)
    (static,) = re.findall(r"(\d+) bytes smem", out.stderr)
    assert int(static) <= kernel_static_smem_bytes(prog.build, prog.constants.head_dim), out.stderr[-2000:]


def _stack_bytes(ptxas_log: str) -> int:
    """The kernel's stack frame in ptxas's resource report (one entry function)."""
    (frame,) = re.findall(r"(\d+) bytes stack frame", ptxas_log)
    return int(frame)


def test_a_k_row_wider_than_a_warp_is_refused_before_the_build(tmp_path, monkeypatch):
    from amk.schedule.errors import UnsupportedModelError
    from amk.vm.loader import check_head_row, check_kernel_shape

    path = attention_warp_shape(tmp_path / "m", "g1-hd256")
    prog = lower(amk.load_model(path, dtype="fp32", weights=False), get_target("h200"), {}, max_seq=256)
    with pytest.raises(UnsupportedModelError, match="head_dim=256 in fp32.*at most 128 in fp32") as e:
        check_kernel_shape(prog)
    assert e.value.feature == "head_dim=256 in fp32"
    check_kernel_shape(lower(amk.load_model(path, dtype="bf16", weights=False), get_target("h200"), {}, max_seq=256))
    # evaluate on a CPU runs the ReferenceVM, which takes it
    v = amk.evaluate(str(path), "h200", {}, dtype="fp32", device="cpu", max_seq=64)
    assert v["correct"] and any("does not build this model for h200" in n for n in v["notes"]), v["notes"]
    v = amk.evaluate(str(path), "h200", {}, dtype="bf16", device="cpu", max_seq=64)
    assert not any("does not build" in n for n in v["notes"]), v["notes"]
    v = amk.evaluate(str(path), "cpu-sim", {}, dtype="fp32", device="cpu", max_seq=64)  # a stand-in for no GPU
    assert any("does not build this model on any GPU" in n for n in v["notes"]), v["notes"]
    # a loop on a GPU refuses it before its first trial, writing no row (its GPU stood in for here)
    import amk.harness.loop as loop_mod
    from amk.harness.environment import Device

    monkeypatch.setattr(loop_mod, "resolve_device", lambda device: Device.CUDA)
    results = tmp_path / "results.tsv"
    with pytest.raises(UnsupportedModelError, match="head_dim=256 in fp32"):
        amk.loop(str(path), "h200", budget=2, dtype="fp32", results=results, corpus=tmp_path / "corpus.jsonl")
    assert not results.exists()
    with pytest.raises(UnsupportedModelError, match="head_dim=136 in fp32.*at most 128"):
        check_head_row(136, 4)
    check_head_row(128, 4)
    check_head_row(256, 2)


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_partials_in_the_model_dtype_compile_with_nothing_on_the_stack(tmp_path, dtype):
    # every writer of partition outputs (per-warp heads, block-wide, the global softmax's values) and every
    # reader (O's staged combine, the combine stage, the last partition's join) with 2-byte partials (an fp32
    # model's partials are fp32 either way: the default's program)
    from _checkpoints import llama

    model = amk.load_model(llama(tmp_path / "m"), dtype=dtype, weights=False)
    for cfg in [{"attention": {"partials_dtype": "model", "kv_partitions": 4}},
                {"attention": {"partials_dtype": "model", "kv_partitions": 4, "combine": "stage"}},
                {"attention": {"partials_dtype": "model", "kv_partitions": 4, "combine": "last_partition"}},
                {"attention": {"partials_dtype": "model", "kv_partitions": 4, "softmax": "global"}}]:
        prog = lower(model, get_target("h200"), cfg, max_seq=128)
        assert prog.build["PARTIALS_MODEL_DTYPE"] == 1
        out = _ptxas_report(prog, tmp_path)
        assert out.returncode == 0, (cfg, out.stderr[-3000:])
        assert "0 bytes stack frame" in out.stderr, (cfg, out.stderr[-2000:])


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("splits", [2, 4])
def test_q_splits_compile_with_nothing_on_the_stack(tmp_path, splits):
    # a task group of 8 / splits q heads, the plain and the folded-RoPE partition attention
    from _checkpoints import llama

    model = amk.load_model(llama(tmp_path / "m", hidden_size=16 * 64, num_attention_heads=16, num_key_value_heads=2,
                                 head_dim=64), dtype="bf16", weights=False)
    for cfg in [{"attention": {"q_splits": splits}},
                {"attention": {"q_splits": splits, "kv_partitions": 8},
                 "fusion": {"rope_kv_into_attention": True, "rope_kv_into_qkv": False}}]:
        prog = lower(model, get_target("h200"), cfg, max_seq=128)
        assert prog.build["Q_SPLITS"] == splits
        out = _ptxas_report(prog, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "0 bytes stack frame" in out.stderr, (cfg, out.stderr[-2000:])


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("name", ["llama-3.2-1b", "tinyllama-1.1b", "qwen3-1.7b", "qwen2.5-0.5b"])
def test_o_split_over_kv_heads_keeps_nothing_on_the_stack(tmp_path, name, dtype):
    # O split over K (the short-row walk of 128- to 512-weight rows) and reduced by each row block's last split
    from _checkpoints import public_shape

    model = public_shape(name, dtype, device="cpu")
    splits = min(4, model.dims.n_kv_heads)
    prog = lower(model, get_target("h200"), {"matvec": {"o": {"k_splits": splits, "reduce": "last_task"}}},
                 max_seq=1024)
    if dtype == "bf16":  # 448 or 512 weights a row: two loads a lane (fp32 rows of 512 take four, the plain walk)
        assert "#define AMK_USES_SHORT_ROWS 1" in generate_header(prog)
    out = _ptxas_report(prog, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 bytes stack frame" in out.stderr, out.stderr[-2000:]
