"""evaluate() under >= 10,000 malformed configs: each comes back valid=false with a reason, none raises or hangs,
and none reaches model work (malformed configs are rejected before any model loads)."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

import amk.harness.environment as env
from amk.harness.evaluate import evaluate
from amk.schedule.config import ScheduleConfig
from amk.schedule.space import KnobType, search_space

N = 10_000
SPACE = [k for k in search_space("cpu-sim")]
DEFAULT = ScheduleConfig().to_dict()


def _junk(rng: random.Random, depth: int = 0):
    pick = rng.randrange(14)
    if pick == 0:
        return None
    if pick == 1:
        return math.nan
    if pick == 2:
        return rng.choice([math.inf, -math.inf])
    if pick == 3:
        return rng.choice([10**30, -(10**30), 2**63, -1, -(2**31)])
    if pick == 4:
        return rng.uniform(-1e9, 1e9)
    if pick == 5:
        return "".join(rng.choice("ab{}[]\"\\\x00é🙂 ") for _ in range(rng.randrange(12)))
    if pick == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))] if depth < 4 else []
    if pick == 7:
        return {str(rng.random()): _junk(rng, depth + 1)} if depth < 4 else {}
    if pick == 8:
        return rng.choice([True, False])
    if pick == 9:
        return rng.choice(["round_robin", "HEAD", "", "liveness "])
    if pick == 10:
        return (1, 2)
    if pick == 11:
        return b"\x00\xff"
    if pick == 12:
        return {"matvec": {"qkv": {"k_splits": {"deeper": [[[[]]]]}}}}
    return 1.5


def _bad_leaf(rng: random.Random, knob):
    """A value the knob's metadata forbids: the wrong type, or out of its range/choices."""
    while True:
        if knob.type == KnobType.INT and rng.random() < 0.5:
            if knob.choices is not None:
                v = rng.choice([-1, 3, 7, 100000, 2**40])
                if v not in knob.choices:
                    return v
            else:
                return rng.choice([knob.minimum - 1, knob.maximum + 1, -(2**62), 2**62])
        v = _junk(rng)
        if v is None and knob.nullable:  # null is a value of an `int | None` knob: derived
            continue
        if knob.type == KnobType.BOOL and isinstance(v, bool):
            continue
        if knob.type == KnobType.INT and isinstance(v, int) and not isinstance(v, bool):
            continue
        if knob.type == KnobType.ENUM and v in (knob.choices or ()):
            continue
        if knob.type == KnobType.OBJECT and v in ({},):
            continue
        return v


def _set(d, path, value):
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def malformed(rng: random.Random):
    kind = rng.randrange(8)
    if kind == 0:  # not an object at all
        return rng.choice([None, [], [1, {}], 3, -2.5, math.nan, True, "", "null", "[1,2]", "42", '"str"',
                           "{not json", "{" * 5000, object(), {1, 2}, b"[]", (1,)])
    if kind == 1:  # a JSON string of a malformed object
        d = json.loads(json.dumps(DEFAULT))
        knob = rng.choice(SPACE)
        _set(d, knob.path, rng.choice(["x", -1, [1], {"a": 1}, 1e300] + ([] if knob.nullable else [None])))
        text = json.dumps(d)
        return text if json.loads(text) != DEFAULT else text.replace("{", "[", 1)
    if kind == 2:  # unknown key somewhere
        d = json.loads(json.dumps(DEFAULT))
        section = rng.choice([d, d["matvec"], d["matvec"]["qkv"], d["attention"], d["fusion"], d["sm"], d["build"]])
        section[rng.choice(["bogus", "K_splits", "", "matvec ", "0"])] = _junk(rng)
        return d
    if kind == 3:  # a whole section replaced by junk
        d = json.loads(json.dumps(DEFAULT))
        key = rng.choice(["matvec", "attention", "fusion", "sm", "build"])
        d[key] = rng.choice([None, 1, "x", [], math.nan, [d[key]]])
        return d
    if kind == 4:  # a bad explicit map
        return {"sm": {"assignment": "explicit", "explicit_map": rng.choice([
            {"lm_head": []}, {"lm_head": [-1]}, {"lm_head": [True]}, {"lm_head": [1.0]}, {"nope": [0]},
            {"lm_head": [10**9]}, {"lm_head": "0"}, [0, 1], {"qkv": [0, None]}])}}
    # a single bad leaf, in a full or sparse dict
    knob = rng.choice(SPACE)
    d = json.loads(json.dumps(DEFAULT)) if kind == 5 else {}
    if kind != 5:
        node = d
        for p in knob.path.split(".")[:-1]:
            node = node.setdefault(p, {})
    _set(d, knob.path, _bad_leaf(rng, knob))
    return d


def test_ten_thousand_malformed_configs_are_rejected_fast(monkeypatch):
    def no_model(*a, **k):  # malformed configs must be rejected before any model work
        raise AssertionError("a malformed config reached model loading")

    monkeypatch.setattr(env, "get_model", no_model)
    monkeypatch.setattr("amk.harness.evaluate.get_model", no_model)
    rng = random.Random(1234)
    t0 = time.perf_counter()
    reasons = set()
    worst = 0.0
    for _ in range(N):
        cfg = malformed(rng)
        t = time.perf_counter()
        v = evaluate("toy", "cpu-sim", cfg, device="cpu")
        worst = max(worst, time.perf_counter() - t)
        assert v["valid"] is False, cfg
        assert v["correct"] is False and v["latency_us"] is None
        assert isinstance(v["rejected_reason"], str) and v["rejected_reason"].startswith("schema: $"), v
        json.dumps(v, allow_nan=False)
        reasons.add(v["rejected_reason"].split(":")[1].strip())
    elapsed = time.perf_counter() - t0
    assert worst < 1.0, f"one malformed config took {worst:.2f} s"
    assert elapsed < 60, f"{N} malformed configs took {elapsed:.1f} s"
    assert len(reasons) > 20  # the paths name many different fields


@pytest.mark.parametrize("cfg", [ScheduleConfig(), ScheduleConfig().to_dict(), json.dumps({}), b"{}"])
def test_well_formed_inputs_of_every_accepted_type_parse(cfg):
    from amk.harness.verdict import parse_config

    assert parse_config(cfg).schedule_id == ScheduleConfig().schedule_id


def test_a_mutated_schedule_config_object_is_rechecked():
    from amk.harness.verdict import parse_config

    cfg = ScheduleConfig()
    cfg.threads_per_block = 7  # dataclasses do not check assignments
    with pytest.raises(ValueError, match=r"\$\.threads_per_block"):
        parse_config(cfg)
