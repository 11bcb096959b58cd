"""verify(program, model): run every case on a VM, each isolated, and compare with eager transformers."""

from __future__ import annotations

import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

import torch

from amk.cache import CacheStorageError
from amk.schedule.errors import ArgumentError, EagerReferenceError, EnvironmentProblem, ProgramError

from .cases import CaseInputs, VerifyCase, case_inputs, check_cases_fit, default_cases, eager_decode
from .compare import compare, kl_divergence, tolerance_for
from .ties import tie_reason, tie_shortfall

# End-to-end rule: two correct implementations (transformers' own eager and sdpa attention, in bf16) differ
# by far more than MERE < t allows once many layers compound their roundings, and near-zero logits make
# MARE hypersensitive even in fp32. So a step passes when it is within the dual threshold of eager in the
# same dtype, or when its error against a higher-precision eager (fp32 for bf16/fp16, fp64 for fp32) is
# no worse than that eager's own error, with this slack. For fp16/bf16, KL to fp32 is always checked.
MERE_SLACK = 2.0  # rounding noise: a real bug is orders of magnitude off, not a few times
MARE_SLACK = 4.0  # one element's maximum is noisier than a mean
FP32_ULPS = 64
KL_SLACK_FACTOR = 2.0  # two correct bf16 paths differ by ~30% in KL on near-tied steps; a bug is orders off
KL_SLACK_ABS = 1e-4


class StepRule(str, Enum):
    """Which rule a step's logits passed by (HARNESS's verdict table states each)."""

    EAGER = "eager"  # MERE < t and MARE < 10 t against eager in the model's dtype
    EAGER_ERROR = "eager_error"  # against the higher-precision eager, no further off than eager itself
    ABSOLUTE_ERROR = "absolute_error"  # a MARE miss on near-zero logits, with the largest absolute error bounded
    FAILED = "failed"


@dataclass
class CaseResult:
    case: str
    passed: bool
    error_type: str = ""
    message: str = ""
    steps: list[dict] = field(default_factory=list)
    tokens_matched: int = 0
    tokens_expected: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def step_summary(self) -> dict:
        """The case's worst step figures against eager (finite steps), its largest KL to fp32 (bf16/fp16), and
        how many steps passed by each rule ({rule: count})."""
        finite = [s for s in self.steps if s["mere"] == s["mere"]]
        kls = [s["kl"] for s in self.steps if s.get("kl") is not None]
        rules = Counter(s.get("rule", StepRule.FAILED.value) for s in self.steps)
        return {"steps": len(self.steps), "worst_mere": max((s["mere"] for s in finite), default=None),
                "worst_mare": max((s["mare"] for s in finite), default=None), "kl_max": max(kls, default=None),
                "rules": dict(rules)}


@dataclass(repr=False)
class VerifyResult:
    cases: list[CaseResult]
    device: str
    vm: str
    program: str
    seconds: float

    @property
    def cases_passed(self) -> int:
        return sum(c.passed for c in self.cases)

    @property
    def ok(self) -> bool:
        """Every case passed (and there was one): what verify_result.json's `passed` says."""
        return bool(self.cases) and self.cases_passed == len(self.cases)

    @property
    def passed(self) -> bool:
        return self.ok

    def __bool__(self) -> bool:
        """`ok`: `assert amk.verify(p, m)` holds only when every case passed."""
        return self.ok

    def __repr__(self) -> str:
        """The verdict first, as a notebook cell shows it: the per-step figures are in `cases` and to_dict()."""
        failed = [f"{c.case}: {c.error_type or 'failed'}" for c in self.cases if not c.passed]
        more = f", failed=[{', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}]" if failed else ""
        return (f"VerifyResult(passed={self.ok}, cases_passed={self.cases_passed}/{len(self.cases)}, "
                f"device={self.device!r}, vm={self.vm!r}, program={self.program!r}, seconds={self.seconds:.1f}{more})")

    def summary(self) -> dict:
        steps = [s for c in self.cases for s in c.steps]
        finite = [s for s in steps if s["mere"] == s["mere"]]
        kls = [s for s in steps if s.get("kl") is not None]
        return {
            "worst_mere": max((s["mere"] for s in finite), default=None),
            "worst_mare": max((s["mare"] for s in finite), default=None),
            "top1_agreement": (sum(s["top1"] for s in steps) / len(steps)) if steps else None,
            "kl_max": max((s["kl"] for s in kls), default=None),
            "kl_eager_max": max((s["kl_eager"] for s in kls), default=None),
        }

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "passed": self.ok, "total": len(self.cases), "cases_passed": self.cases_passed,
            "failed": len(self.cases) - self.cases_passed,
            "failures": [{"case": c.case, "error_type": c.error_type, "message": c.message}
                         for c in self.cases if not c.passed],
            **self.summary(),
            "device": self.device, "vm": self.vm, "program": self.program, "seconds": round(self.seconds, 3),
            "cases": [c.to_dict() for c in self.cases],
        }


