"""The megakernel's local memory under the GPU image's NVRTC (13.0), on a CPU, for the default config of every
public shape of bench/shapes.py and the built-in toy models, and the other attention paths of the large GQA
groups. Local memory lives in L1, which the weight stream sweeps: the partition softmax's kernel held 24-32
bytes of it under NVRTC 13.0 on four models (and none under nvcc 13.0), which only the GPU tests saw."""

from __future__ import annotations

import platform
import sys

import pytest
from _checkpoints import ATTENTION_WARP_SHAPES, attention_warp_shape, public_shape

import amk
from amk.schedule import get_target, lower
from amk.vm import nvrtc
from amk.vm.abi import generate_header
from amk.vm.loader import kernel_source

if not (sys.platform == "linux" and platform.machine() == "x86_64"):
    pytest.skip("the NVRTC wheels of the dev extras are for Linux x86_64", allow_module_level=True)

LOCAL_BYTES_BUDGET = 16  # as tests/gpu's local-memory tests
SHAPES = ["smollm2-135m", "qwen2.5-0.5b", "tinyllama-1.1b", "llama-3.2-1b", "qwen3-1.7b", "qwen2.5-3b"]
LARGE_GROUPS = {"qwen2.5-0.5b", "tinyllama-1.1b"}  # 7 and 8 q heads a KV head
OTHER_PATHS = [{"attention": {"softmax": "global"}}, {"attention": {"kv_partitions": 1}}]


def _model(name: str, dtype: str, tmp_path):
    if name in SHAPES:
        return public_shape(name, dtype, device="cpu")
    if name in ATTENTION_WARP_SHAPES:
        return amk.load_model(attention_warp_shape(tmp_path / name, name), dtype=dtype, weights=False)
    return amk.load_model(name, dtype=dtype, weights=False)


def _cases():
    for name in SHAPES:
        yield name, "bf16", None
        for cfg in OTHER_PATHS if name in LARGE_GROUPS else []:
            yield name, "bf16", cfg
    yield "qwen3-1.7b", "fp32", None  # head_dim 128 in fp32 rows
    for name, dtype in (("llama-3.2-1b", "bf16"), ("qwen3-1.7b", "fp32")):  # four groups of words in flight in down
        yield name, dtype, {"build": {"tagged_hidden": True}}
    for dtype in ("fp32", "fp16"):
        yield "toy", dtype, None
    for warps in (1, 8):  # attention.head_warps at one warp a q head and the most (qwen3-1.7b: 16 warps, 2 q heads)
        yield "qwen3-1.7b", "bf16", {"attention": {"head_warps": warps}}
    # the block-wide passes of more than 8 q heads a KV head, in tiles of 8 (160-528 bytes in one tile of 32)
    for shape, dtype, cfg in (("g32-hd16", "bf16", {"attention": {"q_splits": 1}}),
                              ("g32-hd16", "bf16", OTHER_PATHS[0]), ("g32-hd16", "fp32", OTHER_PATHS[1]),
                              ("g16-hd16", "fp32", OTHER_PATHS[1])):
        yield shape, dtype, cfg


@pytest.mark.parametrize("name,dtype,cfg", list(_cases()), ids=lambda v: str(v) if v is not None else "default")
def test_kernel_keeps_nothing_in_local_memory_under_the_gpu_images_nvrtc(name, dtype, cfg, tmp_path):
    assert nvrtc.version() == (13, 0), "the dev extras pin the GPU image's NVRTC, 13.0"
    model = _model(name, dtype, tmp_path)
    prog = lower(model, get_target("h200"), cfg, max_seq=min(1024, model.dims.max_positions))
    res = nvrtc.kernel_resources(generate_header(prog) + "\n" + kernel_source(), "sm_90")
    assert res.stack_bytes <= LOCAL_BYTES_BUDGET, (name, dtype, cfg, res.stack_bytes, res.spill_store_bytes)


SPILLING = """extern "C" __global__ void k(float* out, int n) {
  float a[64];  // indexed by runtime values: it can only live in local memory
  for (int i = 0; i < 64; ++i) a[i] = 0.f;
  for (int i = 0; i < n; ++i) a[(i * n) & 63] += out[i];
  out[threadIdx.x] = a[threadIdx.x & 63];
}
"""


def test_a_spilling_kernel_is_reported_and_not_its_neighbour():
    # ptxas reports entry functions in its own order: the clean kernel after the spilling one is not it
    clean = 'extern "C" __global__ void z(float* out) { out[threadIdx.x] = 1.f; }\n'
    res = nvrtc.kernel_resources(SPILLING + clean, "sm_90", kernel="k")
    assert res.stack_bytes >= 64 * 4 and res.registers > 0
    assert nvrtc.kernel_resources(SPILLING + clean, "sm_90", kernel="z").stack_bytes == 0


def test_the_stack_of_a_call_that_was_not_inlined_counts():
    code = """__device__ __noinline__ float deep(float* out, int n) {
      float a[64];
      for (int i = 0; i < 64; ++i) a[i] = 0.f;
      for (int i = 0; i < n; ++i) a[(i * n) & 63] += out[i];
      return a[threadIdx.x & 63];
    }
    extern "C" __global__ void k(float* out, int n) { out[threadIdx.x] = deep(out, n); }
    """
    assert nvrtc.kernel_resources(code, "sm_90", kernel="k").stack_bytes >= 64 * 4


def test_a_kernel_the_report_does_not_name_raises():
    with pytest.raises(ValueError, match="no entry function 'amk_megakernel'"):
        nvrtc.kernel_resources(SPILLING, "sm_90")


def test_a_compile_error_carries_the_log():
    with pytest.raises(nvrtc.NvrtcCompileError) as e:
        nvrtc.kernel_resources("this is not CUDA", "sm_90")
    assert "expected a declaration" in e.value.log
