"""The search finds: a synthetic evaluator whose optimum needs three knob changes is reached within budget,
a flat one keeps nothing; nullable knobs move; two processes on one results file never measure one program
twice; SIGINT stops after the trial in flight with exit 130; --workers 2 through Ray."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from _isolated_cache import cache_dir  # noqa: F401 - autouse: a fresh cache for this module
from _synthetic import OPTIMUM, OPTIMUM_US, Synthetic, predictor

import amk
from amk.flywheel import read_rows
from amk.flywheel.records import load_records
from amk.harness.loop import SearchSettings
from amk.schedule.space import Knob, KnobType, mutate


@pytest.mark.parametrize("seed", [1])
def test_the_loop_reaches_an_optimum_three_knobs_away(tmp_path, seed):
    # today's main (one-knob hill climbing, stop after 20 reverts) reached it in 1 of 10 seeds at budget 40
    s = amk.loop("toy", "cpu-sim", budget=20, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=seed, evaluate=Synthetic(seed), predictor=predictor)
    assert s["incumbent"]["schedule_id"] == OPTIMUM.schedule_id
    assert s["incumbent"]["latency_us"] == pytest.approx(OPTIMUM_US, rel=0.02)
    rows = read_rows(tmp_path / "r.tsv")
    kept = [r for r in rows if r["status"] == "keep"]
    assert all(float(b["latency_us"]) < float(a["latency_us"]) for a, b in zip(kept, kept[1:]))
    assert s["search"]["confirmations"] >= len(kept) - 1  # every measured gain showed twice
    assert s["search"]["remeasures"] >= 1


def test_candidates_above_the_race_bound_are_timed_once_and_never_kept(tmp_path):
    ev = Synthetic(5)
    amk.loop("toy", "cpu-sim", budget=20, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
             seed=5, evaluate=ev, predictor=predictor)
    bounds = [b for b, _ in ev.bounds]
    assert bounds[0] is None  # the start has nothing to race against
    raced = [(b, lat) for b, lat in ev.bounds if b is not None and lat > b]
    assert raced, "no candidate was clearly slower than the incumbent"
    rows = [r for r in read_rows(tmp_path / "r.tsv") if r["latency_us"]]
    for _, lat in raced:  # results.tsv writes 4 decimals
        row = next(r for r in rows if abs(float(r["latency_us"]) - lat) < 1e-3)
        assert row["status"] == "discard" and not row["spread_us"]
    incumbent = [float(r["latency_us"]) for r in rows if r["status"] in ("keep", "remeasure")]
    # every bound sat at least 3% above some incumbent measured then (kept or re-measured), so no keep could have
    # been stopped; a bound is 1.03x an unrounded latency, the rows' are written to 4 decimals
    assert all(b >= 1.03 * (min(incumbent) - 5e-5) for b in bounds if b is not None)


def test_a_flat_function_keeps_nothing(tmp_path):
    s = amk.loop("toy", "cpu-sim", budget=24, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=2, evaluate=Synthetic(2, flat=True), predictor=predictor)
    rows = read_rows(tmp_path / "r.tsv")
    assert [r["trial"] for r in rows if r["status"] == "keep"] == [rows[0]["trial"]]  # the baseline only
    assert s["trials"] == 24


def test_a_nullable_knob_moves_to_its_integers_and_back_to_none():
    knob = Knob("attention.kv_partitions", KnobType.INT, None, "derived", search=(1, 2, 4), nullable=True)
    assert knob.values == (1, 2, 4, None) and knob.to_dict()["nullable"]
    from amk.schedule.space import _unwrap_optional

    assert _unwrap_optional(int | None) == (int, True) and _unwrap_optional(int) == (int, False)
    rng = random.Random(0)
    cfg = amk.ScheduleConfig.from_dict({"attention": {"kv_partitions": 4}})
    seen = set()
    for _ in range(50):
        m = mutate(cfg, [Knob("attention.kv_partitions", KnobType.INT, 4, "x", search=(1, 2, 4))], rng)
        seen.add(m[0].attention.kv_partitions)
    assert seen == {1, 2}  # every other searched value, never the current one


def _claiming_loop(args):
    res, cor, seed, cache = args
    os.environ["AMK_CACHE_DIR"] = cache
    sys.path.insert(0, os.path.dirname(__file__))
    from _synthetic import Synthetic as Syn
    from _synthetic import predictor as pred

    import amk as a

    return a.loop("toy", "cpu-sim", budget=6, device="cpu", results=res, corpus=cor, seed=0, resume=True,
                  evaluate=Syn(seed), predictor=pred, settings=SearchSettings(population=8, neighbours=False))["trials"]


def test_two_processes_on_one_results_file_never_measure_one_program_twice(tmp_path):
    res, cor = str(tmp_path / "r.tsv"), str(tmp_path / "c.jsonl")
    with mp.get_context("spawn").Pool(2) as pool:  # same search seed: both loops want the same programs
        trials = pool.map(_claiming_loop, [(res, cor, s, os.environ["AMK_CACHE_DIR"]) for s in (0, 1)])
    rows = [r for r in read_rows(res) if r["status"] != "remeasure"]
    assert sum(trials) == len(rows) == 12
    assert len({r["program_fingerprint"] for r in rows}) == 12
    assert sorted(int(r["trial"]) for r in read_rows(res)) == list(range(1, len(read_rows(res)) + 1))
    assert len(load_records(cor)) == len(read_rows(res))


def _amk(*args, cwd, timeout=600, **kw):
    return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "amk"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigint_finishes_the_trial_prints_the_summary_and_exits_130(tmp_path):
    p = _amk("loop", "--model", "toy", "--budget", "200", "--json", cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "results.tsv").exists():
        time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 130, err[-2000:]
    s = json.loads(out)
    assert s["stopped"] == "interrupted" and 1 <= s["trials"] < 200 and s["exit_code"] == 130
    rows = read_rows(tmp_path / "results.tsv")  # intact: every row whole
    assert len([r for r in rows if r["status"] != "remeasure"]) == s["trials"]


def test_a_signal_stops_a_python_caller_of_loop_after_the_trial_in_flight(tmp_path):
    # a script that runs one loop a model must stop at Ctrl-C, as at any other; the summary rides on the exception
    ev = Synthetic(2)

    def evaluate_then_signal(*a, **kw):
        out = ev(*a, **kw)
        if len(ev.calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while trial 2 is in flight
        return out

    with pytest.raises(amk.LoopInterrupted) as e:
        amk.loop("toy", "cpu-sim", budget=50, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=2, evaluate=evaluate_then_signal, predictor=predictor)
    assert isinstance(e.value, KeyboardInterrupt)
    s = e.value.summary
    # a trial that looks like a gain is confirmed within it: the incumbent re-timed (a row and a record, not a
    # trial), then the candidate again
    rows = read_rows(tmp_path / "r.tsv")
    assert s["stopped"] == "interrupted" and s["trials"] == 2 == len([r for r in rows if r["status"] != "remeasure"])
    assert len(load_records(tmp_path / "c.jsonl")) == len(rows)  # trial 2's row and record were written first
    # a stop asked through should_stop is no signal: the summary is returned
    s = amk.loop("toy", "cpu-sim", budget=50, device="cpu", results=tmp_path / "r2.tsv", corpus=tmp_path / "c.jsonl",
                 seed=2, evaluate=Synthetic(2), predictor=predictor, should_stop=lambda: True)
    assert s["stopped"] == "interrupted"


def test_a_signal_while_a_round_is_prepared_starts_no_trial(tmp_path, monkeypatch):
    # no trial is in flight while a round builds and ranks its candidates (seconds on a checkpoint): a Ctrl-C
    # then ends the run there, not after one more trial
    from amk.harness import loop as loop_mod

    real_round = loop_mod._Run._round

    def round_then_signal(self):
        real_round(self)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop_mod._Run, "_round", round_then_signal)
    ev = Synthetic(2)
    with pytest.raises(amk.LoopInterrupted) as e:
        amk.loop("toy", "cpu-sim", budget=50, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=2, evaluate=ev, predictor=predictor)
    assert e.value.summary["trials"] == 1 == len(ev.calls) == len(read_rows(tmp_path / "r.tsv"))


def test_a_stop_asked_while_the_weights_load_measures_nothing(tmp_path, monkeypatch):
    from amk.harness import loop as loop_mod

    asked = []
    monkeypatch.setattr(loop_mod._Run, "_load_weights", lambda self: asked.append(True))
    ev = Synthetic(2)
    s = amk.loop("toy", "cpu-sim", budget=50, device="cpu", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=2, evaluate=ev, predictor=predictor, should_stop=lambda: bool(asked))
    assert asked and s["stopped"] == "interrupted" and s["trials"] == 0 and ev.calls == []
    assert s["incumbent"]["latency_us"] is None
    assert not (tmp_path / "r.tsv").exists() or read_rows(tmp_path / "r.tsv") == []


def test_workers_2_through_ray_write_one_intact_results_file(tmp_path):
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    # both runs at once: each mostly waits on Ray's start-up
    p = _amk("loop", "--model", "toy", "--workers", "2", "--budget", "4", "--json", cwd=tmp_path)
    q = _amk("-q", "loop", "--model", "toy", "--workers", "2", "--budget", "2", "--json", cwd=quiet)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    s = json.loads(out)
    assert s["workers"] == 2 and s["trials"] == 4 and len(s["per_worker"]) == 2
    assert s["max_seq"] and s["context"] and s["seed"] == 0 and s["search"]["measurements"] >= 4  # as one worker's
    # the workers resume the driver's file by design: a run not asked to resume notes no resume
    assert not [n for n in s["notes"] + [n for w in s["per_worker"] for n in w["notes"]] if n.startswith("resume:")]
    # a line a trial, every one, printed by the driver through loop()'s `progress` callable, which the driver calls
    # in its own process with each worker's trials, the worker's index added: Ray's forwarding of the workers' stderr
    # could lose the last
    lines = [re.search(r"\[worker (\d)\] trial +(\d+) ", line) for line in err.splitlines()]
    told = sorted((int(m[2]), int(m[1])) for m in lines if m)
    assert "\x1b[" not in err  # no colour codes into a pipe
    rows = [r for r in read_rows(tmp_path / "results.tsv") if r["status"] != "remeasure"]
    assert len(rows) == 4 and len({r["program_fingerprint"] for r in rows}) == 4
    assert [t for t, _ in told] == sorted(int(r["trial"]) for r in read_rows(tmp_path / "results.tsv")), err[-3000:]
    assert {w for _, w in told} == {0, 1}
    assert open(tmp_path / "results.tsv").read().count("trial\t") == 1
    assert len(load_records(tmp_path / "corpus.jsonl")) == len(read_rows(tmp_path / "results.tsv"))
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0 and "[worker " not in err, err[-3000:]  # -q: the workers' trial lines too
    one = subprocess.run([sys.executable, "-c", "import sys, amk.harness.loop, amk.cli; assert 'ray' not in sys.modules"],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr  # one worker and the CPU path never import Ray


def test_sigterm_to_the_whole_process_group_under_ray_still_ends_with_the_summary(tmp_path):
    # `timeout`, `kill -- -PGID` and job schedulers signal every process of the group: Ray's own processes must
    # leave the stop to the driver, whose workers then finish their trials and report
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    p = _amk("loop", "--model", "toy", "--workers", "2", "--budget", "200", "--json", cwd=tmp_path,
             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_rows(tmp_path / "results.tsv") if (tmp_path / "results.tsv").exists()
                                         else []) < 2:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-3000:]
    s = json.loads(out)
    assert s["stopped"] == "interrupted" and s["workers"] == 2 and 2 <= s["trials"] < 200
    assert [w["worker"] for w in s["per_worker"]] == [0, 1]
    rows = [r for r in read_rows(tmp_path / "results.tsv") if r["status"] != "remeasure"]
    assert len(rows) == s["trials"]


def test_builder_processes_build_the_next_round_while_this_one_is_measured(tmp_path):
    # two builder processes and a measurement that takes a while, as on a GPU: rounds after the first are
    # built while the ones before are measured, so the measuring process hardly waits for a round; the trials
    # stay unique programs and the measuring process's CPU threads are capped while builders run
    import torch

    from amk.harness.loop import MEASURING_THREADS

    synthetic, seen = Synthetic(3), set()

    def measure(*args, **kw):
        seen.add(torch.get_num_threads())
        time.sleep(0.5)
        return synthetic(*args, **kw)

    before = torch.get_num_threads()
    torch.set_num_threads(MEASURING_THREADS + 2)
    try:
        s = amk.loop("toy", "cpu-sim", budget=12, device="cpu", results=tmp_path / "r.tsv",
                     corpus=tmp_path / "c.jsonl", seed=3, evaluate=measure, builders=2)
        assert seen == {MEASURING_THREADS} and torch.get_num_threads() == MEASURING_THREADS + 2  # restored
    finally:
        torch.set_num_threads(before)
    search = s["search"]
    assert search["builder_processes"] == 2
    assert 1 <= search["rounds_built_ahead"] < search["rounds"]
    assert search["seconds_waiting_for_rounds"] < search["seconds_measuring"] / 2
    rows = [r for r in read_rows(tmp_path / "r.tsv") if r["status"] != "remeasure"]
    assert s["trials"] == 12 and len({r["program_fingerprint"] for r in rows}) == len(rows)


def test_on_a_gpu_kernels_build_before_their_trial_and_the_likely_next_ones_ahead(tmp_path, monkeypatch):
    # the CUDA path without a GPU: the device resolves to CUDA and the builder's precompile is recorded, not
    # run (NVRTC). Every measured candidate's kernel was asked for before it was measured, and rounds also ask
    # for kernels of candidates still waiting (the likely next picks)
    from amk.harness import loop as loop_mod
    from amk.harness.environment import Device
    from amk.harness.search.builder import Builder

    asked: list[str] = []
    monkeypatch.setattr(loop_mod, "resolve_device", lambda device: Device.CUDA)
    monkeypatch.setattr(Builder, "precompile", lambda self, job, kernel_id=None: asked.append(
        amk.ScheduleConfig.from_dict(job.config).schedule_id))
    synthetic, measured = Synthetic(4), []

    def measure(model, gpu, config, **kw):
        measured.append(amk.ScheduleConfig.from_dict(config.to_dict()).schedule_id)
        assert measured[-1] in asked or len(measured) == 1 or measured[-1] == measured[0]  # start, re-measures
        time.sleep(0.3)  # a GPU measurement takes seconds: the builders get ahead of it
        return synthetic(model, gpu, config, **kw)

    rounds: list[tuple[int, int]] = []  # (kernels asked for, picks) of each round
    real_round = loop_mod._Run._round

    def counted_round(self):
        before = len(asked)
        real_round(self)
        rounds.append((len(asked) - before, len(self.queue)))

    monkeypatch.setattr(loop_mod._Run, "_round", counted_round)
    s = amk.loop("toy", "cpu-sim", budget=8, device="cuda", results=tmp_path / "r.tsv", corpus=tmp_path / "c.jsonl",
                 seed=4, evaluate=measure, builders=3)
    assert s["trials"] == 8
    assert asked[0] == measured[0]  # the start's kernel builds first, while the weights load
    assert any(n > picks for n, picks in rounds)  # a round asked for more kernels than its picks


def test_the_merged_summary_keeps_the_workers_best_of_this_runs_dtype_and_context(tmp_path):
    # each worker's summary ranks only this run's dtype and context; the merge once re-read the corpus unfiltered
    # and answered a bf16 keep for an fp32 run
    from amk.flywheel.records import append_record, record_from_verdict
    from amk.harness.search.distributed import merge

    corpus = tmp_path / "corpus.jsonl"
    fast_bf16 = {"valid": True, "correct": True, "latency_us": 40.0, "latency_kind": "predicted", "dtype": "bf16",
                 "schedule_id": "aaaaaaaaaaaa"}
    append_record(corpus, record_from_verdict("toy", "cpu-sim", {}, fast_bf16, status="keep", kept=True, trial=1))

    def summary(worker: int, best_us: float | None) -> dict:
        best = None if best_us is None else {"schedule_id": f"w{worker}", "latency_us": best_us,
                                             "latency_kind": "predicted", "trial": 10 + worker, "config": {}}
        return {"statuses": {"keep": 1}, "incumbent": {"latency_us": best_us}, "worker": worker, "trials": 1,
                "stopped": "budget", "dtype": "fp32", "best": best}

    got = merge([summary(0, 48.5), summary(1, 47.0), summary(2, None)], "toy", "cpu-sim", "cpu", tmp_path / "r.tsv",
                corpus, 1.0)
    assert got["best"]["schedule_id"] == "w1" and got["best"]["latency_us"] == 47.0


def test_the_search_moves_no_knob_the_derived_tiling_makes_inert(tmp_path):
    # at 32 positions kv_partitions is derived to 1, where attention.combine, softmax and partials_dtype cannot
    # act: a move of one rode along another move, and a keep carried it
    from amk.flywheel.records import load_records

    cor = tmp_path / "c.jsonl"
    amk.loop("toy", "cpu-sim", budget=16, device="cpu", results=tmp_path / "r.tsv", corpus=cor, max_seq=32,
             seed=0, max_reverts=1000)
    records = load_records(cor)
    assert len(records) >= 16
    noted = [(r.trial, n) for r in records for n in r.verdict.get("notes", []) if "has no effect" in n]
    assert noted == [], noted
    one_partition = [r for r in records if (r.config.get("attention") or {}).get("kv_partitions") in (None, 1)]
    assert one_partition and not any(c.split("=")[0] in ("attention.combine", "attention.softmax",
                                                          "attention.partials_dtype")
                                     for r in one_partition for c in r.change)


def test_the_merged_summary_has_the_runs_context_seed_and_summed_search_counts(tmp_path):
    from amk.harness.search.distributed import merge

    def summary(worker: int) -> dict:
        return {"statuses": {"keep": 1}, "incumbent": {"latency_us": 40.0 + worker}, "worker": worker, "trials": 2,
                "stopped": "budget", "dtype": "fp32", "max_seq": 512, "context": 301, "seed": 7 + worker,
                "search": {"rounds": 1 + worker, "seconds_measuring": 1.5, "ranking_model": {"rows": 3}}}

    got = merge([summary(0), summary(1)], "toy", "cpu-sim", "cpu", tmp_path / "r.tsv", tmp_path / "c.jsonl", 1.0)
    assert (got["max_seq"], got["context"], got["seed"]) == (512, 301, 7)
    assert got["search"] == {"rounds": 3, "seconds_measuring": 3.0}
