"""corpus.jsonl: the tuning records of every loop that ever ran on this machine (flywheel/records.py).

The names here are the corpus's original API: a `CorpusEntry` is a `TuningRecord`, `load_corpus` reads the
file (old kept-config lines included), and `best_entry` picks the incumbent propose() starts from: the
fastest config the keep rule kept (a measured latency outranks a predicted one). Records of trials that were
not kept teach the cost model and the prior, but never become an incumbent by themselves: a single lucky
measurement is not a result.
"""

from __future__ import annotations

from pathlib import Path

from amk.schedule.config import ScheduleConfig

from .records import (
    MEASURED,
    TuningRecord,
    append_record,
    for_other_models,
    load_records,
    model_key,
    record_from_verdict,
    same_model,
)

CorpusEntry = TuningRecord


def append_entry(path: str | Path, entry: TuningRecord) -> None:
    append_record(path, entry)


def make_entry(model: str, gpu: str, config: dict, verdict: dict, change=(), improvement=None) -> TuningRecord:
    """A kept record from a verdict (what the loop wrote for each keep before every trial was recorded)."""
    return record_from_verdict(model, gpu, config, verdict, status="keep", kept=True, change=change,
                               improvement=improvement)


def load_corpus(path: str | Path = "corpus.jsonl") -> list[TuningRecord]:
    return load_records(path)


def entries_for(entries: list[TuningRecord], model: str, gpu: str) -> list[TuningRecord]:
    """The records of `model` (compared by model_key) on `gpu`."""
    match = same_model(model)
    return [e for e in entries if e.gpu == gpu and match(e.model)]


def spec_floor(e: TuningRecord) -> float | None:
    """The spec floor (us) the record's verdict names: its weight bytes at the GPU's spec bandwidth; None when it
    names none (or no positive number)."""
    floor = e.verdict.get("spec_floor_us")
    ok = isinstance(floor, (int, float)) and not isinstance(floor, bool) and floor > 0
    return float(floor) if ok else None


def below_floor(e: TuningRecord) -> bool:
    """Whether the record's latency is under the spec floor its own verdict names: no step runs that fast, so the
    number is a hand edit or a fault, never a result."""
    floor = spec_floor(e)
    return floor is not None and e.latency_us is not None and e.latency_us < floor


def best_entry(entries: list[TuningRecord]) -> TuningRecord | None:
    """The fastest correct kept record; of equal latencies the latest in `entries` (the corpus's order): a loop
    keeps a config at its incumbent's latency only when it has fewer non-default knobs, so the later one replaced
    the earlier. Measured latencies outrank predicted ones: a prediction never beats a measurement. A latency
    under its verdict's spec floor (below_floor) is no contender."""
    timed = [e for e in entries if e.kept and e.latency_us is not None and e.correct and not below_floor(e)]
    measured = [e for e in timed if e.kind == MEASURED]
    pool = measured or timed
    return min(reversed(pool), key=lambda e: e.latency_us) if pool else None


def best_of_other_models(entries: list[TuningRecord], model: str, gpu: str, dtype: str | None = None,
                         kind: str | None = None) -> list[tuple[TuningRecord, ScheduleConfig]]:
    """(record, config) of each other model's best kept record on `gpu` and `dtype` (best_entry; of latency
    `kind` only, when given) whose config this version parses, fastest first: what a search of `model` tries
    before anything is known of it (the `transfer` candidates), and what propose lists as `others_best`."""
    groups: dict[str, list[TuningRecord]] = {}
    keys: dict[str, str] = {}  # model_key stats a directory name: once a name, not once a record
    for e in for_other_models(entries, model, gpu, dtype):
        if kind is None or e.kind == kind:
            groups.setdefault(keys.setdefault(e.model, model_key(e.model)), []).append(e)
    out = []
    for group in groups.values():
        while (best := best_entry(group)) is not None:
            try:
                out.append((best, ScheduleConfig.from_dict(best.config)))
                break
            except ValueError:  # a knob since removed, a hand edit: the model's next best
                group = [e for e in group if e is not best]
    return sorted(out, key=lambda bc: bc[0].latency_us)
