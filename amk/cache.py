"""AMK's one cache: compiled kernels, lowered programs, reference data and baselines.

An in-process FIFO of payload bytes over files under ``AMK_CACHE_DIR`` (or ``~/.cache/amk``).
Keys hash everything that determines an entry, so nothing needs invalidating: a changed input
is a new key. Each file carries a header (magic, version, length, sha256 of its key and payload) so a torn or
bit-rotted entry, or one copied or renamed to another key's path, is detected, deleted and regenerated instead of
poisoning a run.

The cache's directory (where it is, whether it can be used: root_problem, check_root) lives in amk.cache_dir,
an entry's key, file format and file operations in amk.cache_entry, a tensor entry's payload in
amk.cache_tensors, and the listing and clearing of the files with the last run's stats in amk.cache_files; this
module holds the Cache that serves entries through its memory layer, locks and counts, and the process-wide
default_cache. Every public name of amk.cache_dir and amk.cache_entry, and last_run_stats, is importable from
here (``__all__``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from amk.cache_dir import (
    KINDS,
    CacheDirError,
    CacheError,
    CacheFullError,
    CacheStorageError,
    check_root,
    default_root,
    root_problem,
)
from amk.cache_entry import (
    _HEADER,
    _KEY_RE,
    _MAGIC,
    FORMAT_VERSION,
    CorruptEntryError,
    StaleEntryError,
    _atomic_write,
    _canonical,
    _check_kind,
    _digest,
    _is_at,
    _is_real_dir,
    _open_regular,
    _unpack,
    baseline_key,
    kernel_key,
    make_key,
    program_key,
    reference_key,
)

# not called here: tests reach these helpers through this module (amk.cache._drop_lock, amk.cache._read_label)
from amk.cache_entry import _drop_lock as _drop_lock
from amk.cache_entry import _read_label as _read_label
from amk.cache_files import (
    _STATS_FILE,
    _remove_empty_dir,
    clear_files,
    entry_files,
    last_run_stats,
    list_entries,
)
from amk.cache_tensors import check_expected, load_tensors, tensor_bytes
from amk.schedule.errors import ArgumentError

__all__ = [  # defined here, or re-exported from amk.cache_dir, amk.cache_entry and amk.cache_files
    "FORMAT_VERSION", "KINDS", "Cache", "CacheDirError", "CacheError", "CacheFullError", "CacheStorageError",
    "CorruptEntryError", "StaleEntryError", "baseline_key", "check_root", "default_cache", "default_root",
    "kernel_key", "last_run_stats", "make_key", "program_key", "reference_key", "root_problem",
]

log = logging.getLogger("amk.cache")

_MISS = object()


class Cache:
    """Memory FIFO (item-bounded) over checksummed files; see the module docstring."""

    key, kernel_key, program_key, reference_key, baseline_key = map(
        staticmethod, (make_key, kernel_key, program_key, reference_key, baseline_key))

    def __init__(self, root: str | os.PathLike | None = None, memory_items: int = 64,
                 enabled: set[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.memory_items = memory_items
        kinds = set(KINDS) if enabled is None else set(enabled)
        env = os.environ.get("AMK_CACHE_DISABLE", "")
        off = {k.strip() for k in env.split(",") if k.strip()}
        for k in kinds - set(KINDS):
            raise ValueError(f"unknown cache kind {k!r} (enabled={enabled!r}); expected some of {', '.join(KINDS)}")
        for k in off - {"all", *KINDS}:  # the environment's mistake, not AMK's: a usage error naming the variable
            raise ArgumentError("AMK_CACHE_DISABLE", f"unknown cache kind {k!r} in {env!r}; expected 'all' or a "
                                                     f"comma-separated list of {', '.join(KINDS)}")
        self.enabled = frozenset() if "all" in off else frozenset(kinds - off)
        # One lock for the memory layer and stats; file I/O runs outside it and relies on
        # atomic renames, and get_or_create serialises on a per-key flock instead.
        self._lock = threading.Lock()
        self._mem: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        # tensor entries decoded from the payload held in _mem: (that payload, private tensors). A hit hands out
        # clones: a 26 MB reference entry clones in milliseconds, where torch.load and the finite check take
        # tens, and every trial of the search reads the same references
        self._decoded: dict[tuple[str, str], tuple[bytes, dict]] = {}
        self._stats = {k: {"hits": 0, "misses": 0, "writes": 0, "corrupt": 0} for k in KINDS}

    def path(self, kind: str, key: str) -> Path:
        _check_kind(kind)
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"cache key {key!r} is not a lowercase hex digest (kind {kind!r})")
        return self.root / kind / key[:2] / f"{key}.bin"

    @contextlib.contextmanager
    def _file_lock(self, kind: str, key: str) -> Iterator[None]:
        # flock binds to the open file description, so this excludes other threads of this process too. clear()
        # removes a lock file only while it holds it (_drop_lock); a process that opened it before then locks a
        # file no longer at the path, so it takes the one there now: two holders of one key never both proceed.
        lock_path = self.path(kind, key).with_suffix(".lock")
        while True:
            try:
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                f = open(lock_path, "a+b")
            except OSError as e:
                raise self._dir_error(lock_path, e) from e
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                if _is_at(lock_path, os.fstat(f.fileno())):
                    break
            except BaseException:  # interrupted while it waited
                f.close()
                raise
            f.close()
        with f:  # closing the file releases the lock
            yield

    def _dir_error(self, path: Path, e: OSError) -> CacheStorageError:
        # the path that failed may be a parent the OS names (a file where a kind's directory belongs)
        where = Path(e.filename) if isinstance(e.filename, str) else path
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the machine's disk, not a directory the user misnamed
            return CacheFullError(self.root, where, e.strerror or str(e))
        return CacheDirError(self.root, f"cannot be used ({e.strerror or e})", where)

    def _count(self, kind: str, field: str) -> None:
        with self._lock:
            self._stats[kind][field] += 1

    def _miss(self, kind: str, key: str, reason: str) -> None:
        self._count(kind, "misses")
        log.debug("miss (%s) kind=%s key=%s path=%s", reason, kind, key, self.path(kind, key))

    def _remember(self, kind: str, key: str, payload: bytes) -> None:
        with self._lock:
            # FIFO, not LRU: a re-put keeps the entry's place, and hits do not reorder.
            self._mem[(kind, key)] = payload
            while len(self._mem) > max(self.memory_items, 0):
                (ek, ekey), _ = self._mem.popitem(last=False)
                self._decoded.pop((ek, ekey), None)
                log.debug("evict from memory kind=%s key=%s", ek, ekey)

    def memory_keys(self) -> list[tuple[str, str]]:  # oldest first
        with self._lock:
            return list(self._mem)

    def _discard(self, kind: str, key: str, st: os.stat_result | None, why: Exception) -> None:
        path = self.path(kind, key)
        with self._lock:
            self._mem.pop((kind, key), None)
            self._decoded.pop((kind, key), None)
            self._stats[kind]["corrupt"] += 1
        done = "removed"
        with contextlib.suppress(FileNotFoundError):
            # Only delete the file we judged: another process may have replaced it since.
            now = os.stat(path)
            if st is None or (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                if _is_real_dir(path):  # in an entry's place: removed only when empty, never with what it holds
                    stays = _remove_empty_dir(path)
                    done = "removed" if stays is None else f"left (a directory, {stays})"
                else:
                    os.unlink(path)
                if done == "removed":
                    with contextlib.suppress(OSError):  # a directory where the label belongs: clear() names it
                        self.label_path(kind, key).unlink(missing_ok=True)
        log.log(logging.INFO if isinstance(why, StaleEntryError) else logging.WARNING,
                "%s cache entry %s kind=%s key=%s path=%s: %s",
                "stale" if isinstance(why, StaleEntryError) else "corrupt", done, kind, key, path, why)

    def _lookup(self, kind: str, key: str, decode: Callable[[bytes], Any], miss: Any = None,
                count_miss: bool = True) -> Any:
        path, st, layer = self.path(kind, key), None, "memory"
        if kind not in self.enabled:
            self._miss(kind, key, "disabled")
            return miss
        with self._lock:
            payload = self._mem.get((kind, key))
        try:
            if payload is None:
                layer = "file"
                try:
                    f = _open_regular(path)
                except FileNotFoundError:
                    raise
                except OSError as e:  # a file where a directory belongs, no permission: the cache dir, not the entry
                    raise self._dir_error(path, e) from e
                with f:
                    st = os.fstat(f.fileno())
                    payload = _unpack(f.read(), path, kind, key)
            value = decode(payload)  # memory too: callers may validate differently than at put
        except FileNotFoundError:
            reason = "absent"
        except CacheStorageError:
            raise
        except Exception as e:
            self._discard(kind, key, st, e)
            reason = "corrupt"
        else:
            if layer == "file":
                self._remember(kind, key, payload)
            self._count(kind, "hits")
            log.debug("hit (%s) kind=%s key=%s path=%s", layer, kind, key, path)
            return value
        if count_miss:
            self._miss(kind, key, reason)
        return miss

    def _get_or_create(self, kind: str, key: str, create: Callable[[], bytes],
                       decode: Callable[[bytes], Any], label: dict | None = None) -> Any:
        def made() -> tuple[bytes, Any]:
            payload = create()
            try:
                return payload, decode(payload)
            except Exception as e:  # never cache a bad result: the generator needs fixing
                raise CacheError(f"create() for kind={kind} key={key} produced an entry that fails "
                                 f"validation: {e}") from e

        value = self._lookup(kind, key, decode, _MISS)
        if value is not _MISS:
            return value
        if kind not in self.enabled:
            return made()[1]
        with self._file_lock(kind, key):
            # Another process or thread may have built the entry while we waited for the lock.
            value = self._lookup(kind, key, decode, _MISS, count_miss=False)
            if value is _MISS:
                payload, value = made()
                self.put(kind, key, payload, label)
        return value

    @staticmethod
    def _checked(validate: Callable | None, load: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def decode(p: bytes) -> Any:
            obj = load(p)
            if validate is not None:
                validate(obj)
            return obj
        return decode

    def get(self, kind: str, key: str, validate: Callable[[bytes], Any] | None = None) -> bytes | None:
        return self._lookup(kind, key, self._checked(validate, bytes))

    def label_path(self, kind: str, key: str) -> Path:
        """The entry's label: a small JSON object saying what it is for (`amk cache ls` shows it)."""
        return self.path(kind, key).with_suffix(".label.json")

    def put(self, kind: str, key: str, payload: bytes, label: dict | None = None) -> None:
        """Write an entry; `label` (JSON-able: model, config, case ...) is kept beside it for `amk cache ls`."""
        path = self.path(kind, key)
        if kind not in self.enabled:
            log.debug("skip write (disabled) kind=%s key=%s path=%s", kind, key, path)
            return
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload for kind={kind} key={key} is {type(payload).__name__}, not bytes")
        payload = bytes(payload)
        header = _HEADER.pack(_MAGIC, FORMAT_VERSION, len(payload), _digest(kind, key, payload))
        try:
            self._make_room(path, "a cache entry's")  # first: a place the entry cannot take gets no label either
            if label is not None:  # before the entry, so that a listed entry has its label
                self._make_room(self.label_path(kind, key), "a cache entry's label's")
                _atomic_write(self.label_path(kind, key), _canonical(label).encode())
            _atomic_write(path, header + payload)
        except OSError as e:
            raise self._dir_error(path, e) from e
        self._remember(kind, key, payload)
        self._count(kind, "writes")
        log.debug("write kind=%s key=%s path=%s bytes=%d", kind, key, path, len(payload))

    def _make_room(self, path: Path, what: str) -> None:
        """Remove an empty directory standing at `path`, where a cache entry or its label (`what`: whose place) is
        written next; the rename over it would fail. CacheDirError naming the path for one that is not empty: its files are
        no cache's to delete, and pointing AMK_CACHE_DIR elsewhere is no cure."""
        if not _is_real_dir(path):
            return
        why = _remove_empty_dir(path)
        if why is not None:
            raise CacheDirError(self.root, f"cannot be replaced (Is a directory): a directory stands in {what} place "
                                           f"({why}; left as it is)", path,
                                hint="move it out of the cache (or remove it), then run again")
        log.warning("%s: an empty directory stood in %s place: removed", path, what)

    def get_or_create(self, kind: str, key: str, create: Callable[[], bytes],
                      validate: Callable[[bytes], Any] | None = None, label: dict | None = None) -> bytes:
        return self._get_or_create(kind, key, create, self._checked(validate, bytes), label)

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        self.put(kind, key, _canonical(obj).encode())

    def get_json(self, kind: str, key: str, validate: Callable[[Any], Any] | None = None) -> Any:
        return self._lookup(kind, key, self._checked(validate, json.loads))

    def get_or_create_json(self, kind: str, key: str, create: Callable[[], Any],
                           validate: Callable[[Any], Any] | None = None, label: dict | None = None) -> Any:
        return self._get_or_create(kind, key, lambda: _canonical(create()).encode(),
                                   self._checked(validate, json.loads), label)

    def _tensor_decoder(self, kind: str, key: str, expect: dict | None) -> Callable[[bytes], dict]:
        def decode(p: bytes) -> dict:
            with self._lock:
                held = self._decoded.get((kind, key))
            if held is not None and held[0] is p:  # this very payload was decoded and checked before
                obj = {n: t.clone() for n, t in held[1].items()}
            else:
                obj = load_tensors(p)
                if kind in self.enabled:  # the payload goes to _mem next, whose eviction drops this too
                    with self._lock:
                        self._decoded[(kind, key)] = (p, {n: t.clone() for n, t in obj.items()})
            check_expected(obj, expect)
            return obj
        return decode

    def put_tensors(self, kind: str, key: str, tensors: dict) -> None:
        self.put(kind, key, tensor_bytes(tensors))

    def get_tensors(self, kind: str, key: str, expect: dict | None = None) -> dict | None:
        # Every hit hands out fresh tensors (clones of the decoded memory layer), so a caller mutating its
        # result in place cannot corrupt the memory layer.
        return self._lookup(kind, key, self._tensor_decoder(kind, key, expect))

    def get_or_create_tensors(self, kind: str, key: str, create: Callable[[], dict],
                              expect: dict | None = None, label: dict | None = None) -> dict:
        return self._get_or_create(kind, key, lambda: tensor_bytes(create()),
                                   self._tensor_decoder(kind, key, expect), label)

    def ls(self, kind: str | None = None) -> list[dict]:
        """The cache's entries (of `kind`): kind, key, size_bytes, age_s, path and label. Files it did not write
        are left out (strays() names them)."""
        return list_entries(self.root, kind)

    def strays(self, kind: str | None = None) -> list[dict]:
        """The *.bin files in the entries' folders that are no entry of the cache (a user's file, a link, a file
        without the header): kind and path. ls() and clear() leave them alone."""
        return [{"kind": k, "path": str(p)} for k, p, key in entry_files(self.root, kind)
                if key is None]

    def clear(self, kind: str | None = None) -> int:
        """Remove every entry (of `kind`) with its label and its lock file where no process holds it; returns how
        many entries. Files that are no entry (strays()) are left. An entry the system refuses to remove (a
        directory where its label belongs, another user's file in a sticky folder) does not stop the others: the
        rest are removed first, then EnvironmentProblem names the files left (entries, or the labels of entries
        removed) and the first refusal."""
        with self._lock:
            self._mem = OrderedDict((mk, v) for mk, v in self._mem.items() if kind not in (None, mk[0]))
            self._decoded = {mk: v for mk, v in self._decoded.items() if mk in self._mem}
        return clear_files(self.root, kind)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: dict(v) for k, v in self._stats.items()}

    def save_stats(self) -> Path:
        path = self.root / _STATS_FILE
        _atomic_write(path, json.dumps(self.stats(), indent=1, sort_keys=True).encode())
        return path


_default: Cache | None = None
_default_lock = threading.Lock()


def default_cache() -> Cache:
    """The process-wide cache; rebuilt when AMK_CACHE_DIR points somewhere new."""
    global _default
    with _default_lock:
        if _default is None or _default.root != default_root():
            cache = Cache()
            if cache.enabled:  # a cache with every kind disabled never writes an entry
                check_root(cache.root)
            _default = cache
        return _default
