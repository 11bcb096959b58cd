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
The penalties pull each effect and trend toward what other models' records of this GPU and dtype show
(transfer_effects: the same regression pooled over them, one intercept a model), or toward "the analytic model
is right" where there are none; so a model with few records of its own ranks by what the GPU showed on the
others (on the tinyllama-1.1b shape every trial of `pipeline.pages` ran 1.36x or more the default's step,
which the analytic part prices as a gain: bench/results/loop_20261203-1736_h200_tinyllama-1.1b_6min), and each
of its own records moves the estimates toward what the GPU showed on it.

`score()` adds optimism for knob values no record of this model has tried yet (EXPLORE per value, at most
EXPLORE_MAX), so a round prefers to learn something when the predictions tie. Units: microseconds; effects are natural-log
units (0.01 ~ 1%).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np

from amk.flywheel.records import TuningRecord
from amk.schedule.config import ScheduleConfig, canonical_json, get_path
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
    transfer_rows: int = 0  # other models' records the effects start from
    transfer_models: int = 0

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
        return self._corrected(cfg, keys, base)

    def _corrected(self, cfg: ScheduleConfig, keys: list[str], base: float) -> float:
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
                "analytic_slope": round(self.slope, 4), "transfer_rows": self.transfer_rows,
                "transfer_models": self.transfer_models,
                "best_knob_values": [{"move": k, "log_effect": round(v, 4)} for k, v in top[:5] if v < 0]}


def _fit_coefficients(run: list[TuningRecord], gpu_records: list[TuningRecord]) -> CostCoefficients:
    for pool in (run, gpu_records):
        rows = [{"features": r.features, "latency_us": r.latency_us} for r in pool if r.measured and r.features]
        try:
            return fit(rows)
        except CostModelError:
            continue
    return CostCoefficients()


@dataclass(frozen=True)
class _Row:
    model: str
    config: ScheduleConfig
    keys: list[str]  # non-default searched path=value
    trends: dict[str, float]  # path -> log2(value / default)
    log_base: float  # log(analytic us)
    latency_us: float


@functools.lru_cache(maxsize=1 << 14)
def _parsed(config_json: str, searched: frozenset[str], trend_defaults: tuple) -> tuple | None:
    """(config, its knob keys, its trends) of a record's config, or None for one today's schema does not read.
    Every round refits over every record of the GPU: each distinct config is parsed once a process."""
    try:
        cfg = ScheduleConfig.from_dict(json.loads(config_json))
    except ValueError:
        return None  # a config of an older schema: it teaches nothing now
    return cfg, tuple(knob_keys(cfg, searched)), tuple(_trends(cfg, dict(trend_defaults)).items())


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _rows(records: list[TuningRecord], model: RankingModel, kind: str) -> list[_Row]:
    """The records a fit can learn from: correct, timed in `kind`, priced (a finite positive analytic figure: a
    record's features are JSON, where NaN and Infinity parse), with a config today's schema reads."""
    out = []
    trend_defaults = tuple(sorted(model.trend_defaults.items()))
    for r in records:
        if not r.correct or r.latency_kind != kind or not _finite_positive(r.latency_us):
            continue
        base = model.analytic(r.features, r.predicted_latency_us)
        if not _finite_positive(base):
            continue
        parsed = _parsed(canonical_json(r.config), model.searched, trend_defaults) if isinstance(r.config, dict) \
            else None
        if parsed is None:
            continue
        cfg, keys, trends = parsed
        out.append(_Row(r.model, cfg, list(keys), dict(trends), math.log(base), r.latency_us))
    return out


