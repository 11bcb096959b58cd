"""bench/tools/trace_raw.py on hand-made traces: a planted per-SM speed is found, noise is not, and a layer's
windows are measured from the previous layer's end, and from no ready time before a task's start."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from amk.vm.loader import TRACE_WORDS

_SPEC = importlib.util.spec_from_file_location(
    "bench_trace_raw", Path(__file__).parents[1] / "bench" / "tools" / "trace_raw.py")
trace_raw = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(trace_raw)

SMS, LAYERS, STEPS, NBYTES = 40, 6, 4, 400_000


def _raw(speed_of_sm, noise, seed=0):
    """Two matvec stages a layer, one task an SM each; block b runs on SM (b + step) % SMS, so that the SM, not
    the block, carries the speed. Dot time = bytes / (20 GB/s * speed) * (1 + noise), the whole execution."""
    rng = np.random.default_rng(seed)
    kinds, stages, layers = [], [], []
    for layer in range(LAYERS):
        for k, name in enumerate(("gate_up", "down")):
            kinds += [name] * SMS
            stages += [2 * layer + k] * SMS
            layers += [layer] * SMS
    n = len(kinds)
    trace = np.zeros((STEPS, n, TRACE_WORDS), dtype=np.int64)
    for s in range(STEPS):
        clock = 0
        for st in range(2 * LAYERS):
            ids = np.arange(st * SMS, (st + 1) * SMS)
            blocks = ids % SMS
            sms = (blocks + s) % SMS
            ns = NBYTES / (20.0 * speed_of_sm[sms]) * (1 + noise * rng.standard_normal(SMS))
            trace[s, ids, 0] = clock
            trace[s, ids, 1] = clock + 100
            trace[s, ids, 2] = clock + 100 + ns.astype(np.int64)
            trace[s, ids, 3] = blocks | (sms.astype(np.int64) << 32)
            trace[s, ids, 4] = 200  # phase 0: 100 ns at 2 GHz
            trace[s, ids, 5] = (2 * ns).astype(np.int64)  # phase 1, the dot: the whole execution here
            trace[s, ids, 8] = 0
            trace[s, ids, 9] = (trace[s, ids, 2] - trace[s, ids, 0]) * 2
            clock = int(trace[s, ids, 2].max())
    return {"trace": trace, "stage": np.array(stages), "layer": np.array(layers), "kind": np.array(kinds),
            "bytes": np.full(n, NBYTES)}


def test_a_planted_sm_speed_is_found_across_layers_and_launches():
    speed = np.ones(SMS)
    speed[:4] = 0.8  # a tenth of the SMs 20% slower
    got = trace_raw.sm_speed(_raw(speed, noise=0.005))
    assert got["sms"] == SMS and got["blocks"] == SMS and got["same_sm_every_step"] == pytest.approx(1 / STEPS)
    for kind in ("gate_up", "down"):
        v = got["kinds"][kind]
        assert v["sm_rate_split_half_r"] > 0.95 and v["sm_rate_across_steps_r"] > 0.95
        assert v["last_on_slowest_tenth"] == 1.0
        assert v["tail_max_over_mean"] == pytest.approx(1 / 0.8 / (0.1 / 0.8 + 0.9), rel=0.02)
        assert set(np.argsort(v["sm_rate_gbs"])[:4].tolist()) == {0, 1, 2, 3}


def test_a_matvec_rate_counts_its_dot_not_a_tagged_wait_in_its_staging():
    raw = _raw(np.ones(SMS), noise=0.0)
    slow_start = raw["trace"][:, :SMS, :]
    slow_start[:, :4, 2] += 50_000  # four tasks spin 50 us in their staging, outside the dot
    got = trace_raw.sm_speed(raw)["kinds"]["gate_up"]
    assert min(got["sm_rate_gbs"]) == pytest.approx(max(got["sm_rate_gbs"]))


def test_closing_time_is_execution_less_phases():
    raw = _raw(np.ones(SMS), noise=0.0)
    raw["trace"][:, :, 2] += 700  # 0.7 us between the end of every task's dot and its done mark
    raw["trace"][:, :, 9] += 1400  # at the same 2 GHz
    got = trace_raw.closing_times(raw)
    assert set(got) == {"gate_up", "down"}
    # phase 0 (0.1 us at 2 GHz) lies inside the execution too: the ready-to-done time less all three phases
    assert got["gate_up"]["median_us"] == pytest.approx(0.6, abs=0.002)


def test_noise_alone_is_no_sm_speed():
    got = trace_raw.sm_speed(_raw(np.ones(SMS), noise=0.05, seed=3))
    for kind in ("gate_up", "down"):
        assert abs(got["kinds"][kind]["sm_rate_split_half_r"]) < 0.5


def test_layer_windows_start_at_the_previous_layers_end():
    raw = _raw(np.ones(SMS), noise=0.0)
    rows = trace_raw.layer_windows(raw, 2)
    assert [r["kind"] for r in rows] == ["gate_up", "down"]
    assert rows[0]["ready"][0] == pytest.approx(0.1)  # ready 100 ns after the previous stage's end
    assert rows[0]["staged"][0] == pytest.approx(0.2)  # plus phase 0's 200 cycles at 2 GHz
    assert rows[1]["ready"][0] == pytest.approx(rows[0]["done"][1] + 0.1)
    assert rows[0]["mb"] == pytest.approx(SMS * NBYTES / 1e6)
    assert "above_bytes_us" not in rows[0]  # no bandwidth given, none in the file
    # at 20 GB/s a stage's bytes take exactly its dot; each stage also waits 0.1 us for its ready time
    rows = trace_raw.layer_windows(dict(raw, read_bandwidth_gbs=np.float64(20.0 * SMS)), 2)
    assert [r["above_bytes_us"] for r in rows] == pytest.approx([0.1, 0.1], abs=0.002)
    assert rows[1]["span_us"] == pytest.approx(rows[1]["done"][1] - rows[0]["done"][1])
    with pytest.raises(ValueError, match="layer 9 is not in the trace"):
        trace_raw.layer_windows(raw, 9)


def test_a_poll_ahead_of_thread_0_counts_from_the_start():
    # every poll of the last step saw its dependencies met 300 ns before thread 0 (still releasing the task before)
    # started the task
    raw = _raw(np.ones(SMS), noise=0.0)
    last = raw["trace"][-1]
    last[:, 1] = last[:, 0] - 300
    rows = trace_raw.layer_windows(raw, 1)
    assert rows[0]["ready"] == pytest.approx(rows[0]["start"])  # not before the start
    assert rows[0]["staged"][0] == pytest.approx(rows[0]["start"][0] + 0.1)
    # a task's execution is then the 0.1 us from its start to the old ready time plus its three phases, the dot
    # filling the rest: nothing is left between the epilogue and the done mark (0.3 us more counted from the poll)
    assert trace_raw.closing_times(raw)["gate_up"]["median_us"] == pytest.approx(0.0, abs=0.002)


def test_balance_gain_is_the_slow_tail_a_run_time_split_of_the_bytes_would_save():
    speed = np.ones(SMS)
    speed[:4] = 0.8
    got = trace_raw.balance_gain(_raw(speed, noise=0.0))
    # every SM staged at the same time, streaming 20 * speed bytes a ns: shared, the stage's bytes end after
    # SMS * NBYTES / sum(20 * speed) ns; the slow SMs' own bytes after NBYTES / 16 ns
    want = (NBYTES / 16.0 - SMS * NBYTES / (20.0 * speed.sum())) / 1e3
    assert set(got) == {"gate_up", "down"}
    for v in got.values():
        assert v["stages"] == LAYERS * STEPS
        assert v["saved_us"] == pytest.approx(want, abs=0.01)
    even = trace_raw.balance_gain(_raw(np.ones(SMS), noise=0.0))
    assert all(v["saved_us"] == pytest.approx(0.0, abs=0.01) for v in even.values())


def test_balanced_end_counts_a_late_starter_only_from_its_start():
    # two SMs at 1 byte a ns, one from 0 and one from 100: 300 bytes end at 200
    assert trace_raw.balanced_end(np.array([0.0, 100.0]), np.array([1.0, 1.0]), 300.0) == pytest.approx(200.0)
    # 50 bytes end before the late one starts
    assert trace_raw.balanced_end(np.array([0.0, 100.0]), np.array([1.0, 1.0]), 50.0) == pytest.approx(50.0)
