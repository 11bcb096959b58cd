"""Every bound of bench/variants.py --bound (an `AMK_BOUND_*` define of the kernel source, a probe whose output is
wrong and whose time bounds what removing some work could gain) still compiles for sm_90, so that a timing call on
a lent GPU is not lost to a probe that rotted since it was last timed (skipped where nvcc is absent, as on CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _checkpoints import llama

import amk
from amk.schedule import get_target, lower
from amk.vm.abi import generate_header
from amk.vm.loader import kernel_source

NVCC = shutil.which("nvcc")
VM = Path(__file__).resolve().parent.parent / "vm"
# the values each define takes in bench/results: masks of bound_kind (1 plain matvec, 2 O, 4 the rest), percents
BOUNDS = {
    "no_wait": {"AMK_BOUND_NO_WAIT": 1},
    "skip_waits": {"AMK_BOUND_SKIP_WAITS": 3},
    "tail": {"AMK_BOUND_TAIL": 90, "AMK_BOUND_TAIL_KIND": 7},
    "no_staging": {"AMK_BOUND_NO_WAIT": 1, "AMK_BOUND_NO_STAGING": 1},
    "no_plain_staging": {"AMK_BOUND_SKIP_WAITS": 1, "AMK_BOUND_NO_PLAIN_STAGING": 1},
}
UNTAGGED = {"build": {"tagged_residual": False, "tagged_hidden": False}}


def test_every_bound_define_of_the_kernel_source_is_listed():
    used = set()
    for f in VM.glob("*.cu*"):
        used |= set(re.findall(r"\bAMK_BOUND_[A-Z_]+\b", f.read_text()))
    listed = {name for defines in BOUNDS.values() for name in defines} | {"AMK_BOUND_ANY_TOKEN"}
    assert used == listed


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("bound", sorted(BOUNDS))
def test_bound_compiles_for_sm90(tmp_path, bound):
    model = amk.load_model(llama(tmp_path / "m"), dtype="bf16", weights=False)
    prog = lower(model, get_target("h200"), UNTAGGED, max_seq=128)
    defines = {**BOUNDS[bound], "AMK_BOUND_ANY_TOKEN": 1}  # as variants.py builds a bound
    src = tmp_path / "k.cu"
    src.write_text("".join(f"#define {k} {v}\n" for k, v in defines.items()) + generate_header(prog) + "\n"
                   + kernel_source())
    out = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-o", str(tmp_path / "k.cubin"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
