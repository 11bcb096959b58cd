"""When a step that misses eager's dual threshold is still within rounding of the higher-precision reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _checkpoints import qwen2_window

import amk
from amk.eval.oracle import MARE_SLACK, within_rounding


def _step(seed: int = 0, vocab: int = 512, scale: float = 0.5):
    """fp32 reference logits with one near-zero entry, and eager's fp16 rounding of them."""
    g = torch.Generator().manual_seed(seed)
    hi = (torch.rand(vocab, generator=g) * 2 - 1) * scale
    hi[7] = 1.8e-4  # far below fp16's 2^-10 relative floor: MARE divides its error by 2^-10
    eager = hi.half().float()
    return hi, eager


def test_half_an_ulp_on_a_near_zero_logit_is_rounding_not_an_error():
    hi, eager = _step()
    ours = eager.clone()
    ours[7] += 1.2e-4  # half an fp16 ulp of the logit scale: MARE reads it as 0.12
    ok, rec = within_rounding(ours, eager, hi, torch.float16)
    assert rec["mare_hi"] > MARE_SLACK * rec["eager_mare_hi"]  # the relative rule alone would fail it
    assert rec["max_abs_err_hi"] <= rec["eager_max_abs_err_hi"] * MARE_SLACK
    assert ok


def test_an_absolute_error_beyond_eager_s_is_an_error():
    hi, eager = _step()
    ours = eager.clone()
    worst = float((eager - hi).abs().max())
    ours[7] += 5 * MARE_SLACK * worst
    ok, rec = within_rounding(ours, eager, hi, torch.float16)
    assert not ok and rec["max_abs_err_hi"] > MARE_SLACK * rec["eager_max_abs_err_hi"]


def test_a_small_error_on_every_logit_fails_on_mere():
    hi, eager = _step()
    ours = eager + 3 * float((eager - hi).abs().max())  # each error under eager's largest x MARE_SLACK, on every logit
    ok, rec = within_rounding(ours, eager, hi, torch.float16)
    assert rec["max_abs_err_hi"] <= MARE_SLACK * rec["eager_max_abs_err_hi"]
    assert not ok


def test_non_finite_logits_fail():
    hi, eager = _step()
    ours = eager.clone()
    ours[3] = float("nan")
    assert within_rounding(ours, eager, hi, torch.bfloat16)[0] is False


def test_fp32_keeps_its_ulp_rule():
    hi, _ = _step()
    hi = hi.double()
    eager = hi.float().double()
    ours = eager.clone()
    ours[7] += 40 * 2.0 ** -23 * 0.5  # 40 ulps of the largest logit: inside FP32_ULPS
    assert within_rounding(ours.float(), eager.float(), hi, torch.float32)[0]
    ours[7] += 200 * 2.0 ** -23 * 0.5
    assert not within_rounding(ours.float(), eager.float(), hi, torch.float32)[0]


@pytest.fixture(scope="module")
def window_fp16(tmp_path_factory):
    return amk.load_model(str(qwen2_window(Path(tmp_path_factory.mktemp("qwen2_window")))), dtype="fp16")


def test_partition_softmax_verifies_on_a_checkpoint_with_a_near_zero_logit(window_fp16):
    # seed 0 of this checkpoint has a logit of 1.8e-4 at pos32, where the partition softmax's rounding
    # differs from eager's by half an fp16 ulp of the logit scale, with a smaller largest error than eager's
    prog = amk.lower(window_fp16, "cpu-sim", amk.ScheduleConfig.from_dict({"attention": {"softmax": "partition"}}),
                     max_seq=64)
    res = amk.verify(prog, window_fp16, device="cpu", vm="reference", cases="reduced")
    assert res.ok, res.to_dict()["failures"]
    steps = [s for c in res.cases for s in c.steps if "eager_max_abs_err_hi" in s]
    assert steps and all(s["max_abs_err_hi"] <= MARE_SLACK * s["eager_max_abs_err_hi"] for s in steps)


def test_each_case_reports_its_steps_and_the_rule_each_passed_by():
    """A bf16 verdict's worst MARE above 10 t comes with the rule that passed that step, case by case."""
    from amk.eval.compare import tolerance_for
    from amk.eval.oracle import StepRule

    v = amk.evaluate("toy-2L", "h200", {}, cases="reduced", device="cpu")
    assert v["correct"] and v["dtype"] == "bf16"
    for c in v["case_results"]:
        assert c["steps"] > 0 and sum(c["rules"].values()) == c["steps"]
        assert set(c["rules"]) <= {r.value for r in StepRule} - {StepRule.FAILED.value}
        assert c["kl_max"] is not None  # bf16 steps are compared with fp32 eager's distribution
    worst = max(v["case_results"], key=lambda c: c["worst_mare"])
    assert worst["worst_mare"] == v["worst_mare"]
    if worst["worst_mare"] >= 10 * tolerance_for(torch.bfloat16):
        assert set(worst["rules"]) - {StepRule.EAGER.value}
