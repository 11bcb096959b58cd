"""Tuning records: one JSON line per measured trial, kept or not, in corpus.jsonl (shared by every loop).

A record is what the search learns from (the TVM MetaSchedule "database" practice): the config, the program
fingerprint it lowered to, model, dtype, GPU target and device, the cost-model features and prediction, the
latency with its spread and kind (`measured-gpu` or `predicted`), the status the keep rule gave it, the git
commit and the time. The cost-model fit (harness/calibration.py, harness/search/model.py), the prior
(flywheel/prior.py), propose() and `amk report` read them.

Lines written before records existed (one per kept config: model, gpu, time, config, verdict, environment,
change, improvement) are read as kept records, their other fields taken from the verdict. Appends are whole
lines under a lock (flywheel.appendlog), so concurrent loops share one file.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amk.schedule.config import migrate_config, schedule_id_of

from .appendlog import append_lines, numbered_lines, read_locked, torn_tail, warn_bad_line
from .results import CHOICE_COLUMNS, is_trial_number, readable_file

log = logging.getLogger("amk.flywheel")

RECORD_VERSION = 2  # lines without "record" are version 1: kept configs only
MODEL_FINGERPRINT = "model_fingerprint"  # the environment key of a checkpoint's fingerprint at the trial
MEASURED = "measured-gpu"
_DROPPED_VERDICT_KEYS = ("case_results", "cache", "environment")  # bulky, or stored at the top level


class RecordFormatError(ValueError):
    """A line of the records file is JSON but not a record this code can read."""


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _checked_num(name: str, v, positive: bool = False) -> float | None:
    """A record's number: None when absent (null); RecordFormatError naming `name` for a value no trial writes
    (a string, NaN, a bool, or, for a latency, zero or less), so the line is skipped with a warning, not read
    as a trial without a latency."""
    if v is None:
        return None
    x = _num(v)
    if x is None or (positive and x <= 0):
        raise RecordFormatError(f"{name} is {v!r}, not a {'positive ' if positive else ''}finite number")
    return x


def _checked_trial(v) -> int | None:
    """A record's results.tsv trial number: None when absent; RecordFormatError for anything append_result could
    not have written (a string, a float, a bool, zero or less, or past the int64 a frame holds it in)."""
    if v is None:
        return None
    if not is_trial_number(v):
        raise RecordFormatError(f"trial is {v!r:.60}, not a positive integer below 2**63")
    return v


def _checked_str(name: str, v) -> str | None:
    """A record's name or hash: None when absent; RecordFormatError for anything but a string (a list or an object
    could not be a key the readers look records up by)."""
    if v is not None and not isinstance(v, str):
        raise RecordFormatError(f"{name} is {v!r:.60}, not a string")
    return v


def _checked_choice(name: str, column: str, v) -> str | None:
    """A record's dtype, status or latency kind: None when absent; RecordFormatError for a value no trial writes,
    as results.tsv skips such a cell (CHOICE_COLUMNS): another spelling would be read as a group of its own, a
    trial of no known outcome, or a latency neither measured nor predicted."""
    v = _checked_str(name, v)
    allowed = [c for c in CHOICE_COLUMNS[column] if c]
    if v is not None and v not in allowed:
        raise RecordFormatError(f"{name} is {v!r:.60}, not one of {', '.join(allowed)}")
    return v


def _checked_object(name: str, v) -> dict | None:
    """A record's environment or cost features: None when absent; RecordFormatError for anything but a JSON
    object, which no trial writes there."""
    if v is not None and not isinstance(v, dict):
        raise RecordFormatError(f"{name} is {v!r:.60}, not an object")
    return v


@dataclass(frozen=True)
class TuningRecord:
    """One measured trial. Latencies in microseconds; `features` are the cost model's critical-path
    features (schedule/cost.py Features: mem_us, tasks, waits) or None when no program was priced."""

    model: str
    gpu: str
    config: dict
    verdict: dict
    environment: dict
    time: str
    change: tuple[str, ...] = ()
    improvement: float | None = None  # (incumbent - this) / incumbent at the time; None when not timed
    kept: bool = True
    status: str = "keep"  # results.tsv status (keep, discard, fail, rejected, crash, remeasure)
    dtype: str | None = None
    device: str | None = None
    schedule_id: str | None = None
    program_fingerprint: str | None = None
    source: str | None = None  # what proposed it: baseline, seed, mutate, crossover, random, remeasure ...
    trial: int | None = None  # its results.tsv trial number
    latency_us: float | None = None
    latency_spread_us: float | None = None
    latency_kind: str | None = None
    predicted_latency_us: float | None = None
    features: dict | None = field(default=None)

    def __post_init__(self):
        # built by hand from a verdict alone (the corpus's original API): the verdict fills what is unset
        v = self.verdict
        for name, key in (("latency_us", "latency_us"), ("latency_spread_us", "latency_spread_us"),
                          ("predicted_latency_us", "predicted_latency_us")):
            if getattr(self, name) is None and _num(v.get(key)) is not None:
                object.__setattr__(self, name, _num(v.get(key)))
        if self.latency_kind is None and v.get("latency_kind"):
            object.__setattr__(self, "latency_kind", v.get("latency_kind"))
        if self.schedule_id is None:  # a verdict of no config id: the config as written hashes to it
            sid = v.get("schedule_id")
            object.__setattr__(self, "schedule_id", sid if isinstance(sid, str) else schedule_id_of(self.config))

    @property
    def kind(self) -> str | None:
        return self.latency_kind

    @property
    def correct(self) -> bool:
        return bool(self.verdict.get("correct"))

    @property
    def commit(self) -> str | None:
        return self.environment.get("git_commit")

    @property
    def measured(self) -> bool:
        """A GPU measurement that passed correctness."""
        return self.correct and self.latency_kind == MEASURED and self.latency_us is not None

    def to_dict(self) -> dict:
        return {"record": RECORD_VERSION, "model": self.model, "gpu": self.gpu, "dtype": self.dtype,
                "device": self.device, "time": self.time, "trial": self.trial, "status": self.status,
                "kept": self.kept, "source": self.source, "schedule_id": self.schedule_id,
                "program_fingerprint": self.program_fingerprint, "config": self.config,
                "correct": self.correct, "latency_us": self.latency_us, "latency_spread_us": self.latency_spread_us,
                "latency_kind": self.latency_kind, "predicted_latency_us": self.predicted_latency_us,
                "features": self.features, "commit": self.commit, "change": list(self.change),
                "improvement": self.improvement, "environment": self.environment, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: dict) -> TuningRecord:
        """A record from its JSON object; a version-1 (kept-config) line takes its fields from its verdict."""
        if not isinstance(d, dict):
            raise RecordFormatError(f"expected a JSON object, got {type(d).__name__}")
        v = d.get("verdict") or {}
        if not isinstance(v, dict) or not isinstance(d.get("config"), dict):
            raise RecordFormatError("'config' and 'verdict' must be objects")
        legacy = "record" not in d
        if "correct" in v and v["correct"] is not None and not isinstance(v["correct"], bool):
            raise RecordFormatError(f"verdict.correct is {v['correct']!r:.60}, not true or false")
        top = d.get("correct")  # a copy of the verdict's, which is what the readers use
        if top is not None and (not isinstance(top, bool) or top != bool(v.get("correct"))):
            raise RecordFormatError(f"correct is {top!r:.60}, where its verdict.correct is {v.get('correct')!r}: "
                                    "which one holds is not known")
        change = d.get("change") or ()
        if not isinstance(change, (list, tuple)) or not all(isinstance(c, str) for c in change):
            raise RecordFormatError(f"change is {change!r:.60}, not a list of strings")
        for name in ("model", "gpu"):
            if not isinstance(d.get(name), str):
                raise RecordFormatError(f"{name} is {d.get(name)!r:.60}, not a string")
        cost = v.get("cost") or {}
        feats = _checked_object("features", cost.get("features") if legacy else d.get("features"))
        env = _checked_object("environment", d.get("environment")) or _checked_object(
            "verdict.environment", v.get("environment")) or {}
        for sid in (d.get("schedule_id"), v.get("schedule_id")):  # the record's and its verdict's, where strings
            _check_config_id(d["config"], sid)
        _check_timed_has_id(d, v)
        # a record outlives knob renames: its config is read in today's spelling
        return cls(model=d["model"], gpu=d["gpu"], config=migrate_config(dict(d["config"])), verdict=dict(v),
                   environment=dict(env), time=str(d.get("time", "")),
                   change=tuple(change), improvement=_checked_num("improvement", d.get("improvement")),
                   kept=True if legacy else _kept(d.get("kept")),
                   status=_checked_choice("status", "status", d.get("status")) or "keep",
                   dtype=_checked_choice("dtype", "dtype", d.get("dtype", v.get("dtype"))),
                   device=_checked_str("device", d.get("device", v.get("device"))),
                   schedule_id=_checked_str("schedule_id", d.get("schedule_id", v.get("schedule_id"))),
                   program_fingerprint=_checked_str("program_fingerprint",
                                                    d.get("program_fingerprint", v.get("program_fingerprint"))),
                   source=_checked_str("source", d.get("source")), trial=_checked_trial(d.get("trial")),
                   latency_us=_checked_num("latency_us", d.get("latency_us", v.get("latency_us")), positive=True),
                   latency_spread_us=_checked_num("latency_spread_us",
                                                  d.get("latency_spread_us", v.get("latency_spread_us"))),
                   latency_kind=_checked_choice("latency_kind", "kind", d.get("latency_kind", v.get("latency_kind"))),
                   predicted_latency_us=_checked_num("predicted_latency_us",
                                                     d.get("predicted_latency_us", v.get("predicted_latency_us")),
                                                     positive=True),
                   features=feats)


def _check_config_id(config: dict, schedule_id) -> None:
    """RecordFormatError unless `config`, as written, hashes to the record's `schedule_id`: a config edited after
    its trial would otherwise stand beside that trial's latency (a slower config taken as the incumbent, its
    measurement as its own). Hashed as ScheduleConfig.schedule_id hashes (schedule_id_of), over the config the
    writing version held, so a record of an older version (other knobs, other spellings) still checks."""
    if isinstance(schedule_id, str) and schedule_id_of(config) != schedule_id:
        raise RecordFormatError(f"its config does not hash to its schedule_id {schedule_id!r:.20}: edited after "
                                "its trial, so its latency is not that config's")


def _check_timed_has_id(d: dict, verdict: dict) -> None:
    """RecordFormatError where a record carries a latency (its own or its verdict's) but no schedule_id at all:
    every version writes the id of a timed trial (evaluate sets it before lowering), so a missing one was
    deleted, and with it the check that the config is the one that was timed. An untimed record (a crash, a
    rejected config) may lack it."""
    timed = any(src.get(k) is not None for src in (d, verdict) for k in ("latency_us", "predicted_latency_us"))
    if timed and d.get("schedule_id") is None and verdict.get("schedule_id") is None:
        raise RecordFormatError("it carries a latency but no schedule_id: its config cannot be checked against "
                                "the one that was timed")


def _kept(v) -> bool:
    if v is None:
        return False
    if not isinstance(v, bool):
        raise RecordFormatError(f"kept is {v!r}, not true or false")
    return v


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_from_verdict(model: str, gpu: str, config: dict, verdict: dict, *, status: str, kept: bool,
                        change=(), improvement: float | None = None, source: str | None = None,
                        trial: int | None = None) -> TuningRecord:
    """The record of one trial from evaluate()'s verdict (a crashed trial's verdict is {"crash": message})."""
    cost = verdict.get("cost") or {}
    slim = {k: x for k, x in verdict.items() if k not in _DROPPED_VERDICT_KEYS}
    return TuningRecord(
        model=model, gpu=gpu, config=config, verdict=slim, environment=dict(verdict.get("environment") or {}),
        time=utc_now(), change=tuple(change), improvement=improvement, kept=kept, status=status,
        dtype=verdict.get("dtype"), device=verdict.get("device"), schedule_id=verdict.get("schedule_id"),
        program_fingerprint=verdict.get("program_fingerprint"), source=source, trial=trial,
        latency_us=_num(verdict.get("latency_us")), latency_spread_us=_num(verdict.get("latency_spread_us")),
        latency_kind=verdict.get("latency_kind"), predicted_latency_us=_num(verdict.get("predicted_latency_us")),
        features=cost.get("features") if isinstance(cost.get("features"), dict) else None)


def append_record(path: str | Path, record: TuningRecord) -> None:
    line = json.dumps(record.to_dict(), sort_keys=True, allow_nan=False, default=str) + "\n"
    append_lines(path, lambda _current: line.encode())


def load_records(path: str | Path = "corpus.jsonl") -> list[TuningRecord]:
    """Every readable record of the file, in file order. A line that is not JSON or not a record (a file
    from elsewhere, a hand edit) is skipped with a warning naming the file and line: the file outlives code
    versions, and one bad line must not cost the others. A last line without its newline is read where it is a whole
    record (no JSON object cut short parses), else skipped with a warning; the next record appended ends its line.
    A missing file holds no records (a loop's first trial finds none); a directory or a file that is not a regular
    one (/dev/null, a FIFO) raises ArgumentError naming `path`, as `amk report` refuses them."""
    return records_and_skipped(path)[0]


def records_and_skipped(path: str | Path = "corpus.jsonl") -> tuple[list[TuningRecord], int]:
    """load_records' records and the count of the file's non-blank lines it skipped (each named in a warning), for
    a caller that sees no log (`amk --json report`, the MCP tools). ArgumentError naming `path` for a directory or
    a file that is not a regular one (readable_file: /dev/null, a FIFO), as `amk report` refuses them."""
    readable_file(path, "path", "the corpus file of amk.loop (corpus.jsonl)")
    out, skipped = [], 0
    data = read_locked(path)
    for i, line in numbered_lines(data):
        try:
            out.append(TuningRecord.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            skipped += 1
            warn_bad_line(log, path, i, line, f"skipped a line that is not a tuning record ({e})")
    tail = torn_tail(data)
    if tail.strip():
        n = data.count(b"\n") + 1
        try:  # no JSON object cut short parses: one that does is whole (an editor's save), as the next append reads it
            out.append(TuningRecord.from_dict(json.loads(tail)))
        except (ValueError, KeyError, TypeError):
            skipped += 1
            warn_bad_line(log, path, n, tail, "skipped a tuning record no newline ends (a write cut short; the file "
                          "is left as it is, and the next record appended starts a line of its own)")
        else:
            warn_bad_line(log, path, n, tail, "read a tuning record no newline ends (an editor's save?); the next "
                          "record appended ends its line")
    return out, skipped


def model_key(model: str) -> str:
    """The identity of a model name in results and tuning records: a checkpoint directory by its resolved
    absolute path (`../ck/tiny`, `/abs/ck/tiny/` and `ck/tiny` are one model), any other name as it is."""
    if not model:  # Path("") is the working directory
        return model
    try:
        path = Path(model).expanduser()
    except RuntimeError:  # `~user/...` naming no user of this machine: no directory, so a name as it is
        return model
    return str(path.resolve()) if path.is_dir() else model


def same_model(model: str) -> Callable[[str], bool]:
    """Whether a record's or row's model name is `model` by model_key; each distinct name is resolved once a
    call, so a filter over thousands of records stats the file system once a name, not once a record."""
    key, seen = model_key(model), {model: True}

    def match(name: str) -> bool:
        if name not in seen:
            seen[name] = model_key(name) == key
        return seen[name]
    return match


def _on(records: list[TuningRecord], model: str, gpu: str, dtype: str | None, mine: bool) -> list[TuningRecord]:
    match = same_model(model)
    return [r for r in records if r.gpu == gpu and match(r.model) == mine
            and (dtype is None or r.dtype is None or r.dtype == dtype)]


def for_run(records: list[TuningRecord], model: str, gpu: str, dtype: str | None = None) -> list[TuningRecord]:
    """The records of one model (compared by model_key) on one GPU target (and dtype, when given; a version-1
    line without a dtype matches any)."""
    return _on(records, model, gpu, dtype, mine=True)


def for_other_models(records: list[TuningRecord], model: str, gpu: str, dtype: str | None = None) -> list[TuningRecord]:
    """The records of every model but `model` (by model_key) on one GPU target and dtype, as for_run matches them:
    what the ranking model's knob effects start from where this model has few records of its own."""
    return _on(records, model, gpu, dtype, mine=False)


def at_context(records: list[TuningRecord], context: int | None) -> list[TuningRecord]:
    """The records whose latency was taken at a KV context of `context` positions (the verdict's
    latency_context), and those that do not say (no latency, or an older line); all of them for None. A
    latency at a shorter context (a program of fewer positions) is no rival of one at the bench's."""
    if context is None:
        return list(records)
    return [r for r in records if r.verdict.get("latency_context") in (None, context)]


RECORD_COLUMNS = ("time", "trial", "model", "gpu", "dtype", "device", "status", "kept", "source", "schedule_id",
                  "program_fingerprint", "correct", "latency_us", "latency_spread_us", "latency_kind",
                  "predicted_latency_us", "mem_us", "tasks", "waits", "improvement", "change", "commit")


def records_frame(records: list[TuningRecord] | str | Path):
    """The records as a pandas DataFrame (one row each, columns RECORD_COLUMNS plus `config` as a dict);
    latencies float (NaN when absent), time a UTC timestamp. A path that does not exist raises FileNotFoundError:
    read as no records (as load_records reads a corpus a loop has not started yet), a misspelt one would look empty;
    a directory or a file that is not a regular one (/dev/null, a FIFO) raises ArgumentError naming `records`."""
    import pandas as pd

    recs = records
    if isinstance(records, (str, Path)):
        where = readable_file(records, "records", "the corpus file of amk.loop (corpus.jsonl)")
        if not where.exists():
            raise FileNotFoundError(f"corpus file {str(records)!r} not found: run amk.loop first, or name its "
                                    "corpus= file")
        recs = load_records(where)
    rows = []
    for r in recs:
        f = r.features or {}
        rows.append({"time": r.time, "trial": r.trial, "model": r.model, "gpu": r.gpu, "dtype": r.dtype,
                     "device": r.device, "status": r.status, "kept": r.kept, "source": r.source,
                     "schedule_id": r.schedule_id, "program_fingerprint": r.program_fingerprint, "correct": r.correct,
                     "latency_us": r.latency_us, "latency_spread_us": r.latency_spread_us,
                     "latency_kind": r.latency_kind, "predicted_latency_us": r.predicted_latency_us,
                     "mem_us": f.get("mem_us"), "tasks": f.get("tasks"), "waits": f.get("waits"),
                     "improvement": r.improvement, "change": ", ".join(r.change), "commit": r.commit,
                     "config": r.config})
    df = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "config"])
    df["time"] = pd.to_datetime(df["time"], errors="coerce", utc=True)
    df["trial"] = pd.to_numeric(df["trial"], errors="coerce").astype("Int64")
    for col in ("latency_us", "latency_spread_us", "predicted_latency_us", "mem_us", "tasks", "waits", "improvement"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df
