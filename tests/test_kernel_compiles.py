"""The kernel source compiles for sm_90 with the local nvcc, for a sliding-window model under each attention
layout, with nothing on the stack (skipped where nvcc is absent, as on CI)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from _checkpoints import mistral_window

import amk
from amk.schedule import get_target, lower
from amk.vm.abi import generate_header
from amk.vm.loader import kernel_source

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("cfg", [{"attention": {"kv_partitions": 1}},
                                 {"attention": {"softmax": "partition"}, "fusion": {"attention_combine_into_o": False}},
                                 {}], ids=["decode", "partition", "scores-values"])
def test_windowed_kernel_compiles_for_sm90(tmp_path, cfg):
    model = amk.load_model(mistral_window(tmp_path / "m"), dtype="bf16", weights=False)
    prog = lower(model, get_target("h100-sxm"), cfg, max_seq=128)
    assert {t.params.window for t in prog.tasks if hasattr(t.params, "window")} == {8}
    src = tmp_path / "k.cu"
    src.write_text(generate_header(prog) + "\n" + kernel_source())
    out = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                          str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 bytes stack frame" in out.stderr, out.stderr[-2000:]
