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
from .program import BufferKind


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
            yield ParamBuffer(path, int(b), always and path.rsplit(".", 1)[-1] not in ("kcache", "vcache"))


def _rows(base: int, rows: int, pair: int) -> tuple[tuple[int, int], ...]:
    """A task's rows from element `base` on, and with a pair offset the paired rows `pair` further."""
    return ((base, rows), (base + pair, rows)) if pair else ((base, rows),)


def _epilogue_writes(e: oc.EpilogueParams, row0: int, rows: int) -> Iterator[ParamBuffer]:
    """vm/epilogue.cuh: STORE writes the rows and their paired rows, PARTIAL the same as one split's sums,
    RESIDUAL_ADD, SILU_MUL (the pair is its up rows, read) and LOGITS the rows alone."""
    kind = Epilogue(e.kind)
    if kind == Epilogue.ROPE_KV:  # q heads to `out`, k and v heads' rows to the caches: which, the rows decide
        yield from _named([("epi.out", e.out), ("epi.kcache", e.kcache), ("epi.vcache", e.vcache)], always=False)
        return
    if e.out == oc.NO_BUFFER:
        return
    if kind == Epilogue.STORE:
        span = _rows(e.out_off + row0, rows, e.pair_offset)
    elif kind == Epilogue.PARTIAL:
        span = _rows(e.out_off + e.split * e.split_stride + row0, rows, e.pair_offset)
    else:
        span = _rows(e.out_off + row0, rows, 0)
    yield ParamBuffer("epi.out", int(e.out), True, span)
    if kind == Epilogue.LOGITS and e.argmax != oc.NO_BUFFER:  # this task's (value, index) pair
        yield ParamBuffer("epi.argmax", int(e.argmax), True, ((2 * e.argmax_slot, 2),))


def written(p) -> Iterator[ParamBuffer]:
    """The buffers the params `p` of one task make the kernel write. Raises ValueError for an unknown epilogue
    kind (the ABI check reports it)."""
    if isinstance(p, (oc.EmbedParams, oc.RmsNormParams)):
        yield ParamBuffer("out", int(p.out), True, ((p.out_off, p.dim),))
    elif isinstance(p, (oc.AttnValuesParams, oc.AttnCombineParams)):
        yield from _named([("out", p.out)])
    elif isinstance(p, oc.MatvecParams):
        yield from _epilogue_writes(p.epi, p.row0, p.rows)
        j = p.join
        if j.active and j.part != oc.NO_BUFFER:
            yield ParamBuffer("join.part", int(j.part), True,
                              _rows(j.part_off + j.split * j.stride + p.row0, p.rows, p.epi.pair_offset))
    elif isinstance(p, oc.EpilogueTaskParams):
        yield from _epilogue_writes(p.epi, p.row0, p.rows)
    elif isinstance(p, oc.AttnDecodeParams):
        yield from _named([("out", p.out), ("scores", p.scores)])
    elif isinstance(p, oc.AttnScoresParams):
        yield from _named([("scores", p.scores), ("stats", p.stats)])
    elif isinstance(p, oc.AttnPartialParams):
        # `scores` only backs a partition longer than `chunk`; whether one is depends on the step's position
        pairs = [("out", p.out), ("stats", p.stats), ("join.out", p.join.out)]
        if p.rope:  # the task holding the step's position appends its k and v
            pairs += [("kcache", p.kcache), ("vcache", p.vcache)]
        yield from _named(pairs)
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
        yield ParamBuffer("inp", int(p.inp), True, ((p.inp_off, p.dim),))
    elif isinstance(p, oc.MatvecParams):
        if p.inp_parts > 0:  # the attention partitions and their (max, sum), combined while staged
            yield from _named([("inp", p.inp), ("inp_stats", p.inp_stats)])
        elif p.inp != oc.NO_BUFFER:
            fused = p.norm_weight != oc.NO_BUFFER and 0 <= p.weight < len(buffers)
            span = (p.inp_off, buffers[p.weight].cols) if fused else (p.inp_off + p.k0, p.klen)
            yield ParamBuffer("inp", int(p.inp), True, (span,))
        if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != oc.NO_BUFFER:
            yield ParamBuffer("epi.out", int(p.epi.out), True, ((p.epi.out_off + p.row0, p.rows),))
    elif isinstance(p, oc.EpilogueTaskParams):
        pair = p.epi.pair_offset
        spans = [r for k in range(p.splits) for r in _rows(p.src_off + k * p.stride + p.row0, p.rows, pair)]
        yield ParamBuffer("src", int(p.src), True, tuple(spans))
        if Epilogue(p.epi.kind) == Epilogue.RESIDUAL_ADD and p.epi.out != oc.NO_BUFFER:
            yield ParamBuffer("epi.out", int(p.epi.out), True, ((p.epi.out_off + p.row0, p.rows),))
    elif isinstance(p, (oc.AttnDecodeParams, oc.AttnScoresParams, oc.AttnPartialParams)):
        yield from _named([("q", p.q)])
    elif isinstance(p, oc.AttnCombineParams):
        yield from _named([("partial", p.partial), ("part_stats", p.part_stats)])


