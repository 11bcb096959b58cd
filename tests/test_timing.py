"""eval.bench.time_vm's control flow on a CPU: a stand-in VM whose steps advance a clock, read through stand-in
CUDA events. Racing (stop_above_us) must skip exactly the repeats it promises and never the checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from amk.eval import bench


class _Clock:
    us = 0.0


class _Event:
    def __init__(self, enable_timing: bool = False):
        self.at = None

    def record(self):
        self.at = _Clock.us

    def synchronize(self):
        pass

    def elapsed_time(self, end) -> float:  # milliseconds, as torch.cuda.Event
        return (end.at - self.at) / 1e3


class _VM:
    """Each step takes `step_us`; counts launches and checks."""

    def __init__(self, step_us: float, stalled: int = 0):
        self.step_us, self.launches, self.checks, self.stalled = step_us, 0, 0, stalled
        self.c = SimpleNamespace(max_seq=2048, n_layers=1, n_kv_heads=1, head_dim=4)
        self.device = "cpu"

    def reset(self):
        pass

    def load_kv_prefix(self, k, v):
        pass

    def set_token(self, token):
        pass

    def launch(self):
        _Clock.us += self.step_us * (10 if self.launches < self.stalled else 1)  # a host stall at the start
        self.launches += 1

    def check(self):
        self.checks += 1


@pytest.fixture(autouse=True)
def fake_events(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)


STEPS, WARMUP, REPEATS = 200, 10, 5
REPEAT = WARMUP + STEPS


@pytest.mark.parametrize("bound, launches, samples", [
    (None, (REPEATS + 1) * REPEAT, REPEATS),  # no racing: a warm repeat, then five timed
    (1200.0, (REPEATS + 1) * REPEAT, REPEATS),  # faster than the bound: all five
    (900.0, 2 * REPEAT, 1),  # slower: the warm repeat and one timed
    (400.0, WARMUP + REPEAT, 1),  # over twice the bound from the warm-up steps: the warm repeat ends there
])
def test_racing_skips_only_what_it_promises(bound, launches, samples):
    vm = _VM(step_us=1000.0)
    t = bench.time_vm(vm, steps=STEPS, warmup=WARMUP, repeats=REPEATS, stop_above_us=bound)
    assert vm.launches == launches and len(t["samples_us"]) == samples
    assert t["latency_us"] == pytest.approx(1000.0)
    assert t["stopped_early"] == (samples < REPEATS) and (t["spread_us"] is None) == (samples < REPEATS)
    assert vm.checks == -(-launches // REPEAT)  # every repeat begun was checked, the cut one too


def test_a_stall_in_the_warm_up_steps_does_not_cost_a_close_config_its_repeats():
    # the first warm-up steps stall (the host was busy): the warm repeat ends, and the cold repeat after it is
    # above the bound but within twice it, so the timing goes on and the median stands
    vm = _VM(step_us=1000.0, stalled=WARMUP)
    t = bench.time_vm(vm, steps=STEPS, warmup=WARMUP, repeats=REPEATS, stop_above_us=990.0)
    assert vm.launches == WARMUP + REPEATS * REPEAT and len(t["samples_us"]) == REPEATS
    assert t["latency_us"] == pytest.approx(1000.0) and not t["stopped_early"]
