"""stage_fill: how much of each stage's SM time streams bytes, from the placement alone (amk compile shows it)."""

from __future__ import annotations

import amk
from amk.schedule import get_target, lower
from amk.schedule.assign import stage_fill

TARGET = get_target("h200")  # 132 SMs: the toy model's stages leave most of them idle


def _fill(cfg: dict | None) -> dict:
    prog = lower(amk.load_model("toy-2L", weights=False), TARGET, cfg)
    return {f.kind: f for f in stage_fill(prog.tasks, prog.constants, prog.num_sms)}, prog


def test_every_task_on_one_sm_fills_one_sm_of_the_stage():
    fill, _ = _fill({"sm": {"assignment": "explicit", "explicit_map": {"qkv": [0], "o": [5]}}})
    for kind in ("qkv", "o"):
        assert fill[kind].sms_busy == 1 and abs(fill[kind].fill - 1 / TARGET.sm_count) < 1e-12, fill[kind]
    assert fill["qkv"].stages == 2  # one a layer


def test_fill_is_the_mean_sms_bytes_over_the_busiest():
    fill, prog = _fill({"sm": {"assignment": "round_robin"}})
    down = [t for t in prog.tasks if t.kind == "down"]
    layer = [t for t in down if t.stage == down[0].stage]
    per_sm: dict[int, int] = {}
    for t in layer:
        per_sm[t.sm] = per_sm.get(t.sm, 0) + t.weight_bytes
    want = sum(per_sm.values()) / (TARGET.sm_count * max(per_sm.values()))
    assert fill["down"].tasks == len(layer) and fill["down"].sms_busy == len(per_sm)
    assert abs(fill["down"].fill - want) < 1e-12 and 0 < want < 1


def test_stages_that_stream_nothing_are_left_out():
    fill, _ = _fill(None)
    assert "embed" not in fill and "argmax" not in fill
    assert {"qkv", "attention", "o", "gate_up", "down", "lm_head"} <= set(fill)
    assert all(0 < f.fill <= 1 and 1 <= f.sms_busy <= f.tasks for f in fill.values()), fill


def test_the_verdict_carries_the_fill_of_its_program():
    cfg = {"sm": {"assignment": "explicit", "explicit_map": {"qkv": [0]}}}
    v = amk.evaluate("toy-2L", "h200", cfg, device="cpu", dtype="fp32")
    fill, _ = _fill(cfg)
    assert v["valid"] and v["cost"]["stage_fill"] == {k: round(f.fill, 3) for k, f in fill.items()}
    assert v["cost"]["stage_fill"]["qkv"] == round(1 / TARGET.sm_count, 3)
