"""AMK: search for the fastest correct batch-1 decode megakernel of a Llama-family LLM.

The verbs: `load_model`, `lower`, `validate`, `verify`, `propose`, `evaluate`, `loop`, `generate`. Each name is
the implementation itself (not a wrapper), so that help() and an editor show every keyword it takes. They load
on first use (PEP 562): `import amk` and the `amk` command start without importing torch, and the command's
own imports run behind amk.console, so a Ctrl-C from the moment Python has started it still gets the command's
answer (exit 130).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_ERRORS = ("AmkError", "ArgumentError", "CheckpointError", "ConfigError", "ContextError", "EagerReferenceError",
           "EnvironmentProblem",
           "ProgramError", "UnknownModelError", "UnknownTargetError", "UnsupportedModelError", "VmError")
_WHERE = {  # public name -> the module that defines it
    "verify": "amk.eval.oracle", "generate": "amk.generation", "evaluate": "amk.harness.evaluate",
    "loop": "amk.harness.loop", "LoopError": "amk.harness.loop", "LoopInterrupted": "amk.harness.loop", "propose": "amk.harness.propose",
    "Model": "amk.models", "list_models": "amk.models", "load_model": "amk.models",
    "GpuTarget": "amk.schedule", "MegakernelProgram": "amk.schedule", "ScheduleConfig": "amk.schedule",
    "detect_target": "amk.schedule", "get_target": "amk.schedule", "lower": "amk.schedule",
    "validate": "amk.schedule.validate", **{e: "amk.schedule.errors" for e in _ERRORS},
}
__all__ = [  # spelled out for linters; equal to the keys of _WHERE (tests/test_harness.py)
    "AmkError", "ArgumentError", "CheckpointError", "ConfigError", "ContextError", "EagerReferenceError",
    "EnvironmentProblem", "GpuTarget", "LoopError", "LoopInterrupted", "MegakernelProgram", "Model", "ProgramError", "ScheduleConfig", "UnknownModelError",
    "UnknownTargetError", "UnsupportedModelError", "VmError", "detect_target", "evaluate", "generate",
    "get_target", "list_models", "load_model", "loop", "lower", "propose", "validate", "verify",
]


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:  # a subpackage (amk.harness, amk.vm, ...), as an eager import would have bound it
        try:
            return importlib.import_module(f"amk.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"amk.{name}":
                raise
            raise AttributeError(f"module 'amk' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # what editors and type checkers see
    from amk.eval.oracle import verify
    from amk.generation import generate
    from amk.harness.evaluate import evaluate
    from amk.harness.loop import LoopError, LoopInterrupted, loop
    from amk.harness.propose import propose
    from amk.models import Model, list_models, load_model
    from amk.schedule import GpuTarget, MegakernelProgram, ScheduleConfig, detect_target, get_target, lower
    from amk.schedule.errors import (
        AmkError,
        ArgumentError,
        CheckpointError,
        ConfigError,
        ContextError,
        EagerReferenceError,
        EnvironmentProblem,
        ProgramError,
        UnknownModelError,
        UnknownTargetError,
        UnsupportedModelError,
        VmError,
    )
    from amk.schedule.validate import validate
