"""Which buffers a task's params make the kernel write and read, and which it reads as model weights.

The hazard check (schedule/hazards.py) reads a task's declared regions, while the kernel and the ReferenceVM follow
its params. A program whose params write or read elements its regions do not name (a hand-edited program JSON,
say) would race unseen, and one whose params write a weight buffer would corrupt the model for every later step.
`check` compares the two: buffer by buffer everywhere, and element by element where the params alone give the
range (epilogues, norms, the embedding, a matvec's input, a split's partial sums; not the attention's rows, which
depend on the step's position).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from . import opcodes as oc
from .opcodes import Epilogue
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


def _named(pairs, always: bool = True) -> Iterator[ParamBuffer]:
    for path, b in pairs:
        if b != oc.NO_BUFFER:
            yield ParamBuffer(path, b, always and path.rsplit(".", 1)[-1] not in ("kcache", "vcache"))


def _rows(base: int, rows: int, pair: int) -> tuple[tuple[int, int], ...]:
    """A task's rows from element `base` on, and with a pair offset the paired rows `pair` further."""
    return ((base, rows), (base + pair, rows)) if pair else ((base, rows),)


def _holds_q(row0: int, rows: int, c) -> bool:
    """Whether QKV rows [row0, row0 + rows) (KV group by group: the group's q heads, then k, then v; a split head's
    rows lie in one head) hold a q head's, on a program of constants `c`."""
    hd, per = c.head_dim, c.n_heads // c.n_kv_heads + 2
    return any(u % per < per - 2 for u in range(row0 // hd, (row0 + max(rows, 1) - 1) // hd + 1))


def _epilogue_writes(e: oc.EpilogueParams, row0: int, rows: int, c) -> Iterator[ParamBuffer]:
    """vm/epilogue.cuh: STORE writes the rows and their paired rows, PARTIAL the same as one split's sums,
    RESIDUAL_ADD, SILU_MUL (the pair is its up rows, read) and LOGITS the rows alone. ROPE_KV writes its q heads'
    rows to `out` (every step, where its rows hold one) and its k and v heads' rows at the step's position."""
    kind = Epilogue(e.kind)
    if kind == Epilogue.ROPE_KV:
        yield from _named([("epi.out", e.out)], always=_holds_q(row0, rows, c))
        yield from _named([("epi.kcache", e.kcache), ("epi.vcache", e.vcache)], always=False)
        return
    if e.out == oc.NO_BUFFER:
        return
    if kind == Epilogue.STORE:
        span = _rows(e.out_off + row0, rows, e.pair_offset)
    elif kind == Epilogue.PARTIAL:
        span = _rows(e.out_off + e.split * e.split_stride + row0, rows, e.pair_offset)
    else:
        span = _rows(e.out_off + row0, rows, 0)
    yield ParamBuffer("epi.out", e.out, True, span)
    if kind == Epilogue.LOGITS and e.argmax != oc.NO_BUFFER:  # this task's (value, index) pair
        yield ParamBuffer("epi.argmax", e.argmax, True, ((2 * e.argmax_slot, 2),))


def written(p, c) -> Iterator[ParamBuffer]:
    """The buffers the params `p` of one task make the kernel write (`c`: the program's constants). Raises
    ValueError for an unknown epilogue kind (the ABI check reports it)."""
    if isinstance(p, (oc.EmbedParams, oc.RmsNormParams)):
        yield ParamBuffer("out", p.out, True, ((p.out_off, p.dim),))
    elif isinstance(p, oc.AttnValuesParams):  # and, under combine last_partition, the last partition's combine
        yield from _named([("out", p.out), ("join.out", p.join.out)])
    elif isinstance(p, oc.AttnCombineParams):
        yield from _named([("out", p.out)])
    elif isinstance(p, oc.MatvecParams):
        yield from _epilogue_writes(p.epi, p.row0, p.rows, c)
        j = p.join
        if j.active and j.part != oc.NO_BUFFER:
            yield ParamBuffer("join.part", j.part, True,
                              _rows(j.part_off + j.split * j.stride + p.row0, p.rows, p.epi.pair_offset))
    elif isinstance(p, oc.EpilogueTaskParams):
        yield from _epilogue_writes(p.epi, p.row0, p.rows, c)
    elif isinstance(p, oc.AttnDecodeParams):
        yield from _named([("out", p.out), ("scores", p.scores)])
    elif isinstance(p, oc.AttnScoresParams):
        yield from _named([("scores", p.scores), ("stats", p.stats)])
    elif isinstance(p, oc.AttnPartialParams):
        yield from _named([("out", p.out), ("stats", p.stats), ("join.out", p.join.out)])
        # `scores` backs only a partition longer than `chunk`, which depends on the step's position; with rope,
        # the task holding the position appends its k and v
        yield from _named([("scores", p.scores)] + ([("kcache", p.kcache), ("vcache", p.vcache)] if p.rope else []),
                          always=False)
    elif isinstance(p, oc.ArgmaxParams):
        yield from _named([("token", p.token)])


def weights(p) -> Iterator[ParamBuffer]:
    """The buffers the params `p` of one task make the kernel read as model weights (never written)."""
    pairs: list[tuple[str, int]] = []
    if isinstance(p, oc.EmbedParams):
        pairs = [("table", p.table)]
    elif isinstance(p, oc.RmsNormParams):
        pairs = [("weight", p.weight)]
    elif isinstance(p, oc.MatvecParams):
        pairs = [("weight", p.weight), ("norm_weight", p.norm_weight), ("epi.bias", p.epi.bias),
                 ("epi.qnorm", p.epi.qnorm), ("epi.knorm", p.epi.knorm)]
    elif isinstance(p, oc.EpilogueTaskParams):
        pairs = [("epi.bias", p.epi.bias), ("epi.qnorm", p.epi.qnorm), ("epi.knorm", p.epi.knorm)]
    elif isinstance(p, oc.AttnPartialParams) and p.rope:
        pairs = [("qnorm", p.qnorm), ("knorm", p.knorm)]
    yield from _named(pairs)


def read(p, buffers) -> Iterator[ParamBuffer]:
    """The activations the params `p` of one task make the kernel read, with their element ranges where the params
    alone say (`buffers`: the program's, for a fused norm's whole input row). The attention's reads are named by
    buffer only."""
    if isinstance(p, oc.RmsNormParams):
        yield ParamBuffer("inp", p.inp, True, ((p.inp_off, p.dim),))
    elif isinstance(p, oc.MatvecParams):
        if p.inp_parts > 0:  # the attention partitions and their (max, sum), combined while staged
            yield from _named([("inp", p.inp), ("inp_stats", p.inp_stats)])
        elif p.inp != oc.NO_BUFFER:
            fused = p.norm_weight != oc.NO_BUFFER and 0 <= p.weight < len(buffers)
            span = (p.inp_off, buffers[p.weight].cols) if fused else (p.inp_off + p.k0, p.klen)
            yield ParamBuffer("inp", p.inp, True, (span,))
        if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != oc.NO_BUFFER:
            yield ParamBuffer("epi.out", p.epi.out, True, ((p.epi.out_off + p.row0, p.rows),))
    elif isinstance(p, oc.EpilogueTaskParams):
        pair = p.epi.pair_offset
        spans = [r for k in range(p.splits) for r in _rows(p.src_off + k * p.stride + p.row0, p.rows, pair)]
        yield ParamBuffer("src", p.src, True, tuple(spans))
        if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != oc.NO_BUFFER:
            yield ParamBuffer("epi.out", p.epi.out, True, ((p.epi.out_off + p.row0, p.rows),))
    elif isinstance(p, (oc.AttnDecodeParams, oc.AttnScoresParams, oc.AttnPartialParams)):
        yield from _named([("q", p.q), ("kcache", p.kcache)] + ([] if isinstance(p, oc.AttnScoresParams)
                                                                 else [("vcache", p.vcache)]))
    elif isinstance(p, oc.AttnValuesParams):
        yield from _named([("vcache", p.vcache)])
    elif isinstance(p, oc.AttnCombineParams):
        yield from _named([("partial", p.partial), ("part_stats", p.part_stats)])
    elif isinstance(p, oc.ArgmaxParams):
        yield ParamBuffer("pairs", p.pairs, True, ((p.pairs_off, 2 * p.slots),))


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
        return list(fn(*args))
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
    for pb in (*out, *wts, *ins):
        if type(pb.buffer) is not int or any(type(x) is not int for rg in pb.ranges for x in rg):
            return []
    writes, reads = list(t.writes), list(t.reads)
    if not all(map(_well_formed, writes + reads)):
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
    what, doing = ("write", "writing") if access == "writ" else ("read", "reading")
    if access == "writ" and b.kind == BufferKind.WEIGHT:
        return f"names weight buffer {b.name}: a write would change the model"
    if pb.kv_cache and b.kind != BufferKind.KV:
        return f"names {b.kind.value} buffer {b.name}, not a KV cache"
    mine = [r for r in declared if r.buffer == pb.buffer]
    if not mine:
        return (f"names buffer {b.name}, which the task does not declare {doing} (the hazard check cannot see "
                f"the {what})") if pb.always else None
    bare = next(((a, n) for a, n in pb.ranges if not _covered(a, n, mine)), None)
    if bare is None:
        return None
    return (f"{what}s {b.name}[{bare[0]}:{bare[0] + bare[1]}), which the task's regions do not cover (the hazard "
            f"check cannot see the {what})")


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
