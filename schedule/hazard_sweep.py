"""The data-hazard sweep: RAW, WAR and WAW over every SCRATCH, ARENA, IO and KV buffer of a program, from each
buffer's access groups (hazards.collect) and happens-before (clocks.HappensBefore)."""

from __future__ import annotations

from .clocks import HappensBefore, Members
from .hazards import Groups
from .opcodes import NO_BUFFER
from .program import BufferKind

HAZARD_KINDS = (BufferKind.SCRATCH, BufferKind.ARENA, BufferKind.IO, BufferKind.KV)


def _writes_by_stage(groups, pos) -> dict:
    out: dict = {}
    for (st, w, a, e), tids in groups.items():
        if w == 1:
            out.setdefault(st, []).append((pos[a], pos[e], set(tids)))
    return out


def _not_self_produced(writes, missing: list[int], readers: list[int]) -> int | None:
    """A reader of segments that no earlier stage wrote, unless it writes them itself in its own stage
    (a task that produces and consumes its own scratch, e.g. attention's scores). None if all do."""
    for r in readers:
        for i in missing:
            if not any(i0 <= i < i1 and r in ts for i0, i1, ts in writes):
                return r
    return None


def sweep(program, per: dict[object, Groups], hb: HappensBefore, report, tname) -> None:
    """RAW / WAR / WAW over every SCRATCH, ARENA, IO and KV buffer, happens-before from `hb`.
    `report(kind_name, message, tasks, buffers)` records an issue; `tname(tid)` names a task."""
    bufs = program.buffers
    nb = len(bufs)
    merged: dict[int, Groups] = {}
    for bid, groups in per.items():
        if not (isinstance(bid, int) and 0 <= bid < nb) or bufs[bid].kind not in HAZARD_KINDS:
            continue
        b, off = bufs[bid], 0
        if b.kind == BufferKind.SCRATCH and b.arena != NO_BUFFER and 0 <= b.arena < nb \
                and bufs[b.arena].kind == BufferKind.ARENA:
            bid, off = b.arena, b.arena_off  # alias the value into its arena's coordinates
        dst = merged.setdefault(bid, {})
        for (st, w, a, e), tids in groups.items():
            if w < 2 and e > a:
                dst.setdefault((st, w, a + off, e + off), []).extend(tids)
    for bid, groups in merged.items():
        _sweep_buffer(bufs[bid], groups, hb, report, tname)


def _union(lists, i0: int, i1: int) -> list[Members]:
    """The distinct access groups of segments [i0, i1)'s lists in `lists` (a group covers many segments)."""
    if i1 - i0 == 1:
        return list(lists[i0])  # a segment's list holds each group once
    seen: dict[int, Members] = {}
    for i in range(i0, i1):
        for m in lists[i]:
            seen.setdefault(id(m), m)
    return list(seen.values())


def _sweep_buffer(buf, groups, hb: HappensBefore, report, tname) -> None:
    """Accesses in logical order (stage; reads of a stage before its writes) over elementary segments. A
    segment keeps the access groups of its last writing stage and of its readers since: a group stands for all
    of its tasks, so nothing here grows with the tasks squared."""
    keys = sorted(groups)
    pts = sorted({k[2] for k in keys} | {k[3] for k in keys})
    pos = {p: i for i, p in enumerate(pts)}
    ns = len(pts) - 1
    lw: list[list[Members]] = [[] for _ in range(ns)]  # the writers of the last stage that wrote each segment
    rd: list[list[Members]] = [[] for _ in range(ns)]  # the readers since that write
    is_kv = buf.kind == BufferKind.KV
    needs_writer = buf.kind in (BufferKind.SCRATCH, BufferKind.ARENA)
    anyw = [False] * ns
    if is_kv:
        for k in keys:
            if k[1]:
                for i in range(pos[k[2]], pos[k[3]]):
                    anyw[i] = True
    name = buf.name
    cur_stage = None
    stage_w: dict[int, list[Members]] = {}
    stage_writes = None
    for key in keys:
        st, w, a, e = key
        if st != cur_stage:
            for i, ms in stage_w.items():
                lw[i] = ms
                rd[i] = []
            stage_w = {}
            cur_stage = st
        tids = groups[key]
        group = hb.members(tids)
        i0, i1 = pos[a], pos[e]
        if not w:
            missing = []
            for i in range(i0, i1):
                if not lw[i] and (needs_writer or (is_kv and anyw[i])):
                    missing.append(i)
                rd[i].append(group)
            if missing:
                if stage_writes is None:
                    stage_writes = _writes_by_stage(groups, pos)
                r = _not_self_produced(stage_writes.get(st, ()), missing, tids)
                if r is not None:
                    _no_writer(buf, key, r, report, tname)
            req = _union(lw, i0, i1)
            bad = hb.unordered(tids, req)
            if bad:
                _unordered_read(buf, key, bad, hb.first_unreached(bad[0], req), report, tname)
            continue
        earlier = _union([stage_w.get(i, ()) for i in range(i0, i1)], 0, i1 - i0)
        need_r = _union(rd, i0, i1)
        need_w = _union(lw, i0, i1)
        for i in range(i0, i1):
            stage_w.setdefault(i, []).append(group)
        mine = set(tids)
        other = [t for m in earlier for t in m.ids if t not in mine]
        if other or len(mine) > 1:
            x = tids[0]
            y = min(other) if other else min(mine - {x})
            report("CLOBBER", f"{tname(x)} and {tname(y)}, both of stage {st}, write overlapping elements of "
                   f"{name} (around {name}[{a}:{e})) with nothing ordering them", (y, x), (name,))
        req = need_r + need_w
        bad = hb.unordered(tids, req)
        if bad:
            t = bad[0]
            o = hb.first_unreached(t, req)
            read = any(o in m.ids for m in need_r)
            _unordered_write(buf, key, t, o, read, report, tname)


def _no_writer(buf, key, r, report, tname) -> None:
    st, _, a, e = key
    rng = f"{buf.name}[{a}:{e})"
    if buf.kind == BufferKind.KV:
        report("KV_READ_BEFORE_APPEND", f"{tname(r)} reads KV cache {rng} before the task of this step that "
               "appends to it (logical order puts the read first)", (r,), (buf.name,))
    else:
        report("RACE_NO_WRITER", f"{tname(r)} reads {rng}, part of which no earlier task of the step writes",
               (r,), (buf.name,))


def _unordered_read(buf, key, bad, wt, report, tname) -> None:
    st, _, a, e = key
    r, rng = bad[0], f"{buf.name}[{a}:{e})"
    more = f" (and {len(bad) - 1} more readers of stage {st})" if len(bad) > 1 else ""
    if buf.kind == BufferKind.KV:
        report("KV_READ_BEFORE_APPEND", f"{tname(r)} reads KV cache {rng} without waiting for {tname(wt)}, "
               f"which appends to it this step{more}", (r, wt), (buf.name,))
    else:
        report("RACE_NO_WRITER", f"{tname(r)} reads {rng} with no happens-before path from its writer "
               f"{tname(wt)}{more}", (r, wt), (buf.name,))


def _unordered_write(buf, key, t, o, read: bool, report, tname) -> None:
    rng = f"{buf.name}[{key[2]}:{key[3]})"
    if read:
        msg = (f"{tname(t)} overwrites {rng} while {tname(o)} may still read the value there "
               f"(no happens-before path from {o} to {t})")
    else:
        msg = f"{tname(t)} writes {rng} unordered with the earlier write by {tname(o)} (no happens-before path)"
    report("CLOBBER", msg, (t, o), (buf.name,))
