"""schedule/cost.py: the cost model ranks obviously worse programs worse, fits measured rows, and Spearman."""

from __future__ import annotations

import math
import random

import pytest

from amk.models import load_model
from amk.schedule.config import ScheduleConfig, with_value
from amk.schedule.cost import (
    CostCoefficients,
    CostModelError,
    Features,
    fit,
    linear_latency,
    predict,
    spearman,
)
from amk.schedule.lower import lower


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", weights=False)


def _cfg(**paths) -> ScheduleConfig:
    cfg = ScheduleConfig()
    for path, value in paths.items():
        cfg = with_value(cfg, path.replace("__", "."), value)
    return cfg


def _latency(model, cfg, target="cpu-sim", **kw) -> float:
    return predict(lower(model, target, cfg), target, **kw).latency_us


def test_more_tasks_same_bytes_is_slower(toy):
    # round robin over 8 SMs: every row tiling already spreads the LM head over all SMs, so halving the
    # rows per task only adds tasks (same bytes, same SMs)
    base = dict(sm__assignment="round_robin")
    few = _cfg(**base, matvec__lm_head__rows_per_task=16)
    many = _cfg(**base, matvec__lm_head__rows_per_task=8)
    p_few, p_many = lower(toy, "cpu-sim", few), lower(toy, "cpu-sim", many)
    assert len(p_many.tasks) > len(p_few.tasks) and p_many.weight_bytes == p_few.weight_bytes
    assert _latency(toy, many) > _latency(toy, few)


def test_fewer_sms_is_slower(toy):
    all_sms = _cfg(sm__assignment="explicit")
    one_sm = _cfg(sm__assignment="explicit", sm__explicit_map={"lm_head": [0], "gate_up": [0], "down": [0, 1]})
    pa, po = predict(lower(toy, "cpu-sim", all_sms), "cpu-sim"), predict(lower(toy, "cpu-sim", one_sm), "cpu-sim")
    assert po.bytes_per_sm_max > pa.bytes_per_sm_max
    assert po.latency_us > pa.latency_us


def test_smaller_gpu_share_and_fewer_loads_in_flight_are_slower(toy):
    assert _latency(toy, _cfg(threads_per_block=128, build__loads_in_flight=1, build__rows_in_flight=1),
                    "h100-sxm") > _latency(toy, ScheduleConfig(), "h100-sxm")


def test_prediction_is_over_the_spec_floor_and_linear_in_its_features(toy):
    prog = lower(toy, "h100-sxm", ScheduleConfig())
    p = predict(prog, "h100-sxm")
    assert p.latency_us > prog.weight_bytes / (3350.0 * 1e3)
    assert linear_latency(p.features, p.coefficients) == pytest.approx(p.latency_us, rel=1e-9)


def test_fit_recovers_coefficients_and_needs_five_rows():
    truth = CostCoefficients(mem_scale=1.3, task_overhead_us=0.7, wait_us=1.1, launch_us=5.0)
    rng = random.Random(0)
    rows = []
    for _ in range(12):
        f = Features(rng.uniform(10, 100), rng.randint(5, 60), rng.randint(0, 40))
        rows.append({"features": f.to_dict(), "latency_us": linear_latency(f, truth)})
    got = fit(rows)
    assert got.fitted_rows == 12
    for name in ("mem_scale", "task_overhead_us", "wait_us", "launch_us"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6)
    with pytest.raises(CostModelError):
        fit(rows[:4])


def test_fit_never_returns_negative_costs():
    rows = [{"features": {"mem_us": m, "tasks": t, "waits": 0}, "latency_us": 100.0 - t}
            for m, t in [(10, 1), (20, 2), (30, 3), (40, 4), (50, 5), (60, 6)]]
    got = fit(rows)
    assert min(got.mem_scale, got.task_overhead_us, got.wait_us, got.launch_us) >= 0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties share a rank
    assert spearman([1], [2]) is None
    assert spearman([1, 2, 3], [7, 7, 7]) is None
    assert spearman([1, float("nan"), 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)  # non-finite pairs dropped
    assert not math.isnan(spearman([3, 1, 2], [1, 2, 3]))


@pytest.mark.parametrize("combine", ["o_input", "stage", "last_partition"])
def test_the_partitions_a_combine_reads_are_priced(toy, combine, monkeypatch):
    # every O task reads all partitions of its input slice under o_input; a combine task its KV head's
    from amk.schedule import cost
    from amk.schedule.opcodes import NO_BUFFER, Opcode

    cfg = _cfg(attention__kv_partitions=4, attention__combine=combine)
    prog = lower(toy, "h200", cfg)
    c = prog.constants
    readers = [t for t in prog.tasks if cost.combine_bytes(t, prog)]
    assert readers
    for t in readers:
        p = t.params
        if t.opcode == Opcode.MATVEC:
            heads = (p.k0 + p.klen - 1) // c.head_dim - p.k0 // c.head_dim + 1
            stats = p.inp_parts * heads * 8 if p.inp_stats != NO_BUFFER else 0
            assert t.kind == "o" and cost.combine_bytes(t, prog) == p.inp_parts * p.klen * 4 + stats
        else:  # a combine task, or each partition task of a join, reads its KV head's partitions
            group = c.n_heads // c.n_kv_heads // p.q_splits  # a task group's q heads (3 splits derived on toy)
            assert t.opcode == (Opcode.ATTN_COMBINE if combine == "stage" else Opcode.ATTN_PARTIAL)
            assert cost.combine_bytes(t, prog) == p.parts * group * (c.head_dim * 4 + 8)
    priced = predict(prog, "h200").latency_us
    monkeypatch.setattr(cost, "combine_bytes", lambda t, p: 0)
    assert predict(prog, "h200").latency_us < priced
