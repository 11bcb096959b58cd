"""One cache entry as a file, apart from the Cache that serves it: its key (the sha256 of everything that
determines it), the file's format (a header of magic, version, length and a digest of its key and payload), the
label beside it, and the file operations the Cache builds on: atomic writes, reads that refuse FIFOs and devices,
telling the cache's entries from stray files, and removing lock files no process holds. amk.cache re-exports the
public names.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

from amk.cache_dir import KINDS, CacheError

FORMAT_VERSION = 2  # 1: the digest covered the payload alone, so an entry served under another key's name passed
_MAGIC = b"AMKC"
_HEADER = struct.Struct("<4sHQ32s")  # magic, format version, payload length, _digest(key, payload)
_KEY_RE = re.compile(r"[0-9a-f]{8,128}")


class CorruptEntryError(CacheError):
    """An entry failed its header, checksum or content validation."""


class StaleEntryError(CorruptEntryError):
    """An intact entry of an older cache format: removed and rebuilt like a corrupt one, logged at info."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; expected one of {', '.join(KINDS)}")


def _bytes_hex(o: Any) -> str:
    if isinstance(o, bytes | bytearray | memoryview):
        return bytes(o).hex()
    raise TypeError(f"{type(o).__name__} is not JSON-able")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_bytes_hex)


def make_key(kind: str, **parts: Any) -> str:
    """sha256 hex of the canonical JSON of {"kind": kind, **parts}; bytes are hex-encoded."""
    _check_kind(kind)
    for name, value in parts.items():
        try:
            _canonical(value)  # part by part, so the error names the culprit
        except (TypeError, ValueError) as e:
            raise TypeError(f"key part {name!r}: {e}") from e
    return hashlib.sha256(_canonical({"kind": kind, **parts}).encode()).hexdigest()


# The helpers pass **locals() (only their parameters at that point) so that a parameter
# added later cannot be left out of the key by accident.
def kernel_key(source: str | bytes, header: str | bytes, knobs: dict, arch: str,
               compiler_version: str, kernel_name: str, compile_options: str = "") -> str:
    return make_key("kernel", **locals())


def program_key(model_fingerprint: str, config_json: str, target: str, dtype: str, max_seq: int,
                lowering: str) -> str:
    # `lowering`: the digest of the code that lowered and validated the program (schedule.program.lowering_digest)
    return make_key("program", **locals())


def reference_key(model_fingerprint: str, dtype: str, case_id: str, shared_id: str | None = None) -> str:
    # A shared id stands in for the model so tasks over one model reuse its reference data;
    # the "model_source" tag keeps a shared id from ever colliding with a real fingerprint.
    source, model = ("fingerprint", model_fingerprint) if shared_id is None else ("shared", shared_id)
    return make_key("reference", model_source=source, model=model, dtype=dtype, case_id=case_id)


def baseline_key(gpu: str, driver: str, torch_version: str, model_fingerprint: str, dtype: str,
                 timing_params: dict) -> str:
    return make_key("baseline", **locals())


def _atomic_write(path: Path, data: bytes) -> None:
    # Temp file in the same directory so os.replace is a same-filesystem rename: readers see
    # the old file or the new one, never a partial write, even with concurrent writers.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(kind: str, key: str, payload: bytes) -> bytes:
    """sha256 over the entry's kind and key as well as its payload: a file holds the entry of its own name only."""
    return hashlib.sha256(f"{kind}/{key}\0".encode() + payload).digest()


def _unpack(data: bytes, path: Path, kind: str, key: str) -> bytes:
    if len(data) < _HEADER.size:
        raise CorruptEntryError(f"{path}: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic == _MAGIC and version < FORMAT_VERSION:
        raise StaleEntryError(f"{path}: written in the cache's format v{version}, read in v{FORMAT_VERSION}")
    if (magic, version) != (_MAGIC, FORMAT_VERSION):
        raise CorruptEntryError(f"{path}: header {magic!r} v{version}, expected {_MAGIC!r} "
                                f"v{FORMAT_VERSION}")
    payload = data[_HEADER.size:]
    if len(payload) != length or _digest(kind, key, payload) != digest:
        raise CorruptEntryError(f"{path}: payload of {len(payload)} bytes fails the header's length ({length}) or "
                                f"its sha256 of the key and payload (torn, changed, or another key's entry)")
    return payload


def _is_key_name(path: Path, key: str) -> bool:
    """Whether `key`, the stem of `path`, is a cache key in the shard folder the cache files it under."""
    return bool(_KEY_RE.fullmatch(key)) and path.parent.name == key[:2]


def _entry_key(path: Path) -> str | None:
    """The key of the cache entry at `path`, or None for a file the cache did not write: an entry is named by its
    key (`<key[:2]>/<key>.bin`) and is a regular file, not a link, that opens with the header's magic."""
    key = path.name.removesuffix(".bin")
    if not _is_key_name(path, key):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:  # a link, gone, or unreadable
        return None
    try:
        return key if stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(_MAGIC)) == _MAGIC else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_at(path: Path, st: os.stat_result) -> bool:
    """Whether the file `st` describes is still the one at `path`."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def _drop_lock(path: Path) -> None:
    """Remove a lock file that no process holds: taken without waiting, and unlinked while held and still the
    file at `path`. A held one (an entry being built), or one flock refuses (some network file systems), stays."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and _is_at(path, st):
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)  # releases the lock


def _open_regular(path: Path):
    """`path` opened for binary reading when it is a regular file (a link to one included). Raises
    CorruptEntryError for a FIFO or a device (read, either would block or never end: it is opened without waiting
    for a writer) and for a directory (no entry either: the Cache reads it as a corrupt entry, a miss, not as a
    cache directory it cannot use), OSError as open does."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise CorruptEntryError(f"{path}: a directory, not a regular file")
        if not stat.S_ISREG(mode):
            raise CorruptEntryError(f"{path}: not a regular file (mode {stat.filemode(mode)})")
        if hasattr(os, "O_NONBLOCK"):  # reads of the file itself wait as usual (a network file system may honour it)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_real_dir(path: Path) -> bool:
    """Whether `path` is a directory itself, not a symbolic link to one (False where it names nothing)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_text(path: Path) -> str:
    """A small regular file's text; OSError (CorruptEntryError for a FIFO, a device or a directory) as _open_regular
    raises."""
    with _open_regular(path) as f:
        return f.read().decode()


def _read_label(entry: Path) -> dict | None:
    """The label beside a cache entry, or None (an entry written without one, or an unreadable label)."""
    try:
        label = json.loads(_read_text(entry.with_suffix(".label.json")))
    except (OSError, ValueError, CorruptEntryError):
        return None
    return label if isinstance(label, dict) else None