def make_vm(program, model, device: str = "cpu", vm: str = "reference", adversarial: bool = False, seed: int = 0):
    from amk.vm.weights import pack_weights

    weights = pack_weights(model.eager, program, device=device)
    if vm == "reference":
        from amk.vm.reference import ReferenceVM

        return ReferenceVM(program, weights, device=device, adversarial=adversarial, seed=seed)
    if vm == "cuda":
        from amk.vm.loader import MegakernelVM

        return MegakernelVM(program, weights)
    raise ValueError(f"unknown vm {vm!r}: reference or cuda")


def _short(obj) -> str:
    """An argument in an error message: a model or program by its type and name, not its whole repr."""
    if hasattr(obj, "dims") or hasattr(obj, "tasks"):
        return f"{type(obj).__name__} {getattr(obj, 'name', '')!r}".rstrip()
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def verify(program, model, device: str = "cpu", vm: str = "reference", cases: list[VerifyCase] | str = "full",
           adversarial: bool = False, seed: int = 0, runner=None, reference=None, validated: bool = False) -> VerifyResult:
    """Run each verify case of `program` on a VM (`vm` "reference": the ReferenceVM in torch on `device`;
    "cuda": the megakernel) and compare its logits and greedy tokens with eager transformers on `model`
    (an amk Model) under the rules of HARNESS.md section 3. `cases`: "full", "reduced", "smoke" or a list of
    VerifyCase. `adversarial` (ReferenceVM): the next SM to run is drawn at random (`seed`). `runner`: a VM to
    reuse (else one is built); `reference`: a callable(case) -> (logits, greedy, fp32 logits) that may serve
    cached eager data (else eager runs here). The program is first checked by amk.validate against the target it
    was lowered for (`validated=True`: the caller has done so, as the harness does once per program); one it rejects
    raises ProgramError with the validator's first issue, since no VM run can vouch for a program the megakernel
    must not run (a deadlock, a buffer hazard, a GPU's limits passed). A failed case is a result, not an exception; a case that needs more positions
    than the program holds raises ContextError, and a model whose eager forward gives non-finite logits in its dtype
    EagerReferenceError (no config could pass against it); a `program`, `model`, `cases`, `device` (cpu, cuda or auto), `vm`,
    `seed`, `adversarial`, `validated`, `runner` (not a VM) or `reference` (not callable) AMK cannot use, ArgumentError naming it (a model loaded with weights=False has no eager model to compare
    with; a program lowered for another model or dtype); device "cuda" on a machine without one, EnvironmentProblem."""
    t0 = time.perf_counter()
    if not hasattr(program, "constants") or not hasattr(program, "tasks"):
        raise ArgumentError("program", f"expected a program from amk.lower, got {_short(program)}")
    if not hasattr(model, "dims") or (reference is None and getattr(model, "eager", None) is None):
        raise ArgumentError("model", f"expected a model loaded with its weights (amk.load_model), got {_short(model)}"
                            + (" loaded with weights=False" if hasattr(model, "dims") else ""))
    _check_lowered_for(program, model)
    from amk.harness.arguments import integral

    seed = integral(seed)  # a numpy integer is the int it holds, here and in the VM it seeds
    device = _check_machine(device, vm, seed, runner)
    if runner is not None and not all(callable(getattr(runner, m, None)) for m in ("reset", "load_kv_prefix", "step")):
        # else every case would fail with an AttributeError that blames the program
        raise ArgumentError("runner", f"expected a VM (amk.vm: reset, load_kv_prefix and step), got {_short(runner)}")
    if reference is not None and not callable(reference):
        raise ArgumentError("reference", f"expected a callable(case) -> (logits, greedy, higher-precision logits), "
                                         f"got {_short(reference)}")
    for name, flag in (("validated", validated), ("adversarial", adversarial)):
        if not isinstance(flag, bool):  # a truthy string would skip the validator, or draw SMs at random, unasked
            raise ArgumentError(name, f"expected True or False, got {_short(flag)}")
    if not validated:
        _check_valid(program)
    max_seq = program.constants.max_seq
    if isinstance(cases, str):
        if cases not in ("full", "reduced", "smoke"):
            raise ArgumentError("cases", f"expected full, reduced, smoke or a list of VerifyCase, got {cases!r}")
        cases = default_cases(max_seq, reduced=False if cases == "full" else cases)
    check_cases_fit(cases, max_seq)  # a context too short is a usage error, not a failed case
    results: list[CaseResult] = []
    machine = None
    try:
        machine = runner or make_vm(program, model, device=device, vm=vm, adversarial=adversarial, seed=seed)
    except CacheStorageError:
        raise  # the cache directory failed (its disk full, say), not the program: no case result blames it
    except Exception as e:  # a VM that cannot be built fails every case, with the reason
        check_memory(e, f"building the {vm} VM on {device}")
        msg = f"{type(e).__name__}: {e}"
        results = [CaseResult(c.name, False, type(e).__name__, msg) for c in cases]
    if machine is not None:
        ref = reference or (lambda case: eager_reference(model, case, max_seq))
        for case in cases:
            results.append(_run_case(machine, model, case, max_seq, ref))
    return VerifyResult(results, str(device), vm, program.known_fingerprint(), time.perf_counter() - t0)


