"""The validator's per-task checks against the kernel's ABI: instruction limits, each params' type, every
parameter in int32, the buffer ids params name, the shared memory a task stages, and the whole heads a ROPE_KV
epilogue covers. Vectorised over the tasks of each params layout."""

from __future__ import annotations

from operator import attrgetter
from types import SimpleNamespace

import numpy as np

from . import opcodes as oc
from . import smem as block_smem
from .issues import IssueKind, _malformed, _Report
from .opcodes import Epilogue, Opcode

# params fields (flattened, dotted) that name buffers besides every X that has an X_off sibling; the
# optional ones may be NO_BUFFER
BUFFER_FIELDS = frozenset({"table", "token", "weight", "kcache", "vcache", "epi.out"})
OPTIONAL_BUFFER_FIELDS = frozenset({"norm_weight", "epi.bias", "epi.kcache", "epi.vcache", "epi.qnorm",
                                    "epi.knorm", "epi.argmax", "part_stats",
                                    "inp_stats", "join.out", "join.part"})


class _Layout:
    """How one params class flattens (nested dataclasses in place), and where its buffer ids sit."""

    def __init__(self, cls):
        names = list(cls.__dataclass_fields__)
        self.top = attrgetter(*names) if len(names) > 1 else (lambda p, g=attrgetter(names[0]): (g(p),))
        self.nested: list[tuple[int, _Layout]] = []
        self.paths: list[str] = []
        for i, f in enumerate(cls.__dataclass_fields__.values()):
            sub = getattr(oc, f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), None)
            if isinstance(sub, type) and hasattr(sub, "__dataclass_fields__"):
                self.nested.append((i, _layout(sub)))
        nested = dict(self.nested)
        for i, name in enumerate(names):
            self.paths += [f"{name}.{x}" for x in nested[i].paths] if i in nested else [name]
        self.nested.reverse()
        self.ix = {x: i for i, x in enumerate(self.paths)}
        req = [i for i, x in enumerate(self.paths) if (x in BUFFER_FIELDS or x + "_off" in self.ix)
               and x not in OPTIONAL_BUFFER_FIELDS]
        opt = [i for i, x in enumerate(self.paths) if x in OPTIONAL_BUFFER_FIELDS]
        self.required = np.asarray(req, dtype=np.int64)
        self.optional = np.asarray(opt, dtype=np.int64)

    def flat(self, p) -> list:
        vals = list(self.top(p))
        for i, sub in self.nested:
            vals[i:i + 1] = sub.flat(vals[i])
        return vals


_LAYOUTS: dict[type, _Layout] = {}
_INT_TYPES: set[type] = set()


def _layout(cls) -> _Layout:
    lay = _LAYOUTS.get(cls)
    if lay is None:
        lay = _LAYOUTS[cls] = _Layout(cls)
    return lay


def _all_int32(vals: list) -> bool:
    for tp in set(map(type, vals)) - _INT_TYPES:
        if not issubclass(tp, int) or tp is bool:
            return False
        _INT_TYPES.add(tp)
    return not vals or (min(vals) >= -oc.INT32_MAX and max(vals) <= oc.INT32_MAX)


