"""When a greedy token may differ from eager's: only between tokens within rounding of each other."""

from __future__ import annotations

import pytest
import torch

from amk.eval.compare import tolerance_for
from amk.eval.oracle import tie_reason, tie_shortfall

TOL = tolerance_for(torch.bfloat16)  # 2^-7 relative: 2 x TOL x 10 = 0.156 logits at a logit of 10


def _logits(a: float, b: float) -> torch.Tensor:
    return torch.tensor([a, b, -5.0])


def test_a_gap_in_eager_logits_only_is_a_tie_under_the_higher_precision_reference():
    # eager's rounding opened a 0.3 gap that the fp32 logits do not have
    assert tie_reason(_logits(10.0, 9.7), _logits(10.0, 9.95), 0, 1, TOL) == \
        "the two tokens are within rounding under the higher-precision reference"


def test_a_gap_both_references_see_is_an_error():
    assert tie_reason(_logits(10.0, 9.7), _logits(10.0, 9.6), 0, 1, TOL) == ""
    assert tie_reason(_logits(10.0, 9.7), None, 0, 1, TOL) == ""


def test_eager_logits_within_rounding_are_a_tie_without_the_reference():
    assert tie_reason(_logits(10.0, 9.9), None, 0, 1, TOL) == "eager's top two are within rounding"


def test_a_vm_whose_two_logits_are_each_within_rounding_of_the_exact_ones_may_rank_them_either_way():
    # tinyllama-1.1b shape, bf16 (bench/results/20261203-1755_h200_tinyllama-1.1b_verify_failure_bisect.json): the fp32
    # gap, 0.061, is 1.14x the gap rule's 0.053; the kernel's logits are 0.033 and 0.043 from fp32, each in rounding
    eager, hi = _logits(3.40625, 3.34375), _logits(3.40838, 3.34782)
    vm = _logits(3.375, 3.39062)
    assert tie_reason(eager, hi, 0, 1, TOL) == ""
    assert tie_reason(eager, hi, 0, 1, TOL, vm_logits=vm) == \
        "the VM's logits of both tokens are within rounding of the higher-precision reference's"
    # one logit further off than rounding (0.108 where 2 x TOL x 3.35 = 0.052) is a wrong logit, not a tie
    assert tie_reason(eager, hi, 0, 1, TOL, vm_logits=_logits(3.375, 3.456)) == ""
    assert tie_reason(eager, hi, 0, 1, TOL, vm_logits=_logits(3.30, 3.39062)) == ""
    # without the higher-precision reference the VM's own logits excuse nothing
    assert tie_reason(eager, None, 0, 1, TOL, vm_logits=vm) == ""
    # nor do right logits excuse a token they do not rank first (an argmax gone wrong): the VM's logits here are
    # the exact ones, and its token is the third
    assert tie_reason(_logits(10.0, 2.0), _logits(10.0, 2.0), 0, 2, TOL, vm_logits=_logits(10.0, 2.0)) == ""
    assert tie_reason(eager, hi, 0, 1, TOL, vm_logits=_logits(3.40, 3.39)) == ""

def test_a_token_that_is_no_tie_says_how_far_from_one_it_is():
    # a gap of 0.2 at a logit of 10 where a tie allows 0.156: 1.28x, under whichever reference sees it smaller
    assert tie_shortfall(_logits(10.0, 9.7), _logits(10.0, 9.8), 0, 1, TOL) == \
        "the two tokens' logits are 0.2 apart under the higher-precision reference, 1.28x the 0.156 a tie allows"
    assert tie_shortfall(_logits(10.0, 9.0), None, 0, 1, TOL) == \
        "the two tokens' logits are 1 apart under eager's logits, 6.40x the 0.156 a tie allows"
    # with the VM's logits, how far each is from the higher-precision reference's, beside what rounding allows
    assert tie_shortfall(_logits(10.0, 9.7), _logits(10.0, 9.8), 0, 1, TOL, vm_logits=_logits(9.7, 9.9)).endswith(
        "; the VM's are 0.3 and 0.1 from the higher-precision reference's, where rounding allows 0.156 and 0.153")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_wrong_greedy_token_fails_its_case_with_its_distance_from_a_tie(dtype):
    # in bf16 the VM's logits are the ReferenceVM's, right within rounding: its token, which they do not rank
    # first (a broken argmax), must fail all the same
    import amk
    from amk.eval.cases import VerifyCase
    from amk.eval.oracle import make_vm, verify

    model = amk.load_model("toy", dtype=dtype)
    prog = amk.lower(model, "cpu-sim", {}, max_seq=16)

    class WrongSecondToken:  # the ReferenceVM, but its greedy token after the third prompt token is another
        def __init__(self):
            self.vm, self.steps = make_vm(prog, model), 0

        def reset(self):
            self.vm.reset()
            self.steps = 0

        def load_kv_prefix(self, k, v):
            self.vm.load_kv_prefix(k, v)

        def step(self, token):
            logits, nxt = self.vm.step(token)
            self.steps += 1
            return logits, (nxt + 1) % model.dims.vocab if self.steps == 3 else nxt

    res = verify(prog, model, cases=[VerifyCase("greedy4", 0, 2, generate=4)], runner=WrongSecondToken())
    (case,) = res.cases
    assert not case.passed and case.tokens_matched == 1
    assert case.message.startswith("generated token 1: VM ")
    assert "apart under eager's logits" in case.message and "x the " in case.message and "a tie allows" in case.message
    # in bf16 the message also gives the VM's two logits' distances from the higher-precision reference's
    assert ("from the higher-precision reference's, where rounding allows" in case.message) == (dtype == "bf16")
