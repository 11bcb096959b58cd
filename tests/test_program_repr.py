"""A lowered program shown in a notebook cell or a log line is a one-line summary, not every task's fields."""

from __future__ import annotations

import amk
from amk.schedule.program import MegakernelProgram


def test_a_program_repr_is_one_line_naming_what_it_is():
    prog = amk.lower(amk.load_model("toy"), "cpu-sim")
    text = repr(prog)
    assert "\n" not in text and len(text) < 300, text
    assert text.startswith("MegakernelProgram(model='toy', target='cpu-sim', ")
    assert f"tasks={len(prog.tasks)}, sms={len(prog.queues)}, buffers={len(prog.buffers)}" in text
    again = MegakernelProgram.from_dict(prog.to_dict())
    assert again == prog and repr(again) == text  # the fields, and equality, are the dataclass's as before
