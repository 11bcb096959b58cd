"""The verdict evaluate() returns, and the strict coercion of whatever an agent passes as a config."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from enum import Enum

from amk.schedule.config import ScheduleConfig, json_kind, json_value
from amk.schedule.errors import ConfigError


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
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


class _Object(dict):
    """A JSON object that remembers the keys given twice in it (json keeps the last value silently)."""

    twice: list[tuple[str, object, object]]


def _object(pairs: list[tuple[str, object]]) -> _Object:
    out, twice = _Object(), []
    for k, v in pairs:
        if k in out:
            twice.append((k, out[k], v))
        out[k] = v
    out.twice = twice
    return out


def _key_given_twice(value, path: str = "$") -> tuple[str, object, object] | None:
    """(dotted path, first value, second value) of the first key given twice in a parsed JSON value."""
    if isinstance(value, _Object):
        if value.twice:
            k, first, second = value.twice[0]
            return f"{path}.{k}", first, second
        for k, v in value.items():
            found = _key_given_twice(v, f"{path}.{k}")
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _key_given_twice(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _path_hint(text: str) -> str:
    """Where a config string that is no JSON names a file: say that a string is read as JSON text (the CLI's
    --config takes a path; the Python API takes the text or a dict)."""
    name = text.strip()
    try:
        is_file = bool(name) and "\n" not in name and os.path.isfile(name)
    except (OSError, ValueError):  # a name too long, or with a NUL
        is_file = False
    if name.endswith(".json") or is_file:
        return (f"; a config string is JSON text, and {name!r} looks like a file name: pass "
                f"json.load(open({name!r})) or the file's text")
    return ""


def parse_config(config) -> ScheduleConfig:
    """A ScheduleConfig from a dict, a JSON string (or bytes) or a ScheduleConfig; ConfigError otherwise.
    A ScheduleConfig is re-parsed through its dict, since its fields can be assigned anything."""
    try:
        if isinstance(config, (bytes, bytearray)):
            config = bytes(config).decode("utf-8")
        if isinstance(config, str):
            try:
                config = json.loads(config, object_pairs_hook=_object)
            except ValueError as e:  # read from a file or stdin (commands.ConfigText): name it
                source = getattr(config, "source", None)
                raise ConfigError("$", f"not valid JSON{f' ({source})' if source else ''}: {e}"
                                       f"{'' if source else _path_hint(config)}") from None
            twice = _key_given_twice(config)
            if twice:
                raise ConfigError(twice[0], f"given twice in one JSON object (values {json_value(twice[1])} and "
                                            f"{json_value(twice[2])}): which one was meant is not known")
        if isinstance(config, ScheduleConfig):
            config = config.to_dict()
        if not isinstance(config, dict):
            raise ConfigError("$", f"expected a config object (a dict, a JSON object string or a ScheduleConfig), "
                                   f"got {json_kind(config)}")
        return ScheduleConfig.from_dict(config)
    except ConfigError:
        raise
    except (RecursionError, MemoryError) as e:
        raise ConfigError("$", f"config too deeply nested or too large ({type(e).__name__})") from None
    except Exception as e:  # anything else a strange value provokes is still a malformed config
        raise ConfigError("$", f"malformed config ({type(e).__name__}: {e})") from None
