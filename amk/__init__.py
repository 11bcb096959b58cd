"""AMK: search for the fastest correct batch-1 decode megakernel of a Llama-family LLM.

The verbs: `load_model`, `lower`, `validate`, `verify`, `propose`, `evaluate`, `loop`, `generate`.
"""

from amk.models import Model, list_models, load_model
from amk.schedule import GpuTarget, MegakernelProgram, ScheduleConfig, detect_target, get_target, lower
from amk.schedule.errors import (
    AmkError,
    ArgumentError,
    ConfigError,
    UnknownModelError,
    UnsupportedModelError,
    VmError,
)

__version__ = "0.1.0"


def validate(program, target=None):
    """Check a program without running it; returns a ValidationResult and never raises."""
    from amk.schedule.validate import validate as _validate

    return _validate(program, target)


def verify(program, model, device="cpu", vm="reference", cases="full", **kw):
    """Run every verify case of `program` on a VM and compare with eager transformers."""
    from amk.eval.oracle import verify as _verify

    return _verify(program, model, device=device, vm=vm, cases=cases, **kw)


def propose(model, gpu, incumbent=None, **kw):
    """The incumbent config, the schema path and the search space for `gpu` (see HARNESS.md)."""
    from amk.harness.propose import propose as _propose

    return _propose(model, gpu, incumbent=incumbent, **kw)


def evaluate(model, gpu, config, device="auto", cases=None, seed=0, **kw):
    """One config's verdict as a JSON-able dict; malformed configs come back valid=false (see HARNESS.md)."""
    from amk.harness.evaluate import evaluate as _evaluate

    return _evaluate(model, gpu, config, device=device, cases=cases, seed=seed, **kw)


def loop(model, gpu, budget=None, minutes=None, seed=0, device="auto", results="results.tsv",
         corpus="corpus.jsonl", resume=False, max_reverts=20, progress=None, **kw):
    """Keep/revert hill climbing; writes results.tsv and corpus.jsonl; returns a summary dict."""
    from amk.harness.loop import loop as _loop

    return _loop(model, gpu, budget=budget, minutes=minutes, seed=seed, device=device, results=results,
                 corpus=corpus, resume=resume, max_reverts=max_reverts, progress=progress, **kw)


def generate(model, prompt, max_new_tokens=32, config=None, device="auto", **kw):
    """Greedy generation through the megakernel (ReferenceVM where there is no GPU)."""
    from amk.generation import generate as _generate

    return _generate(model, prompt, max_new_tokens=max_new_tokens, config=config, device=device, **kw)


__all__ = [
    "AmkError", "ArgumentError", "ConfigError", "GpuTarget", "MegakernelProgram", "Model", "ScheduleConfig", "UnknownModelError",
    "UnsupportedModelError", "VmError", "detect_target", "evaluate", "get_target", "list_models", "load_model",
    "loop", "lower", "propose", "validate", "verify", "generate",
]
