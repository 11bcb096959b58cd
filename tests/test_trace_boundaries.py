"""bench/trace.py's stage-boundary accounting, on a hand-made timeline."""

import importlib.util
from pathlib import Path

import pytest

from amk.vm.loader import TRACE_WORDS

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


def test_the_summary_carries_the_placements_stage_fill_and_prints(capsys):
    import torch

    import amk
    from amk.schedule import get_target, lower
    from amk.schedule.assign import stage_fill

    prog = lower(amk.load_model("toy-2L", weights=False), get_target("h200"), None)
    n = len(prog.tasks)
    t = torch.zeros((n, TRACE_WORDS), dtype=torch.int64)
    for task in prog.tasks:  # tasks one after another, 1 us each, ready 0.2 us after their start
        t[task.id, 0], t[task.id, 1], t[task.id, 2], t[task.id, 3] = 1000 * task.id, 1000 * task.id + 200, \
            1000 * task.id + 1000, task.sm
        t[task.id, 4] = 900  # the first phase: 900 cycles at the SM's 1.5 GHz below, 0.6 us
        t[task.id, 8], t[task.id, 9] = 7 + 1500 * task.id, 7 + 1500 * (task.id + 1)
    s = trace.summarise(prog, t, 4000.0, 64)
    assert s["clock_ghz"] == pytest.approx(1.5)
    assert all(r["phases_us"][0] == pytest.approx(0.6) for r in s["timeline"])
    want = {f.kind: f.fill for f in stage_fill(prog.tasks, prog.constants, prog.num_sms)}
    assert s["stage_fill"] == want and want["qkv"] < 1
    for layer in s["per_layer"]:  # the stages' spans tile the layer's time, and their excess its excess
        assert sum(x["span_us"] for x in layer["stages"]) == pytest.approx(layer["time_us"])
        assert sum(x["above_bytes_us"] for x in layer["stages"]) == pytest.approx(layer["time_us"] - layer["ideal_us"])
        assert all(x["span_us"] > 0 for x in layer["stages"])
    trace.print_summary(s)
    out = capsys.readouterr().out
    assert f"qkv {want['qkv']:.2f}" in out and "time above its bytes a stage" in out


def test_a_trace_without_elapsed_cycles_is_refused():
    import numpy as np

    t = np.zeros((3, TRACE_WORDS), dtype=np.int64)
    t[:, 2] = 1000
    with pytest.raises(ValueError, match="no clock"):
        trace.clock_ghz(t)


def test_the_kernels_trace_width_is_the_loaders():
    # a tracing build made without the loader's header (AMK_TRACE=1 as a bench/variants.py define) takes the
    # kernel's own default, which must match the buffer the loader allocates and bench/trace.py reads
    import re

    from amk.vm.loader import kernel_source

    m = re.search(r"#define AMK_TRACE_WORDS (\d+)", kernel_source())
    assert m and int(m.group(1)) == TRACE_WORDS


def test_save_raw_writes_what_trace_raw_reads(tmp_path):
    import importlib.util as iu

    import numpy as np
    import torch

    import amk
    from amk.schedule import get_target, lower

    prog = lower(amk.load_model("toy-2L", weights=False), get_target("h200"), None)

    class FakeVM:  # each launch leaves a trace whose start word counts the launches
        def __init__(self):
            self.trace, self.launches = torch.zeros((len(prog.tasks), TRACE_WORDS), dtype=torch.int64), 0

        def launch(self):
            self.launches += 1
            self.trace[:, 0] = self.launches

        def check(self):
            pass

    path = tmp_path / "raw" / "trace_raw.npz"
    trace.save_raw(prog, FakeVM(), 3, 64, 4000.0, str(path))
    with np.load(path) as f:
        raw = {k: f[k] for k in f.files}
    assert raw["trace"].shape == (3, len(prog.tasks), TRACE_WORDS) and raw["trace"][:, 0, 0].tolist() == [1, 2, 3]
    assert raw["kind"].tolist() == [t.kind for t in prog.tasks] and float(raw["read_bandwidth_gbs"]) == 4000.0
    assert raw["layer"].max() == 1 and (raw["bytes"] >= 0).all()
    spec = iu.spec_from_file_location("bench_trace_raw2", Path(__file__).parents[1] / "bench" / "tools" / "trace_raw.py")
    tool = iu.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert {"trace", "stage", "layer", "kind", "bytes"} <= set(raw)  # the keys trace_raw.py requires
    from amk.schedule.opcodes import Opcode

    # the kinds it counts over their dot are the lowering's matvecs
    assert {t.kind for t in prog.tasks if t.opcode == Opcode.MATVEC} <= tool.MATVEC_KINDS
