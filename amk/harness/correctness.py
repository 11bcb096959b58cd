"""Correctness of a lowered program on a device: which cases, cached eager references, and the CPU
(ReferenceVM) and CUDA (MegakernelVM) runs. A GPU exception is recorded as a failure, never skipped."""

from __future__ import annotations

import json
import logging

from amk.cache import Cache, CacheStorageError, reference_key
from amk.schedule.errors import ArgumentError
from amk.schedule.program import MegakernelProgram

from .environment import Device
from .verdict import Verdict

log = logging.getLogger("amk.harness")

REDUCED_CASES_ABOVE_PARAMS = 200_000_000  # on CPU, bigger models verify on the reduced case set




def resolve_cases(model, program: MegakernelProgram, cases, dev: Device, seed: int) -> tuple[list, list[str]]:
    """The verify cases to run and the default cases the program's context leaves out (none for a given list):
    `cases` None picks the reduced set for a big model on a CPU, else the full one."""
    from amk.eval.cases import VerifyCase, check_cases_fit, default_cases, left_out_cases
    from amk.models.registry import approx_params

    if cases is None:
        big = approx_params(model.dims) > REDUCED_CASES_ABOVE_PARAMS
        cases = "reduced" if (big and dev == Device.CPU) else "full"
    if isinstance(cases, str):
        if cases not in ("full", "reduced"):
            raise ArgumentError("cases", f"expected 'full', 'reduced' or a list of VerifyCase, got {cases!r}")
        return default_cases(program.constants.max_seq, reduced=(cases == "reduced"), seed=seed), \
            left_out_cases(program.constants.max_seq, reduced=(cases == "reduced"))
    cases = list(cases)
    if not all(isinstance(c, VerifyCase) for c in cases):
        raise ArgumentError("cases", "expected 'full', 'reduced' or a list of VerifyCase")
    check_cases_fit(cases, program.constants.max_seq)  # ContextError: a usage error (exit 2)
    return cases, []


def scaling_note(case_list, max_seq: int, left_out: list[str] = ()) -> str | None:
    """The verdict's note naming the cases cut down to fit a short context and the default cases it left out
    (each with why: cut down, it would repeat a case run, or it cannot fit at all), or None when there are none."""
    cut = [f"{c.scaled_from} -> {c.name}" for c in case_list if c.scaled_from]
    parts = ([f"scaled: {', '.join(cut)}"] if cut else []) + \
        ([f"left out: {', '.join(left_out)}"] if left_out else [])
    return f"verify cases in the program's context of {max_seq} positions: {'; '.join(parts)}" if parts else None


def counted(ref, progress_bar):
    """`ref`, advancing `progress_bar` as each case asks for its reference (verify asks once per case, as
    the case starts): the bar reads "case k of n" while case k runs."""
    seen = []

    def wrapped(case):
        if seen:
            progress_bar.advance(description=f"verifying: {case.name}")
        seen.append(case)
        return ref(case)

    return wrapped


def reference_hook(model, program: MegakernelProgram, cache: Cache, label: dict | None = None):
    """verify()'s `reference=`: eager logits and greedy tokens per case from the cache when this model, dtype,
    case and software stack have been run before (eager is most of a cold toy evaluate). The higher-precision
    logits are a separate entry, computed and cached only when verify asks for them (a failing fp32 step, or
    any bf16/fp16 step): an fp64 copy of a big model is costly."""
    import torch
    import transformers

    from amk.eval.oracle import eager_reference
    from amk.models.registry import dtype_name

    max_seq = program.constants.max_seq
    dtype = str(model.dtype).removeprefix("torch.")

    def ref(case):
        case_id = json.dumps({**case.to_dict(), "max_seq": max_seq, "eager_device": str(model.device),
                              "torch": torch.__version__, "transformers": transformers.__version__}, sort_keys=True)
        made: dict = {}

        def create():
            logits, greedy, hi = eager_reference(model, case, max_seq)
            made["hi"] = hi
            return {"logits": torch.stack(list(logits)), "greedy": torch.tensor(greedy, dtype=torch.int64)}

        tag = {**(label or {}), "dtype": dtype_name(model.dtype), "case": case.name}
        t = cache.get_or_create_tensors("reference", reference_key(model.fingerprint, dtype, case_id), create,
                                        label=tag)
        logits, greedy = list(t["logits"]), [int(x) for x in t["greedy"]]

        def hi():
            if "hi_logits" not in made:  # verify asks once per step: one cache lookup per case
                def create_hi():
                    src = made.get("hi") or _higher_precision_source(model, case, max_seq, greedy)
                    return {"hi": torch.stack(list(src()))}

                key = reference_key(model.fingerprint, dtype, case_id + "|higher-precision")
                made["hi_logits"] = list(cache.get_or_create_tensors("reference", key, create_hi,
                                                                     label={**tag, "higher_precision": True})["hi"])
            return made["hi_logits"]

        return logits, greedy, hi

    return ref


