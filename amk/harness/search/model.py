"""The ranking model: which unmeasured candidates to measure next, learned from the tuning records.

Two parts. The analytic cost model (schedule/cost.py) prices a lowered program from its critical path; its
four coefficients are refitted by non-negative least squares once this GPU has MIN_FIT_ROWS measured records
(this model's and dtype's first, else every model's on the GPU). It knows bytes, tasks and waits, and nothing
of what the VM's build knobs or the memory system do beyond them, so a learned part corrects it, in the
manner of the learned cost models of TVM's Ansor/MetaSchedule with the config's knobs as features: ridge
regression of log(latency / analytic) over this model's, GPU's and dtype's correct records, on
- an indicator of each non-default `path=value` (its own effect),
- for integer knobs with three or more searched values, log2(value / default) (a trend, so that measuring
  64 and 32 says something about 512),
- log(analytic) itself (how far to trust the analytic model's spread: a slope of 1 keeps it, 0 ignores it).
The penalties pull each toward "the analytic model is right", so with few records it ranks alone, and each
measured record moves the estimates toward what the GPU showed.

`score()` adds optimism for knob values no record has tried yet (EXPLORE per value, at most EXPLORE_MAX),
so a round prefers to learn something when the predictions tie. Units: microseconds; effects are natural-log
units (0.01 ~ 1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from amk.flywheel.records import TuningRecord
from amk.schedule.config import ScheduleConfig, get_path
from amk.schedule.cost import CostCoefficients, CostModelError, fit, linear_latency, spearman
from amk.schedule.space import Knob, KnobType, diff

RIDGE = 1.0  # one measurement of a knob value moves its estimate halfway to what it showed
RIDGE_TREND = 4.0
RIDGE_SLOPE = 0.5  # the log(analytic) column spreads ~0.1-0.3: a few records decide the slope
CLIP = 1.0  # |effect| per feature; e^1 = 2.7x, beyond any single knob's measured effect
EXPLORE = 0.01
EXPLORE_MAX = 0.03


_DEFAULTS = ScheduleConfig()  # compared against, never changed


def knob_keys(config: dict | ScheduleConfig, searched: frozenset[str]) -> list[str]:
    """`path=value` of every searched knob that differs from the default."""
    cfg = config if isinstance(config, ScheduleConfig) else ScheduleConfig.from_dict(config)
    return [k for k in diff(_DEFAULTS, cfg) if k.split("=", 1)[0] in searched]


def trend_knobs(space: list[Knob]) -> dict[str, float]:
    """path -> default value, for integer knobs with >= 3 positive searched values and a positive default."""
    out = {}
    for k in space:
        ints = [v for v in k.search if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        if k.type == KnobType.INT and len(ints) >= 3 and isinstance(k.default, int) and k.default > 0:
            out[k.path] = float(k.default)
    return out


def _trends(config: ScheduleConfig, trend: dict[str, float]) -> dict[str, float]:
    out = {}
    for path, default in trend.items():
        v = get_path(config, path)
        if isinstance(v, int) and v > 0 and v != default:
            out[path] = math.log2(v / default)
    return out


@dataclass
class RankingModel:
    coefficients: CostCoefficients = field(default_factory=CostCoefficients)
    effects: dict[str, float] = field(default_factory=dict)  # path=value -> log effect
    trend: dict[str, float] = field(default_factory=dict)  # path -> log effect per doubling
    slope: float = 1.0  # on log(analytic), around `center`
    center: float = 0.0
    intercept: float = 0.0
    rows: int = 0  # records fitted on
    spearman: float | None = None  # rank correlation of the model's figures and the records' latencies
    observed: dict[str, int] = field(default_factory=dict)  # path=value -> records that held it
    searched: frozenset[str] = frozenset()
    trend_defaults: dict[str, float] = field(default_factory=dict)

    def analytic(self, features: dict | None, predicted_us: float | None) -> float | None:
        """The analytic price under the current coefficients (from the features when known)."""
        if features:
            try:
                return linear_latency(features, self.coefficients)
            except TypeError:
                pass
        return predicted_us

    def predict(self, config: dict | ScheduleConfig, features: dict | None,
                predicted_us: float | None) -> float | None:
        """The model's latency for a built candidate (us), or None when it could not be priced."""
        cfg = config if isinstance(config, ScheduleConfig) else ScheduleConfig.from_dict(config)
        return self._predict(cfg, knob_keys(cfg, self.searched), features, predicted_us)

    def _predict(self, cfg: ScheduleConfig, keys: list[str], features: dict | None,
                 predicted_us: float | None) -> float | None:
        base = self.analytic(features, predicted_us)
        if base is None or base <= 0:
            return None
        r = self.intercept + (self.slope - 1.0) * (math.log(base) - self.center)
        r += sum(self.effects.get(k, 0.0) for k in keys)
        r += sum(self.trend.get(p, 0.0) * t for p, t in _trends(cfg, self.trend_defaults).items())
        return base * math.exp(r)

    def score(self, config: dict | ScheduleConfig, features: dict | None,
              predicted_us: float | None) -> float | None:
        """predict() less the optimism for knob values no record holds yet: what a round ranks by (a round
        scores every waiting candidate, so the config is parsed and diffed once)."""
        cfg = config if isinstance(config, ScheduleConfig) else ScheduleConfig.from_dict(config)
        keys = knob_keys(cfg, self.searched)
        pred = self._predict(cfg, keys, features, predicted_us)
        if pred is None:
            return None
        new = sum(1 for k in keys if not self.observed.get(k))
        return pred * math.exp(-min(EXPLORE_MAX, EXPLORE * new))

    def to_dict(self) -> dict:
        top = sorted(self.effects.items(), key=lambda kv: kv[1])
        return {"coefficients": self.coefficients.to_dict(), "rows": self.rows, "spearman": self.spearman,
                "analytic_slope": round(self.slope, 4),
                "best_knob_values": [{"move": k, "log_effect": round(v, 4)} for k, v in top[:5] if v < 0]}


