"""What a caller hands load_model, checked before anything is read: the built-in models' names, whether a name or
path names a built-in model or a checkpoint directory, and the spellings of a dtype and a device."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from amk.schedule.errors import ArgumentError, EnvironmentProblem, UnknownModelError

_CONFIG_DIR = Path(__file__).with_name("configs")
_GGUF_NAME = "smollm2-135m-instruct"

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json")) + [_GGUF_NAME]


def builtin_key(name_or_path) -> str | None:
    """The built-in model `name_or_path` names, or None for a checkpoint directory. Only a str names a built-in
    (before any directory of that name); a path object (pathlib.Path, any os.PathLike) always names a directory,
    so that Path("toy") and "./toy" are the directory beside a built-in called toy."""
    if isinstance(name_or_path, str) and name_or_path in builtin_names():
        return name_or_path
    return None


def resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ArgumentError("dtype", f"{dtype!r} is not one of fp32, fp16, bf16 (or their other names: "
                                 f"{', '.join(k for k in _DTYPES if k not in ('fp32', 'fp16', 'bf16'))}, "
                                 "with or without torch., any case, or the torch dtype)")


def dtype_name(dtype: Any) -> str:
    """fp32, fp16 or bf16: the name verdicts, tuning records and loop summaries give a dtype (any spelling
    resolve_dtype takes). Raises ArgumentError as resolve_dtype."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[resolve_dtype(dtype)]


def check_model_name(name_or_path, argument: str = "model", takes_model: bool = True) -> None:
    """UnknownModelError unless `name_or_path` is a built-in name or an existing directory; reads nothing.
    ArgumentError naming `argument` when it is neither a string nor a path (None, a number, a list, bytes): its
    message names what the caller takes, an amk.Model too unless `takes_model` is False (evaluate, propose and loop
    check only what is not a Model here; load_model takes no Model)."""
    if not isinstance(name_or_path, str | os.PathLike) or isinstance(name_or_path, bytes):
        takes = "a model name, a checkpoint directory (a str or path) or an amk.Model" if takes_model else \
            "a model name or a checkpoint directory (a str or path)"
        raise ArgumentError(argument, f"expected {takes}, got {type(name_or_path).__name__} ({name_or_path!r:.60})")
    key = str(name_or_path)
    # "" would be the working directory (Path("")): a model is named, never implied
    if not key.strip() or builtin_key(name_or_path) is None and not _is_dir(name_or_path):
        where = _absolute(name_or_path) if isinstance(name_or_path, os.PathLike) else None
        raise UnknownModelError(key, builtin_names(), where)


def _absolute(path) -> str:
    try:
        return str(Path(path).expanduser().absolute())
    except RuntimeError:  # ~ of an unknown user: the path as given
        return str(path)


def _is_dir(name_or_path) -> bool:
    try:
        return Path(name_or_path).expanduser().is_dir()
    except (OSError, ValueError, RuntimeError):  # a name too long for a path, one holding a NUL byte, or ~ of an
        return False  # unknown user names no directory


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(device, weights: bool = True) -> str:
    """The device string of `device`: "cpu", "cuda" or "cuda:<index>" (a str or torch.device). ArgumentError
    naming device for anything else; EnvironmentProblem when weights are to go to a CUDA device torch does not
    see (without weights the device only labels the model)."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ArgumentError("device", f"{device!r:.60} is not one of cpu, cuda, cuda:<index>")
    if weights and device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise EnvironmentProblem(f"device {device!r} asked for, but torch sees {count} CUDA device(s) "
                                     "(run `amk doctor`)")
    return device
