"""One measuring worker per GPU through Ray: `amk loop --workers N` (and loop(workers=N)).

Each worker is a Ray task holding one GPU (`num_gpus=1`: Ray sets CUDA_VISIBLE_DEVICES, so the worker's
torch sees its GPU as cuda:0), or one CPU on the CPU-only path, and runs the single-GPU loop on the same
results.tsv and corpus.jsonl. Locked appends keep both files whole, and claims under the results lock
(flywheel/claims.py) keep any two workers from measuring one program. Workers share what they learn through
the records: every round refits the ranking model and picks its parents from all workers' records; each
keeps a config only against its own incumbent, measured on its own GPU (two GPUs of one model differ).

Ray runs locally (a fresh instance, shut down at the end) or on a cluster given by `ray_address` (the
files must then sit on a file system every node shares). The budget is split between the workers; minutes
apply to each. SIGINT or SIGTERM in the driver asks every worker to stop after its trial in flight; a locally
started Ray's processes ignore both (signals.ChildrenIgnoreStops), so a signal sent to the whole process group
reaches the driver alone. Ray is an optional
extra (`pip install -e '.[ray]'` in the checkout); one worker never imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from amk.schedule.errors import EnvironmentProblem

log = logging.getLogger("amk.harness")


def budget_shares(budget: int | None, workers: int) -> list[int | None]:
    """The budget split as evenly as it goes (the first workers take the remainder)."""
    if budget is None:
        return [None] * workers
    return [budget // workers + (1 if i < budget % workers else 0) for i in range(workers)]


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise EnvironmentProblem("amk loop --workers N > 1 runs its workers through Ray, which is not installed: "
                                 "pip install -e '.[ray]' in AMK's checkout") from e
    return ray


def _worker_main(index: int, kwargs: dict, stop, sink=None, resume_asked: bool = True) -> dict:
    """Runs inside a Ray worker: the single-GPU loop, stopping when the driver's flag is set. Each trial's progress
    dict, with `worker` added, goes to the driver's `sink` (an actor) before the next trial starts, so that the
    driver calls the caller's `progress` with every trial, the last ones too (Ray's forwarding of a worker's
    stderr may drop lines at shutdown)."""
    import ray

    from amk.harness.loop import RESUME_NOTE_LEAD, loop

    logging.getLogger("amk").setLevel(logging.WARNING)

    def progress(p: dict) -> None:
        ray.get(sink.put.remote({**p, "worker": index}))

    summary = loop(progress=progress if sink is not None else None, should_stop=lambda: ray.get(stop.is_set.remote()),
                   workers=1, **kwargs)
    if not resume_asked:  # a worker of a fresh run resumes the driver's file by design: no resume to note
        summary["notes"] = [n for n in summary.get("notes", []) if not n.startswith(RESUME_NOTE_LEAD)]
    summary["worker"] = index
    summary["host"] = os.uname().nodename
    summary["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return summary


class _Progress:
    """The workers' trial dicts, in the order they arrive, until the driver takes them."""

    def __init__(self):
        self.items: list[dict] = []

    def put(self, p: dict) -> None:
        self.items.append(p)

    def take(self) -> list[dict]:
        out, self.items = self.items, []
        return out


class _Flag:
    def __init__(self):
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


