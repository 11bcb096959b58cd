"""Where a verdict was produced: device choice, software versions, the git commit, and a memo of loaded
models (loading one takes seconds; a loop evaluates hundreds of configs of the same model)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import threading
from enum import Enum
from pathlib import Path

from amk.schedule.errors import ArgumentError, EnvironmentProblem


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """A CUDA device torch can see and cupy to build the VM with."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import cupy  # noqa: F401
    except Exception:  # a broken CUDA install is "no CUDA" here; `amk doctor` says why
        return False
    return True


def resolve_device(device: str | Device = "auto") -> Device:
    d = str(device.value if isinstance(device, Device) else device).lower()
    if d == "auto":
        return Device.CUDA if cuda_usable() else Device.CPU
    if d == "cuda" or d.startswith("cuda:"):
        index = d.partition(":")[2]
        if d != "cuda" and not (index.isascii() and index.isdigit()):
            raise ArgumentError("device", f"{device!r} is not one of auto, cpu, cuda (or cuda:N, N a device index)")
        if not cuda_usable():
            raise EnvironmentProblem("device 'cuda' asked for, but torch sees no CUDA device or cupy does not "
                                     "import (run `amk doctor`)")
        _check_current_device(device, index)
        return Device.CUDA
    if d == "cpu":
        return Device.CPU
    raise ArgumentError("device", f"{device!r} is not one of auto, cpu, cuda")


def _check_current_device(device, index: str) -> None:
    """ArgumentError naming `device` for cuda:N other than the current CUDA device: programs, weights and timings
    all run on the current one, so another index would be silently ignored."""
    if not index:
        return
    import torch

    current = torch.cuda.current_device()
    if int(index) != current:
        raise ArgumentError("device", f"{device!r}: AMK runs on the current CUDA device (cuda:{current}); choose "
                                      "the GPU with CUDA_VISIBLE_DEVICES")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The AMK_COMMIT environment variable when set (a copied tree, whose .git may be stale or absent), else
    commit_of the repository the amk sources live in."""
    if os.environ.get("AMK_COMMIT"):
        return os.environ["AMK_COMMIT"]
    return commit_of(Path(__file__).resolve().parent)


def commit_of(directory: Path) -> str | None:
    """HEAD of the git repository holding `directory`, with "+dirty" where its tracked files differ from HEAD (a
    figure from such a tree is not HEAD's: a kernel probe in the sources, or a copy whose .git is older than its
    files); None outside a repository or without git."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if changed else "")


@functools.lru_cache(maxsize=1)
def _driver_version() -> str | None:
    try:
        import cupy

        v = cupy.cuda.runtime.driverGetVersion()
        return f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:
        return None


@functools.lru_cache(maxsize=2)
def environment(device: Device = Device.CPU) -> dict:
    import torch

    gpu = None
    if device == Device.CUDA:
        try:
            gpu = torch.cuda.get_device_name()
        except Exception:
            gpu = None
    return {"gpu": gpu, "driver": _driver_version() if device == Device.CUDA else None, "torch": torch.__version__,
            "git_commit": git_commit(), "python": platform.python_version(), "device": device.value}


_models: dict[tuple, object] = {}
_models_lock = threading.Lock()


def _files_stamp(name: str) -> tuple:
    """For a checkpoint directory, each file's name, size and modification time (a stat each, nothing read), so
    that a checkpoint saved again is another model to the memo; empty for any other name."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return ()
    out = []
    for e in os.scandir(path):
        try:
            if e.is_file():
                st = e.stat()
                out.append((e.name, st.st_size, st.st_mtime_ns))
        except OSError:  # a symlink loop or a file gone: the load that follows names it
            out.append((e.name, -1, -1))
    return tuple(sorted(out))


def get_model(name: str, dtype: str, device: Device, weights: bool = True):
    """load_model memoised by (name, dtype, device, weights) and, for a checkpoint directory, its files' sizes and
    modification times: a checkpoint saved again in the directory is loaded again. A weights=False request is
    served by a loaded model when one exists (it has the same dims and fingerprint)."""
    from amk.models import load_model

    stamp = _files_stamp(name)
    key = (name, stamp, dtype, device.value, weights)
    with _models_lock:
        if key in _models:
            return _models[key]
        if not weights and (name, stamp, dtype, device.value, True) in _models:
            return _models[(name, stamp, dtype, device.value, True)]
        for old in [k for k in _models if k[0] == name and k[1] != stamp]:
            del _models[old]  # the files it was loaded from are gone
    if weights:
        from amk.progress import status

        with status(f"loading {name} ({dtype}, {device.value})"):
            model = load_model(name, dtype=dtype, device=device.value, weights=True)
    else:
        model = load_model(name, dtype=dtype, device=device.value, weights=False)
    with _models_lock:
        _models[key] = model
    return model


def clear_models() -> None:
    with _models_lock:
        _models.clear()


CPU_STAND_IN = "cpu-sim"


def resolve_target(gpu):
    """A GpuTarget from a name, a GpuTarget, or None/"auto": the live GPU when CUDA is usable, else the CPU
    stand-in target (so `amk loop --model toy` works on a laptop)."""
    from amk.schedule.targets import GpuTarget, detect_target, get_target

    if isinstance(gpu, GpuTarget):
        return gpu
    if gpu is None or str(gpu).lower() == "auto":
        return detect_target() if cuda_usable() else get_target(CPU_STAND_IN)
    return get_target(gpu, argument="gpu")
