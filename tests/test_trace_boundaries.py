"""bench/trace.py's stage-boundary accounting, on a hand-made timeline."""

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_trace", Path(__file__).parents[1] / "bench" / "trace.py")
trace = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(trace)


def _row(first, last, done):
    return {"first_ready_us": first, "last_ready_us": last, "last_done_us": done}


def test_boundary_is_signal_plus_spread_from_the_previous_stage_end():
    tl = [_row(0.0, 0.2, 5.0), _row(5.3, 6.4, 9.0), _row(8.7, 10.1, 12.0)]
    trace.boundary_stalls(tl)
    assert tl[0]["boundary_us"] == 0.0 and tl[0]["signal_us"] == 0.0
    assert tl[0]["ready_spread_us"] == pytest.approx(0.2)
    assert (tl[1]["signal_us"], tl[1]["ready_spread_us"], tl[1]["boundary_us"]) == pytest.approx((0.3, 1.1, 1.4))
    # a stage whose tasks wait for only some of the previous stage's tasks can start before it ends
    assert (tl[2]["signal_us"], tl[2]["ready_spread_us"], tl[2]["boundary_us"]) == pytest.approx((-0.3, 1.4, 1.1))
    for r in tl[1:]:
        assert r["boundary_us"] == pytest.approx(r["signal_us"] + r["ready_spread_us"])
