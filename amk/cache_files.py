"""The cache's files taken together, apart from the Cache serving one entry: listing its entries (and the stray
files among them), clearing them with their labels and idle locks, removing an empty directory that stands in an
entry's place, and reading back the stats file the last run saved (last_run_stats). amk.cache re-exports
last_run_stats and builds Cache.ls, strays and clear on the rest."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amk.cache_dir import KINDS, _lexists, default_root
from amk.cache_entry import (
    CorruptEntryError,
    _check_kind,
    _drop_lock,
    _entry_key,
    _is_key_name,
    _is_real_dir,
    _read_label,
    _read_text,
)
from amk.schedule.errors import EnvironmentProblem

log = logging.getLogger("amk.cache")

_STATS_FILE = "last_run_stats.json"


def entry_files(root: Path, kind: str | None) -> Iterator[tuple[str, Path, str | None]]:
    """(kind, path, its key, or None where it is no entry of the cache: _entry_key) of every *.bin file."""
    for k in KINDS if kind is None else (kind,):
        _check_kind(k)
        for p in sorted((root / k).glob("??/*.bin")):
            yield k, p, _entry_key(p)


def list_entries(root: Path, kind: str | None) -> list[dict]:
    """Cache.ls: kind, key, size_bytes, age_s, path and label of each entry under `root` (of `kind`)."""
    now, out = time.time(), []
    for k, p, key in entry_files(root, kind):
        with contextlib.suppress(FileNotFoundError):  # a concurrent clear() may beat us to it
            if key is None:
                continue
            st = p.stat()
            out.append({"kind": k, "key": key, "size_bytes": st.st_size,
                        "age_s": max(0.0, now - st.st_mtime), "path": str(p), "label": _read_label(p)})
    return out


def clear_files(root: Path, kind: str | None) -> int:
    """Cache.clear's work on disk (see its docstring): every entry under `root` (of `kind`) removed with its label,
    then the labels and idle locks of no entry; returns how many entries, or raises EnvironmentProblem naming what
    the system refused after removing the rest."""
    removed = 0
    refused: list[tuple[Path, OSError]] = []
    for _, p, key in list(entry_files(root, kind)):
        if key is None and _is_real_dir(p) and _is_key_name(p, p.name.removesuffix(".bin")):
            # a directory where an entry belongs: no user's file, though no entry either; removed when empty,
            # else named (its files are not the cache's to delete)
            why = _remove_empty_dir(p)
            if why is not None:
                refused.append((p, OSError(f"a directory in a cache entry's place ({why}; left as it is)")))
            continue
        if key is None:  # not the cache's file
            continue
        try:
            p.unlink()
        except FileNotFoundError:  # a concurrent clear() took it
            continue
        except OSError as e:
            refused.append((p, e))
            continue
        removed += 1  # the entry is gone; a label left behind is refused on its own, never counted twice
        label = p.with_suffix(".label.json")
        try:
            label.unlink(missing_ok=True)
        except OSError as e:
            refused.append((label, e))
    for k in KINDS if kind is None else (kind,):  # labels and locks of no entry (an older version's discard)
        for path in sorted((root / k).glob("??/*")):
            key, _, suffix = path.name.partition(".")
            entry = path.with_name(f"{key}.bin")
            # an entry's place that a directory holds is no entry: its label and lock go as an orphan's do
            if suffix not in ("label.json", "lock") or not _is_key_name(path, key) or \
                    (_lexists(entry) and not _is_real_dir(entry)):
                continue
            if suffix == "lock":
                _drop_lock(path)
            elif path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()
    if refused:
        path, e = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise EnvironmentProblem(f"cache clear removed {removed} {'entry' if removed == 1 else 'entries'} from {root} but could not remove "
                                 f"{len(refused)} file{'s' if len(refused) != 1 else ''}: {path}: {e.strerror or e}{more}")
    return removed


def _remove_empty_dir(path: Path) -> str | None:
    """Remove the directory at `path` (one standing in a cache entry's or label's place) if it is empty: None where
    it is gone, else why it stays, in words ("not empty" for the usual reason). Never removes what it holds."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return "not empty" if e.errno in (errno.ENOTEMPTY, errno.EEXIST) else str(e.strerror or e)
    return None


def last_run_stats(root: str | os.PathLike | None = None) -> dict | None:
    """Stats saved by the last ``save_stats()`` under root, or None if there are none or the file cannot be
    read (a torn or hand-edited file: a warning names it; the stats are a report, never worth a crash)."""
    path = (Path(root).expanduser() if root is not None else default_root()) / _STATS_FILE
    if not path.exists():
        return None
    try:
        stats = json.loads(_read_text(path))
    except (OSError, ValueError, CorruptEntryError) as e:
        log.warning("%s: last run's cache stats unreadable, left out (%s)", path, e)
        return None
    if not isinstance(stats, dict):
        log.warning("%s: last run's cache stats are a JSON %s, not an object; left out", path, type(stats).__name__)
        return None
    # as save_stats writes them: each kind an object of counts (hits, misses, writes, corrupt), each a count
    for kind, counts in stats.items():
        if not isinstance(counts, dict):
            log.warning("%s: last run's cache stats hold %s for %r, not an object of counts; left out", path,
                        _shown(counts), kind)
            return None
        for name, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                log.warning("%s: last run's cache stats hold %s for %r %r, not a count; left out", path, _shown(n),
                            kind, name)
                return None
    return stats


def _shown(value: Any) -> str:
    """A JSON value of a hand-edited stats file as a warning shows it: short."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