def run_workers(model, gpu, *, workers: int, ray_address: str | None, budget, minutes, seed, device, results,
                corpus, resume, max_reverts, progress, cases, dtype, incumbent, builders, settings, max_seq) -> dict:
    """loop() over `workers` Ray workers; returns the merged summary with each worker's under `per_worker`."""
    from amk.cache import default_cache
    from amk.flywheel.claims import end_run, start_run
    from amk.flywheel.results import ResultsFormatError, read_rows
    from amk.harness.environment import Device, resolve_device, resolve_target
    from amk.harness.loop import LoopError
    from amk.harness.propose import model_name
    from amk.harness.verdict import parse_config
    from amk.models import Model

    from .errors import ResultsInUse
    from .signals import ChildrenIgnoreStops, StopFlag

    if isinstance(model, Model):
        raise LoopError("workers > 1 needs a model name or checkpoint path: an in-memory model does not travel "
                        "to Ray workers")
    name = model_name(model)
    target = resolve_target(gpu)
    dev = resolve_device(device)
    results, corpus = Path(results).resolve(), Path(corpus).resolve()
    default_cache()  # an unusable cache directory fails here, before any worker starts
    try:
        rows = read_rows(results)
    except ResultsFormatError as e:
        raise LoopError(str(e), argument="results") from None
    if rows and not resume:
        raise LoopError(f"{results} already holds {len(rows)} trials: pass resume=True (--resume) to continue it, "
                        "or choose another results file", argument="results")
    seed_config = parse_config(incumbent).to_dict() if incumbent is not None else None
    if builders is None:
        builders = 0 if dev != Device.CUDA else max(0, ((os.cpu_count() or 1) - 2 * workers) // workers)
    ray = _import_ray()
    # Ray colours the prefix of each forwarded worker line; no escape codes into a file or a pipe (or under
    # NO_COLOR), unless the user set RAY_COLOR_PREFIX. The driver reads it as it prints
    plain = "RAY_COLOR_PREFIX" not in os.environ and bool(os.environ.get("NO_COLOR") or not sys.stderr.isatty())
    if plain:
        os.environ["RAY_COLOR_PREFIX"] = "0"
    # each worker's own warnings in full: Ray folds lines alike from several workers into "[repeated 2x across
    # cluster]" unless told not to (the user's own setting stands)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = not ray.is_initialized()
    if started:
        env = {k: v for k, v in os.environ.items() if k.startswith("AMK_")}
        with ChildrenIgnoreStops():
            ray.init(address=ray_address, include_dashboard=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": env} if env else None)
    holder = None if resume else start_run(results)  # the driver's run, which its workers join
    if holder is not None:
        if started:
            ray.shutdown()
        if plain:
            os.environ.pop("RAY_COLOR_PREFIX", None)
        raise ResultsInUse(results, holder)
    t0 = time.monotonic()
    try:
        stop = ray.remote(_Flag).options(num_cpus=0).remote()
        sink = ray.remote(_Progress).options(num_cpus=0).remote() if progress is not None else None
        per_worker = {"num_gpus": 1} if dev == Device.CUDA else {"num_cpus": 1}
        task = ray.remote(_worker_main).options(**per_worker)
        refs = []
        for i, share in enumerate(budget_shares(budget, workers)):
            kwargs = dict(model=name, gpu=target, budget=share, minutes=minutes, seed=seed + i, device=dev.value,
                          results=str(results), corpus=str(corpus), resume=True, max_reverts=max_reverts,
                          cases=cases, dtype=dtype, incumbent=seed_config, builders=builders, settings=settings,
                          max_seq=max_seq)
            refs.append(task.remote(i, kwargs, stop, sink, resume))
        pending = list(refs)
        with StopFlag() as flag:
            asked = False
            try:
                while pending:
                    _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                    if flag.set and not asked:
                        ray.get(stop.set.remote())
                        asked = True
                    _report(ray, sink, progress)
                _report(ray, sink, progress)  # a worker's last puts land before its task returns
            except BaseException:
                # the caller's progress raised (or a second Ctrl-C): the workers stop after their trials in flight
                if not asked:
                    ray.get(stop.set.remote())
                raise
        summaries = ray.get(refs)
    finally:
        if not resume:
            end_run(results)
        if started:
            ray.shutdown()
        if plain:
            os.environ.pop("RAY_COLOR_PREFIX", None)
    merged = merge(summaries, name, target.name, dev.value, results, corpus, time.monotonic() - t0)
    if flag.set:  # the driver's Ctrl-C or SIGTERM: every worker has written its trial in flight
        from ..loop import LoopInterrupted

        raise LoopInterrupted(merged)
    return merged


def _report(ray, sink, progress) -> None:
    """The caller's `progress` called, in this process, with each trial dict the workers sent since the last call."""
    if sink is None:
        return
    for p in ray.get(sink.take.remote()):
        progress(p)


def _merged_search(summaries: list[dict]) -> dict:
    """The workers' `search` counters summed (rounds, trials' seconds, duplicates ...); what is no count (the ranking
    model each fitted) stays in `per_worker`."""
    out: dict = {}
    for s in summaries:
        for key, value in (s.get("search") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = round(out.get(key, 0) + value, 2)
    return out


def merge(summaries: list[dict], model: str, gpu: str, device: str, results, corpus, seconds: float) -> dict:
    """One summary for the run: counts summed, the fastest worker's incumbent, the corpus's best."""
    statuses: Counter[str] = Counter()
    for s in summaries:
        statuses.update(s["statuses"])
    timed = [s for s in summaries if s["incumbent"]["latency_us"] is not None]
    best_inc = min(timed, key=lambda s: s["incumbent"]["latency_us"]) if timed else summaries[0]
    trials = sum(s["trials"] for s in summaries)
    stops = {s["stopped"] for s in summaries}
    first = summaries[0]
    out = {"incumbent": {**best_inc["incumbent"], "worker": best_inc.get("worker")}, "model": model, "gpu": gpu,
           "device": device, "dtype": first["dtype"], "max_seq": first.get("max_seq"),
           "context": first.get("context"), "seed": first.get("seed"), "search": _merged_search(summaries),
           "trials": trials, "statuses": dict(statuses),
           "kept": statuses.get("keep", 0), "stopped": "interrupted" if "interrupted" in stops else
           (stops.pop() if len(stops) == 1 else ",".join(sorted(str(x) for x in stops))),
           "best": summaries[0].get("best"), "workers": len(summaries),
           "trials_per_minute": round(60 * trials / seconds, 2) if seconds > 0 else None,
           "per_worker": summaries, "results": str(results), "corpus": str(corpus), "seconds": round(seconds, 2),
           "notes": best_inc.get("notes", [])}  # the incumbent's worker's: whether it is a result, with the rest
    # each worker's best is the corpus's best of this run's model, GPU, dtype and context when that worker stopped;
    # the last to stop read every other's keeps, so the fastest of them is the run's (a fresh read of the corpus
    # here would rank records of another dtype or context beside this run's)
    bests = [s["best"] for s in summaries if s.get("best") and s["best"].get("latency_us") is not None]
    if bests:
        out["best"] = min(bests, key=lambda b: b["latency_us"])
    return out
