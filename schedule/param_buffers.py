"""Which buffers a task's params make the kernel write and read, and which it reads as model weights.

The hazard check (schedule/hazards.py) reads a task's declared regions, while the kernel and the ReferenceVM follow
its params. A program whose params write or read elements its regions do not name (a hand-edited program JSON,
say) would race unseen, and one whose params write a weight buffer would corrupt the model for every later step.
`check` compares the two: buffer by buffer everywhere, and element by element where the params alone give the
range (epilogues, norms, the embedding, a matvec's input, a split's partial sums; not the attention's rows, which
depend on the step's position).
"""

from __future__ import annotations

from typing import NamedTuple

from . import opcodes as oc
from .opcodes import NO_BUFFER, Epilogue
from .program import BufferKind, Region


class ParamBuffer(NamedTuple):
    """One buffer field of a task's params: its dotted path (as in the program JSON), the buffer id, whether the
    kernel touches it whatever the step (False for a KV cache, which only the task holding a k or v head, or the
    step's position, appends to: the regions declare the append where it happens), and the elements it touches
    where the params alone give them."""

    path: str
    buffer: int
    always: bool = True
    ranges: tuple[tuple[int, int], ...] = ()  # (start, length) of the elements touched, where the params alone say

    @property
    def kv_cache(self) -> bool:
        return self.path.rsplit(".", 1)[-1] in ("kcache", "vcache")


def _pb(path: str, buffer, always: bool = True, ranges: tuple = ()) -> ParamBuffer:
    # tuple.__new__ skips NamedTuple's Python-level __new__: a program's validation makes one per params field
    return _new(ParamBuffer, (path, buffer, always, ranges))


_new = tuple.__new__
_KV_FIELDS = ("kcache", "vcache")


def _named(pairs, always: bool = True) -> list[ParamBuffer]:
    return [_new(ParamBuffer, (path, b, always and path.rsplit(".", 1)[-1] not in _KV_FIELDS, ()))
            for path, b in pairs if b != NO_BUFFER]


def _rows(base: int, rows: int, pair: int) -> tuple[tuple[int, int], ...]:
    """A task's rows from element `base` on, and with a pair offset the paired rows `pair` further."""
    return ((base, rows), (base + pair, rows)) if pair else ((base, rows),)


