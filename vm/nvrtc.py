"""NVRTC without cupy or a GPU: compile the megakernel to a cubin and read ptxas's resource report.

The GPU path builds through cupy's NVRTC (vm/loader.py). This one loads the NVRTC library that
`cuda.pathfinder` finds (the `nvidia-cuda-nvrtc` wheel of the dev extras, pinned to the GPU image's 13.0,
or a CUDA toolkit) through ctypes, so that a CPU machine sees what that compiler does with the kernel:
its registers and, above all, any stack frame. Local memory lives in L1, which the weight stream sweeps;
the kernel's budget is that of tests/gpu (16 bytes). A stack frame showed under NVRTC 13.0 only, not under
nvcc 13.0 or NVRTC 13.5 (bench/results/20261130-1151_h200_gpu_tests.json), so nvcc is no stand-in.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass

from .loader import compile_options

_RESOURCES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


class NvrtcUnavailable(RuntimeError):
    """No NVRTC library could be loaded (install the dev extras, or a CUDA toolkit)."""


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; `log` holds the compiler's messages."""

    def __init__(self, code: int, log: str):
        super().__init__(f"NVRTC error {code}: {log[-3000:]}")
        self.code, self.log = code, log


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for the one kernel of a source: registers a thread, and bytes of local memory a thread
    (its stack frame, and the spill stores and loads into it)."""

    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    log: str


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
    except ImportError as e:
        raise NvrtcUnavailable("cuda-pathfinder is not installed (pip install -e '.[dev]')") from e
    try:
        # RTLD_GLOBAL: libnvrtc opens its builtins library from the same folder by name
        return ctypes.CDLL(load_nvidia_dynamic_lib("nvrtc").abs_path, mode=ctypes.RTLD_GLOBAL)
    except Exception as e:  # pathfinder's own not-found errors, or a library ctypes cannot load
        raise NvrtcUnavailable(f"no loadable NVRTC: {e}") from e


def version() -> tuple[int, int]:
    """(major, minor) of the loaded NVRTC. Raises NvrtcUnavailable."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def kernel_resources(code: str, arch: str = "sm_90") -> KernelResources:
    """Compile `code` (one kernel) for `arch` with the loader's options (its CUDA headers: a toolkit's, or the
    `nvidia-cuda-runtime` wheel's) and ptxas's verbose report. Raises NvrtcUnavailable, EnvironmentProblem (no
    headers), NvrtcCompileError, or ValueError when the report names no stack frame."""
    lib = _lib()
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"amk_megakernel.cu", 0, None, None)
    if rc:
        raise NvrtcCompileError(rc, "nvrtcCreateProgram failed")
    try:
        opts = [o.encode() for o in compile_options(arch)] + [b"--ptxas-options=-v"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if rc:
        raise NvrtcCompileError(rc, log)
    res, regs = _RESOURCES.search(log), _REGISTERS.search(log)
    if not res or not regs:
        raise ValueError(f"ptxas's report names no stack frame or registers: {log[-1000:]}")
    return KernelResources(int(regs.group(1)), *(int(g) for g in res.groups()), log)
