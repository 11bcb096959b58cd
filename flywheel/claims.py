"""Claims: loops sharing one results.tsv never measure the same program twice.

Before a loop measures a program it claims it: under the results file's own lock it reads the rows and the
claims file beside it (`results.tsv.claims`, one JSON line per claim), and either gets a trial number (one
past every row and every claim) or learns that the program is already measured (a row with its fingerprint)
or claimed by another live loop. The row the loop appends later carries the claimed trial number, so rows of
concurrent loops can land out of order, and a trial whose loop died before its row leaves a gap.

A claim without a row is live while its owner can still write the row: on this host, while its process
runs; from another host (a Ray cluster on a shared file system), for CLAIM_TTL_S. A dead owner's claim no
longer blocks the program.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .appendlog import AppendError, complete_lines, locked, numbered_lines, read_all
from .records import same_model
from .results import is_trial_number, next_trial, rows_of

CLAIM_TTL_S = 3600.0  # a trial (correctness + timing) never takes an hour


def claims_path(results: str | os.PathLike) -> Path:
    return Path(str(results) + ".claims")


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Claim:
    trial: int
    model: str
    gpu: str
    program_fingerprint: str
    schedule_id: str
    owner: str
    time: float  # epoch seconds

    def live(self, now: float) -> bool:
        return _owner_live(self.owner, self.time, now)


def _owner_live(owner: str, since: float, now: float) -> bool:
    """Whether `owner` (host:pid) can still write: on this host, while its process runs; from another host (a Ray
    cluster on a shared file system), for CLAIM_TTL_S after `since`."""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return now - since < CLAIM_TTL_S


@dataclass(frozen=True)
class Taken:
    """The program is not free: `by` is "measured" (row `row`, trial `trial`) or "claimed" (by `owner`)."""

    by: str
    trial: int
    owner: str | None = None
    row: dict | None = None


@dataclass(frozen=True)
class Snapshot:
    """What one results file holds for a model and GPU: measured programs (fingerprint -> its first row),
    schedule ids of every row of the run's dtype and context (legacy rows have no fingerprint), and programs
    claimed by live loops."""

    measured: dict[str, dict]
    schedule_ids: set[str]
    claimed: dict[str, Claim]
    legacy: dict[str, dict] = field(default_factory=dict)  # schedule id -> first row of an older file (no fingerprint)

    def taken(self, fingerprint: str, schedule_id: str, me: str) -> Taken | None:
        row = self.measured.get(fingerprint) or self.legacy.get(schedule_id)
        if row is not None:
            return Taken("measured", int(row["trial"]), row=row)
        c = self.claimed.get(fingerprint)
        if c is not None and c.owner != me:
            return Taken("claimed", c.trial, owner=c.owner)
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claimed_floor(results: str | os.PathLike) -> int:
    """The largest trial number claimed beside `results` (0 for none): a row appended without a claim takes a
    number past it, so that it never takes one a loop holds for a row still to come. Read under the results
    file's lock, which every writer of claims holds."""
    return max((c.trial for c in _read_claims(claims_path(results))), default=0)


