"""loop(): the search behind `amk loop`, writing results.tsv (one row per trial) and corpus.jsonl (one tuning
record per measurement).

The first trial measures the incumbent: the `incumbent=` config when given (`amk loop --config FILE`), else
propose()'s (the corpus's best kept config for this model and GPU, else the defaults); when its program is
already measured in this results file (a resume), that row stands for it and nothing is measured again.
Then candidate rounds (search/policy.py): many candidates around the best records are generated, built and
priced off the measuring path (search/builder.py), invalid and already measured programs dropped, the rest
ranked by the model fitted to the records (search/model.py), and the top few measured plus an exploration
share. The keep rule (search/keep.py) is noise-aware; on a GPU the incumbent is re-measured every
`remeasure_every` trials, so drift never fakes a gain.

Identity of a trial: the program fingerprint (what the VM executes, build knobs included) for this model and
GPU. A config that lowers to a program this results file already holds is a duplicate, never measured again;
loops sharing the file claim each program under its lock first (flywheel/claims.py).

A resume (search/resume.py) compares only with rows of its own dtype and context (the dtype and max_seq
columns): a row of another is never the bar to beat nor the incumbent's latency. Rows of a file written before those columns cannot be told
apart and are taken for the run's, with a warning.

Stopping: `budget` new trials (re-measurements of the incumbent and confirmations of a gain come on top;
with resume=True it counts the trials this call adds), `minutes`, every candidate exhausted, or SIGINT (the
trial in flight finishes, then the summary; the CLI exits 130). `max_reverts` trials in a row without a keep
stop a run that has neither a budget nor minutes; a bounded run moves to another region instead (a restart
round) and goes on. `workers` > 1 runs one loop per GPU through Ray (search/distributed.py).

The run (_Run) is this module's start-up and main loop, with its parts written apart: search/start.py (the files'
checks and the start's trial), search/rounds.py (candidate rounds), search/resume.py (a resume's checks),
search/trials.py (a trial: claim, measure, decide, write), search/stopping.py (the stop rules) and
search/summary.py (the summary it returns).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from amk.cache import default_cache
from amk.eval.roofline import Floor
from amk.flywheel.claims import (
    claimed_floor,
    claims_path,
    end_run,
    owner_id,
)
from amk.flywheel.prior import Prior
from amk.flywheel.records import (
    same_model,
)
from amk.flywheel.results import (
    COUNT_LIMIT,
    ResultsFormatError,
    TrialNumbersExhausted,
    cell_rewrites,
    next_trial,
    rows_and_skipped,
)
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import ArgumentError, ConfigError
from amk.schedule.space import search_space

from .arguments import (
    check_loop_arguments,
    check_model_weights,
    check_seed,
    integral,
    real,
    search_settings,
    user_path,
)
from .environment import Device, get_model, resolve_device, resolve_target
from .evaluate import evaluate
from .propose import model_name, run_context
from .run_checks import check_context, check_kv_memory, check_model_dtype, default_dtype, resolve_dtype_name
from .search.builder import Builder, BuildJob, Built, Predictor, default_processes
from .search.errors import LoopError, ResultsNotResumed
from .search.keep import Incumbent, decide
from .search.model import RankingModel
from .search.policy import Candidate, SearchSettings
from .search.policy import Source as Source  # callers name it through this module (tests/test_builder.py)
from .search.resume import Resume
from .search.rounds import PreparedRound, Rounds
from .search.signals import StopFlag
from .search.start import Start, _check_writable, _refuse_unreadable_rows
from .search.stopping import Stopping, StopReason
from .search.summary import RunSummary
from .search.trials import Trials
from .verdict import LatencyKind, parse_config

log = logging.getLogger("amk.harness")
# how the summary's note of a resume that found no rows begins: the workers of a fresh run of several resume the
# driver's file by design, and drop it (search/distributed.py)
RESUME_NOTE_LEAD = "resume: "

__all__ = ["Incumbent", "LoopError", "SearchSettings", "StopReason", "decide", "loop"]

EMPTY_ROUNDS = 3  # rounds in a row with nothing new to measure (one of them a restart) before giving up


class LoopInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a loop called from Python: raised once the trial in flight is written and the summary
    made, so that a script (one loop a model, say) stops as at any Ctrl-C. `summary` is what loop() would have
    returned (`stopped: "interrupted"`); the CLI prints it and exits 130. A stop asked through `should_stop` returns
    the summary instead."""

    def __init__(self, summary: dict):
        self.summary = summary
        super().__init__(f"loop interrupted after {summary.get('trials')} trial(s); its summary is .summary")


