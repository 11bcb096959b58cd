"""A stop asked while a round is built in this process (the CPU path, builder processes=0) is answered between two
builds, not after the round's last (on smollm2-135m a round is 100 builds of ~2 s): the builds done stay memoised,
the rest are not built, and the loop ends as a stop between trials ends it."""

from __future__ import annotations

import os
import signal

import pytest
from _cli import cli_json
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module

import amk
from amk.flywheel import read_rows
from amk.harness.environment import resolve_target
from amk.harness.search import builder as builder_mod
from amk.harness.search.builder import Builder, BuildJob, Built
from amk.schedule.config import ScheduleConfig
from amk.schedule.cost import CostCoefficients

CONFIGS = [ScheduleConfig.from_dict({"attention": {"kv_partitions": k}}) for k in (2, 4, 8, 16, 32)]


def _jobs() -> list[BuildJob]:
    return [BuildJob("toy", resolve_target("cpu-sim"), c.to_dict(), "fp32", None, CostCoefficients())
            for c in CONFIGS]


def _fake_build_one(calls: list[str]):
    def build_one(job, predictor=None):
        cfg = ScheduleConfig.from_dict(job.config)
        calls.append(cfg.schedule_id)
        return Built(job.config, cfg.schedule_id, True, program_fingerprint=f"fp-{cfg.schedule_id}")
    return build_one


def _counting_builds(monkeypatch) -> dict:
    """Counts this process's builds (the start's, then the round's) and the size of each round submitted."""
    seen = {"builds": 0, "rounds": []}
    real_build, real_submit = builder_mod.build_one, Builder.submit

    def build_one(job, predictor=None):
        seen["builds"] += 1
        if seen.get("on_build"):
            seen["on_build"](seen["builds"])
        return real_build(job, predictor)

    def submit(self, jobs):
        seen["rounds"].append(len(jobs))
        return real_submit(self, jobs)

    monkeypatch.setattr(builder_mod, "build_one", build_one)
    monkeypatch.setattr(Builder, "submit", submit)
    return seen


def _intact(results) -> list[dict]:
    """The rows of a results file whose every line is whole (no torn last row)."""
    text = results.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len({ln.count("\t") for ln in lines}) == 1, lines
    rows = read_rows(results)
    assert len(rows) == len(lines) - 1
    return rows


def test_ready_stops_between_two_builds_and_builds_the_rest_at_a_later_call(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(builder_mod, "build_one", _fake_build_one(calls))
    b = Builder(0)
    pending = b.submit(_jobs())
    asked = []

    def stop_after_two():  # asked before each build: false twice, then true
        asked.append(len(calls))
        return len(calls) >= 2

    got = pending.ready(stop_after_two)
    assert [i for i, _ in got] == [0, 1] and len(calls) == 2 and asked == [0, 1, 2]
    assert not pending.done() and set(b.built) == {c.schedule_id for c in CONFIGS[:2]}
    assert pending.ready(lambda: True) == [] and len(calls) == 2  # still stopped: nothing more is built
    got = pending.ready(lambda: False)
    assert [i for i, _ in got] == [2, 3, 4] and pending.done()
    assert calls == [c.schedule_id for c in CONFIGS]  # each built once, in the order asked
    assert b.submit(_jobs()).wait() == [b.built[c.schedule_id] for c in CONFIGS] and len(calls) == 5  # memoised


def test_should_stop_during_the_first_rounds_builds_ends_the_loop_at_the_next_build(tmp_path, monkeypatch):
    seen = _counting_builds(monkeypatch)
    stop_at = 1 + 5  # the start's build, then five of the round's
    res = tmp_path / "r.tsv"
    s = amk.loop("toy", "cpu-sim", budget=20, device="cpu", results=res, corpus=tmp_path / "c.jsonl", seed=1,
                 should_stop=lambda: seen["builds"] >= stop_at)
    assert s["stopped"] == "interrupted" and s["trials"] == 1 and s["search"]["rounds"] == 0
    assert seen["builds"] == stop_at  # asked before each build: not one more
    assert seen["rounds"][-1] > 50  # the round held many more than were built
    assert len(_intact(res)) == 1  # the start's row, whole


def test_sigint_during_a_rounds_builds_raises_loop_interrupted_after_that_build(tmp_path, monkeypatch):
    seen = _counting_builds(monkeypatch)
    seen["on_build"] = lambda n: n == 1 + 3 and os.kill(os.getpid(), signal.SIGINT)
    res = tmp_path / "r.tsv"
    with pytest.raises(amk.LoopInterrupted) as e:
        amk.loop("toy", "cpu-sim", budget=20, device="cpu", results=res, corpus=tmp_path / "c.jsonl", seed=1)
    s = e.value.summary
    assert s["stopped"] == "interrupted" and s["trials"] == 1 and seen["builds"] == 1 + 3
    assert len(_intact(res)) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's handler is gone


def test_the_cli_exits_130_on_a_sigint_during_a_rounds_builds(capsys, tmp_path, monkeypatch):
    seen = _counting_builds(monkeypatch)
    seen["on_build"] = lambda n: n == 1 + 3 and os.kill(os.getpid(), signal.SIGINT)
    res = tmp_path / "r.tsv"
    code, out = cli_json(capsys, "loop", "--model", "toy", "--gpu", "cpu-sim", "--device", "cpu", "--budget", "20",
                         "--results", str(res), "--corpus", str(tmp_path / "c.jsonl"))
    assert code == 130 and out["stopped"] == "interrupted" and out["trials"] == 1 and seen["builds"] == 1 + 3
    assert len(_intact(res)) == 1


def test_the_minutes_spent_during_a_rounds_builds_end_the_loop_with_reason_minutes(tmp_path, monkeypatch):
    from amk.harness import loop as loop_mod

    seen = _counting_builds(monkeypatch)
    clock = {"skew": 0.0}
    real_monotonic = loop_mod.time.monotonic
    monkeypatch.setattr(loop_mod.time, "monotonic", lambda: real_monotonic() + clock["skew"])
    seen["on_build"] = lambda n: n == 1 + 4 and clock.update(skew=3600.0)  # an hour passes in the fourth build
    s = amk.loop("toy", "cpu-sim", minutes=30, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=1)
    assert s["stopped"] == "minutes" and s["trials"] == 1 and seen["builds"] == 1 + 4
