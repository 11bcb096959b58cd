"""Cost-model calibration from the corpus: fitted coefficients for one GPU once it has enough measured rows,
and how well the model ranks what was measured (Spearman)."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from amk.flywheel.corpus import CorpusEntry, load_corpus
from amk.schedule.cost import MIN_FIT_ROWS, CostCoefficients, CostModelError, fit, spearman


@dataclass(frozen=True)
class Calibration:
    coefficients: CostCoefficients
    measured_rows: int
    spearman: float | None  # predicted vs measured over the measured rows; None with < 2
    missing: str | None = None  # a corpus path that was given and names no file (yet: a loop's first trial)
    corpus: str | None = None  # the corpus read, as it was given

    def note(self, gpu: str) -> str:
        if self.missing is not None:  # said, not raised: a loop hands its corpus over before it has written it
            return f"cost model: default coefficients (no corpus at {self.missing!r} yet)"
        where = f" of {self.corpus!r}" if self.corpus is not None else ""
        src = (f"fitted on {self.coefficients.fitted_rows} measured {gpu} rows{where}" if self.coefficients.fitted_rows
               else f"default coefficients ({self.measured_rows} measured {gpu} rows{where}; {MIN_FIT_ROWS} needed to "
                    "fit)")
        rank = f"; Spearman(predicted, measured) = {self.spearman:.3f}" if self.spearman is not None else ""
        return f"cost model: {src}{rank}"


def measured_rows(entries: list[CorpusEntry], gpu: str) -> list[dict]:
    rows = []
    for e in entries:
        v = e.verdict
        if e.gpu != gpu or v.get("latency_kind") != "measured-gpu" or e.latency_us is None:
            continue
        cost = v.get("cost") or {}
        rows.append({"features": cost.get("features"), "latency_us": e.latency_us,
                     "predicted_us": v.get("predicted_latency_us")})
    return rows


def calibrate(entries: list[CorpusEntry], gpu: str) -> Calibration:
    rows = measured_rows(entries, gpu)
    try:
        coef = fit(rows)
    except CostModelError:
        coef = CostCoefficients()
    rho = spearman([r["predicted_us"] for r in rows], [r["latency_us"] for r in rows])
    return Calibration(coef, len(rows), rho)


def calibrate_file(corpus: str | os.PathLike | None, gpu: str) -> Calibration:
    if corpus is None:
        return Calibration(CostCoefficients(), 0, None)
    if not Path(corpus).exists():
        return Calibration(CostCoefficients(), 0, None, missing=str(corpus))
    p = Path(corpus)
    st = p.stat()
    return dataclasses.replace(_cached(str(p.resolve()), st.st_size, st.st_mtime_ns, gpu), corpus=str(corpus))


@functools.lru_cache(maxsize=16)
def _cached(path: str, size: int, mtime_ns: int, gpu: str) -> Calibration:
    # keyed by size and mtime: a loop appends to the corpus as it goes, and each append refits
    return calibrate(load_corpus(path), gpu)