def _fit_coefficients(run: list[TuningRecord], gpu_records: list[TuningRecord]) -> CostCoefficients:
    for pool in (run, gpu_records):
        rows = [{"features": r.features, "latency_us": r.latency_us} for r in pool if r.measured and r.features]
        try:
            return fit(rows)
        except CostModelError:
            continue
    return CostCoefficients()


def fit_model(run: list[TuningRecord], gpu_records: list[TuningRecord], space: list[Knob], kind: str) -> RankingModel:
    """Fit the ranking model. `run`: this model's, GPU's and dtype's records; `gpu_records`: every record of
    the GPU (for the coefficients when the run has too few); `kind`: the latency kind this run produces
    (records of another kind are not comparable and are left out)."""
    searched = frozenset(k.path for k in space if k.search)
    model = RankingModel(_fit_coefficients(run, gpu_records), searched=searched, trend_defaults=trend_knobs(space))
    usable = []
    for r in run:
        if not r.correct or r.latency_us is None or r.latency_kind != kind or r.latency_us <= 0:
            continue
        base = model.analytic(r.features, r.predicted_latency_us)
        if base is None or base <= 0:
            continue
        try:
            cfg = ScheduleConfig.from_dict(r.config)
        except ValueError:
            continue  # a config of an older schema: it teaches nothing now
        keys = knob_keys(cfg, searched)
        for k in keys:
            model.observed[k] = model.observed.get(k, 0) + 1
        usable.append((keys, _trends(cfg, model.trend_defaults), math.log(base), math.log(r.latency_us), r.latency_us))
    if not usable:
        return model
    names = sorted({k for keys, *_ in usable for k in keys})
    paths = sorted({p for _, tr, *_ in usable for p in tr})
    model.center = float(np.mean([lb for _, _, lb, *_ in usable]))
    n_f = len(names) + len(paths) + 2
    X, y = np.zeros((len(usable), n_f)), np.zeros(len(usable))
    col = {k: i for i, k in enumerate(names)}
    tcol = {p: len(names) + i for i, p in enumerate(paths)}
    for i, (keys, tr, lb, ly, _) in enumerate(usable):
        for k in keys:
            X[i, col[k]] = 1.0
        for p, t in tr.items():
            X[i, tcol[p]] = t
        X[i, -2] = lb - model.center
        X[i, -1] = 1.0  # intercept, not penalised
        y[i] = ly - lb
    penalty = np.diag([RIDGE] * len(names) + [RIDGE_TREND] * len(paths) + [RIDGE_SLOPE, 0.0])
    w = np.linalg.solve(X.T @ X + penalty + 1e-9 * np.eye(n_f), X.T @ y)
    model.effects = {k: float(np.clip(w[col[k]], -CLIP, CLIP)) for k in names}
    model.trend = {p: float(np.clip(w[tcol[p]], -CLIP, CLIP)) for p in paths}
    model.slope = float(np.clip(1.0 + w[-2], 0.0, 2.0))
    model.intercept = float(w[-1])
    model.rows = len(usable)
    preds = [math.log(model.predict(r.config, r.features, r.predicted_latency_us) or float("nan")) for r in run
             if r.correct and r.latency_us is not None and r.latency_kind == kind and r.latency_us > 0
             and model.analytic(r.features, r.predicted_latency_us)]
    model.spearman = spearman(preds, [u[-1] for u in usable]) if len(preds) == len(usable) else None
    return model
