"""A synthetic latency function for search tests: known optimum, interacting knobs, measurement noise.

latency = 100 us x the product of one factor per non-default knob value x an interaction, times
(1 + N(0, NOISE)). Two single moves gain (attention.kv_partitions=16: 0.97, matvec.qkv.head_splits=2: 0.95);
attention.softmax=global (away from the default partition) loses 1% alone but gains 15% with kv_partitions >= 8; every other value of every
searched knob loses 2-17% (a fixed hash of path and value), and matvec.qkv.k_splits=4 is incorrect. So the
optimum is the default with exactly those three knobs changed: 100 x 0.97 x 0.95 x 0.85 = 78.3 us.

`predictor` is the search's view of it, standing in for the analytic cost model on a GPU: every factor off by
up to +-3% (its own hash), and it knows nothing of the interaction (it prices global at 0.99 everywhere).
"""

from __future__ import annotations

import hashlib
import random

from amk.schedule.config import ScheduleConfig
from amk.schedule.space import diff

BASE_US = 100.0
NOISE = 0.004
GOOD = {"attention.kv_partitions=16": 0.97, "matvec.qkv.head_splits=2": 0.95}
INTERACTING = "attention.softmax=global"
OPTIMUM = ScheduleConfig.from_dict({"attention": {"kv_partitions": 16, "softmax": "global"},
                                    "matvec": {"qkv": {"head_splits": 2}}})
OPTIMUM_US = BASE_US * 0.97 * 0.95 * 0.85


def _hash(key: str, salt: str) -> float:
    return int(hashlib.sha256((salt + key).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _factors(config: ScheduleConfig, model_view: bool) -> float:
    f = 1.0
    moves = diff(ScheduleConfig(), config)
    for key in moves:
        if key == INTERACTING:
            base = 0.99 if model_view else (0.85 if (config.attention.kv_partitions or 0) >= 8 else 1.01)
        else:
            base = GOOD.get(key, 1.02 + 0.15 * _hash(key, "cost"))
        f *= base * (1 + 0.06 * (_hash(key, "model") - 0.5)) if model_view else base
    return BASE_US * f


def true_latency(config: ScheduleConfig) -> float:
    return _factors(config, model_view=False)


def predictor(config, program, target, coefficients):
    return _factors(config, model_view=True), None


class Synthetic:
    """An evaluate() stand-in: `flat=True` makes every config 100 us (plus noise)."""

    def __init__(self, seed: int = 0, flat: bool = False, noise: float = NOISE):
        self.rng, self.flat, self.noise = random.Random(seed), flat, noise
        self.calls: list[str] = []
        self.bounds: list[tuple[float | None, float]] = []  # (stop_above_us, the latency measured) a call

    def __call__(self, model, gpu, config, **kw) -> dict:
        cfg = config if isinstance(config, ScheduleConfig) else ScheduleConfig.from_dict(config)
        self.calls.append(cfg.schedule_id)
        if cfg.matvec.qkv.k_splits == 4:
            return {"valid": True, "correct": False, "latency_us": None, "latency_kind": None,
                    "latency_spread_us": None, "failures": [{"case": "pos0", "message": "MERE 0.5 >= 0.0078"}],
                    "notes": [], "environment": {}, "schedule_id": cfg.schedule_id}
        lat = BASE_US if self.flat else true_latency(cfg)
        measured = lat * (1 + self.rng.gauss(0, self.noise))
        bound = kw.get("stop_above_us")
        self.bounds.append((bound, measured))
        raced = bound is not None and measured > bound  # as eval.bench.time_vm: one repeat, no spread
        return {"valid": True, "correct": True, "latency_us": measured,
                "latency_spread_us": None if raced else lat * self.noise, "timed_repeats": 1 if raced else 5,
                "latency_kind": "measured-gpu", "failures": [], "notes": [],
                "pct_of_floor": None, "environment": {}, "schedule_id": cfg.schedule_id}