def _check_tasks(program, target, rep: _Report) -> None:
    """Instruction limits, params type and int32 range, buffer ids in params, shared memory, whole heads."""
    flat: list = []
    spans: dict[_Layout, tuple[list[int], list[int]]] = {}  # layout -> (task ids, offsets into flat)
    mw, ms, mp, params_of = oc.MAX_WAITS, oc.MAX_SIGNALS, oc.MAX_PREFETCH, oc.PARAMS_OF
    for tid, t in enumerate(program.tasks):
        try:
            if len(t.waits) > mw or len(t.signals) > ms or len(t.prefetch) > mp:
                rep.add(IssueKind.ABI, f"{rep.tname(tid)} has {len(t.waits)} waits, {len(t.signals)} signals, "
                        f"{len(t.prefetch)} prefetches (limits {mw}/{ms}/{mp})", tasks=(tid,))
            op, p = t.opcode, t.params
            cls = params_of.get(op) if isinstance(op, Opcode) else None
            if cls is None or type(p) is not cls:
                rep.add(IssueKind.ABI, f"{rep.tname(tid)} has opcode {op!r} with params of type "
                        f"{type(p).__name__}, expected {cls.__name__ if cls else 'a known opcode'}", tasks=(tid,))
                continue
            lay = _layout(cls)
            vals = lay.flat(p)
            ids, offs = spans.setdefault(lay, ([], []))
            ids.append(tid)
            offs.append(len(flat))
            flat += vals
        except Exception as e:  # noqa: BLE001 - a malformed task is an ABI issue, not a crash
            _malformed(rep, tid, e)
    if not _all_int32(flat):  # one pass over every parameter; task by task only when something is off
        for lay, (ids, offs) in spans.items():
            for tid, off in zip(ids, offs):
                for path, v in zip(lay.paths, flat[off:off + len(lay.paths)]):
                    if isinstance(v, bool) or not isinstance(v, int) or not -oc.INT32_MAX <= v <= oc.INT32_MAX:
                        rep.add(IssueKind.ABI, f"{rep.tname(tid)}: parameter {path}={v!r} does not fit in int32",
                                tasks=(tid,))
        return
    allv = np.asarray(flat, dtype=np.int64)
    for lay, (ids, offs) in spans.items():
        rows = allv[np.asarray(offs)[:, None] + np.arange(len(lay.paths))]
        _check_params(program, lay, np.asarray(ids), rows, rep)