def _check_machine(device, vm, seed, runner):
    """`device`, "auto" made the device it picks. ArgumentError naming `vm`, `device` or `seed` for a value verify
    cannot run with, and EnvironmentProblem for a CUDA device this machine lacks: each is the caller's setting,
    never a failed case of the program."""
    from amk.harness.arguments import check_seed
    from amk.harness.environment import resolve_device

    if vm not in ("reference", "cuda"):
        raise ArgumentError("vm", f"expected 'reference' (the ReferenceVM) or 'cuda' (the megakernel), got {vm!r}")
    check_seed(seed)
    if runner is None:  # a given runner holds its own device
        picked = resolve_device(device)
        if str(device).lower() == "auto":
            return picked.value
    return device


def _check_valid(program) -> None:
    """ProgramError, with the validator's first issue and its count, for a program amk.validate rejects."""
    from amk.schedule.validate import validate

    check = validate(program)
    if not check.ok:
        more = len(check.issues) - 1 + sum(check.suppressed.values())
        raise ProgramError(f"the program does not validate for {program.meta.get('target', 'its target')}: "
                           f"{check.first_message()}" + (f" (and {more} more issues: amk.validate(program))"
                                                         if more else ""),
                           tasks=check.issues[0].tasks, buffers=check.issues[0].buffers)


def _check_lowered_for(program, model) -> None:
    """ArgumentError naming `program` when it was lowered for another model shape or dtype than `model`'s: its
    weights would not fit the program's buffers, and every case would fail for a reason that is not the config's."""
    from amk.schedule.lower import model_mismatch

    diffs = model_mismatch(program, model)
    if diffs:
        raise ArgumentError("program", f"lowered for another model or dtype than {_short(model)} "
                                       f"({'; '.join(diffs[:4])}{'; ...' if len(diffs) > 4 else ''}); "
                                       "lower it for this model: amk.lower(model, target, config)")


