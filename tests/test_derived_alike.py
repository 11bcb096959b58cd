"""A knob set to the value the lowering would derive for it were it null gives the null program, and evaluate says
so; a knob set to another value gets no such note."""

from __future__ import annotations

import pytest

import amk
from amk.harness.evaluate import build_program
from amk.schedule.config import with_value


def _program(model: str, gpu: str, config: dict):
    v, program = build_program(model, gpu, config, "cpu")
    assert program is not None, v.rejected_reason
    return v, program


@pytest.mark.parametrize("model, gpu", [("toy", "cpu-sim"), ("toy-2L", "h100-sxm")])
def test_a_knob_set_to_its_derived_value_is_named_and_lowers_as_null(model, gpu):
    base, null_program = _program(model, gpu, {})
    derived = {p: val for p, val in base.derived.items() if p != "attention.head_warps"}  # that one is inert-noted
    assert len(derived) >= 6
    for path, value in derived.items():
        config = with_value(amk.ScheduleConfig(), path, value).to_dict()
        v, program = _program(model, gpu, config)
        assert program.known_fingerprint() == null_program.known_fingerprint(), path
        notes = [n for n in v.notes if n.startswith(f"{path}=") and "derives for null" in n]
        assert len(notes) == 1, (path, v.notes)
    other = {"matvec": {"o": {"rows_per_task": 2 * base.derived["matvec.o.rows_per_task"]}}}
    v, _ = _program(model, gpu, other)
    assert not [n for n in v.notes if "derives for null" in n], v.notes
