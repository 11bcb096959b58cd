"""Dual-threshold comparison (MERE / MARE) and distribution distance, per shared/DESIGN.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

TOLERANCE = {torch.float32: 2.0 ** -13, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
MARE_FACTOR = 10.0


@dataclass(frozen=True)
class Comparison:
    passed: bool
    mere: float
    mare: float
    tolerance: float
    top1_match: bool
    nonfinite: int
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def tolerance_for(dtype: torch.dtype) -> float:
    if dtype not in TOLERANCE:
        raise ValueError(f"no tolerance for dtype {dtype}")
    return TOLERANCE[dtype]


def compare(actual: torch.Tensor, golden: torch.Tensor, dtype: torch.dtype) -> Comparison:
    """MERE = mean(|a-g| / max(|g|, t)) < t and MARE = max(...) < 10 t; NaN/Inf anywhere fails;
    integer or bool tensors must be equal."""
    if actual.shape != golden.shape:
        return Comparison(False, float("inf"), float("inf"), 0.0, False, 0, f"shape {tuple(actual.shape)} != {tuple(golden.shape)}")
    if not actual.is_floating_point():
        eq = bool(torch.equal(actual, golden))
        return Comparison(eq, 0.0 if eq else 1.0, 0.0 if eq else 1.0, 0.0, eq, 0, "" if eq else "integers differ")
    t = tolerance_for(dtype)
    a, g = actual.double(), golden.double()
    nonfinite = int((~torch.isfinite(a)).sum())
    top1 = bool(torch.argmax(torch.nan_to_num(a, nan=-1e30)) == torch.argmax(g)) if a.numel() else True
    if nonfinite or not torch.isfinite(g).all():
        return Comparison(False, float("nan"), float("nan"), t, top1, nonfinite,
                          f"{nonfinite} non-finite values in the output" if nonfinite else "reference is not finite")
    rel = (a - g).abs() / g.abs().clamp_min(t)
    mere, mare = float(rel.mean()), float(rel.max())
    ok = mere < t and mare < MARE_FACTOR * t
    reason = "" if ok else (f"MERE {mere:.3g} >= {t:.3g}" if mere >= t else f"MARE {mare:.3g} >= {MARE_FACTOR * t:.3g}")
    return Comparison(ok, mere, mare, t, top1, 0, reason)


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(softmax(ref) || softmax(logits)) in float64."""
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    return float((p.exp() * (p - q)).sum())
