"""The builder's hand-over of finished builds, its kernel-build processes, and the loop taking in a round that is
still building: the GPU measures the first candidates built instead of waiting for the round's last."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future

from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module
from _synthetic import Synthetic

import amk
from amk.harness import loop as loop_mod
from amk.harness.search.builder import Builder, Built, Pending
from amk.harness.search.rounds import PreparedRound
from amk.schedule.config import ScheduleConfig

CONFIGS = [ScheduleConfig.from_dict(d) for d in ({"attention": {"kv_partitions": 4}},
                                                 {"attention": {"kv_partitions": 8}},
                                                 {"attention": {"kv_partitions": 16}})]


def _built(cfg: ScheduleConfig, fp: str) -> Built:
    return Built(cfg.to_dict(), cfg.schedule_id, True, program_fingerprint=fp, predicted_us=10.0)


def _pending(builder: Builder, futures: dict[int, Future], memo: list[int] = ()) -> Pending:
    return Pending(builder, [c.schedule_id for c in CONFIGS], futures, {}, list(memo))


def test_pending_hands_over_each_finished_build_once_in_order():
    builder = Builder(0)
    builder.built[CONFIGS[2].schedule_id] = _built(CONFIGS[2], "fp2")  # built by an earlier round
    f0, f1 = Future(), Future()
    pending = _pending(builder, {0: f0, 1: f1}, memo=[2])
    f1.set_result(_built(CONFIGS[1], "fp1"))
    assert [(i, b.program_fingerprint) for i, b in pending.ready()] == [(1, "fp1"), (2, "fp2")]
    assert pending.ready() == [] and not pending.done()
    threading.Timer(0.2, f0.set_result, (_built(CONFIGS[0], "fp0"),)).start()
    pending.wait_any()  # returns once f0 finishes
    assert f0.done() and [i for i, _ in pending.ready()] == [0] and pending.done()
    assert set(builder.built) == {c.schedule_id for c in CONFIGS}


def test_pending_wait_returns_every_build_in_the_order_asked():
    builder = Builder(0)
    futures = {i: Future() for i in range(3)}
    for i in (2, 0, 1):
        futures[i].set_result(_built(CONFIGS[i], f"fp{i}"))
    assert [b.program_fingerprint for b in _pending(builder, futures).wait()] == ["fp0", "fp1", "fp2"]


def test_kernel_builds_have_processes_of_their_own():
    # a kernel the next trial needs must not queue behind a round of lowering in the build processes
    b = Builder(8)
    try:
        assert b.compile_pool is not b.pool
        assert b.compile_pool._max_workers == 2 and b.pool._max_workers == 6
        asked = []
        b.compile_pool.submit = lambda fn, job, kernel: asked.append((fn.__name__, job)) or Future()
        b.precompile(loop_mod.BuildJob("toy", amk.get_target("cpu-sim"), {}, "fp32", None, None))
        assert [name for name, _ in asked] == ["precompile_one"]
    finally:
        b.close()
    one = Builder(1)
    assert one.compile_pool is one.pool  # one process does both
    one.close()


def test_the_loop_measures_the_first_builds_of_a_round_still_building(tmp_path, monkeypatch):
    # a round whose last build never finishes: the loop takes in what is built, waits only while fewer than
    # measure_per_round candidates are built, and leaves the rest pending
    run = loop_mod._Run("toy", "cpu-sim", 4, None, 0, "cpu", tmp_path / "r.tsv", tmp_path / "c.jsonl", False, 20,
                        None, None, None, None, Synthetic(0), 0, None, None, None, None)
    try:
        cands = [loop_mod.Candidate(c, (), loop_mod.Source.MUTATE) for c in CONFIGS]
        futures = {i: Future() for i in range(3)}
        futures[0].set_result(_built(CONFIGS[0], "fp0"))
        prepared = PreparedRound(False, cands, _pending(run.builder, futures))
        run._take_in(prepared, enough=1)
        assert list(run.backlog) == [CONFIGS[0].schedule_id] and not prepared.waited
        threading.Timer(0.2, futures[1].set_result, (_built(CONFIGS[1], "fp1"),)).start()
        run._take_in(prepared, enough=2)  # waits for one more build, not for the last
        assert len(run.backlog) == 2 and prepared.waited and not prepared.pending.done()
        futures[2].set_result(_built(CONFIGS[2], "fp1"))  # a program already waiting: a duplicate
        run._take_in(prepared, enough=2)
        assert prepared.pending.done() and len(run.backlog) == 2 and run.duplicates == 1
    finally:
        run.close()


def test_the_loop_measures_first_the_picks_whose_kernel_is_built(tmp_path):
    run = loop_mod._Run("toy", "cpu-sim", 4, None, 0, "cpu", tmp_path / "r.tsv", tmp_path / "c.jsonl", False, 20,
                        None, None, None, None, Synthetic(0), 0, None, None, None, None)
    try:
        run.queue = [(loop_mod.Candidate(c, (), loop_mod.Source.MUTATE), _built(c, f"fp{i}"))
                     for i, c in enumerate(CONFIGS)]
        compiling, built = Future(), Future()
        built.set_result("compiled")
        run.builder.precompiling = {CONFIGS[0].schedule_id: compiling, CONFIGS[1].schedule_id: built}
        assert run._next_pick() == 1
        run.builder.precompiling[CONFIGS[1].schedule_id] = Future()
        assert run._next_pick() == 2  # no kernel build asked for: nothing to wait for
        run.builder.precompiling[CONFIGS[2].schedule_id] = Future()
        assert run._next_pick() == 0  # all compiling: the best-ranked first
    finally:
        run.close()


def _job(cfg: ScheduleConfig) -> loop_mod.BuildJob:
    return loop_mod.BuildJob("toy", amk.get_target("cpu-sim"), cfg.to_dict(), "fp32", None, None)


def _recording_builder() -> tuple[Builder, list[tuple[str, bool, Future]]]:
    """A Builder whose compile pool records (schedule_id, compile the kernel?, its future) and runs nothing."""
    b = Builder(0)
    asked: list[tuple[str, bool, Future]] = []

    def submit(fn, job, kernel):
        f = Future()
        asked.append((ScheduleConfig.from_dict(job.config).schedule_id, kernel, f))
        return f

    b.compile_pool = type("Pool", (), {"submit": staticmethod(submit)})()
    return b, asked


def test_one_kernel_is_compiled_once_and_a_queued_job_is_not_waited_for():
    b, asked = _recording_builder()
    a, same, other = CONFIGS
    b.precompile(_job(a), "k1")
    b.precompile(_job(same), "k1")  # the same kernel: its program is lowered, the kernel not compiled again
    b.precompile(_job(other), "k2")
    assert [(sid, kernel) for sid, kernel, _ in asked] == [(a.schedule_id, True), (same.schedule_id, False),
                                                            (other.schedule_id, True)]
    assert b.kernel_pending(same.schedule_id) and not b.kernel_ready("k1")
    asked[0][2].set_running_or_notify_cancel()  # k1's compile started ...
    asked[0][2].set_result("compiled")  # ... and finished
    assert not b.kernel_pending(same.schedule_id) and b.kernel_ready("k1")
    b.wait_precompiled(other.schedule_id)  # still queued: cancelled, the runner builds it itself
    assert asked[2][2].cancelled() and not b.kernel_ready("k2")
    b.mark_kernel_ready("k2")  # a trial ran it
    assert b.kernel_ready("k2") and not b.kernel_pending(other.schedule_id)


def test_configs_that_change_only_tiling_share_a_kernel():
    from amk.harness.search.builder import build_one

    base = build_one(_job(ScheduleConfig()))
    tiled = build_one(_job(ScheduleConfig.from_dict({"matvec": {"o": {"rows_per_task": 4}}})))
    threads = build_one(_job(ScheduleConfig.from_dict({"threads_per_block": 256})))
    assert base.program_fingerprint != tiled.program_fingerprint and base.kernel_id == tiled.kernel_id
    assert threads.kernel_id != base.kernel_id


def test_while_every_picks_kernel_compiles_a_backlog_candidate_with_a_built_kernel_is_measured(tmp_path):
    run = loop_mod._Run("toy", "cpu-sim", 4, None, 0, "cpu", tmp_path / "r.tsv", tmp_path / "c.jsonl", False, 20,
                        None, None, None, None, Synthetic(0), 0, None, None, None, None)
    try:
        a, b, c = ((loop_mod.Candidate(cfg, (), loop_mod.Source.MUTATE),
                    dataclasses.replace(_built(cfg, f"fp{i}"), kernel_id=f"k{i}")) for i, cfg in enumerate(CONFIGS))
        run.queue = [a]
        run.builder.kernel_of[a[0].config.schedule_id] = "k0"
        run.builder.kernels["k0"] = Future()  # compiling
        run.backlog = {x[0].config.schedule_id: x for x in (b, c)}
        run.backlog_order = [c[0].config.schedule_id, b[0].config.schedule_id]  # c ranked first
        assert run._next_pick() == 0 and run.queue == [a]  # no backlog kernel built: wait for the pick's
        run.builder.mark_kernel_ready("k1")
        assert run._next_pick() == 0 and run.queue == [b, a] and run.promoted == 1
        assert list(run.backlog) == [c[0].config.schedule_id]
    finally:
        run.close()


def test_a_cancelled_or_broken_kernel_job_is_asked_again_and_never_counts_as_built():
    b, asked = _recording_builder()
    a, same, other = CONFIGS
    b.precompile(_job(a), "k1")
    b.wait_precompiled(a.schedule_id)  # queued: cancelled, the trial builds it; say that trial crashed
    b.precompile(_job(same), "k1")  # so the next candidate of k1 compiles it again
    assert [kernel for _, kernel, _ in asked] == [True, True]
    asked[1][2].set_running_or_notify_cancel()
    asked[1][2].set_exception(RuntimeError("a compile worker died"))  # BrokenProcessPool, say
    assert not b.kernel_ready("k1") and not b.kernel_pending(same.schedule_id)
    b.wait_precompiled(same.schedule_id)  # logs, does not raise: the trial builds the kernel itself
    b.precompile(_job(other), "k2")
    asked[2][2].set_running_or_notify_cancel()
    asked[2][2].set_result("invalid")  # nothing compiled
    assert not b.kernel_ready("k2")