def check(program, report, tname) -> None:
    """Every buffer a task's params write is one the task (or its join, whose last task writes for it) declares
    writing, else the hazard check cannot see the write, and none is a weight; every activation its params read
    is one it (or its join) declares reading; every buffer its params read as weights is one; where the params
    give element ranges, the declared regions cover them. `report(kind_name, message, tasks, buffers)` as
    validate's; a task whose opcode and params do not match, or whose params name no buffer, is left to the ABI
    check."""
    bufs, weight = program.buffers, BufferKind.WEIGHT
    join_writes: dict[int, list] = {}
    join_reads: dict[int, list] = {}
    for jn in program.joins:
        for t in jn.tasks:
            join_writes.setdefault(t, []).extend(jn.writes)
            join_reads.setdefault(t, []).extend(jn.reads)
    for tid, t in enumerate(program.tasks):
        if type(t.params) is not oc.PARAMS_OF.get(t.opcode):
            continue
        try:
            out, wts, ins = list(written(t.params)), list(weights(t.params)), list(read(t.params, bufs))
        except ValueError:  # an unknown epilogue kind
            continue
        for access, found, declared in (("writ", out, list(t.writes) + join_writes.get(tid, [])),
                                        ("read", ins, list(t.reads) + join_reads.get(tid, []))):
            for pb in found:
                if not 0 <= pb.buffer < len(bufs):
                    continue
                why = _undeclared(pb, bufs[pb.buffer], declared, access)
                if why:
                    report("ABI", f"{tname(tid)}: {pb.path}={pb.buffer} {why}", (tid,), (bufs[pb.buffer].name,))
        for pb in wts:
            if 0 <= pb.buffer < len(bufs) and bufs[pb.buffer].kind != weight:
                b = bufs[pb.buffer]
                report("ABI", f"{tname(tid)}: {pb.path}={pb.buffer} names {b.kind.value} buffer {b.name}, read as "
                       "model weights", (tid,), (b.name,))


def _undeclared(pb: ParamBuffer, b, declared, access: str) -> str | None:
    """Why the params' access `pb` ("writ"ten or "read") of buffer `b` escapes the `declared` regions, or None."""
    what, doing = ("write", "writing") if access == "writ" else ("read", "reading")
    if access == "writ" and b.kind == BufferKind.WEIGHT:
        return f"names weight buffer {b.name}: a write would change the model"
    if access == "writ" and pb.kv_cache and b.kind != BufferKind.KV:
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
    end = start
    for r in sorted(regions, key=lambda r: r.start):
        if r.start > end:
            break
        end = max(end, r.start + r.length)
        if end >= start + length:
            return True
    return length <= 0 or end >= start + length
