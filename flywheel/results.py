"""results.tsv: one row per trial of a loop, fixed columns, tab-separated, header once.

Columns (HARNESS.md documents them; never reorder, only append new ones at the end):
  trial         1, 2, ... per file; allocated under the file lock, so concurrent loops never collide
  time          UTC, ISO 8601, seconds
  model, gpu    the model name and GPU target name
  schedule_id   ScheduleConfig.schedule_id (12 hex)
  status        keep | discard | rejected | fail | crash | remeasure
  correct       true | false | empty (never ran)
  latency_us    empty unless the trial passed correctness and the latency was not withheld
  kind          measured-gpu | predicted | empty
  pct_of_floor  floor / latency, in percent
  speedup       incumbent latency / this latency
  description   what changed and why it was kept or not (tabs and newlines replaced)
  program_fingerprint  the lowered program's fingerprint (what the VM executes, build knobs included):
                the identity of a trial; never repeated for one model and GPU in one file (remeasure rows aside)
  predicted_us  the cost model's latency for the program (a ranking aid, never a result)
  spread_us     the stdev of the timed repeats (measured latencies only)
  dtype         the run's dtype as amk.models.registry.dtype_name spells it: fp32 | fp16 | bf16
  max_seq       the KV positions the run's programs hold (its max_seq, else the lowering's default), an integer

A file of an older header (ACCEPTED_COLUMNS: LEGACY_COLUMNS, before program_fingerprint, predicted_us and
spread_us; PRE_CONTEXT_COLUMNS, before dtype and max_seq) is read with the missing columns empty, and rows
appended to it keep its own columns, so an old results.tsv can be resumed. Its rows cannot say which dtype or
context they were measured at (amk/harness/loop.py takes them for the run's, and warns).

A row itself (its columns, statuses and cells) is result_row.py's; callers import its names from here.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import NamedTuple

from amk.schedule.errors import ArgumentError

from .appendlog import append_lines, complete_lines, numbered_lines, read_locked, torn_tail, warn_bad_line
from .result_row import CHOICE_COLUMNS as CHOICE_COLUMNS
from .result_row import (
    COLUMNS,
    COUNT_LIMIT,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    LEGACY_COLUMNS,
    PRE_CONTEXT_COLUMNS,
    ResultRow,
    _bad_cell,
    _count,
)
from .result_row import Status as Status
from .result_row import cell_rewrites as cell_rewrites
from .result_row import is_trial_number as is_trial_number

log = logging.getLogger("amk.flywheel")

ACCEPTED_COLUMNS = (COLUMNS, PRE_CONTEXT_COLUMNS, LEGACY_COLUMNS)  # every header a results.tsv may carry
HEADER = "\t".join(COLUMNS) + "\n"
# Ends a last line that a writer left without its newline, when the next row is appended (ASCII CAN, "cancel"). A
# line cut inside its last cell can still read as a whole row (max_seq 512 cut to 51), so every reader skips a
# marked line; no row append_result writes holds the mark (_cell drops control characters).
CUT_MARK = "\x18"


class ResultsFormatError(ValueError):
    """results.tsv does not have the expected header."""

    def __init__(self, path, header: str, hint: str = "choose another results file"):
        self.path = str(path)
        # the first line of a foreign or binary file: shown short and in ASCII, so that no terminal control
        # bytes or pages of text reach the message
        shown = ascii(header[:80])
        if len(header) > 80 or len(shown) > 120:
            shown = f"{shown[:120]} ... ({len(header)} characters)"
        super().__init__(f"{path}: header {shown} is not a results.tsv header (expected {HEADER.strip()!r}); "
                         f"{hint}")


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def columns_of(path, header_line: str) -> tuple[str, ...]:
    """The columns a header line names: one of ACCEPTED_COLUMNS (the current set or an older one). Raises
    ResultsFormatError for any other line."""
    for columns in ACCEPTED_COLUMNS:
        if header_line == "\t".join(columns):
            return columns
    raise ResultsFormatError(path, header_line)


class TrialNumbersExhausted(ResultsFormatError):
    """The next trial of a results file would be numbered 2**63 or past it, which no reader takes as a count."""

    def __init__(self, path, top: int, budget: int | None = None):
        self.path = str(path)
        more = f"the next {budget}" if budget and budget > 1 else "the next"
        ValueError.__init__(self, f"{path}: its trial numbers reach {top}, so {more} would pass 2**63 - 1, the "
                                  "largest a trial number may be (a hand edit?): choose another results file")


def next_trial(data: bytes, floor: int = 0, path: str | Path = "results.tsv") -> int:
    """One past the largest trial number of a results file's bytes (and `floor`, e.g. the largest claimed): of its
    data lines, and of a last line a crash left without its newline, whose number must not be given again. That
    line took at least one past the lines before it, whatever digits of it survived ("1" of 12).
    TrialNumbersExhausted (naming `path`) where that number would not be a count (COUNT_LIMIT)."""
    lines, tail = complete_lines(data), torn_tail(data)
    top = max([_trial(ln) for ln in lines[1:]], default=0)
    torn = max(top + 1, _trial(tail)) if lines and tail.strip() else 0
    nxt = max(top, torn, floor) + 1
    if nxt >= COUNT_LIMIT:
        raise TrialNumbersExhausted(path, nxt - 1)
    return nxt


def append_result(path: str | Path, row: ResultRow) -> ResultRow:
    """Append one row (header first when the file is empty). A row without a trial number gets one past
    the file's largest and the largest claimed, read under the lock; a claimed trial (flywheel/claims.py) keeps
    its number. Rows of a file of an older header are written in its own columns (the newer cells left out).
    Returns the row with trial and time set."""
    def make(current: bytes) -> bytes:
        lines = complete_lines(current)
        bare = bare_header(current) if not lines else None
        if not lines and bare is None:
            refuse_fragment(path, current)  # another tool's one-line file: never written into
        columns = columns_of(path, lines[0]) if lines else bare or COLUMNS
        if not row.trial:
            from .claims import claimed_floor  # claims.py builds on this module

            row.trial = next_trial(current, floor=claimed_floor(path), path=path)
        row.time = row.time or _utc_now()
        # a file saved with CRLF (on Windows) gets its rows in CRLF too, not lines of two endings
        first = current.find(b"\n")  # the header's end, found without copying the rows after it
        eol = "\r\n" if first > 0 and current[first - 1] == ord("\r") else "\n"
        body = "\t".join(row.cells(columns)) + eol
        # a header an editor saved without its newline is a file of no rows: append_lines ends its line
        return body.encode() if lines or bare is not None else (HEADER + body).encode()

    append_lines(path, make, cut_mark=CUT_MARK.encode(), restart=torn_header)
    return row


def _trial(line: str) -> int:
    """The trial number a line starts with, 0 for none (a line whose first cell is no count claims no number)."""
    return _count(line.split("\t", 1)[0]) or 0


# how DataFrame.to_csv writes load_results' typed columns back: a UTC datetime as 2026-11-21 23:43:39+00:00, a
# nullable boolean as True / False
_PANDAS_TIME = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)\+00:00", re.ASCII)
_PANDAS_BOOL = {"True": "true", "False": "false"}


def _as_written(row: dict) -> dict:
    """`row` with the cells that a load_results DataFrame saved by to_csv(sep="\t", index=False) spells otherwise
    (its time and correct columns) in append_result's spelling, so that a notebook's round trip is read, not
    skipped as a hand edit."""
    time_cell = _PANDAS_TIME.fullmatch(row["time"])
    if time_cell:
        row["time"] = f"{time_cell[1]}T{time_cell[2]}Z"
    row["correct"] = _PANDAS_BOOL.get(row["correct"], row["correct"])
    return row


def rows_of(path, lines: list[tuple[int, str]]) -> list[dict]:
    """Data lines (with their line numbers, appendlog.numbered_lines) as dicts over COLUMNS (an older file's
    missing columns empty). A line with the wrong number of cells (torn, not written by append_result) is
    skipped, as is one whose trial or a numeric column does not parse (or is past COUNT_LIMIT), or whose status,
    correct, kind or dtype is none of CHOICE_COLUMNS' cells (a hand edit), each with a warning naming the file and
    line (and the column): one bad line must not cost the others, nor crash a resume or a report. A trial number
    that an earlier line already gave is read, with a warning naming both lines."""
    if not lines:
        return []
    columns = columns_of(path, lines[0][1])
    pad = {c: "" for c in COLUMNS[len(columns):]}
    rows = []
    first_line: dict[int, int] = {}  # trial number -> the line that gave it first
    for n, ln in lines[1:]:
        if CUT_MARK in ln:
            # told as the line it was before the mark: a process that warned of it as the last line says it once
            warn_bad_line(log, path, n, ln.removesuffix(CUT_MARK), "skipped trial row: a write cut it short, and "
                          "the next row appended ended it (the file is left as it is)")
            continue
        cells = ln.split("\t")
        if len(cells) != len(columns):
            # a crash's torn line that the next writer ended, or a hand edit: its trial is lost, so say so
            warn_bad_line(log, path, n, ln, f"skipped trial row: {len(cells)} cells where the header names "
                                            f"{len(columns)} (a line cut short or edited; the file is left as it is)")
            continue
        row = _as_written({**dict(zip(columns, cells)), **pad})
        bad = _bad_cell(row)
        if bad is not None:
            col, why = bad
            warn_bad_line(log, path, n, ln, f"skipped trial row: column {col} is {row[col]!r}, {why} (the file is left as "
                                    "it is)")
            continue
        trial = _count(row["trial"])
        if trial in first_line:  # append_result numbers under the file's lock: a line copied, or two files joined
            warn_bad_line(log, path, n, ln, f"trial {trial} is also line {first_line[trial]}'s number (a line copied, "
                                            "or two results files joined); both rows are read")
        else:
            first_line[trial] = n
        rows.append(row)
    return rows


def read_rows(path: str | Path) -> list[dict]:
    """Rows as dicts of strings (no pandas), header checked; missing file -> []. A last line without its newline
    (a write cut short, or an editor's save) is skipped with a warning naming it: the next row appended ends it
    with CUT_MARK, and it stays skipped. Raises ResultsFormatError for a file
    whose first line is not a results header, or that holds text without a whole line."""
    return rows_and_skipped(path).rows


class ReadRows(NamedTuple):
    """One read of a results file: its rows, how many lines after the header it skipped (each warned of), and how
    many of those a write cut short (a line CUT_MARK ends, and a last line no newline ends)."""
    rows: list[dict]
    skipped: int
    cut: int


def rows_and_skipped(path: str | Path) -> ReadRows:
    """read_rows(path), with what it skipped, from one read."""
    data = read_locked(path)
    lines = numbered_lines(data)
    if not lines and bare_header(data) is not None:
        return ReadRows([], 0, 0)
    if not lines and torn_header(data):
        warn_bad_line(log, path, 1, torn_tail(data), "a results header cut short (a write stopped inside it): read "
                      "as a file of no rows; the next trial appended writes the header anew")
        return ReadRows([], 0, 0)
    if not lines:
        refuse_fragment(path, data)
        return ReadRows([], 0, 0)  # empty, or blank lines only: no header, so no line after it either
    rows = rows_of(path, lines)  # a foreign header raises first: no row of a refused file is warned about
    tail = torn_tail(data)
    cut_tail = bool(lines and tail.strip())
    cut = sum(CUT_MARK in ln for _, ln in lines[1:]) + cut_tail
    if cut_tail:
        warn_bad_line(log, path, data.count(b"\n") + 1, tail, "skipped trial row: no newline ends it (a write cut "
                      "short, or an editor's save; the file is left as it is. The next row appended marks it as cut, "
                      "and it stays skipped: if the row is whole, end it with a newline before the next run)")
    return ReadRows(rows, len(lines) - 1 - len(rows) + cut_tail, cut)


def starts_as_header(text: str) -> bool:
    """Whether `text` (a file's first line, or its start) begins as a results.tsv header does, its first two
    column names: how a results file is told from another file whatever its columns' version. Those two names
    alone, and nothing after them, count (a header cut short right after them: torn_header); a longer name
    (`trial\ttimes`) does not."""
    first_two = "\t".join(HEADER.split("\t", 2)[:2])
    text = text.removeprefix("\ufeff")
    return text == first_two or text.startswith(first_two + "\t")


def bare_header(data: bytes) -> tuple[str, ...] | None:
    """The columns of a file that holds exactly a results header and no newline (as some editors save a file
    they were asked to empty of rows), else None: such a file is a results file with no rows, not a fragment."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff").removesuffix("\r")
    return next((cols for cols in ACCEPTED_COLUMNS if text == "\t".join(cols)), None)


def torn_header(data: bytes) -> bool:
    """Whether `data`, a file without a whole line, is the start of this version's header cut short (a write of the
    header and first row that a full disk stopped inside the header): at least its first two column names, and no
    more than a strict prefix. An older version's whole header (bare_header) is not one: it keeps its columns. Such
    a file holds no row; the next append_result writes it anew."""
    if b"\n" in data or bare_header(data) is not None:
        return False
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return starts_as_header(text) and HEADER.startswith(text) and text != HEADER.rstrip("\n")


def refuse_fragment(path, data: bytes) -> None:
    """ResultsFormatError when `data`, a file without a whole line, holds anything but white space after a UTF-8
    byte-order mark (what an editor saves when asked to empty a file "with BOM"): a file of another tool (one line
    with no newline, binary bytes), which the loop must neither read as empty nor append a header to."""
    if data.removeprefix(b"\xef\xbb\xbf").strip():
        text = data.decode("utf-8", errors="replace")
        # a results file whose lines end in CR alone (classic Mac OS) has no whole line: say so, not just "header"
        cr = starts_as_header(text) and "\r" in text
        raise ResultsFormatError(path, text[:80], "its lines end in CR alone: save it with LF (or CRLF) line endings "
                                 "to resume it" if cr else "choose another results file")


def readable_file(path, argument: str, what: str) -> Path:
    """`path`, ~ expanded, checked before a reader opens it: ArgumentError naming `argument` and the path where it
    is a directory (whose read raised a bare IsADirectoryError naming no file) or exists as no regular file (a device
    such as /dev/null, read as an empty file; a FIFO, whose read blocks until a writer comes; a socket), as `amk
    report` refuses them. `what` names the file wanted. A path that does not exist passes: each reader says what
    that means."""
    where = Path(path).expanduser()
    if where.is_dir():
        raise ArgumentError(argument, f"{str(path)!r} is a directory, not a file; name {what}")
    if where.exists() and not where.is_file():
        raise ArgumentError(argument, f"{str(path)!r} is not a regular file (a device, a FIFO or a socket); name {what}")
    return where


def load_results(path: str | Path = "results.tsv"):
    """results.tsv as a pandas DataFrame with typed columns (latency_us etc. float, NaN when empty;
    correct a nullable boolean; trial and max_seq nullable integers, <NA> when empty; dtype "" when empty).
    `df.attrs["skipped_lines"]`: the lines after the header that read_rows skipped, each with a warning.
    Refuses what `amk report` refuses: a missing file (a dangling symbolic link included) raises FileNotFoundError
    (read as no rows, a misspelt path would look like a run with no trials; read_rows, which the loop uses, still
    takes a file not started yet as empty), a directory or a file that is not a regular one ArgumentError naming
    `path` (readable_file), and a file of another header ResultsFormatError."""
    import pandas as pd

    where = readable_file(path, "path", "the results file of amk.loop (results.tsv)")
    if not where.exists():
        what = "a symbolic link that leads to no file" if where.is_symlink() else "not found"
        raise FileNotFoundError(f"results file {str(path)!r}: {what}: run amk.loop first, or name its results= file")
    read = rows_and_skipped(where)
    df = pd.DataFrame(read.rows, columns=list(COLUMNS))
    df.attrs["skipped_lines"] = read.skipped  # lines no reader counts (each warned of): a caller may say how many
    for col in ("trial", *INT_COLUMNS):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce").astype(float)
    df["correct"] = df["correct"].map({"true": True, "false": False}).astype("boolean")
    df["time"] = pd.to_datetime(df["time"], errors="coerce", utc=True)
    for col in ("kind", "description", "model", "gpu", "schedule_id", "status", "program_fingerprint", "dtype"):
        df[col] = df[col].astype(str)
    return df


