"""The builder: lower, validate and price candidate configs, and build their kernels, in worker processes.

A round's candidates are lowered, checked by the static validator and priced by the cost model before any
is measured, so invalid configs and programs already measured cost no GPU time; the measuring process only
measures. Lowered programs land in the file cache (amk.cache, kind "program"), and on a CUDA run each
selected candidate's kernel is compiled by NVRTC into the file cache (kind "kernel") while the GPU measures
the one before, so evaluate() finds both there. The eager reference data is the same for every candidate of
a run (model, dtype, cases): the first trial computes it into the cache and every later trial reads it.

`processes=0` builds in this process, in order: the CPU-only path and the tests, deterministic. Such a round
asks the loop's stop between two builds (a round of a 135M model is minutes of them), so Ctrl-C is answered
within one build. Workers are spawned (never forked: the parent may hold a CUDA context) and ignore SIGINT, so
Ctrl-C reaches the loop, which finishes its trial and stops.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from amk.schedule.config import ScheduleConfig
from amk.schedule.cost import CostCoefficients
from amk.schedule.targets import GpuTarget

log = logging.getLogger("amk.harness")

# (config, program, target, coefficients) -> (predicted latency in us, cost-model features or None)
Predictor = Callable[[ScheduleConfig, object, GpuTarget, CostCoefficients], tuple[float | None, dict | None]]


@dataclass(frozen=True)
class BuildJob:
    model: object  # a model name or checkpoint path (picklable), or an amk.Model for in-process builds
    target: GpuTarget
    config: dict  # JSON form
    dtype: str
    max_seq: int | None
    coefficients: CostCoefficients


@dataclass(frozen=True)
class Built:
    """A candidate after the builder: valid or why not, the program it lowered to, and its price."""

    config: dict
    schedule_id: str
    valid: bool
    reason: str | None = None
    program_fingerprint: str | None = None
    features: dict | None = None  # cost-model critical-path features (mem_us, tasks, waits)
    predicted_us: float | None = None
    task_count: int | None = None
    seconds: float = 0.0
    kernel_id: str | None = None  # kernel_id_of(program): candidates with one id share one NVRTC build
    derived: dict | None = None  # the program's derived knob values (dotted path -> value), for the inert rules
    as_derived: tuple[str, ...] = ()  # knobs set to a value the program takes as the derived one (inert.taken_as_derived,
    # inert.derived_alike)
    caps: tuple = ()  # inert.ValueCap / ValueClasses of each knob whose values lower alike (inert.value_caps)


def analytic_predictor(config, program, target, coefficients):
    """The cost model of schedule/cost.py (what the builder prices with unless told otherwise)."""
    from amk.schedule.cost import CostModelError, predict

    try:
        p = predict(program, target, coefficients)
    except CostModelError:
        return None, None
    return p.latency_us, p.features.to_dict()


def kernel_id_of(program) -> str:
    """16 hex digits of sha256 over the kernel's generated header (vm/abi.py): what NVRTC compiles besides the
    fixed source, so two programs with one id run one kernel (tiling knobs change the instruction table, not the
    header; threads, pages, build knobs and the code paths used change the header)."""
    from amk.vm.abi import generate_header

    return hashlib.sha256(generate_header(program).encode()).hexdigest()[:16]


def build_one(job: BuildJob, predictor: Predictor | None = None) -> Built:
    """Lower, validate and price one config (nothing is cached: most candidates are never measured, and
    the runner's evaluate() lowers the few that are). Never raises for a bad config."""
    from amk.harness.environment import Device, get_model
    from amk.models import Model
    from amk.schedule.errors import ConfigError, LoweringError
    from amk.schedule.inert import derived_alike, taken_as_derived, value_caps
    from amk.schedule.lower import DEFAULT_MAX_SEQ, lower
    from amk.schedule.program import gc_paused
    from amk.schedule.validate import validate

    t0 = time.perf_counter()
    cfg = ScheduleConfig.from_dict(job.config)

    def rejected(reason: str) -> Built:
        return Built(job.config, cfg.schedule_id, False, reason, seconds=time.perf_counter() - t0)

    model = job.model if isinstance(job.model, Model) else get_model(str(job.model), job.dtype, Device.CPU,
                                                                      weights=False)
    seq = int(job.max_seq or min(model.dims.max_positions, DEFAULT_MAX_SEQ))
    with gc_paused():
        try:
            program = lower(model, job.target, cfg, max_seq=seq)
        except ConfigError as e:
            return rejected(f"schema: {e.path}: {e.reason}")
        except LoweringError as e:
            return rejected(f"lowering: {e}")
        except Exception as e:  # a lowering bug: a rejection with its reason, as in evaluate()
            return rejected(f"lowering: internal error ({type(e).__name__}: {e})")
        res = validate(program, job.target)
        if not res.ok:
            return rejected(f"validator: {res.issues[0].kind.value}: {res.first_message()}")
        pred, feats = (predictor or analytic_predictor)(cfg, program, job.target, job.coefficients)
        if pred is not None and not math.isfinite(pred):
            pred = None
        # a knob set to what the lowering derives for null under the rest of the config (derived_alike) gives
        # null's program too: the loop sets such a move back, so that no description claims it
        as_derived = dict.fromkeys(taken_as_derived(cfg, program))
        as_derived.update(dict.fromkeys(p for p, _ in derived_alike(cfg, program, model.dims, job.target,
                                                                    skip=set(as_derived))))
        return Built(job.config, cfg.schedule_id, True, None, program.fingerprint(), feats, pred,
                     len(program.tasks), time.perf_counter() - t0, kernel_id_of(program),
                     dict(program.meta.get("derived") or {}), tuple(as_derived), tuple(value_caps(cfg, program)))


def precompile_one(job: BuildJob, kernel: bool = True) -> str:
    """Lower one (valid) config into the program cache and, with `kernel`, build its kernel into the kernel
    cache, for the runner to find; returns "file", "compiled", "lowered" (kernel=False) or why not."""
    from amk.cache import default_cache
    from amk.harness.evaluate import build_program
    from amk.vm.loader import precompile

    try:
        _, program = build_program(job.model, job.target, ScheduleConfig.from_dict(job.config), device="cpu",
                                   dtype=job.dtype, max_seq=job.max_seq, notes=False)
        if program is None:
            return "invalid"
        return precompile(program, job.target.arch, default_cache()) if kernel else "lowered"
    except Exception as e:  # the runner builds it itself then, and reports any failure as the trial's
        return f"failed: {type(e).__name__}: {e}"


def _outcome(f: Future) -> str | None:
    """A precompile job's result: None while it is queued or running, "failed: ..." when it was cancelled or its
    worker died (BrokenProcessPool), else what precompile_one returned."""
    if f.cancelled():
        return "failed: cancelled"
    if not f.done():
        return None
    return f"failed: {f.exception()!r}" if f.exception() is not None else f.result()


def _failed(f: Future) -> bool:
    return (_outcome(f) or "").startswith("failed")


def _worker_init() -> None:
    import torch

    for s in (signal.SIGINT, signal.SIGTERM):  # the loop's StopFlag answers both
        signal.signal(s, signal.SIG_IGN)
    logging.getLogger("amk").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # builds are single-threaded Python; idle OpenMP pools only crowd the measuring process


def default_processes(device: str) -> int:
    """Builder processes: none on the CPU-only path (the measuring process is the CPU), else all but two
    cores (one measures, one serves the system), at most 16."""
    if device != "cuda":
        return 0
    return max(0, min(16, (os.cpu_count() or 1) - 2))


class Pending:
    """Builds under way, indexed by their place in the order asked. ready() hands over the finished builds not
    handed over yet; wait() waits for the rest and returns every Built in the order asked; cancel() drops the
    builds not started (a prepared round that a restart made stale). In-process builds run at ready(), which
    stops between two of them when asked to."""

    def __init__(self, builder: Builder, ids: list[str], futures: dict[int, Future], local: dict[int, BuildJob],
                 memo: list[int]):
        self.builder, self.ids = builder, ids
        self.futures, self.local, self.memo = futures, local, memo  # not handed over yet

    def ready(self, stop: Callable[[], bool] | None = None) -> list[tuple[int, Built]]:
        """(index, Built) of each build finished since the last call, in the order asked. In-process builds run
        here, in order; `stop` is called before each of them, and once it returns true ready() builds no more:
        the builds not started wait for a later call (done() stays false), those done stay memoised."""
        out = [(i, self.builder.built[self.ids[i]]) for i in self.memo]  # built by an earlier round
        self.memo = []
        for i, job in list(self.local.items()):
            if stop is not None and stop():
                break
            out.append((i, self.builder._keep(build_one(job, self.builder.predictor))))
            del self.local[i]
        for i in [i for i, f in self.futures.items() if f.done()]:
            out.append((i, self.builder._keep(self.futures.pop(i).result())))
        return sorted(out, key=lambda ib: ib[0])

    def wait_any(self) -> None:
        """Block until one more build finishes (at once when none is left to wait for)."""
        if self.futures and not any(f.done() for f in self.futures.values()):
            wait(self.futures.values(), return_when=FIRST_COMPLETED)

    def wait(self) -> list[Built]:
        wait(self.futures.values())
        self.ready()
        return [self.builder.built[i] for i in self.ids]

    def done(self) -> bool:
        """Every build handed over (in-process builds: never before ready())."""
        return not (self.futures or self.local or self.memo)

    def cancel(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.futures, self.local, self.memo = {}, {}, []


class Builder:
    """Builds candidates (memoised by schedule_id for the life of the loop) and precompiles kernels. Kernel
    builds have processes of their own (a third, at least one): in the build processes a kernel the next
    trial needs would queue behind a whole round of lowering. One kernel is compiled once: a candidate whose
    kernel_id is compiled or compiling only has its program lowered into the cache."""

    def __init__(self, processes: int = 0, predictor: Predictor | None = None):
        if processes > 0 and predictor is not None:
            raise ValueError("a custom predictor runs in this process only (builder processes=0)")
        self.predictor = predictor
        self.processes = max(0, processes)
        compilers = max(1, self.processes // 3) if self.processes > 1 else 0
        self.pool = self._pool(self.processes - compilers)
        self.compile_pool = self._pool(compilers) or self.pool
        self.built: dict[str, Built] = {}
        self.precompiling: dict[str, Future] = {}  # schedule_id -> the job caching its program (and kernel)
        self.kernels: dict[str, Future] = {}  # kernel_id -> the job compiling it
        self.kernel_of: dict[str, str] = {}  # schedule_id -> kernel_id
        self.kernels_ready: set[str] = set()  # kernel_ids in the kernel cache (a trial ran them)
        self.build_seconds = 0.0

    @staticmethod
    def _pool(n: int) -> ProcessPoolExecutor | None:
        return (ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init)
                if n > 0 else None)

    def submit(self, jobs: list[BuildJob]) -> Pending:
        """Start building `jobs` (in the worker processes; in this process the work happens at ready())."""
        ids = [ScheduleConfig.from_dict(j.config).schedule_id for j in jobs]
        futures: dict[int, Future] = {}
        local: dict[int, BuildJob] = {}
        memo: list[int] = []
        for i, (job, sid) in enumerate(zip(jobs, ids)):
            if sid in self.built:
                memo.append(i)
            elif self.pool is None:
                local[i] = job
            else:
                futures[i] = self.pool.submit(build_one, job)
        return Pending(self, ids, futures, local, memo)

    def build(self, jobs: list[BuildJob]) -> list[Built]:
        return self.submit(jobs).wait()

    def _keep(self, b: Built) -> Built:
        self.built[b.schedule_id] = b
        self.build_seconds += b.seconds
        return b

    def precompile(self, job: BuildJob, kernel_id: str | None = None) -> None:
        """Lower this candidate into the program cache and compile its kernel in a worker while the GPU
        measures another (CUDA runs only); the kernel only when no other candidate's job compiles it."""
        sid = ScheduleConfig.from_dict(job.config).schedule_id
        if self.compile_pool is None or (sid in self.precompiling and not _failed(self.precompiling[sid])):
            return
        if kernel_id is not None and kernel_id in self.kernels and _failed(self.kernels[kernel_id]):
            del self.kernels[kernel_id]  # cancelled or failed: the next candidate that needs it compiles it
        shared = kernel_id is not None and (kernel_id in self.kernels or kernel_id in self.kernels_ready)
        f = self.compile_pool.submit(precompile_one, job, not shared)
        self.precompiling[sid] = f
        if kernel_id is not None:
            self.kernel_of[sid] = kernel_id
            if not shared:
                self.kernels[kernel_id] = f

    def kernel_ready(self, kernel_id: str | None) -> bool:
        """This kernel is in the kernel cache: a trial ran it, or its compile job compiled it or found it."""
        if kernel_id is None:
            return False
        f = self.kernels.get(kernel_id)
        if f is not None and _outcome(f) in ("file", "compiled"):
            self.kernels_ready.add(kernel_id)
        return kernel_id in self.kernels_ready

    def mark_kernel_ready(self, kernel_id: str | None) -> None:
        """A trial ran this kernel (the VM built it into the kernel cache)."""
        if kernel_id is not None:
            self.kernels_ready.add(kernel_id)

    def kernel_pending(self, schedule_id: str) -> bool:
        """This candidate's kernel is still being compiled (by its own job or another candidate's)."""
        kid = self.kernel_of.get(schedule_id)
        if kid is not None and kid in self.kernels_ready:
            return False
        f = self.kernels.get(kid) if kid is not None else self.precompiling.get(schedule_id)
        return f is not None and not f.done()

    def wait_precompiled(self, schedule_id: str) -> None:
        """Wait for this candidate's precompile job and the kernel build it needs when they are under way
        (building again would only race). A job still queued is cancelled instead: the runner's evaluate()
        lowers and compiles in the time the job would have waited for a worker."""
        kid = self.kernel_of.get(schedule_id)
        own, kernel = self.precompiling.pop(schedule_id, None), self.kernels.get(kid) if kid is not None else None
        for f in (own, None if kernel is own else kernel):
            if f is None or f.cancel() or f.cancelled():
                continue
            wait([f])
            if _failed(f):  # a failed build, or a worker that died: the trial builds it itself
                log.warning("precompiling %s %s; the VM builds it itself", schedule_id, _outcome(f))

    def close(self) -> None:
        for pool in {id(p): p for p in (self.pool, self.compile_pool) if p is not None}.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self.compile_pool = None
