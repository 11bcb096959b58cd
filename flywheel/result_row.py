"""A results.tsv row (results.py documents its columns): the statuses a trial ends in, ResultRow and the cells
append_result writes for it, and the check each reader makes of a row read back, since a cell append_result could
not have written is a hand edit or a damaged disk block, and the row holding it is skipped.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from enum import Enum

from amk.harness.verdict import LatencyKind  # the kind column: empty or one of these
from amk.schedule.errors import ArgumentError
from amk.schedule.opcodes import DTYPE_NAMES  # the dtype column: empty or one of these

LEGACY_COLUMNS = ("trial", "time", "model", "gpu", "schedule_id", "status", "correct", "latency_us", "kind",
                  "pct_of_floor", "speedup", "description")
PRE_CONTEXT_COLUMNS = (*LEGACY_COLUMNS, "program_fingerprint", "predicted_us", "spread_us")
COLUMNS = (*PRE_CONTEXT_COLUMNS, "dtype", "max_seq")
FLOAT_COLUMNS = ("latency_us", "pct_of_floor", "speedup", "predicted_us", "spread_us")  # empty or a finite number
INT_COLUMNS = ("max_seq",)  # empty or a positive integer
COUNT_LIMIT = 2**63  # load_results reads trial and INT_COLUMNS as int64: a number at or past it is no count
NOT_A_COUNT = "not a positive integer below 2**63"  # why a trial or INT_COLUMNS cell is skipped
# a row's identity cells: a resume and the search key trials by them, so a control character (a NUL, say) there is a
# hand edit or a damaged disk block, never a cell append_result wrote (_cell drops them)
KEY_COLUMNS = ("model", "gpu", "schedule_id", "program_fingerprint")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
POSITIVE_COLUMNS = ("latency_us", "predicted_us")  # a latency no trial writes is 0 or below
# a number as _cell writes one, and as pandas' to_numeric reads it: float() also takes "1_0" and other digits ("٤")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class Status(str, Enum):
    KEEP = "keep"  # correct and faster than the incumbent (or as fast and simpler): the new incumbent
    DISCARD = "discard"  # correct but not faster
    REJECTED = "rejected"  # the config did not parse, lower or validate
    FAIL = "fail"  # it ran and failed correctness (or the GPU failed)
    CRASH = "crash"  # the harness itself raised: a bug to report
    REMEASURE = "remeasure"  # the incumbent's program timed again (drift check), not a new trial


# the columns of a fixed set of cells ("" where a row may leave it empty): any other cell is a hand edit that
# pandas would read as <NA> or as a group of its own, so the row would be counted by some readers and not others
CHOICE_COLUMNS = {
    "status": tuple(s.value for s in Status),
    "correct": ("true", "false", ""),
    "kind": (*(k.value for k in LatencyKind), ""),
    "dtype": (*DTYPE_NAMES, ""),  # another spelling of a dtype would make a group of its own
}


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
    program_fingerprint: str | None = None
    predicted_us: float | None = None
    spread_us: float | None = None
    dtype: str | None = None  # fp32 | fp16 | bf16 (amk.models.registry.dtype_name)
    max_seq: int | None = None  # the KV positions the program holds
    trial: int = 0  # assigned by append_result (or taken from a claim)
    time: str = ""

    def __post_init__(self):
        # a row that read_rows would skip as a hand edit is refused before it is written
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ArgumentError("dtype", f"a results row's dtype is one of {', '.join(DTYPE_NAMES)} or None, got "
                                         f"{self.dtype!r}")
        if self.max_seq is not None and (isinstance(self.max_seq, bool) or not isinstance(self.max_seq, int)
                                         or self.max_seq < 1):
            raise ArgumentError("max_seq", f"a results row's max_seq is a positive integer or None, got "
                                           f"{self.max_seq!r}")

    def cells(self, columns: tuple[str, ...] = COLUMNS) -> list[str]:
        return [_cell(getattr(self, name)) for name in columns]


def cell_rewrites(text: str) -> bool:
    """Whether a results.tsv cell would hold `text` spelled otherwise (a tab, a line break or another control
    character written as a space), so that a row could not name it again."""
    return _cell(text) != text


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.4f}"
    return CONTROL.sub(" ", " ".join(str(v).replace("\t", " ").splitlines()))


def _count(cell: str) -> int | None:
    """The number in a cell that is a count as append_result writes one, else None: ASCII digits only (int()
    also takes "1_000" and "²" fails it, though str.isdigit() passes it), below COUNT_LIMIT (load_results could
    not type a larger one, and next_trial would count on from it)."""
    if not (cell.isascii() and cell.isdigit()):
        return None
    digits = cell.lstrip("0") or "0"
    if len(digits) > len(str(COUNT_LIMIT)):  # past COUNT_LIMIT (and int() refuses over 4300 digits)
        return None
    value = int(digits)
    return value if value < COUNT_LIMIT else None


def is_trial_number(v) -> bool:
    """Whether a JSON value (a record's or a claim's trial) is a number append_result could write: an int (not a
    bool) in [1, COUNT_LIMIT)."""
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v < COUNT_LIMIT


def _choices(allowed: tuple[str, ...]) -> str:
    """The cells a CHOICE_COLUMNS column takes, as a warning names them: "one of a, b (or empty)"."""
    named = ", ".join(v for v in allowed if v)
    return f"one of {named} (or empty)" if "" in allowed else f"one of {named}"


def _is_utc_time(cell: str) -> bool:
    """Whether `cell` is a time as utc_now writes it (ISO 8601, UTC)."""
    try:
        time.strptime(cell, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def _bad_cell(row: dict) -> tuple[str, str] | None:
    """(column, why) for the first cell append_result could not have written (a hand edit), else None."""
    if not _count(row["trial"]):  # None or 0
        return "trial", NOT_A_COUNT
    for col in KEY_COLUMNS:
        if CONTROL.search(row[col]):
            return col, "holding a control character"
        # the readers decode with replacement: a file saved again in another encoding (cp1252, say) turns a
        # checkpoint path's é into U+FFFD, and the row would be another model's
        if "\ufffd" in row[col]:
            return col, "holding bytes that are not UTF-8 (the file saved again in another encoding?)"
    for col in ("model", "gpu"):  # every trial names both: an empty one would group rows of no model together
        if not row[col]:
            return col, "empty"
    if row["time"] and not _is_utc_time(row["time"]):  # read as NaT otherwise, with a warning naming no line
        return "time", "not a UTC time such as 2026-11-21T23:43:39Z"
    for col in FLOAT_COLUMNS:
        value = row[col]
        if not value:
            continue
        try:
            number = float(value)
        except ValueError:
            return col, "not a number"
        if not math.isfinite(number):
            return col, "not a finite number"
        if not NUMBER.fullmatch(value):
            return col, "not a number"
        if col in POSITIVE_COLUMNS and number <= 0:
            return col, "not a positive number"
    for col in INT_COLUMNS:
        value = row[col]
        if value and not _count(value):  # None or 0
            return col, NOT_A_COUNT
    for col, allowed in CHOICE_COLUMNS.items():
        if row[col] not in allowed:
            return col, f"not {_choices(allowed)}"
    if row["latency_us"] and not row["kind"]:
        # every latency the loop writes is labelled measured or predicted (its verdict's latency_kind)
        return "kind", "empty beside a latency, which the loop always labels measured or predicted"
    if row["correct"] == "false" and row["status"] in (Status.KEEP.value, Status.DISCARD.value):
        # the loop keeps or discards only a correct config (search/keep.py decide): a failed one is a fail row
        return "correct", f"false on a {row['status']} row, which the loop writes only for a correct config"
    return None