def _holds_q(row0: int, rows: int, c) -> bool:
    """Whether QKV rows [row0, row0 + rows) (KV group by group: the group's q heads, then k, then v; a split head's
    rows lie in one head) hold a q head's, on a program of constants `c`."""
    hd, per = c.head_dim, c.n_heads // c.n_kv_heads + 2
    return any(u % per < per - 2 for u in range(row0 // hd, (row0 + max(rows, 1) - 1) // hd + 1))


def _epilogue_writes(e: oc.EpilogueParams, row0: int, rows: int, c) -> list[ParamBuffer]:
    """vm/epilogue.cuh: STORE writes the rows and their paired rows, PARTIAL the same as one split's sums,
    RESIDUAL_ADD, SILU_MUL (the pair is its up rows, read) and LOGITS the rows alone. ROPE_KV writes its q heads'
    rows to `out` (every step, where its rows hold one) and its k and v heads' rows at the step's position."""
    kind = Epilogue(e.kind)
    if kind == Epilogue.ROPE_KV:
        return (_named([("epi.out", e.out)], always=_holds_q(row0, rows, c))
                + _named([("epi.kcache", e.kcache), ("epi.vcache", e.vcache)], always=False))
    if e.out == NO_BUFFER:
        return []
    if kind == Epilogue.STORE:
        span = _rows(e.out_off + row0, rows, e.pair_offset)
    elif kind == Epilogue.PARTIAL:
        span = _rows(e.out_off + e.split * e.split_stride + row0, rows, e.pair_offset)
    else:
        span = _rows(e.out_off + row0, rows, 0)
    out = [_pb("epi.out", e.out, True, span)]
    if kind == Epilogue.LOGITS and e.argmax != NO_BUFFER:  # this task's (value, index) pair
        out.append(_pb("epi.argmax", e.argmax, True, ((2 * e.argmax_slot, 2),)))
    return out


def _written_matvec(p, c) -> list[ParamBuffer]:
    out = _epilogue_writes(p.epi, p.row0, p.rows, c)
    j = p.join
    if j.active and j.part != NO_BUFFER:
        out.append(_pb("join.part", j.part, True,
                       _rows(j.part_off + j.split * j.stride + p.row0, p.rows, p.epi.pair_offset)))
    return out


def _written_partial(p, c) -> list[ParamBuffer]:
    # `scores` backs only a partition longer than `chunk`, which depends on the step's position; with rope, the
    # task holding the position appends its k and v
    return (_named([("out", p.out), ("stats", p.stats), ("join.out", p.join.out)])
            + _named([("scores", p.scores)] + ([("kcache", p.kcache), ("vcache", p.vcache)] if p.rope else []),
                     always=False))


# params class -> what its task writes, in the order the classes are tried (no params class derives from another)
_WRITTEN = {
    oc.EmbedParams: lambda p, c: [_pb("out", p.out, True, ((p.out_off, p.dim),))],
    oc.RmsNormParams: lambda p, c: [_pb("out", p.out, True, ((p.out_off, p.dim),))],
    # and, under combine last_partition, the last partition's combine
    oc.AttnValuesParams: lambda p, c: _named([("out", p.out), ("join.out", p.join.out)]),
    oc.AttnCombineParams: lambda p, c: _named([("out", p.out)]),
    oc.MatvecParams: _written_matvec,
    oc.EpilogueTaskParams: lambda p, c: _epilogue_writes(p.epi, p.row0, p.rows, c),
    oc.AttnDecodeParams: lambda p, c: _named([("out", p.out), ("scores", p.scores)]),
    oc.AttnScoresParams: lambda p, c: _named([("scores", p.scores), ("stats", p.stats)]),
    oc.AttnPartialParams: _written_partial,
    oc.ArgmaxParams: lambda p, c: _named([("token", p.token)]),
}


def _dispatch(table: dict, p):
    """The entry of `table` for `p`'s class, or for the first class it is an instance of (None: no entry)."""
    fn = table.get(type(p))
    if fn is None:
        fn = next((f for cls, f in table.items() if isinstance(p, cls)), None)
    return fn


def written(p, c) -> list[ParamBuffer]:
    """The buffers the params `p` of one task make the kernel write (`c`: the program's constants). Raises
    ValueError for an unknown epilogue kind (the ABI check reports it)."""
    fn = _dispatch(_WRITTEN, p)
    return fn(p, c) if fn is not None else []


_WEIGHTS = {
    oc.EmbedParams: lambda p: [("table", p.table)],
    oc.RmsNormParams: lambda p: [("weight", p.weight)],
    oc.MatvecParams: lambda p: [("weight", p.weight), ("norm_weight", p.norm_weight), ("epi.bias", p.epi.bias),
                                ("epi.qnorm", p.epi.qnorm), ("epi.knorm", p.epi.knorm)],
    oc.EpilogueTaskParams: lambda p: [("epi.bias", p.epi.bias), ("epi.qnorm", p.epi.qnorm),
                                      ("epi.knorm", p.epi.knorm)],
    oc.AttnPartialParams: lambda p: [("qnorm", p.qnorm), ("knorm", p.knorm)] if p.rope else [],
}


def weights(p) -> list[ParamBuffer]:
    """The buffers the params `p` of one task make the kernel read as model weights (never written)."""
    fn = _dispatch(_WEIGHTS, p)
    return _named(fn(p)) if fn is not None else []


def _read_matvec(p, buffers) -> list[ParamBuffer]:
    if p.inp_parts > 0:  # the attention partitions and their (max, sum), combined while staged
        out = _named([("inp", p.inp), ("inp_stats", p.inp_stats)])
    elif p.inp != NO_BUFFER:
        fused = p.norm_weight != NO_BUFFER and 0 <= p.weight < len(buffers)
        span = (p.inp_off, buffers[p.weight].cols) if fused else (p.inp_off + p.k0, p.klen)
        out = [_pb("inp", p.inp, True, (span,))]
    else:
        out = []
    if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != NO_BUFFER:
        out.append(_pb("epi.out", p.epi.out, True, ((p.epi.out_off + p.row0, p.rows),)))
    return out


def _read_epilogue(p, buffers) -> list[ParamBuffer]:
    pair = p.epi.pair_offset
    spans = [r for k in range(p.splits) for r in _rows(p.src_off + k * p.stride + p.row0, p.rows, pair)]
    out = [_pb("src", p.src, True, tuple(spans))]
    if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != NO_BUFFER:
        out.append(_pb("epi.out", p.epi.out, True, ((p.epi.out_off + p.row0, p.rows),)))
    return out


def _read_attention(p, buffers) -> list[ParamBuffer]:
    return _named([("q", p.q), ("kcache", p.kcache)] + ([] if isinstance(p, oc.AttnScoresParams)
                                                        else [("vcache", p.vcache)]))


_READ = {
    oc.RmsNormParams: lambda p, buffers: [_pb("inp", p.inp, True, ((p.inp_off, p.dim),))],
    oc.MatvecParams: _read_matvec,
    oc.EpilogueTaskParams: _read_epilogue,
    oc.AttnDecodeParams: _read_attention,
    oc.AttnScoresParams: _read_attention,
    oc.AttnPartialParams: _read_attention,
    oc.AttnValuesParams: lambda p, buffers: _named([("vcache", p.vcache)]),
    oc.AttnCombineParams: lambda p, buffers: _named([("partial", p.partial), ("part_stats", p.part_stats)]),
    oc.ArgmaxParams: lambda p, buffers: [_pb("pairs", p.pairs, True, ((p.pairs_off, 2 * p.slots),))],
}


def read(p, buffers) -> list[ParamBuffer]:
    """The activations the params `p` of one task make the kernel read, with their element ranges where the params
    alone say (`buffers`: the program's, for a fused norm's whole input row). The attention's reads are named by
    buffer only."""
    fn = _dispatch(_READ, p)
    return fn(p, buffers) if fn is not None else []


class TaskFields:
    """Each task's `written`, `weights` and `read`, worked out once a validation for the checks that read them
    (this module's and the tags'): a list whose making raised raises again wherever it is asked for, so that each
    check fails where it failed when it made the lists itself."""

    def __init__(self, program):
        self.program = program
        self.memo: dict[int, tuple] = {}

    def _of(self, i: int, p) -> tuple:
        got = self.memo.get(i)
        if got is None:
            c, bufs = self.program.constants, self.program.buffers
            got = self.memo[i] = (_listed(written, p, c), _listed(weights, p), _listed(read, p, bufs))
        return got

    def written(self, i: int, p) -> list[ParamBuffer]:
        return _unless_raised(self._of(i, p)[0])

    def weights(self, i: int, p) -> list[ParamBuffer]:
        return _unless_raised(self._of(i, p)[1])

    def read(self, i: int, p) -> list[ParamBuffer]:
        return _unless_raised(self._of(i, p)[2])


def _listed(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - raised again where the list is asked for
        return e


def _unless_raised(got):
    if isinstance(got, Exception):
        raise got
    return got


def check(program, report, tname, fields: TaskFields | None = None) -> None:
    """Every buffer a task's params write is one the task (or its join, whose last task writes for it) declares
    writing, else the hazard check cannot see the write, and none is a weight; every activation its params read
    is one it (or its join) declares reading; every buffer its params read as weights is one; where the params
    give element ranges, the declared regions cover them. `report(kind_name, message, tasks, buffers)` as
    validate's; a task whose opcode and params do not match, or whose params name no buffer, is left to the ABI
    check. `fields`: the program's TaskFields where another check shares them."""
    bufs = program.buffers
    fields = fields if fields is not None else TaskFields(program)
    join_writes: dict[int, list] = {}
    join_reads: dict[int, list] = {}
    for jn in program.joins:
        try:
            writes, reads = [r for r in jn.writes if _well_formed(r)], [r for r in jn.reads if _well_formed(r)]
            for t in jn.tasks:
                join_writes.setdefault(t, []).extend(writes)
                join_reads.setdefault(t, []).extend(reads)
        except TypeError:  # a malformed join: the counters check reports it
            continue
    params_of = oc.PARAMS_OF
    for tid, t in enumerate(program.tasks):
        if not isinstance(t.opcode, oc.Opcode) or type(t.params) is not params_of.get(t.opcode):
            continue
        try:
            found = _task_issues(t, bufs, fields, tid, join_writes.get(tid, []), join_reads.get(tid, []))
        except (TypeError, AttributeError, ValueError):  # a malformed field or buffer (an unknown epilogue kind,
            continue  # say): the ABI, structure and bounds checks report it
        for pb, why in found:
            report("ABI", f"{tname(tid)}: {pb.path}={pb.buffer} {why}", (tid,), (bufs[pb.buffer].name,))


def _task_issues(t, bufs, fields: TaskFields, tid: int, join_writes: list, join_reads: list
                 ) -> list[tuple[ParamBuffer, str]]:
    """(field, why) for each of task t's params fields that escapes its declared regions or misuses a weight; none
    where a field or region is not a well-formed int (left to the ABI check, which names it)."""
    p = t.params
    out, wts, ins = fields.written(tid, p), fields.weights(tid, p), fields.read(tid, p)
    for group in (out, wts, ins):
        for pb in group:
            if type(pb.buffer) is not int:
                return []
            for a, n in pb.ranges:  # (start, length) pairs, as this module makes them
                if type(a) is not int or type(n) is not int:
                    return []
    writes, reads = list(t.writes), list(t.reads)
    if not all(map(_well_formed, writes)) or not all(map(_well_formed, reads)):
        return []
    found = []
    nb = len(bufs)
    for access, params, declared in (("writ", out, writes + join_writes), ("read", ins, reads + join_reads)):
        for pb in params:
            why = _undeclared(pb, bufs[pb.buffer], declared, access) if 0 <= pb.buffer < nb else None
            if why:
                found.append((pb, why))
    for pb in wts:
        if 0 <= pb.buffer < nb and bufs[pb.buffer].kind != BufferKind.WEIGHT:
            b = bufs[pb.buffer]
            found.append((pb, f"names {b.kind.value} buffer {b.name}, read as model weights"))
    return found


def _undeclared(pb: ParamBuffer, b, declared, access: str) -> str | None:
    """Why the params' access `pb` ("writ"ten or "read") of buffer `b` escapes the `declared` regions, or None."""
    if access == "writ" and b.kind == BufferKind.WEIGHT:
        return f"names weight buffer {b.name}: a write would change the model"
    if pb.kv_cache and b.kind != BufferKind.KV:
        return f"names {b.kind.value} buffer {b.name}, not a KV cache"
    buffer = pb.buffer
    mine = [r for r in declared if r.buffer == buffer]
    what, doing = ("write", "writing") if access == "writ" else ("read", "reading")
    if not mine:
        return (f"names buffer {b.name}, which the task does not declare {doing} (the hazard check cannot see "
                f"the {what})") if pb.always else None
    for a, n in pb.ranges:
        if not _covered(a, n, mine):
            return (f"{what}s {b.name}[{a}:{a + n}), which the task's regions do not cover (the hazard check cannot "
                    f"see the {what})")
    return None


def _covered(start: int, length: int, regions) -> bool:
    """Whether elements [start, start + length) all lie in the union of `regions` (one buffer's)."""
    stop = start + length
    for r in regions:  # mostly one region holds them all: no sort
        if r.start <= start and stop <= r.start + r.length:
            return True
    end = start
    for r in sorted(regions, key=lambda r: r.start):
        if r.start > end:
            break
        end = max(end, r.start + r.length)
        if end >= start + length:
            return True
    return length <= 0 or end >= start + length


def _well_formed(r) -> bool:
    if not isinstance(r, Region):
        return False
    if len(r) != 3:
        return all(type(x) is int for x in r)
    a, b, n = r
    return type(a) is int and type(b) is int and type(n) is int