def loop(model, gpu, budget: int | None = None, minutes: float | None = None, seed: int = 0, device: str = "auto",
         results: str | Path = "results.tsv", corpus: str | Path = "corpus.jsonl", resume: bool = False,
         max_reverts: int = 20, progress: Callable[[dict], None] | None = None, cases=None,
         dtype: str | None = None, incumbent=None, evaluate: Callable[..., dict] | None = None, workers: int = 1,
         ray_address: str | None = None, builders: int | None = None, settings: SearchSettings | None = None,
         predictor: Predictor | None = None, should_stop: Callable[[], bool] | None = None,
         max_seq: int | None = None) -> dict:
    """Search until a stop rule holds; returns the summary (HARNESS.md section 7).

    `incumbent`: a config (dict, JSON string or ScheduleConfig) to start from. `evaluate`: the callable that
    measures one config, evaluate(model, gpu, config, device=, cases=, seed=, dtype=, corpus=, max_seq=) ->
    verdict dict (default amk.evaluate; a test passes a synthetic one); once the incumbent has a measured
    latency, candidates are evaluated with stop_above_us= too (search/keep.py race_bound_us), so a callable
    must accept it (or **kwargs). `builders`: builder processes (default
    none on the CPU path, most cores on CUDA). `predictor`: the builder's pricing function (default the cost
    model). `progress`: called after each trial with a dict: trial, status, schedule_id, program_fingerprint,
    latency_us, kind (the latency's), predicted_us, best_latency_us, description (the change and its outcome in
    words), outcome (that closing part alone), source, elapsed_s; with `workers` > 1 it is called in this process
    with each worker's trials as they arrive, `worker` (its index) added. `workers` > 1: one loop per GPU through
    Ray (`ray_address`: a cluster; default a local instance).
    Raises LoopError (usage: an existing results file without resume, a foreign one, one resumed without the corpus
    that holds its latest kept config, a rejected seed, a resumed checkpoint whose changed weights fail the kept
    incumbent, a checkpoint saved again during the loop, a `results` or `corpus` the loop could not write),
    ConfigError (a malformed seed), ArgumentError (a `seed` outside [0, 2**63), a `budget`, `minutes`, `workers`,
    `builders`, `max_reverts` or `max_seq` out of range, more `workers` than trials in the budget, an unknown `cases`
    or `dtype`, a `progress`, `evaluate`, `predictor` or `should_stop` that is not callable (or, but for
    `progress`, given with `workers` > 1, whose workers would not use it), a `settings` that is not an in-range
    SearchSettings (or dict of its fields), a `resume` that is not a bool, a `results` or `corpus` that is not a file path, `corpus`
    naming the `results` file),
    UnknownModelError / UnknownTargetError, and UnsupportedModelError for a model the CUDA kernel does not build
    in this dtype when the device is a GPU (vm/loader.py check_head_row), before any trial. LoopInterrupted (a
    KeyboardInterrupt carrying the summary) after SIGINT or SIGTERM, once the trial in flight is written."""
    # a numpy integer is the int it holds
    seed, budget, workers, builders, max_reverts, max_seq = map(integral, (seed, budget, workers, builders,
                                                                         max_reverts, max_seq))
    minutes = real(minutes)
    check_seed(seed)
    settings = search_settings(settings)
    check_loop_arguments(budget, minutes, workers, builders, max_reverts, cases, dtype, results, corpus, max_seq,
                         progress, resume, evaluate, predictor, should_stop, seed=seed)
    results, corpus = user_path(results), user_path(corpus)  # checked above as expanded; written there too
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address.strip()):
        raise ArgumentError("ray_address", f"expected a Ray cluster address (host:port, or auto) or None, got "
                                           f"{ray_address!r:.60}")
    if ray_address is not None and workers == 1:  # one worker runs here, in this process: no Ray at all
        log.warning("ray_address %r (--ray-address) has no effect: with workers=1 the loop runs in this process; "
                    "pass workers > 1 (--workers) to fan trials out over the cluster", ray_address)
    if workers > 1:
        from .search.distributed import run_workers

        return run_workers(model, gpu, workers=workers, ray_address=ray_address, budget=budget, minutes=minutes,
                           seed=seed, device=device, results=results, corpus=corpus, resume=resume,
                           max_reverts=max_reverts, progress=progress, cases=cases, dtype=dtype,
                           incumbent=incumbent, builders=builders, settings=settings, max_seq=max_seq)
    run = _Run(model, gpu, budget, minutes, seed, device, results, corpus, resume, max_reverts, progress, cases,
               dtype, incumbent, evaluate, builders, settings, predictor, should_stop, max_seq)
    try:
        with StopFlag() as flag:
            summary = run.go(flag)
    finally:
        run.close()
    if flag.set:
        raise LoopInterrupted(summary)
    return summary


