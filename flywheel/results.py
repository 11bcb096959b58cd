"""results.tsv: one row per trial of a loop, fixed columns, tab-separated, header once.

Columns (HARNESS.md documents them; never reorder, only append new ones at the end):
  trial         1, 2, ... per file; allocated under the file lock, so concurrent loops never collide
  time          UTC, ISO 8601, seconds
  model, gpu    the model name and GPU target name
  schedule_id   ScheduleConfig.schedule_id (12 hex)
  status        keep | discard | rejected | fail | crash
  correct       true | false | empty (never ran)
  latency_us    empty unless the trial passed correctness and the latency was not withheld
  kind          measured-gpu | predicted | empty
  pct_of_floor  floor / latency, in percent
  speedup       incumbent latency / this latency
  description   what changed and why it was kept or not (tabs and newlines replaced)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .appendlog import append_lines, complete_lines, read_lines

COLUMNS = ("trial", "time", "model", "gpu", "schedule_id", "status", "correct", "latency_us", "kind",
           "pct_of_floor", "speedup", "description")
HEADER = "\t".join(COLUMNS) + "\n"


class Status(str, Enum):
    KEEP = "keep"  # correct and faster than the incumbent (or as fast and simpler): the new incumbent
    DISCARD = "discard"  # correct but not faster
    REJECTED = "rejected"  # the config did not parse, lower or validate
    FAIL = "fail"  # it ran and failed correctness (or the GPU failed)
    CRASH = "crash"  # the harness itself raised: a bug to report


class ResultsFormatError(ValueError):
    """results.tsv does not have the expected header."""

    def __init__(self, path, header: str):
        self.path = str(path)
        super().__init__(f"{path}: header {header!r} is not the results.tsv header {HEADER.strip()!r}")


@dataclass
class ResultRow:
    model: str
    gpu: str
    schedule_id: str
    status: Status
    correct: bool | None = None
    latency_us: float | None = None
    kind: str | None = None
    pct_of_floor: float | None = None
    speedup: float | None = None
    description: str = ""
    trial: int = 0  # assigned by append_result
    time: str = ""

    def cells(self) -> list[str]:
        out = []
        for name in COLUMNS:
            out.append(_cell(getattr(self, name)))
        return out


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4f}"
    return " ".join(str(v).replace("\t", " ").splitlines())


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def append_result(path: str | Path, row: ResultRow) -> ResultRow:
    """Append one row (header first when the file is empty); the trial number is one past the file's
    largest, read under the lock. Returns the row with trial and time set."""
    def make(current: bytes) -> bytes:
        lines = complete_lines(current)
        if lines and lines[0] + "\n" != HEADER:
            raise ResultsFormatError(path, lines[0])
        row.trial = max((_trial(ln) for ln in lines[1:]), default=0) + 1
        row.time = row.time or _utc_now()
        body = "\t".join(row.cells()) + "\n"
        return body.encode() if lines else (HEADER + body).encode()

    append_lines(path, make)
    return row


def _trial(line: str) -> int:
    try:
        return int(line.split("\t", 1)[0])
    except ValueError:
        return 0


def read_rows(path: str | Path) -> list[dict]:
    """Rows as dicts of strings (no pandas), header checked; missing file -> []."""
    lines = read_lines(path)
    if not lines:
        return []
    if lines[0] + "\n" != HEADER:
        raise ResultsFormatError(path, lines[0])
    rows = []
    for ln in lines[1:]:
        cells = ln.split("\t")
        if len(cells) == len(COLUMNS):
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


def load_results(path: str | Path = "results.tsv"):
    """results.tsv as a pandas DataFrame with typed columns (latency_us etc. float, NaN when empty;
    correct a nullable boolean)."""
    import pandas as pd

    rows = read_rows(path)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["trial"] = pd.to_numeric(df["trial"], errors="coerce").astype("Int64")
    for col in ("latency_us", "pct_of_floor", "speedup"):
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype(float)
    df["correct"] = df["correct"].map({"true": True, "false": False}).astype("boolean")
    df["time"] = pd.to_datetime(df["time"], errors="coerce", utc=True)
    for col in ("kind", "description", "model", "gpu", "schedule_id", "status"):
        df[col] = df[col].astype(str)
    return df


