"""NVRTC without cupy or a GPU: compile the megakernel for an arch and read ptxas's resource report of it.

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

from .loader import KERNEL_NAME, compile_options

_RESOURCES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_CUMULATIVE = re.compile(r"(\d+) bytes cumulative stack size")


class NvrtcUnavailable(RuntimeError):
    """No NVRTC library could be loaded (install the dev extras, or a CUDA toolkit)."""


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the source; `log` holds the compiler's messages."""

    def __init__(self, code: int, log: str):
        super().__init__(f"NVRTC error {code}: {log[-3000:]}")
        self.code, self.log = code, log


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for one kernel of a source: registers a thread, and bytes of local memory a thread (its
    stack frame, or with device functions that were not inlined the cumulative stack of its calls, and the
    spill stores and loads of its own frame)."""

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


def kernel_resources(code: str, arch: str = "sm_90", kernel: str = KERNEL_NAME) -> KernelResources:
    """Compile `code` for `arch` with the loader's options (its CUDA headers: a toolkit's, or the
    `nvidia-cuda-runtime` wheel's) and ptxas's verbose report, and read the report of the entry function
    `kernel`. Raises NvrtcUnavailable, EnvironmentProblem (no headers), NvrtcCompileError, or ValueError when
    the report has no entry for `kernel` (another name, or a virtual arch such as compute_90 that runs no
    ptxas)."""
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
    return _entry_resources(log, kernel)


def _entry_resources(log: str, kernel: str) -> KernelResources:
    """The report of entry function `kernel` in a ptxas -v log: its 'Function properties' block (the next
    line holds the frame) and the 'Used N registers' line after 'Compiling entry function'."""
    lines = log.splitlines()
    frame = used = None
    for i, line in enumerate(lines):
        if line.rstrip().endswith(f"Function properties for {kernel}") and i + 1 < len(lines):
            frame = _RESOURCES.search(lines[i + 1])
        if f"Compiling entry function '{kernel}'" in line:
            used = next((x for x in lines[i + 1:] if _REGISTERS.search(x)), None)
    if frame is None or used is None:
        raise ValueError(f"ptxas's report has no entry function {kernel!r}: {log[-1000:]}")
    stack, stores, loads = (int(g) for g in frame.groups())
    cumulative = _CUMULATIVE.search(used)
    return KernelResources(int(_REGISTERS.search(used).group(1)),
                           max(stack, int(cumulative.group(1)) if cumulative else 0), stores, loads, log)
