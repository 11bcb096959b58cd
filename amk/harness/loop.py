"""loop(): keep/revert hill climbing over ScheduleConfig, writing results.tsv and corpus.jsonl.

Trial 1 evaluates the incumbent itself (propose()'s, or on resume the corpus's best). Each later trial
changes one knob of the incumbent, drawn by the prior learned from the corpus (with epsilon exploration,
and now and then a whole random config). A candidate is kept only when it is correct and faster than the
incumbent by more than max(1%, 2 sigma of the measured spreads); within that margin the simpler config
(fewer non-default knobs) wins. No schedule_id is evaluated twice in one results file, resume included.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from amk.flywheel.corpus import append_entry, best_entry, entries_for, load_corpus, make_entry
from amk.flywheel.prior import Prior
from amk.flywheel.results import ResultRow, Status, append_result, read_rows
from amk.schedule.config import ScheduleConfig
from amk.schedule.errors import AmkError
from amk.schedule.space import Knob, diff, neighbours, non_default_knobs, random_config, search_space

from .environment import Device, resolve_device, resolve_target
from .evaluate import evaluate
from .propose import incumbent_config, model_name
from .verdict import LatencyKind

log = logging.getLogger("amk.harness")

MIN_GAIN = 0.01  # a keep must beat the incumbent by more than 1% ...
SIGMAS = 2.0  # ... and by more than 2 sigma of the measured spreads
RANDOM_CONFIG_P = 0.05  # share of trials that jump to a whole random config
RANDOM_TRIES = 200


class LoopError(AmkError, ValueError):
    """The loop cannot start as asked (e.g. results.tsv exists and resume was not asked for)."""


class StopReason(str, Enum):
    BUDGET = "budget"
    MINUTES = "minutes"
    MAX_REVERTS = "max_reverts"
    EXHAUSTED = "exhausted"  # every neighbour and every random draw had been evaluated


@dataclass
class Incumbent:
    config: ScheduleConfig
    latency_us: float | None = None
    spread_us: float | None = None
    kind: str | None = None

    @property
    def simplicity(self) -> int:
        return len(non_default_knobs(self.config))


@dataclass(frozen=True)
class Candidate:
    config: ScheduleConfig
    change: tuple[str, ...]
    description: str


def decide(inc: Incumbent, verdict: dict, config: ScheduleConfig) -> tuple[Status, str]:
    """Keep or not, and why (the description column)."""
    if not verdict.get("valid"):
        return Status.REJECTED, str(verdict.get("rejected_reason"))
    if not verdict.get("correct"):
        why = "; ".join(f"{f['case']}: {f['message']}" for f in verdict.get("failures", [])[:2])
        return Status.FAIL, why or "; ".join(n for n in verdict.get("notes", []) if "failure" in n.lower())[:300]
    lat = verdict.get("latency_us")
    if lat is None:
        return Status.DISCARD, "correct, but no latency: " + " ".join(verdict.get("notes", [])[-1:])
    if inc.latency_us is None:
        return Status.KEEP, "first correct config"
    sigma = SIGMAS * math.hypot(verdict.get("latency_spread_us") or 0.0, inc.spread_us or 0.0)
    margin = max(MIN_GAIN * inc.latency_us, sigma)
    gain = (inc.latency_us - lat) / inc.latency_us
    if lat < inc.latency_us - margin:
        return Status.KEEP, f"{100 * gain:.2f}% faster"
    simpler = len(non_default_knobs(config)) < inc.simplicity
    if abs(lat - inc.latency_us) <= margin and simpler:
        return Status.KEEP, f"tie within {margin:.2f} us ({100 * gain:+.2f}%), simpler"
    return Status.DISCARD, f"{100 * gain:+.2f}% (needs > {100 * margin / inc.latency_us:.2f}%)"


def _expected_kind(dev: Device) -> str:
    return (LatencyKind.MEASURED_GPU if dev == Device.CUDA else LatencyKind.PREDICTED).value


def _start(name: str, gpu: str, corpus, dev: Device, resume: bool, rows: list[dict]) -> tuple[Incumbent, str]:
    cfg, source, verdict = incumbent_config(name, gpu, corpus)
    inc = Incumbent(cfg)
    # a latency from history counts only when it is of the kind this run produces: a prediction is never
    # compared with a measurement
    if resume and verdict and verdict.get("latency_kind") == _expected_kind(dev):
        inc.latency_us, inc.spread_us, inc.kind = (verdict.get("latency_us"), verdict.get("latency_spread_us"),
                                                   verdict.get("latency_kind"))
    return inc, source


def _pick(inc: Incumbent, space: list[Knob], prior: Prior, seen: set[str], rng: random.Random) -> Candidate | None:
    moves = [m for m in neighbours(inc.config, space) if m.config.schedule_id not in seen]
    if moves and rng.random() >= RANDOM_CONFIG_P:
        m = prior.choose(moves, rng)
        return Candidate(m.config, (m.description,), m.description)
    for _ in range(RANDOM_TRIES):
        cfg = random_config(space, rng, base=inc.config)
        if cfg.schedule_id not in seen:
            change = tuple(diff(inc.config, cfg))
            return Candidate(cfg, change, "random: " + ", ".join(change))
    if moves:
        m = prior.choose(moves, rng)
        return Candidate(m.config, (m.description,), m.description)
    return None


def loop(model, gpu, budget: int | None = None, minutes: float | None = None, seed: int = 0, device: str = "auto",
         results: str | Path = "results.tsv", corpus: str | Path = "corpus.jsonl", resume: bool = False,
         max_reverts: int = 20, progress: Callable[[dict], None] | None = None, cases=None,
         dtype: str | None = None) -> dict:
    """Run trials until `budget` trials, `minutes`, or `max_reverts` non-keeps in a row; returns a summary."""
    t0 = time.monotonic()
    target = resolve_target(gpu)
    name = model_name(model)
    dev = resolve_device(device)
    rows = read_rows(results)
    if rows and not resume:
        raise LoopError(f"{results} already holds {len(rows)} trials: pass resume=True (--resume) to continue it, "
                        "or choose another results file")
    seen = {r["schedule_id"] for r in rows if r["model"] == name and r["gpu"] == target.name}
    inc, source = _start(name, target.name, corpus, dev, resume, rows)
    space = search_space(target)
    prior = Prior.from_corpus(load_corpus(corpus), gpu=target.name)
    rng = random.Random(seed)
    statuses: Counter[str] = Counter()
    trials = reverts = 0
    first = inc.config.schedule_id not in seen
    stop = None
    while stop is None:
        if budget is not None and trials >= budget:
            stop = StopReason.BUDGET
            break
        if minutes is not None and time.monotonic() - t0 >= minutes * 60:
            stop = StopReason.MINUTES
            break
        if reverts >= max_reverts:
            stop = StopReason.MAX_REVERTS
            break
        # another loop may share the file: what it evaluated counts as seen too
        seen |= {r["schedule_id"] for r in read_rows(results) if r["model"] == name and r["gpu"] == target.name}
        if first:
            cand, first = Candidate(inc.config, (), f"baseline ({source} config)"), False
        else:
            cand = _pick(inc, space, prior, seen, rng)
            if cand is None:
                stop = StopReason.EXHAUSTED
                break
        seen.add(cand.config.schedule_id)
        verdict = _evaluate(model, target, cand.config, dev, cases, seed, dtype, corpus)
        status, why = (Status.CRASH, verdict["crash"]) if "crash" in verdict else decide(inc, verdict, cand.config)
        lat = verdict.get("latency_us")
        speedup = inc.latency_us / lat if (lat and inc.latency_us) else None
        row = append_result(results, ResultRow(
            model=name, gpu=target.name, schedule_id=cand.config.schedule_id, status=status,
            correct=verdict.get("correct") if "crash" not in verdict else None, latency_us=lat,
            kind=verdict.get("latency_kind"), pct_of_floor=verdict.get("pct_of_floor"), speedup=speedup,
            description=f"{cand.description}: {why}"))
        trials += 1
        statuses[status.value] += 1
        if status == Status.KEEP:
            improvement = (inc.latency_us - lat) / inc.latency_us if inc.latency_us else None
            append_entry(corpus, make_entry(name, target.name, cand.config.to_dict(), verdict, cand.change, improvement))
            inc = Incumbent(cand.config, lat, verdict.get("latency_spread_us"), verdict.get("latency_kind"))
            reverts = 0
            prior = Prior.from_corpus(load_corpus(corpus), gpu=target.name)  # learn from this keep at once
        else:
            reverts += 1
        if progress is not None:
            progress({"trial": row.trial, "status": status.value, "schedule_id": row.schedule_id, "latency_us": lat,
                      "kind": verdict.get("latency_kind"), "best_latency_us": inc.latency_us,
                      "description": row.description, "elapsed_s": round(time.monotonic() - t0, 1)})
    return _summary(name, target.name, dev, trials, statuses, stop, results, corpus, t0, inc)


def _evaluate(model, gpu, config, dev, cases, seed, dtype, corpus) -> dict:
    try:
        return evaluate(model, gpu, config, device=dev.value, cases=cases, seed=seed, dtype=dtype,
                        corpus=str(corpus) if corpus else None)
    except Exception as e:  # the loop outlives one bad trial; the row says crash and why
        log.exception("evaluate crashed")
        return {"crash": f"{type(e).__name__}: {e}"}


def _summary(name, gpu, dev, trials, statuses, stop, results, corpus, t0, inc: Incumbent) -> dict:
    best = best_entry(entries_for(load_corpus(corpus), name, gpu)) if Path(corpus).exists() else None
    return {"incumbent": {"schedule_id": inc.config.schedule_id, "latency_us": inc.latency_us,
                          "latency_kind": inc.kind, "config": inc.config.to_dict()},
            "model": name, "gpu": gpu, "device": dev.value, "trials": trials, "statuses": dict(statuses),
            "kept": statuses.get(Status.KEEP.value, 0), "stopped": stop.value if stop else None,
            "best": None if best is None else {"schedule_id": ScheduleConfig.from_dict(best.config).schedule_id,
                                               "latency_us": best.latency_us, "latency_kind": best.kind,
                                               "config": best.config},
            "results": str(results), "corpus": str(corpus), "seconds": round(time.monotonic() - t0, 2)}