def _check_params(program, lay: _Layout, tids, a, rep: _Report) -> None:
    """Vectorised over every task of one params layout: `a` holds one flattened params row per task."""
    nb, bufs, c = len(program.buffers), program.buffers, program.constants
    if lay.required.size or lay.optional.size:
        r, o = a[:, lay.required], a[:, lay.optional]
        bad = ((r < 0) | (r >= nb)).any(axis=1) | ((o < -1) | (o >= nb)).any(axis=1)
        for k in np.flatnonzero(bad):
            for i in [*lay.required, *lay.optional]:
                v = int(a[k, i])
                if not (0 <= v < nb or (v == oc.NO_BUFFER and lay.paths[i] in OPTIONAL_BUFFER_FIELDS)):
                    rep.add(IssueKind.ABI, f"{rep.tname(int(tids[k]))}: parameter {lay.paths[i]}={v} names no "
                            "buffer", tasks=(int(tids[k]),))
        a, tids = a[~bad], tids[~bad]
    ix, hd = lay.ix, c.head_dim
    combine_need = None
    smem = block_smem.program_work_smem_bytes(program.smem_per_block, program.build)
    consumers = block_smem.consumer_threads(program.threads_per_block, program.build)
    col = {name: a[:, i] for name, i in ix.items()}
    try:
        if "klen" in ix:  # matvec: the staged input slice (all of K when the norm is fused) and its rows
            cols = np.asarray([b.cols for b in bufs], dtype=np.int64)
            width = np.where(col["norm_weight"] != oc.NO_BUFFER, cols[col["weight"]], col["klen"])
            nrows = col["rows"] * np.where(col["epi.pair_offset"] != 0, 2, 1)
            partials = [block_smem.page_partials(int(k), int(r), program.build, c.dtype.nbytes)
                        for k, r in zip(col["klen"], nrows)]
            need = np.asarray([block_smem.matvec_smem_bytes(int(w), int(r), p) for w, r, p in zip(width, nrows, partials)])
            per_copy = block_smem.combine_per_copy(program.build, c.dtype.nbytes)
            combine_need = _combine_smem(col, hd, consumers, per_copy, rep, tids)
            what = "an input of {} elements and {} rows"
            detail = (width, nrows)
        elif "chunk" in ix:  # attention: q of the group plus a chunk of scores
            group = c.n_heads // c.n_kv_heads // int(program.build.get("Q_SPLITS", 1))  # a task's q heads
            if "stage" in ix:  # ATTN_PARTIAL: statistics scratch and staged K/V rows behind its chunk
                dims = SimpleNamespace(group=group, head_dim=hd)
                tpb, nbytes = consumers, c.dtype.nbytes
                need = np.asarray([block_smem.attention_partial_smem_bytes(int(k), int(n), dims, tpb, nbytes)
                                   for k, n in zip(col["chunk"], col["stage"])])
                what, detail = "a chunk of {} positions and {} staged K/V rows", (col["chunk"], col["stage"])
            else:
                need = _attention_smem(col["chunk"], group, hd, consumers)
                what, detail = "a chunk of {} positions", (col["chunk"],)
        else:
            need = None
    except Exception as e:  # noqa: BLE001 - the tiler's formulas changed shape
        rep.internal("shared-memory check", e)
        need = None
    ring = block_smem.ring_bytes(program.build)
    if ring:
        room = (f"smem_per_block={program.smem_per_block} less pipeline.pages={program.build['PAGES']} x "
                f"pipeline.page_kb={ring // program.build['PAGES'] // 1024} leaves {smem}")
    else:
        room = f"smem_per_block is {smem}"
    if need is not None:
        for k in np.flatnonzero(need > smem):
            tid = int(tids[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} stages {what.format(*(int(d[k]) for d in detail))} and "
                    f"needs {int(need[k])} bytes of shared memory; {room}", tasks=(tid,))
    if combine_need is not None:
        for k in np.flatnonzero(combine_need > smem):
            tid = int(tids[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)} combines an input of {int(col['klen'][k])} elements from "
                    f"{int(col['inp_parts'][k])} attention partitions with inp_slots={int(col['inp_slots'][k])} "
                    f"and needs {int(combine_need[k])} bytes of shared memory; {room}", tasks=(tid,))
    if "epi.kind" in ix and "row0" in ix:
        # whole heads, or (a split head) rows inside the first half of one head with their partners half a head on
        r0, n, pair = col["row0"], col["rows"], col["epi.pair_offset"]
        whole = (pair == 0) & (r0 % hd == 0) & (n % hd == 0)
        halves = (pair == hd // 2) & (n > 0) & (r0 % hd + n <= hd // 2)
        rope = (col["epi.kind"] == Epilogue.ROPE_KV) & ~whole & ~halves
        for k in np.flatnonzero(rope):
            tid, a, m, po = int(tids[k]), int(r0[k]), int(n[k]), int(pair[k])
            rep.add(IssueKind.ABI, f"{rep.tname(tid)}: the ROPE_KV epilogue covers rows [{a}, {a + m}) with pair "
                    f"offset {po}: neither whole heads of {hd} nor rows of one head's first half with pair offset "
                    f"{hd // 2}", tasks=(tid,))


def _combine_smem(col: dict, head_dim: int, threads: int, per_copy: int, rep: _Report, tids) -> np.ndarray:
    """Shared memory each matvec task's input combine takes (0 where its input is not in partitions; `per_copy`
    partition elements a 16-byte copy); an ABI issue where a combining task's inp_slots is outside [1, inp_parts],
    which the kernel's copies would overrun."""
    parts, slots = col["inp_parts"], col["inp_slots"]
    for k in np.flatnonzero((parts > 0) & ((slots < 1) | (slots > parts))):
        rep.add(IssueKind.ABI, f"{rep.tname(int(tids[k]))}: parameter inp_slots={int(slots[k])} is outside "
                f"[1, inp_parts={int(parts[k])}]", tasks=(int(tids[k]),))
    out = np.zeros(len(parts), dtype=np.int64)
    for k in np.flatnonzero(parts > 0):
        k0, klen, p = int(col["k0"][k]), int(col["klen"][k]), int(parts[k])
        heads = block_smem.combine_heads(k0, klen, head_dim) if col["inp_stats"][k] != oc.NO_BUFFER else 0
        out[k] = block_smem.combine_smem_bytes(klen, p, heads, threads, max(1, int(slots[k])), per_copy)
    return out


def _attention_smem(chunk, group: int, head_dim: int, threads: int):
    dims = SimpleNamespace(group=group, head_dim=head_dim)
    return np.asarray([block_smem.attention_smem_bytes(int(k), dims, threads) for k in np.atleast_1d(chunk)])
