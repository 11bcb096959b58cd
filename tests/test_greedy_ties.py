"""When a greedy token may differ from eager's: only between tokens within rounding of each other."""

from __future__ import annotations

import torch

from amk.eval.compare import tolerance_for
from amk.eval.oracle import tie_reason

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
