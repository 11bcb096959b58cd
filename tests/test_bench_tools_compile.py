"""The standalone CUDA tools of bench/tools compile for sm_90 without a warning, so that a lent GPU's time is not
lost to a tool that rotted since it last ran (skipped where nvcc is absent, as on CI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NVCC = shutil.which("nvcc")
TOOLS = sorted((Path(__file__).resolve().parent.parent / "bench" / "tools").glob("*.cu"))


def test_the_tools_are_found():
    assert {p.name for p in TOOLS} >= {"cluster_residency.cu", "hop_latency.cu"}


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.stem)
def test_tool_compiles_for_sm90_without_warnings(tmp_path, tool):
    out = subprocess.run([NVCC, "-arch=sm_90", "-O3", "-o", str(tmp_path / tool.stem), str(tool)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning" not in out.stderr.lower(), out.stderr[-3000:]
