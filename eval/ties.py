"""When a greedy token that differs from eager's is no error: two tokens whose logits are within rounding of
each other, by eager's logits, by a higher-precision reference's, or by the VM's own. verify's step rule."""

from __future__ import annotations

import torch


def _allowance(x: float, tol: float) -> float:
    """The difference rounding allows at a logit of `x` (`tol` relative, twice, at least at a logit of 1)."""
    return 2 * tol * max(abs(x), 1.0)


def _within_rounding(logits: torch.Tensor, tok_a: int, tok_b: int, tol: float) -> bool:
    a, b = float(logits[tok_a]), float(logits[tok_b])
    return abs(a - b) <= _allowance(a, tol)


def tie_shortfall(eager_logits: torch.Tensor, hi_logits: torch.Tensor | None, eager_tok: int, vm_tok: int,
                  tol: float, vm_logits: torch.Tensor | None = None) -> str:
    """How far from a tie a greedy token that differs from eager's is (tie_reason found none): the two tokens'
    logit gap under the reference that sees the smaller one, as a multiple of the gap a tie allows there, and
    (given the VM's logits and the higher-precision reference) how far the VM's logits of the two are from the
    reference's. A multiple near 1 is a near tie that rounding noise decided; a large one, a wrong logit."""
    refs = [("eager's logits", eager_logits)] + ([("the higher-precision reference", hi_logits)]
                                                 if hi_logits is not None else [])
    gaps = []
    for name, lg in refs:
        a, b = float(lg[eager_tok]), float(lg[vm_tok])
        gaps.append((abs(a - b) / _allowance(a, tol), abs(a - b), _allowance(a, tol), name))
    ratio, gap, allow, name = min(gaps)
    text = f"the two tokens' logits are {gap:.3g} apart under {name}, {ratio:.2f}x the {allow:.3g} a tie allows"
    if hi_logits is not None and vm_logits is not None:
        errs = [abs(float(vm_logits[t]) - float(hi_logits[t])) for t in (eager_tok, vm_tok)]
        rounding = [_allowance(float(hi_logits[t]), tol) for t in (eager_tok, vm_tok)]
        text += (f"; the VM's are {errs[0]:.3g} and {errs[1]:.3g} from the higher-precision reference's, where "
                 f"rounding allows {rounding[0]:.3g} and {rounding[1]:.3g}")
    return text


def _near(value: float, exact: float, tol: float) -> bool:
    return abs(value - exact) <= _allowance(exact, tol)


def tie_reason(eager_logits: torch.Tensor, hi_logits: torch.Tensor | None, eager_tok: int, vm_tok: int,
               tol: float, vm_logits: torch.Tensor | None = None) -> str:
    """Why a greedy token that differs from eager's is no error, or "" when it is one. Two bf16/fp16 paths
    may pick either of two tokens whose logits are within rounding (`tol`, relative) of each other: by eager's
    own logits, or by the higher-precision reference both are measured against (eager's rounding can open a
    gap the exact logits do not have). Or, given `vm_logits`, where the VM's own logits rank its token at least
    as high as eager's and each of the two is within rounding of the higher-precision reference's: the VM then
    ranks two tokens whose exact logits its rounding error spans, and a wrong logit (larger than rounding) or a
    token its own logits do not put first is never excused. Found where two numerics changes together moved a
    bf16 kernel's two logits by 2-3 ulps each across an fp32 gap 1.14x the first two rules' allowance
    (bench/results/20261203-1755_h200_tinyllama-1.1b_verify_failure_bisect.json)."""
    if _within_rounding(eager_logits, eager_tok, vm_tok, tol):
        return "eager's top two are within rounding"
    if hi_logits is not None and _within_rounding(hi_logits, eager_tok, vm_tok, tol):
        return "the two tokens are within rounding under the higher-precision reference"
    # the VM's token must also lead eager's in the VM's own logits: a token its logits do not rank first (an
    # argmax gone wrong) is never excused by logits that are right
    if hi_logits is not None and vm_logits is not None and float(vm_logits[vm_tok]) >= float(vm_logits[eager_tok]) \
            and all(_near(float(vm_logits[t]), float(hi_logits[t]), tol) for t in (eager_tok, vm_tok)):
        return "the VM's logits of both tokens are within rounding of the higher-precision reference's"
    return ""
