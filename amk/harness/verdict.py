"""The verdict evaluate() returns; parse_config (the strict reading of whatever an agent passes as a config) lives
in schedule/config_text.py and is imported here too."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum

from amk.schedule.config_text import parse_config  # noqa: F401 - its home before schedule/; callers import it here


class LatencyKind(str, Enum):
    MEASURED_GPU = "measured-gpu"  # CUDA events around the real kernel, after a correctness pass on that GPU
    PREDICTED = "predicted"  # the cost model (schedule/cost.py); never a measurement


@dataclass
class Verdict:
    valid: bool = False  # parsed, lowered and passed the static validator
    rejected_reason: str | None = None  # "schema: $.path: ...", "lowering: knob: ...", "validator: ..."
    correct: bool = False  # every verify case passed on `device`
    cases_passed: int = 0
    cases_total: int = 0
    worst_mere: float | None = None
    worst_mare: float | None = None
    top1_agreement: float | None = None
    kl_max: float | None = None
    latency_us: float | None = None  # null unless correct, and not under the floor
    latency_spread_us: float | None = None  # stdev of the timed repeats; null for one repeat or a prediction
    timed_repeats: int | None = None  # how many timed repeats latency_us is the median of (GPU only)
    latency_kind: str | None = None  # LatencyKind value, set whenever latency_us is
    latency_context: int | None = None  # KV positions latency_us was taken at: BENCH_CONTEXT, or the fewer a program holds
    predicted_latency_us: float | None = None  # the cost model's figure, always labelled as such
    spec_floor_us: float | None = None
    measured_floor_us: float | None = None
    pct_of_floor: float | None = None  # floor (measured if known, else spec) / latency, percent
    speedups: dict = field(default_factory=dict)  # peer name -> peer latency / ours (measured only)
    schedule_id: str | None = None
    program_fingerprint: str | None = None
    task_count: int | None = None
    derived: dict | None = None  # the derived (null) tiling knobs and the values the lowering gave them
    weight_bytes: int | None = None
    model: str | None = None
    gpu: str | None = None
    device: str | None = None
    dtype: str | None = None
    environment: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    cost: dict | None = None  # cost-model features and coefficients (what `fit` learns from)
    kernel: dict | None = None  # the CUDA kernel as loaded: registers, local_bytes a thread, build; null off a GPU
    failures: list = field(default_factory=list)  # failing cases: case, error_type, message
    case_results: list = field(default_factory=list)  # every case: case, passed, message, its step figures
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def reject(self, reason: str) -> Verdict:
        self.valid, self.rejected_reason = False, reason
        return self

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def jsonable(v):
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a config key sent as "\udfff"): no UTF-8 writer takes it
            return v.encode("utf-8", "backslashreplace").decode("utf-8")
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