def _design(rows: list[_Row], groups: list[str]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """X (one column per knob value, per trend, then one per group) and y = log(latency / analytic)."""
    names = sorted({k for row in rows for k in row.keys})
    paths = sorted({p for row in rows for p in row.trends})
    col = {k: i for i, k in enumerate(names)}
    tcol = {p: len(names) + i for i, p in enumerate(paths)}
    X, y = np.zeros((len(rows), len(names) + len(paths) + len(groups))), np.zeros(len(rows))
    for i, row in enumerate(rows):
        for k in row.keys:
            X[i, col[k]] = 1.0
        for p, t in row.trends.items():
            X[i, tcol[p]] = t
        y[i] = math.log(row.latency_us) - row.log_base
    return X, y, names, paths


def transfer_effects(others: list[TuningRecord], model: RankingModel, kind: str) -> tuple[dict, dict, int, int]:
    """The knob effects and trends other models' records show on this GPU: the same ridge regression, pooled, with
    one free intercept a model (so that a model the analytic part prices too slow or too fast moves no knob).
    Returns (effects, trend, records, models). Replayed over the H200 loop corpora of three shapes, each ranked
    cold from the other two's records, the rank correlation of prediction and measurement rose from 0.67-0.85 to
    0.85-0.95 (bench/ranking_transfer.py, bench/results/20261205-0715_ranking_transfer.json)."""
    rows = _rows(others, model, kind)
    if not rows:
        return {}, {}, 0, 0
    groups = sorted({row.model for row in rows})
    X, y, names, paths = _design(rows, groups)
    gcol = {g: len(names) + len(paths) + i for i, g in enumerate(groups)}
    for i, row in enumerate(rows):
        X[i, gcol[row.model]] = 1.0
    penalty = np.diag([RIDGE] * len(names) + [RIDGE_TREND] * len(paths) + [0.0] * len(groups))
    w = np.linalg.solve(X.T @ X + penalty + 1e-9 * np.eye(X.shape[1]), X.T @ y)
    effects = {k: float(np.clip(w[i], -CLIP, CLIP)) for i, k in enumerate(names)}
    trend = {p: float(np.clip(w[len(names) + i], -CLIP, CLIP)) for i, p in enumerate(paths)}
    return effects, trend, len(rows), len(groups)


def fit_model(run: list[TuningRecord], gpu_records: list[TuningRecord], space: list[Knob], kind: str,
              others: list[TuningRecord] = ()) -> RankingModel:
    """Fit the ranking model. `run`: this model's, GPU's and dtype's records; `gpu_records`: every record of
    the GPU (for the coefficients when the run has too few); `kind`: the latency kind this run produces
    (records of another kind are not comparable and are left out); `others`: other models' records of this GPU
    and dtype (flywheel.records.for_other_models), whose knob effects (transfer_effects) the run's own records
    are pulled toward in place of zero, and which price the knob values this model has not measured."""
    searched = frozenset(k.path for k in space if k.search)
    model = RankingModel(_fit_coefficients(run, gpu_records), searched=searched, trend_defaults=trend_knobs(space))
    prior_effects, prior_trend, model.transfer_rows, model.transfer_models = transfer_effects(list(others), model,
                                                                                                kind)
    model.effects, model.trend = dict(prior_effects), dict(prior_trend)
    usable = _rows(run, model, kind)
    for row in usable:
        for k in row.keys:
            model.observed[k] = model.observed.get(k, 0) + 1
    if not usable:
        return model
    model.center = float(np.mean([row.log_base for row in usable]))
    X, y, names, paths = _design(usable, ["slope", "intercept"])
    X[:, -2] = [row.log_base - model.center for row in usable]
    X[:, -1] = 1.0  # intercept, not penalised
    w0 = np.array([prior_effects.get(k, 0.0) for k in names] + [prior_trend.get(p, 0.0) for p in paths] + [0.0, 0.0])
    penalty = np.diag([RIDGE] * len(names) + [RIDGE_TREND] * len(paths) + [RIDGE_SLOPE, 0.0])
    n_f = X.shape[1]
    w = np.linalg.solve(X.T @ X + penalty + 1e-9 * np.eye(n_f), X.T @ y + penalty @ w0)
    model.effects.update({k: float(np.clip(w[i], -CLIP, CLIP)) for i, k in enumerate(names)})
    model.trend.update({p: float(np.clip(w[len(names) + i], -CLIP, CLIP)) for i, p in enumerate(paths)})
    model.slope = float(np.clip(1.0 + w[-2], 0.0, 2.0))
    model.intercept = float(w[-1])
    model.rows = len(usable)
    preds = [math.log(model._corrected(row.config, row.keys, math.exp(row.log_base))) for row in usable]
    model.spearman = spearman(preds, [row.latency_us for row in usable])
    return model
