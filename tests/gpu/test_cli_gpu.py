"""The CLI on a GPU: quiet under -q (the NVRTC compile, the model load and the verify cases draw nothing), one
JSON object with --json, a measured bf16 latency, and an inert knob named in the notes (skipped without CUDA
and cupy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

AMK = [sys.executable, "-m", "amk.cli"]  # works installed and from bench/devsite.sh's site folder alike


def test_quiet_measured_evaluate_on_the_gpu(tmp_path):
    env = {**os.environ, "AMK_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([*AMK, "-q", "--json", "evaluate", "--model", "toy", "--device", "cuda"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-3000:]
    v = json.loads(p.stdout)
    assert v["correct"] and v["latency_kind"] == "measured-gpu" and v["dtype"] == "bf16" and v["device"] == "cuda"
    # the default kernel holds no local memory (tests/gpu/test_kernel_local_memory.py), and a fresh cache compiles
    assert v["kernel"]["local_bytes"] == 0 and v["kernel"]["registers"] > 0 and v["kernel"]["build"] == "compiled"
    p = subprocess.run([*AMK, "-q", "evaluate", "--model", "toy", "--device", "cuda", "--config",
                        '{"attention": {"kv_partitions": 1, "softmax": "global"}}'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-3000:]
    assert "attention.softmax=global has no effect" in p.stdout and "measured-gpu" in p.stdout
