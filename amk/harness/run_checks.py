"""What a run checks of its arguments before it lowers, verifies or measures: the dtype (the default a device takes,
and a loaded model's own), whether the KV cache fits the memory free, whether the program's context and buffers fit
the target, and the model's config.json fields that no one reads. Each raises ArgumentError naming the argument at
fault, or returns the notes a verdict carries. Used by evaluate, loop, generate and the CLI verbs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from amk.schedule.errors import ArgumentError
from amk.schedule.opcodes import DTYPE_NAMES
from amk.schedule.program import MegakernelProgram
from amk.schedule.targets import GpuTarget
from amk.schedule.validate import context_problems, kv_cache_bytes, memory_problem, model_weight_bytes

from .environment import Device


def default_dtype(device: Device, target: GpuTarget | None = None) -> str:
    """bf16 on a GPU, and on a CPU for a GPU target: a prediction for an H100 prices the bytes the H100 reads,
    which are bf16 weights (the README's figures are bf16). fp32 only for the cpu-sim stand-in on a CPU, where
    it keeps the ReferenceVM check exact and quick."""
    if device == Device.CUDA or (target is not None and target.arch != "none"):
        return "bf16"
    return "fp32"


def resolve_dtype_name(dtype, device: Device, target: GpuTarget) -> tuple[str, str | None]:
    """(fp32 | fp16 | bf16, a note when the dtype was chosen for the caller). Raises ArgumentError for a dtype
    AMK does not run."""
    if dtype is None:
        name = default_dtype(device, target)
        why = ("what a GPU runs" if target.arch != "none" else "the cpu-sim stand-in on a CPU")
        return name, f"dtype {name}: the default for {target.name} on {device.value} ({why}); pass dtype= " \
                     "(--dtype) to choose"
    from amk.models.registry import resolve_dtype

    torch_dtype = resolve_dtype(dtype)  # ArgumentError naming dtype, with the other names it takes
    return {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}[str(torch_dtype)], None


def check_model_dtype(model, dtype) -> None:
    """ArgumentError naming `dtype` when `model` is a loaded amk Model and `dtype` (given) is not a dtype AMK runs
    or not the one the model was loaded in: the weights are already in the model's dtype, so another is not
    honoured, and the run must not report the model's as if it were the one asked for."""
    from amk.models import Model
    from amk.models.registry import dtype_name

    if dtype is None or not isinstance(model, Model):
        return
    asked = resolve_dtype_name(dtype, Device.CPU, None)[0]
    if asked != dtype_name(model.dtype):
        raise ArgumentError("dtype", f"{dtype!r}, but the model was loaded as {dtype_name(model.dtype)}")


def _free_bytes(dev) -> int | None:
    """Memory free for new allocations on `dev`: the GPU's free memory (None when no GPU answers), or the host's
    MemAvailable (the page cache counts as free: the kernel gives it back), else its free pages."""
    import torch

    if dev == Device.CUDA:
        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_kv_memory(program: MegakernelProgram, dev, copies: int = 2) -> None:
    """ArgumentError (naming max_seq) when the program's KV cache, held `copies` times (2: the VM's and the
    reference's, as verify holds it; 1: the VM's alone, as generate does), does not fit the memory free on `dev`
    (a Device): the allocation would otherwise end the process with no message (the kernel's out-of-memory killer
    on the CPU)."""
    kv = kv_cache_bytes(program)
    free = _free_bytes(dev)
    if free is not None and copies * kv > free:
        held = "held twice (the VM's and the reference's)" if copies == 2 else f"held {copies} times" if copies > 2 \
            else "held by the VM"
        raise ArgumentError("max_seq", f"{program.constants.max_seq} positions need {kv / 2**30:.1f} GiB of KV "
                                       f"cache, {held}, and {dev.value} has {free / 2**30:.1f} GiB free")


def check_context(program: MegakernelProgram, target: GpuTarget,
                  default: Callable[[], MegakernelProgram] | None = None) -> None:
    """ArgumentError naming the argument at fault where the program cannot run on `target`, before the validator
    blames the config: `max_seq` past the kernel's int32 offsets (amk.schedule.validate.context_problems);
    `model` where its weights alone are past the target's device memory; `max_seq` where the buffers of the
    default config's program (`default()`, by default `program` itself) are. Where only this config's buffers are
    past it, nothing is raised: the validator rejects the config."""
    for problem in context_problems(program):
        raise ArgumentError("max_seq", problem)
    over = memory_problem(program, target)
    if over is None:
        return
    weights = model_weight_bytes(program)
    if weights > target.memory_bytes:
        raise ArgumentError("model", f"its weights need {weights / 2**30:.1f} GiB in "
                                     f"{DTYPE_NAMES[program.constants.dtype]}, past {target.name}'s "
                                     f"{target.memory_bytes / 2**30:.1f} GiB of device memory")
    base_over = memory_problem(default(), target) if default is not None else over
    if base_over is not None:
        raise ArgumentError("max_seq", f"{program.constants.max_seq} positions: {base_over}")


def misspelt_field_notes(model) -> list[str]:
    """A note for each name of the model's config.json that is a near spelling of a field transformers reads
    (amk.models.fields.misspelt_fields): neither transformers nor AMK reads it, so the value meant is not used; one
    naming the other names neither reads (unread_fields); and the model's notes on RoPE values of its config.json
    that transformers replaced or passed over (amk.models.rope_notes)."""
    from amk.models.fields import misspelt_fields, unread_fields

    if getattr(model, "hf_config", None) is None:
        return []
    notes = [f"config field {name!r} is read by neither transformers nor AMK, and {meant!r} keeps its value "
             f"{json.dumps(_field_value(model.hf_config, meant), default=str)}: did you mean {meant!r}?"
             for name, meant in misspelt_fields(model.hf_config)]
    unread = unread_fields(model.hf_config)
    if unread:
        notes.append(f"config {'fields' if len(unread) > 1 else 'field'} {', '.join(map(repr, unread))} "
                     f"{'are' if len(unread) > 1 else 'is'} read by neither transformers nor AMK: passed over")
    return notes + list(getattr(model, "config_notes", ()))


def _field_value(hf_config, name: str):
    """The value transformers uses for config field `name`: its attribute, else its entry in rope_parameters,
    where transformers 5 keeps rope_theta and the RoPE scaling fields."""
    value = getattr(hf_config, name, None)
    rope = getattr(hf_config, "rope_parameters", None)
    if value is None and isinstance(rope, dict):
        return rope.get(name)
    return value


