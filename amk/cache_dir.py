"""The cache directory: where AMK's cache lives (``AMK_CACHE_DIR``, else ``~/.cache/amk``), the folders it keeps
its entries in, and the one check of whether the cache can be used there (root_problem, check_root), with the
errors the cache raises when its directory fails. amk.cache builds the Cache on it and re-exports these names.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from amk.schedule.errors import ArgumentError, EnvironmentProblem

KINDS = ("kernel", "program", "reference", "baseline")
_SHARD_RE = re.compile(r"[0-9a-f]{2}")  # an entry's folder: its key's first two digits


class CacheError(Exception):
    """A cache entry could not be produced or stored."""


class CacheStorageError(CacheError):
    """The cache directory failed, not the entry or the config that asked for it: every later entry would fail
    the same way, so the search stops instead of recording trials against it."""


class CacheFullError(CacheStorageError, EnvironmentProblem):
    """The file system holding the cache is full or over its quota (ENOSPC, EDQUOT): an environment problem
    (exit 3) naming AMK_CACHE_DIR and the file that could not be written."""

    def __init__(self, root: Path, path: Path, reason: str):
        self.root, self.path = str(root), str(path)
        super().__init__(f"AMK_CACHE_DIR: {path}: {reason} (the cache root {root}); free space there, "
                         "`amk cache clear` the entries no longer needed, or point AMK_CACHE_DIR elsewhere")


class CacheDirError(CacheStorageError, ArgumentError):
    """The cache directory (AMK_CACHE_DIR, else ~/.cache/amk) cannot hold the cache: root_problem's findings (not a
    directory, not writable, cannot be made), or a file or directory in it that cannot be created. A usage error
    (exit 2, from every command that uses the cache) naming AMK_CACHE_DIR, the path and why, raised before a trial
    runs, so a broken environment is never recorded as a config's rejection. `path` is what failed (the root or
    a file under it). `hint`: what to do, where pointing AMK_CACHE_DIR elsewhere is not it (a directory in a
    cache entry's place, in a directory that is writable)."""

    def __init__(self, root: Path, message: str, path: Path | None = None,
                 hint: str = "point AMK_CACHE_DIR at a writable directory"):
        self.root = str(root)
        self.path = str(path if path is not None else root)
        source = "set by AMK_CACHE_DIR" if os.environ.get("AMK_CACHE_DIR") else "the default: AMK_CACHE_DIR unset"
        where = "" if self.path == self.root else f"under the cache root {self.root}, "
        ArgumentError.__init__(self, "AMK_CACHE_DIR", f"{self.path}: {message} ({where}{source}); {hint}")


def default_root() -> Path:
    """AMK_CACHE_DIR, else ~/.cache/amk. Raises CacheDirError when AMK_CACHE_DIR starts with ~ of a user this
    machine does not know (pathlib's RuntimeError)."""
    raw = os.environ.get("AMK_CACHE_DIR") or Path.home() / ".cache" / "amk"
    try:
        return Path(raw).expanduser()
    except RuntimeError:
        from amk.harness.arguments import unknown_home

        raise CacheDirError(Path(raw), unknown_home(str(raw))) from None


def check_root(root: Path) -> None:
    """Create the cache root if it is missing; raise root_problem's CacheDirError when the cache cannot be used
    there. Checked once, up front: a root that fails only at the first write would fail inside lowering, and be
    taken for the config's fault."""
    problem = root_problem(root)
    if problem is not None:
        raise problem
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # the path changed since it was checked
        raise CacheDirError(root, f"cannot be created ({e.strerror or e})") from e


def root_problem(root: Path, read: bool = False, write: bool = True) -> CacheDirError | None:
    """Why the cache cannot be used at `root`, as the CacheDirError a command raises for it, or None. The one
    check of the cache directory: check_root (every command that lowers), `amk cache` (read: ls and stats
    without write, clear with it) and `amk doctor` run it, so that doctor reports what the commands refuse.
    An existing root must be a directory (a link to one included; a link to nowhere is none) that the caller
    may write (write; proven by making and removing a probe file, since the access bits pass root on a
    read-only mount or /proc) or list (read), and so must the kind folders and their shard folders in it. A
    missing root passes when it can be made: the nearest thing on its path that exists is a directory a
    probe file can be made in. Nothing is created."""
    try:
        os.lstat(root)
    except (FileNotFoundError, NotADirectoryError):  # missing, or below a file: can it be made?
        where = root.parent
        while not _lexists(where) and where != where.parent:
            where = where.parent
        why = _not_a_dir(where) or _access_problem(where, False, True) or _probe(where)
        return CacheDirError(root, f"cannot be created: {where} is {why}") if why else None
    except OSError as e:  # a name past the file system's limit
        return CacheDirError(root, f"cannot be looked up ({e.strerror or e})")
    why = _not_a_dir(root) or _access_problem(root, read, write) or (_probe(root) if write else None)
    if why:
        return CacheDirError(root, why)
    for kind in KINDS:  # the folders a command writes entries into, or lists them from
        folder = root / kind
        if not _lexists(folder):
            continue
        try:
            shards = sorted(e.path for e in os.scandir(folder) if _SHARD_RE.fullmatch(e.name))
        except OSError:  # not a directory, or one the caller may write but not list: named below, or unlisted
            shards = []
        for path in (folder, *map(Path, shards)):
            why = _not_a_dir(path) or _access_problem(path, read, write)
            if why:
                return CacheDirError(root, f"{why}, where the cache keeps its entries", path)
    return None


def _lexists(path: Path) -> bool:
    """Whether `path` names anything, a link to nowhere included (False where a file stands for a directory)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _not_a_dir(path: Path) -> str | None:
    """Why `path`, which exists, is no directory (a link to nowhere names its target), or None."""
    if path.is_dir():
        return None
    if path.is_symlink() and not path.exists():
        return f"not a directory: a symbolic link to {os.readlink(path)!r}, which does not exist"
    return "not a directory"


def _access_problem(path: Path, read: bool, write: bool) -> str | None:
    if write and not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    if read and not os.access(path, os.R_OK | os.X_OK):
        return "not readable"
    return None


def _probe(where: Path) -> str | None:
    """Why no file can be made in the directory `where` (a read-only mount, /proc), or None."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".amk-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"not writable ({e.strerror or e})"
    return None
