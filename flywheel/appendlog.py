"""Append whole lines to a shared file from many processes without interleaving or tearing.

Each append takes an exclusive fcntl lock on the file itself, then writes its bytes with one write() on an
O_APPEND descriptor, flushes and fsyncs before unlocking. A reader that sees a line sees all of it; two
loops sharing results.tsv or corpus.jsonl never mix their lines. A line cut short by a crash (no trailing
newline) is skipped by readers and repaired (a newline added) by the next writer, so one bad line never
glues itself to the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


class AppendError(OSError):
    """A line could not be appended whole."""


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[int]:
    """An O_RDWR|O_APPEND descriptor of `path` (created if absent) held under an exclusive lock."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def append_lines(path: str | os.PathLike, make: Callable[[bytes], bytes], cut_mark: bytes = b"",
                 restart: Callable[[bytes], bool] | None = None) -> bytes:
    """Under the lock, call make(current file bytes) -> bytes to append (whole lines, ending in a newline),
    and write them in one write. Returns what was written. `make` sees the file as it is under the lock, so
    it can number rows or write a header exactly once across processes. A last line the file holds without its
    newline (a writer cut short) is ended first, `cut_mark` before its newline where it follows a whole line: a format
    whose cut line could still read as a whole one marks it so, and its readers skip a line that holds the mark.
    Where `restart(current)` is true (the format's own first line cut short, so the file holds nothing to keep),
    the file is emptied first and `make` sees it empty."""
    with locked(path) as fd:
        current = read_all(fd)
        if restart is not None and current and restart(current):
            os.ftruncate(fd, 0)  # O_APPEND: the write below then starts the file
            current = b""
        data = make(current)
        if not data.endswith(b"\n"):
            raise AppendError(f"{path}: refusing to append {len(data)} bytes that do not end in a newline")
        if current and not current.endswith(b"\n"):
            # a writer died mid-line: end its fragment so ours starts a line (a first line, such as a header saved
            # without its newline, is no row cut short)
            data = (cut_mark if b"\n" in current else b"") + b"\n" + data
        n = os.write(fd, data)
        if n != len(data):
            # A short write to a regular file means the disk is full; the fragment has no newline, so
            # readers skip it and the next writer ends it.
            raise AppendError(f"{path}: wrote {n} of {len(data)} bytes (disk full?)")
        os.fsync(fd)
        return data


def numbered_lines(data: bytes) -> list[tuple[int, str]]:
    """The whole lines of `data` with their line numbers in the file (from 1), so that a warning about one
    names the line an editor shows; blank lines and a trailing fragment without a newline (a torn write) are
    left out. A line ending in CRLF (a file saved on Windows) is read without its CR, and a UTF-8 byte-order mark
    before the first line (a spreadsheet's "UTF-8 with BOM") without the mark, so that such a file resumes
    (results.tsv rows appended after a CRLF header end in CRLF too)."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = text.split("\n")
    return [(i, ln.removesuffix("\r")) for i, ln in enumerate(lines[:-1], 1) if ln.strip()]


def torn_tail(data: bytes) -> str:
    """The trailing fragment of `data` a writer left without its newline (a crash mid-write), or "". Where it is the
    file's only line, without the UTF-8 byte-order mark numbered_lines drops too (an editor's one-line save)."""
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    return text[text.rfind("\n") + 1:]


def complete_lines(data: bytes) -> list[str]:
    """The whole lines of `data`; a trailing fragment without a newline (a torn write) is left out."""
    return [ln for _, ln in numbered_lines(data)]


def read_locked(path: str | os.PathLike) -> bytes:
    """The bytes of `path` (b"" when it does not exist), read under its lock: never a live writer's half line."""
    p = Path(path)
    if not p.exists():
        return b""
    # read-only, under a shared lock: a reader needs no write permission (a results file in a read-only
    # directory, someone else's file), and waits only for a writer, which holds the exclusive one
    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return read_all(fd)
    finally:
        os.close(fd)


def read_numbered_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    return numbered_lines(read_locked(path))


def read_lines(path: str | os.PathLike) -> list[str]:
    return [ln for _, ln in read_numbered_lines(path)]


# Readers parse a file again and again in one process (at every trial, for claims and snapshots, under the path
# as given, relative or absolute): each bad line is reported once a process.
_warned: set[tuple[str, int, str]] = set()
_warned_lock = threading.Lock()


def warn_bad_line(logger: logging.Logger, path: str | os.PathLike, n: int, line: str, message: str) -> None:
    """Log `path:n: message` as a warning, once a process for each line of each file (by its resolved path)."""
    key = (str(Path(path).resolve()), n, line)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("%s:%d: %s", path, n, message)