def _read_claims(path: Path) -> list[Claim]:
    if not path.exists():
        return []
    out = []
    for line in complete_lines(path.read_bytes()):
        try:
            c = Claim(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a torn or foreign line claims nothing
        # nor does a hand edit whose number no claim takes: next_trial would count on from it
        if is_trial_number(c.trial):
            out.append(c)
    return out


def _snapshot(results, data: bytes, claims: list[Claim], model: str, gpu: str, dtype: str | None,
              max_seq: int | None) -> Snapshot:
    match = same_model(model)
    rows = [r for r in rows_of(results, numbered_lines(data)) if r["gpu"] == gpu and match(r["model"])]
    # a schedule id tried at another dtype or context is still untried here; an empty cell (an older file)
    # cannot say, and counts as tried
    ids = {r["schedule_id"] for r in rows if (dtype is None or r["dtype"] in ("", dtype))
           and (max_seq is None or r["max_seq"] in ("", str(max_seq)))}
    measured: dict[str, dict] = {}
    legacy: dict[str, dict] = {}  # rows written before the fingerprint column stand for their schedule id
    for r in rows:
        if r["status"] == "remeasure":
            continue
        if r["program_fingerprint"]:
            measured.setdefault(r["program_fingerprint"], r)
        elif r["schedule_id"] in ids:
            legacy.setdefault(r["schedule_id"], r)
    done = {int(r["trial"]) for r in rows}  # rows_of passed only rows of a whole trial number
    now = time.time()
    claimed = {c.program_fingerprint: c for c in claims
               if c.gpu == gpu and match(c.model) and c.trial not in done and c.live(now)}
    return Snapshot(measured, ids, claimed, legacy)


def snapshot(results: str | os.PathLike, model: str, gpu: str, dtype: str | None = None,
             max_seq: int | None = None) -> Snapshot:
    """The results file's measured and claimed programs for this model and GPU, read under its lock. With
    `dtype` (fp32, fp16, bf16) or `max_seq`, schedule_ids holds only the rows of that dtype and context (and
    those of a file that does not record them): a config tried at bf16 is still to try at fp32. The measured
    programs need no filter: a program fingerprint includes both."""
    if not Path(results).exists():
        return Snapshot({}, set(), {})
    with locked(results) as fd:
        return _snapshot(results, read_all(fd), _read_claims(claims_path(results)), model, gpu, dtype, max_seq)


def claim(results: str | os.PathLike, model: str, gpu: str, fingerprint: str, schedule_id: str,
          check: bool = True, owner: str | None = None) -> Claim | Taken:
    """Claim a trial number for measuring `fingerprint`, or say why not. `check=False` claims a number for
    a deliberate re-measurement of a measured program (the incumbent's drift check)."""
    me = owner or owner_id()
    cpath = claims_path(results)
    with locked(results) as fd:
        data = read_all(fd)
        claims = _read_claims(cpath)
        if check:
            taken = _snapshot(results, data, claims, model, gpu, None, None).taken(fingerprint, schedule_id, me)
            if taken is not None:
                return taken
        trial = next_trial(data, floor=max((c.trial for c in claims), default=0), path=results)
        c = Claim(trial, model, gpu, fingerprint, schedule_id, me, time.time())
        _append(cpath, asdict(c), "a claim")
        return c


def _append(cpath: Path, obj: dict, what: str) -> None:
    """One JSON line appended to the claims file, fsynced; the caller holds the results lock, which every writer of
    the claims file holds, so a plain append cannot interleave. AppendError on a short write."""
    line = (json.dumps(obj, sort_keys=True) + "\n").encode()
    if cpath.exists() and cpath.stat().st_size and not cpath.read_bytes().endswith(b"\n"):
        line = b"\n" + line  # a writer died mid-line: end its fragment so this line starts one
    cfd = os.open(cpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(cfd, line) != len(line):
            raise AppendError(f"{cpath}: short write of {what} (disk full?)")
        os.fsync(cfd)
    finally:
        os.close(cfd)


def release(results: str | os.PathLike, c: Claim) -> bool:
    """Withdraw claim `c` (this loop's) when no row will ever carry its number: its trial stopped the loop before
    it was measured (a cache that cannot be written, memory that ran out), so the next trial takes the number and
    no gap is left. The claims file is rewritten under the results lock, which every writer of claims holds, and
    removed once it holds none. True when the claim was there; OSError where the file cannot be rewritten."""
    cpath = claims_path(results)
    mine = (json.dumps(asdict(c), sort_keys=True)).encode()
    with locked(results):
        if not cpath.exists():
            return False
        lines = cpath.read_bytes().split(b"\n")
        kept = [ln for ln in lines if ln.strip() and ln != mine]
        if len(kept) == len([ln for ln in lines if ln.strip()]):
            return False
        _rewrite(cpath, kept)
    return True


def start_run(results: str | os.PathLike, owner: str | None = None) -> str | None:
    """For a loop started without resume, before its first trial: under the results file's lock, who else holds
    `results` (None: no one, and this loop's run lease is written beside the claims). That is "rows" where trials
    have landed since the caller read the file, else the owner of another live loop that started a run in it
    (its lease) or claimed a trial there: two loops started together on one fresh file would otherwise both run,
    the second continuing the first's run though it was not asked to resume. A lease is a line {"run": owner,
    "time": t} of the claims file, which readers of claims skip; it stops counting once its owner could no longer
    write (Claim.live's rule), and the rows the run writes take over from it."""
    me = owner or owner_id()
    cpath = claims_path(results)
    with locked(results) as fd:
        if len(complete_lines(read_all(fd))) > 1:
            return "rows"
        now = time.time()
        for line in complete_lines(cpath.read_bytes()) if cpath.exists() else []:
            try:
                obj = json.loads(line)
                who, since = (obj["run"], obj["time"]) if "run" in obj else (obj["owner"], obj["time"])
            except (ValueError, TypeError, KeyError):
                continue  # a torn or foreign line holds nothing
            if isinstance(who, str) and isinstance(since, int | float) and who != me and _owner_live(who, since, now):
                return who
        _append(cpath, {"run": me, "time": now}, "a run lease")
    return None


def end_run(results: str | os.PathLike, owner: str | None = None) -> None:
    """Withdraw `owner`'s run leases (start_run) from the claims file, at the end of its loop: a process that lives on
    (a notebook) must not hold the file against a loop started elsewhere without resume. The file is rewritten under
    the results lock and removed once it holds nothing."""
    me = owner or owner_id()
    cpath = claims_path(results)
    with locked(results):
        if not cpath.exists():
            return
        lines = [ln for ln in cpath.read_bytes().split(b"\n") if ln.strip()]
        kept = [ln for ln in lines if not _lease_of(ln, me)]
        if len(kept) != len(lines):
            _rewrite(cpath, kept)


def _lease_of(line: bytes, owner: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("run") == owner


def _rewrite(cpath: Path, lines: list[bytes]) -> None:
    """The claims file holding `lines` (under the results lock), replaced whole; removed when there are none."""
    if not lines:
        cpath.unlink()
        return
    tmp = cpath.with_name(cpath.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, cpath)