def _higher_precision_source(model, case, max_seq: int, greedy: list[int]):
    # The eager part came from the cache: rebuild only the higher-precision half, lazily.
    from amk.eval.cases import case_inputs
    from amk.eval.oracle import HigherPrecision

    return HigherPrecision(model, case_inputs(case, model.dims, model.dtype, max_seq), greedy)


def _record(v: Verdict, res) -> None:
    d = res.to_dict()
    v.cases_passed, v.cases_total = d["cases_passed"], d["total"]
    v.correct = bool(res.ok)
    for k in ("worst_mere", "worst_mare", "top1_agreement", "kl_max"):
        setattr(v, k, d.get(k))
    v.failures = d["failures"][:8]
    v.case_results = [{"case": c.case, "passed": c.passed, "message": c.message[:300], **c.step_summary()}
                      for c in res.cases]


def run_cpu(v: Verdict, program, model, case_list, ref, seed: int):
    import torch

    from amk.eval.oracle import verify

    # The ReferenceVM runs the program as thousands of tiny torch ops per step, and that run is most of a
    # warm evaluate (it is never cached). Inference mode skips autograd's per-op bookkeeping and computes the
    # same values; the VM and its tensors live only inside verify. The reference hook (cache, eager, the
    # higher-precision copy the model keeps) runs outside inference mode, as it does on the GPU path.
    with torch.inference_mode():
        res = verify(program, model, device="cpu", vm="reference", cases=case_list, seed=seed, validated=True,
                     reference=_outside_inference_mode(ref))
    _record(v, res)
    return None


def _outside_inference_mode(ref):
    """`ref`, and the higher-precision callable it returns, run with inference mode off."""
    import torch

    def call(fn, *args):
        with torch.inference_mode(False):
            return fn(*args)

    def wrapped(case):
        logits, greedy, hi = call(ref, case)
        return logits, greedy, (lambda: call(hi)) if callable(hi) else hi

    return wrapped


def build_cuda_vm(program, model):
    """A seam for tests: the CUDA VM for `program`."""
    from amk.eval.oracle import make_vm

    return make_vm(program, model, device="cuda", vm="cuda")


def record_kernel(v: Verdict, vm) -> None:
    """The verdict's `kernel`: what ptxas gave the loaded kernel (registers a thread, local memory bytes a thread:
    its stack frame and spills) and where the build came from; a note where local memory is used, since the
    weight stream sweeps L1 and each local access then costs an L2 round trip (the default kernel holds none on
    every public shape, tests/gpu/test_kernel_local_memory.py)."""
    v.kernel = {"registers": int(vm.registers), "local_bytes": int(vm.local_bytes), "build": vm.build_origin,
                "build_seconds": round(float(vm.build_seconds), 3), "threads_per_block": vm.program.threads_per_block}
    if vm.local_bytes > 0:
        v.notes.append(f"the kernel holds {vm.local_bytes} bytes of local memory a thread (stack frame or spills, at "
                       f"{vm.registers} registers a thread): each access may cost an L2 round trip")


def time_cuda_vm(vm, stop_above_us: float | None = None) -> dict:
    """A seam for tests: eval.bench.time_vm."""
    from amk.eval.bench import time_vm

    return time_vm(vm, stop_above_us=stop_above_us)


def run_cuda(v: Verdict, program, model, case_list, ref, seed: int, measure: bool = True,
             stop_above_us: float | None = None):
    from amk.eval.oracle import verify

    try:
        vm = build_cuda_vm(program, model)
    except CacheStorageError:
        raise  # a compiled kernel the cache cannot store: the machine's disk, not the program
    except Exception as e:  # a GPU failure is a failure: no prediction stands in for it
        v.cases_total, v.correct = len(case_list), False
        v.notes.append(f"GPU failure building the CUDA VM: {type(e).__name__}: {e}")
        return None
    record_kernel(v, vm)
    res = verify(program, model, device="cuda", vm="cuda", cases=case_list, seed=seed, runner=vm, reference=ref,
                 validated=True)
    _record(v, res)
    if not res.ok or not measure:
        return None
    log.info("timing on the GPU")
    try:
        return time_cuda_vm(vm, stop_above_us)
    except Exception as e:  # the timed run executes the same program: its failure fails the config
        v.correct = False
        v.notes.append(f"GPU failure while timing (the timed run did not complete every task): "
                       f"{type(e).__name__}: {e}")
        return None