class HigherPrecision:
    """Logits of the case from the higher-precision eager copy, computed on first use (an fp64 copy of a
    1B model is 10 GB: only build it when a step needs it)."""

    def __init__(self, model, inputs: CaseInputs, greedy: list[int]):
        self.model, self.inputs, self.greedy = model, inputs, greedy
        self._logits: list[torch.Tensor] | None = None

    def __call__(self) -> list[torch.Tensor]:
        if self._logits is None:
            fed = CaseInputs(self.inputs.prefix_k, self.inputs.prefix_v, self.inputs.tokens + self.greedy[:-1])
            dt = torch.float64 if self.model.dtype == torch.float32 else torch.float32
            self._logits, _ = eager_decode(self.model.accuracy_eager(), fed, 0, dtype=dt)
        return self._logits


def within_rounding(logits: torch.Tensor, golden: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype) -> tuple[bool, dict]:
    """Is a step that missed eager's dual threshold still within rounding? `logits`, `golden` (eager in `dtype`)
    and `hi` (eager one precision higher) are one step's [vocab] logits. It passes when its MERE and MARE
    against `hi` are no worse than eager's own (MERE_SLACK, MARE_SLACK). Near-zero logits make MARE demand a
    fraction of one ulp of the logit scale, so a MARE miss is also forgiven when the largest absolute error is:
    for fp16/bf16, no larger than MARE_SLACK times eager's largest absolute error against `hi` (half an fp16
    ulp on a logit of 2e-4 reads as MARE 0.12, tests/test_oracle_rounding.py); for fp32, within FP32_ULPS
    ulps of the largest logit. The MERE bound holds either way. Returns (ok, the figures for the step record)."""
    tol = tolerance_for(dtype)
    ours, theirs = compare(logits, hi, dtype), compare(golden, hi, dtype)
    rec = {"mere_hi": ours.mere, "mare_hi": ours.mare, "eager_mere_hi": theirs.mere, "eager_mare_hi": theirs.mare}
    if ours.nonfinite:
        return False, rec
    err = float((logits.double() - hi.double()).abs().max())
    rec["max_abs_err_hi"] = err
    mere_ok = ours.mere <= max(MERE_SLACK * theirs.mere, tol)
    if mere_ok and ours.mare <= max(MARE_SLACK * theirs.mare, 10 * tol):
        rec["rule_hi"] = StepRule.EAGER_ERROR.value
        return True, rec
    if dtype == torch.float32:
        within = ours.mere < tol and err <= FP32_ULPS * 2.0 ** -23 * float(hi.abs().max())
    else:
        rec["eager_max_abs_err_hi"] = float((golden.double() - hi.double()).abs().max())
        within = mere_ok and err <= MARE_SLACK * rec["eager_max_abs_err_hi"]
    if within:
        rec["rule_hi"] = StepRule.ABSOLUTE_ERROR.value
    return within, rec


def eager_reference(model, case: VerifyCase, max_seq: int):
    """(eager logits per step, eager greedy tokens, callable giving higher-precision logits per step). Raises
    EagerReferenceError, naming the case and step, where eager's logits are not finite."""
    inputs = case_inputs(case, model.dims, model.dtype, max_seq)
    logits, greedy = eager_decode(model.eager, inputs, case.generate)
    for step, row in enumerate(logits):  # no VM could match a reference that is not a number
        if not bool(torch.isfinite(row).all()):
            from amk.models.registry import dtype_name

            raise EagerReferenceError(str(getattr(model, "name", "the model")), dtype_name(model.dtype), case.name, step)
    return logits, greedy, HigherPrecision(model, inputs, greedy)


