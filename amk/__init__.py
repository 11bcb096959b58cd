"""AMK: search for the fastest correct batch-1 decode megakernel of a Llama-family LLM.

The verbs: `load_model`, `lower`, `validate`, `verify`, `propose`, `evaluate`, `loop`, `generate`.
"""

from amk.models import Model, list_models, load_model
from amk.schedule import GpuTarget, MegakernelProgram, ScheduleConfig, detect_target, get_target, lower
from amk.schedule.errors import AmkError, ConfigError, UnknownModelError, UnsupportedModelError, VmError

__version__ = "0.1.0"


def validate(program, target=None):
    """Check a program without running it; returns a ValidationResult and never raises."""
    from amk.schedule.validate import validate as _validate

    return _validate(program, target)


def verify(program, model, device="cpu", vm="reference", cases="full", **kw):
    """Run every verify case of `program` on a VM and compare with eager transformers."""
    from amk.eval.oracle import verify as _verify

    return _verify(program, model, device=device, vm=vm, cases=cases, **kw)


__all__ = [
    "AmkError", "ConfigError", "GpuTarget", "MegakernelProgram", "Model", "ScheduleConfig", "UnknownModelError",
    "UnsupportedModelError", "VmError", "detect_target", "get_target", "list_models", "load_model", "lower",
    "validate", "verify",
]