MEASURING_THREADS = 4  # torch CPU threads of the measuring process while builder processes run


def _limit_threads() -> int:
    """Cap this process's torch CPU threads for the run; returns the count to restore. Verification compares
    logits on the CPU op by op (a few hundred small ops a trial), and a full OpenMP pool beside busy builder
    processes and another GPU's loop turns each op's barrier into a wait for descheduled threads: on a 32-core
    host with two loops, a 4.5 s trial took 25-30 s (bench/results/loop_20261130-0602_h200x2_llama_s*)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(before, MEASURING_THREADS))
    return before


def _default_evaluate(*args, **kw) -> dict:
    return evaluate(*args, **kw)  # looked up at call time: the module attribute is the seam


class _Run(Start, Rounds, Resume, Trials, RunSummary, Stopping):
    def __init__(self, model, gpu, budget, minutes, seed, device, results, corpus, resume, max_reverts, progress,
                 cases, dtype, incumbent, evaluate_fn, builders, settings, predictor, should_stop, max_seq):
        from amk.models import Model
        from amk.models.registry import dtype_name

        self.t0 = time.monotonic()
        self.model, self.target, self.name = model, resolve_target(gpu), model_name(model)
        if cell_rewrites(self.name):  # results.tsv would hold it spelled otherwise, and a resume never match it
            raise LoopError(f"{self.name!r}: a model path holding a tab, a newline or another control character "
                            "cannot be a results.tsv cell, whose rows then would not name it again: rename the "
                            "directory, or link it under a plain name", argument="model")
        self.same_model = same_model(self.name)  # rows of this model under any spelling of its directory
        self.dev = resolve_device(device)
        check_model_dtype(model, dtype)
        check_model_weights(model)
        self.dtype = dtype_name(model.dtype) if isinstance(model, Model) else (
            dtype_name(dtype) if dtype else default_dtype(self.dev, self.target))
        self.kind = (LatencyKind.MEASURED_GPU if self.dev == Device.CUDA else LatencyKind.PREDICTED).value
        dims_model = model if isinstance(model, Model) else get_model(self.name, self.dtype, self.dev, weights=False)
        # the positions every program of the run holds (lower()'s own default when max_seq is not given) and the
        # context its latencies are taken at, recorded in each row; a RoPE that cannot take them is one usage
        # error, not a rejected row a trial
        self.program_max_seq, self.context = run_context(dims_model, self.dtype, max_seq)
        # a KV cache the memory cannot hold: one usage error before any trial, not a crash row a trial (the
        # cache's size is the same for every config of the run)
        from amk.schedule import lower

        default_program = lower(dims_model, self.target, ScheduleConfig(), max_seq=self.program_max_seq)
        check_context(default_program, self.target)
        check_kv_memory(default_program, self.dev)
        # every config reads the same weights once a step: no row of this run can be faster than this
        self.spec_floor_us = Floor(default_program.step_weight_bytes, self.target.spec_bandwidth_gbs, None).spec_us
        dims = dims_model.dims
        if self.dev == Device.CUDA:  # a shape no config builds for: one usage error, not a crash row a trial
            from amk.models.registry import resolve_dtype
            from amk.vm.loader import check_head_row

            check_head_row(dims.head_dim, resolve_dtype(self.dtype).itemsize)
        self.results, self.corpus = Path(results), Path(corpus)
        # the claims file beside the results (trial numbers taken before their rows are written) is appended to too
        new_dir = not self.results.parent.exists()
        for path, flag in ((self.results, "results"), (self.corpus, "corpus"), (claims_path(self.results), "results")):
            _check_writable(path, flag)
        self.budget, self.minutes, self.max_reverts = budget, minutes, max_reverts
        self.progress, self.cases, self.seed, self.max_seq = progress, cases, seed, max_seq
        self.settings = settings or SearchSettings()
        self.evaluate_fn = evaluate_fn if evaluate_fn is not None else _default_evaluate
        self.should_stop = should_stop
        self.stop_asked: Callable[[], bool] = lambda: False  # go() reads its StopFlag through it
        if self.evaluate_fn is _default_evaluate:
            # an unusable cache directory fails here, not inside the first trial as a row blaming its config
            default_cache()
        try:
            read = rows_and_skipped(self.results)
            _refuse_unreadable_rows(self.results, read)
            rows = read.rows
            if rows:  # a hand-edited number near 2**63: refused before a trial runs, not at its row
                # the budget's trials need numbers too (re-measurements come on top)
                first = next_trial(Path(self.results).read_bytes(), claimed_floor(self.results), self.results)
                if first + (budget or 1) - 1 >= COUNT_LIMIT:
                    raise TrialNumbersExhausted(self.results, first - 1, budget)
        except ResultsFormatError as e:
            raise LoopError(str(e), argument="results") from None
        if rows and not resume:
            raise ResultsNotResumed(results, len(rows))
        # a resume of a misspelt path starts a new run (as a first run with resume does, on purpose): said, so
        # that it is not taken for the run it was meant to continue
        self.resume_note = None if rows or not resume else (
            f"{RESUME_NOTE_LEAD}{str(self.results)!r} held no rows, so this is a new run, not a continued one"
            + (f" (its directory {str(self.results.parent)!r} was made)" if new_dir else ""))
        if self.resume_note:  # a warning where a directory was made: a first run's file is missing as a rule
            log.log(logging.WARNING if new_dir else logging.INFO, "%s", self.resume_note)
        self.fresh, self.leased = not resume, False  # a fresh run takes the file at its first claim (_take_file)
        self.weights_now, self.passed_on = self._checkpoint_fingerprints(rows)
        rows = self._rows_of_run(rows)  # the rows a resume may compare with, and adopt
        self.adopted = False  # a row of the results stands for the start's measurement
        self.given_inert: list[str] = []  # the start config's knobs that cannot act (inert_knobs' notes)
        seed_config = None
        if incumbent is not None:
            try:
                seed_config = parse_config(incumbent)
            except ConfigError as e:  # names the field, and the argument that held it: a usage error
                raise e.named("incumbent") from None
        # no knob that cannot act on its dtype, no q split its GQA group refuses
        self.space = search_space(self.target, dtype=self.dtype, group=dims.group,
                                  predicted=self.kind == LatencyKind.PREDICTED.value)
        self.rng = random.Random(seed)
        self.owner = owner_id()
        processes = default_processes(self.dev.value) if builders is None else max(0, int(builders))
        if processes and (predictor is not None or isinstance(model, Model)):
            processes = 0  # neither a custom predictor nor an in-memory model travels to other processes
        self.builder = Builder(processes, predictor)
        self.threads = _limit_threads() if processes else None
        self.ranking = RankingModel()
        self.prior = Prior()
        self.statuses: Counter[str] = Counter()
        self.trials = self.measurements = self.reverts = self.rounds = self.restarts = 0
        self.remeasures = self.confirmations = self.duplicates = self.invalid = self.since_remeasure = 0
        self.empty_rounds = 0
        self.prepared_used = self.prepared_dropped = 0  # rounds ready when taken in; dropped for a restart
        self.timed = False  # a latency has come back (its kind is the run's)
        self.restart_pending = False
        self.queue: list[tuple[Candidate, Built]] = []
        self.prepared: PreparedRound | None = None  # the next round, building while this one is measured
        self.backlog: dict[str, tuple[Candidate, Built]] = {}  # built, valid, not yet measured (oldest first)
        self.backlog_order: list[str] = []  # the backlog's schedule_ids as the last round ranked them, best first
        self.promoted = 0  # backlog candidates measured while every pick's kernel was compiling
        self.waited_rounds_s = self.waited_kernels_s = self.measuring_s = 0.0
        self.mine: set[str] = set()  # programs this loop measured
        try:
            self.inc, self.start = self._prepare_start(seed_config, rows)
        except BaseException:
            self.close()  # the builder processes and the thread cap go with a loop that cannot start
            raise

    # ---- the start (its build job and weights; the rest in search/start.py) ----------------------------
    def _job(self, cfg: ScheduleConfig) -> BuildJob:
        from amk.models import Model

        model = self.model if isinstance(self.model, Model) and self.builder.pool is None else self.name
        return BuildJob(model, self.target, cfg.to_dict(), self.dtype, self.max_seq, self.ranking.coefficients)

    # kept beside _default_evaluate: the identity test below is against this module's seam
    def _load_weights(self) -> None:
        """The weights every trial's evaluate loads (memoised), loaded before the first trial: a checkpoint that
        fails the checks after loading (a NaN, a missing or misshapen tensor) is one usage error naming the file
        and tensor (CheckpointError), not a crash row a trial."""
        from amk.models import Model

        if self.evaluate_fn is _default_evaluate and not isinstance(self.model, Model):
            get_model(str(self.model), resolve_dtype_name(self.dtype, self.dev, self.target)[0], self.dev,
                      weights=True)

    # ---- the main loop -------------------------------------------------------------------------------
    def go(self, flag: StopFlag) -> dict:
        self.stop_asked = lambda: self._stop_asked(flag)
        stop = self._stop_reason(flag)
        if self.builder.pool is not None:
            self._warm_start()
            self.prepared = self._prepare_round()  # the first round builds while the start is measured
        if self.dev != Device.CUDA or self.builder.pool is None:
            self._load_weights()  # (_warm_start loads them on a GPU while the start's kernel compiles)
        if stop is not None:  # stopped during the set-up: a measured row of the start still stands for it
            self._adopt_start_row()
        while stop is None:  # the start: measured here, or a row of this file (or another loop's) stands for it
            start = self._settle_start(flag)
            # loading the weights (tens of seconds for a checkpoint) comes between the first check and here: a stop
            # asked meanwhile measures nothing
            stop = self._stop_reason(flag)
            if start is None or stop is not None or self._trial(start, self.start[1], self.start_description):
                break
        if self.adopted and self.weights_now is not None:
            if self._stop_reason(flag) is None:
                self._check_weights_of_start()
            elif self._start_needs_check():
                log.warning("%s: the loop stopped before it checked the incumbent %s on the checkpoint there now "
                            "(fingerprint %s), on which the corpus records it no pass: its latency is other weights' "
                            "row; a resume checks it first", self.name, self.inc.config.schedule_id,
                            self.weights_now[:16])
        elif not self.adopted:
            self._warn_checkpoint_changed()
        while stop is None:
            stop = self._stop_reason(flag)
            if stop is not None:
                break
            if self._remeasure_due():
                self._remeasure()
                continue
            if not self.queue:
                if not self._round():
                    continue  # stopped while its candidates were built: no empty round, the check above ends the run
                if not self.queue:
                    self.empty_rounds += 1
                    if self.empty_rounds >= EMPTY_ROUNDS:
                        stop = StopReason.EXHAUSTED
                    self.restart_pending = True
                    continue
                self.empty_rounds = 0
                continue  # a round takes seconds (its builds, the ranking): a stop asked meanwhile starts no trial
            cand, built = self.queue.pop(self._next_pick())
            self._trial(cand, built, cand.description)
        return self._summary(stop)

    def close(self) -> None:
        if getattr(self, "leased", False):
            try:
                end_run(self.results, self.owner)
            except OSError as e:  # a lease left behind stops counting once this process ends
                log.warning("%s: this loop's run lease could not be withdrawn (%s)", claims_path(self.results), e)
        self.builder.close()
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