def _run_case(machine, model, case: VerifyCase, max_seq: int, ref) -> CaseResult:
    res = CaseResult(case.name, False, tokens_expected=case.generate)
    try:
        inputs = case_inputs(case, model.dims, model.dtype, max_seq)
        golden, greedy, hi_src = ref(case)
        hi_fn = hi_src if callable(hi_src) or hi_src is None else (lambda: hi_src)
        half = model.dtype != torch.float32
        machine.reset()
        machine.load_kv_prefix(inputs.prefix_k, inputs.prefix_v)
        failures: list[str] = []
        feed = list(inputs.tokens)
        tol = tolerance_for(model.dtype)
        step = 0
        while step < len(feed):
            logits, nxt = machine.step(feed[step])
            c = compare(logits, golden[step], model.dtype)
            rec = {"step": step, "mere": c.mere, "mare": c.mare, "nonfinite": c.nonfinite, "top1": c.top1_match}
            ok = c.passed
            hi = hi_fn() if (half or not ok) and hi_fn is not None else None
            within = False
            if hi is not None and step < len(hi):
                within, extra = within_rounding(logits, golden[step], hi[step], model.dtype)
                rec.update(extra)
                ok = ok or within
            rule_hi = rec.pop("rule_hi", None)
            rec["rule"] = (StepRule.EAGER.value if c.passed else rule_hi if within else StepRule.FAILED.value)
            if hi is not None and step < len(hi) and half:
                fp32 = hi
                rec["kl"] = kl_divergence(fp32[step], logits)
                rec["kl_eager"] = kl_divergence(fp32[step], golden[step])
                if rec["kl"] > KL_SLACK_FACTOR * rec["kl_eager"] + KL_SLACK_ABS:
                    failures.append(f"step {step}: KL to fp32 {rec['kl']:.3g} worse than eager's {rec['kl_eager']:.3g}")
            res.steps.append(rec)
            if not ok:
                extra = (f" (vs higher precision: MERE {rec['mere_hi']:.3g} MARE {rec['mare_hi']:.3g}"
                         + (f" max abs {rec['max_abs_err_hi']:.3g}" if "max_abs_err_hi" in rec else "")
                         + f"; eager's {rec['eager_mere_hi']:.3g} / {rec['eager_mare_hi']:.3g}"
                         + (f" / {rec['eager_max_abs_err_hi']:.3g}" if "eager_max_abs_err_hi" in rec else "")
                         + ")") if "mere_hi" in rec else ""
                failures.append(f"step {step}: {c.reason}{extra}")
            step += 1
            gen_i = step - len(inputs.tokens)
            if gen_i >= 0 and gen_i < case.generate:
                if nxt != greedy[gen_i]:
                    hi_all = hi_fn() if half and hi_fn is not None else None
                    hi_now = hi_all[step - 1] if hi_all is not None and step - 1 < len(hi_all) else None
                    tie = tie_reason(golden[step - 1], hi_now, greedy[gen_i], nxt, tol, vm_logits=logits)
                    if tie:
                        res.note = f"stopped at generated token {gen_i}: {tie}"
                        break
                    failures.append(f"generated token {gen_i}: VM {nxt} != eager {greedy[gen_i]} ("
                                    f"{tie_shortfall(golden[step - 1], hi_now, greedy[gen_i], nxt, tol, logits)})")
                    break
                res.tokens_matched += 1
                if gen_i + 1 < case.generate:
                    feed.append(nxt)
        if failures:
            res.error_type = "Mismatch"
            res.message = "; ".join(failures[:4])
        else:
            res.passed = True
    except (CacheStorageError, EagerReferenceError):
        raise  # the machine's fault (a cached reference that cannot be stored) or the model's, not the case's
    except Exception as e:  # isolate the case: one failure never stops the rest
        check_memory(e, f"case {case.name}")
        res.error_type = type(e).__name__
        res.message = f"{e}"[:500]
        res.note = traceback.format_exc(limit=3)[-800:]
    return res


_NO_MEMORY = ("can't allocate memory", "out of memory", "cannot allocate memory")


def check_memory(e: BaseException, during: str) -> None:
    """Raises EnvironmentProblem (from `e`) when `e` is an allocation that failed (MemoryError, torch's
    OutOfMemoryError, or an allocator's RuntimeError): the machine ran out of memory `during` it, which says
    nothing of the program's correctness, so no case result may fail it."""
    oom = isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _NO_MEMORY))
    if oom:
        raise EnvironmentProblem(f"out of memory during {during}: {type(e).__name__}: {str(e)[:300]} (free memory, "
                                 "or a shorter max_seq)") from e
