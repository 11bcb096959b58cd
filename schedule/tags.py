"""Tagged streams (build.tagged_residual, build.tagged_hidden): which write of a stream each task makes or reads,
and which of its waits the tags carry.

Two streams can be tagged: the residual stream x, and the MLP's hidden row (SiLU(gate) * up: gate/up's output,
down's input; a value `L<layer>.act` a layer, every layer's sharing one words buffer). Every task that writes a
tagged stream (for x the embedding and each residual add, for the hidden row each SiLU-mul epilogue) also stores
each value it writes as one 8-byte word, (fp32 value, tag), in the stream's words buffer (`x_tags`, `h_tags`),
indexed by the value's element index; the tag names the step and the version of the stream, the number of
stages that wrote it before this one in the step (x's embedding writes version 0, a layer's gate/up the hidden
row's version `layer`). An 8-byte store lands whole, so a reader that sees the tag it expects holds that write's
value; no fence or counter orders the two. A task that reads a tagged stream as its input spins on the tags of the
values it reads: for x an RMSNorm's input (a matvec with the norm fused, or an RMSNORM task), for the hidden row
the input slice of a matvec without a fused norm (down). Where every task signalling one of its counters writes
only values the reader reads that way, at the version it reads, that wait is carried: the kernel never polls the
counter. The poll and the read were two dependent L2 round trips at each boundary; the tagged read is one. NCCL's
LL protocol moves data with its flags the same way.

The ReferenceVM and the hazard check see a carried wait as the wait it is: the tags change how the kernel learns
that the producers are done, not what it waits for. The ReferenceVM stores and reads the words as the kernel does,
and stops where a read finds another tag (vm/tag_words.py); schedule/tags_check.py holds a program to these rules.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from .buffers import BufferTable, Placement
from .config import ScheduleConfig
from .errors import LoweringError
from .opcodes import NO_BUFFER, DType, Epilogue, Opcode
from .program import BufferKind, Join, Region, Task
from .stages import Stage

X_TAGS_BUFFER = "x_tags"
H_TAGS_BUFFER = "h_tags"


class Stream(enum.Enum):
    """A stream the kernel can tag, by the build key prefix of its words buffer and version count."""

    X = "X"  # the residual stream x
    HIDDEN = "H"  # the MLP's hidden row, SiLU(gate) * up


class TaggedRead(NamedTuple):
    """What a task reads spinning on tags: `region` (elements of the stream's value) at `version`, through the
    words `words`."""

    stream: Stream
    version: int
    region: Region
    words: Region


def is_hidden_value(name: str) -> bool:
    """Is value `name` a layer's hidden row (`L<layer>.act`)?"""
    return name.rsplit(".", 1)[-1] == "act"


def attach_tags(stages: list[Stage], tasks: list[Task], joins: list[Join], buffers: BufferTable,
                placement: dict[str, Placement], hidden: int, intermediate: int, config: ScheduleConfig,
                build: dict[str, int]) -> None:
    """Give each task that writes a tagged stream the version it writes, each reader the version it reads, and
    each reader its carried waits; add each stream's words buffer (int32 [2 * its length]: one 8-byte word a
    value) and build X_TAGS / H_TAGS (its id, or -1 with the stream untagged) and X_VERSIONS / H_VERSIONS (its
    writes a step); declare the words each task and join reads and writes through its tags, so that the hazard
    check orders them as it orders the values (every layer's hidden row shares one words buffer). Raises
    LoweringError for a task that writes a tagged stream and cannot store its tags (no such task is lowered
    today)."""
    build.update(X_TAGS=NO_BUFFER, X_VERSIONS=0, H_TAGS=NO_BUFFER, H_VERSIONS=0)
    x = Region(placement["x"].buffer, placement["x"].offset, hidden) if "x" in placement else None
    if config.build.tagged_residual and x is not None:
        writes, reads = stage_versions(stages, lambda name: name == "x")
        words = build["X_TAGS"] = buffers.add(X_TAGS_BUFFER, BufferKind.SCRATCH, DType.I32, 2 * hidden)
        build["X_VERSIONS"] = len(writes)
        for t in tasks:
            if t.stage in writes or t.stage in reads:
                t.params = x_params(t, x, writes.get(t.stage, -1), reads.get(t.stage, -1))
                declare_words(t, Stream.X, x, words)
        _declare_join_words(tasks, joins, Stream.X, lambda t: x, words)
    if config.build.tagged_hidden:
        writes, reads = stage_versions(stages, is_hidden_value)
        if writes:
            words = build["H_TAGS"] = buffers.add(H_TAGS_BUFFER, BufferKind.SCRATCH, DType.I32, 2 * intermediate)
            build["H_VERSIONS"] = len(writes)
            by_stage = {st.index: st for st in stages}
            value_of: dict[int, Region] = {}  # task id -> the hidden row it writes or reads
            for t in tasks:
                st = by_stage[t.stage]
                if t.stage in writes:
                    value_of[t.id] = _value(st.writes, placement, intermediate)
                    t.params = hidden_write_params(t, value_of[t.id], writes[t.stage])
                elif t.stage in reads:
                    value_of[t.id] = _value(st.reads, placement, intermediate)
                    t.params = hidden_read_params(t, value_of[t.id], reads[t.stage])
                else:
                    continue
                declare_words(t, Stream.HIDDEN, value_of[t.id], words)
            _declare_join_words(tasks, joins, Stream.HIDDEN, lambda t: value_of.get(t.id), words)
    attach_carried(tasks, x, build)


def word_regions(regions, value: Region, words: int) -> tuple[Region, ...]:
    """The words of `value` (a stream's value, element e at words 2 (e - value.start) and the next) that
    `regions` touch, as regions of buffer `words`."""
    out = []
    for r in regions:
        if r.buffer == value.buffer:
            a, b = max(r.start, value.start), min(r.end, value.end)
            if a < b:
                out.append(Region(words, 2 * (a - value.start), 2 * (b - a)))
    return tuple(out)


def declare_words(t: Task, stream: Stream, value: Region, words: int) -> None:
    """Add to `t`'s regions the words it writes and reads through its tags: a tagged writer writes the words of
    the elements it writes (and, a residual add, reads them: the version before its own); a tagged reader reads
    the words of the elements it reads."""
    w = write_tag(t, stream) >= 0
    if w:
        t.writes = t.writes + word_regions(t.writes, value, words)
    if read_tag(t, stream) >= 0 or (w and stream is Stream.X and t.opcode != Opcode.EMBED):
        t.reads = t.reads + word_regions(t.reads, value, words)


def _declare_join_words(tasks: list[Task], joins: list[Join], stream: Stream, value_of, words: int) -> None:
    """A join whose last task runs a tagged epilogue (a k-split's last split) writes, and reads, those words."""
    for i, jn in enumerate(joins):
        first = tasks[jn.tasks[0]]
        value = value_of(first)
        if value is None or write_tag(first, stream) < 0:
            continue
        reads = word_regions(jn.reads, value, words) if stream is Stream.X else ()
        joins[i] = dataclasses.replace(jn, writes=jn.writes + word_regions(jn.writes, value, words),
                                       reads=jn.reads + reads)


def _value(names: list[str], placement: dict[str, Placement], length: int) -> Region:
    name = next(n for n in names if is_hidden_value(n))
    return Region(placement[name].buffer, placement[name].offset, length)


def stage_versions(stages: list[Stage], of_stream) -> tuple[dict[int, int], dict[int, int]]:
    """(stage index -> the version of the stream it writes, stage index -> the version it reads), for the stream
    whose value names `of_stream(name)` accepts: versions count the stages that write it, in stage order; a
    stage that reads and writes it (a residual add) reads the version before its own."""
    writes: dict[int, int] = {}
    reads: dict[int, int] = {}
    for st in sorted(stages, key=lambda s: s.index):
        if any(of_stream(n) for n in st.reads) and writes:
            reads[st.index] = len(writes) - 1
        if any(of_stream(n) for n in st.writes):
            writes[st.index] = len(writes)
    return writes, reads


def _is_at(buffer: int, offset: int, value: Region) -> bool:
    return buffer == value.buffer and offset == value.start


def adds_into_x(p, x: Region) -> bool:
    """Is the epilogue of params `p` a residual add into x, the only one whose x tags the kernel stores?"""
    return p.epi.kind == Epilogue.RESIDUAL_ADD and _is_at(p.epi.out, p.epi.out_off, x)


def norms_x(t: Task) -> bool:
    """Does the kernel read `t`'s input as an RMSNorm's, where it takes a tagged read of x (an RMSNORM task, or a
    matvec with the norm fused whose input is not in attention partitions)? Whether that input is x is _is_at's."""
    p = t.params
    return t.opcode == Opcode.RMSNORM or (t.opcode == Opcode.MATVEC and p.norm_weight != NO_BUFFER and p.inp_parts == 0)


def stages_plain(t: Task) -> bool:
    """Does the kernel stage `t`'s input as it is, where it takes a tagged read of the hidden row (a matvec without
    a fused norm whose input is not in attention partitions)?"""
    p = t.params
    return t.opcode == Opcode.MATVEC and p.norm_weight == NO_BUFFER and p.inp_parts == 0


def aligned_slice(k0: int, klen: int) -> bool:
    """Can the kernel read words [k0, k0 + klen) tagged? It reads them four at a time from 16-byte boundaries."""
    return k0 % 4 == 0 and klen % 4 == 0 and klen > 0


def x_params(t: Task, x: Region, write: int, read: int):
    """`t`'s params with the tags of its access to x: the version it writes (`write`, -1: none) and reads."""
    p = t.params
    if t.opcode == Opcode.EMBED and write >= 0:
        return dataclasses.replace(p, tag=write)
    if t.opcode in (Opcode.MATVEC, Opcode.EPILOGUE):
        if write >= 0 and adds_into_x(p, x):
            p = dataclasses.replace(p, epi=dataclasses.replace(p.epi, x_tag=write))
    elif write >= 0:
        raise LoweringError("build.tagged_residual", f"task {t.id} ({t.kind}, {t.opcode.name}) writes the residual "
                                                     "stream but cannot store its tags; set it false")
    if read >= 0 and norms_x(t) and _is_at(p.inp, p.inp_off, x):
        p = dataclasses.replace(p, inp_tag=read)
    return p


def hidden_write_params(t: Task, value: Region, version: int):
    """`t`'s params with the hidden row's version it writes: a SiLU-mul epilogue into the layer's value."""
    p = t.params
    epi = getattr(p, "epi", None)
    if t.opcode not in (Opcode.MATVEC, Opcode.EPILOGUE) or epi.kind != Epilogue.SILU_MUL \
            or not _is_at(epi.out, epi.out_off, value):
        raise LoweringError("build.tagged_hidden", f"task {t.id} ({t.kind}, {t.opcode.name}) writes the MLP's "
                                                   "hidden row but cannot store its tags; set it false")
    return dataclasses.replace(p, epi=dataclasses.replace(epi, h_tag=version))


def hidden_read_params(t: Task, value: Region, version: int):
    """`t`'s params with the hidden row's version it reads, where the kernel can read its slice tagged; the
    others (an unaligned k-split slice) poll as they would untagged."""
    p = t.params
    if stages_plain(t) and _is_at(p.inp, p.inp_off, value) and aligned_slice(p.k0, p.klen):
        return dataclasses.replace(p, inp_tag=version)
    return p


def _int(v) -> int:
    return v if type(v) is int else -1


# the members these helpers compare against, looked up once (an enum member's lookup is a descriptor call on
# Python 3.11, and the validator asks these of every task a dozen times)
_X, _HIDDEN = Stream.X, Stream.HIDDEN
_EMBED, _RMSNORM, _MATVEC = Opcode.EMBED, Opcode.RMSNORM, Opcode.MATVEC


def write_tag(t: Task, stream: Stream) -> int:
    """The version of `stream` that `t` writes with tags, or -1 (also for a malformed field, which the ABI check
    names)."""
    if stream is _X:
        v = t.params.tag if t.opcode == _EMBED else getattr(getattr(t.params, "epi", None), "x_tag", -1)
    else:
        v = getattr(getattr(t.params, "epi", None), "h_tag", -1)
    return v if type(v) is int else -1


def read_stream(t: Task) -> Stream | None:
    """Which stream `t`'s inp_tag names: x for an RMSNORM task or a matvec with the norm fused, the hidden row for
    a matvec without one; None for other opcodes."""
    op = t.opcode
    if op == _RMSNORM:
        return _X
    if op == _MATVEC:
        return _X if getattr(t.params, "norm_weight", NO_BUFFER) != NO_BUFFER else _HIDDEN
    return None


def read_tag(t: Task, stream: Stream) -> int:
    """The version of `stream` that `t` reads spinning on the tags, or -1 (as write_tag)."""
    return _int(getattr(t.params, "inp_tag", -1)) if read_stream(t) is stream else -1


def reads_all(t: Task, x: Region) -> bool:
    """Does `t` declare a read of every element of x? (An RMSNorm needs the whole row.)"""
    return any(r.buffer == x.buffer and r.start <= x.start and r.end >= x.end for r in t.reads)


def tagged_read(t: Task, x: Region | None, build: dict) -> TaggedRead | None:
    """What `t` reads tagged, where the tags could carry its waits: all of x for a reader of x that declares the
    whole row; its input slice for a reader of the hidden row. None otherwise, or where `build` names no words
    buffer for the stream."""
    stream = read_stream(t)
    if stream is None:
        return None
    v, words = read_tag(t, stream), int(build.get(f"{stream.value}_TAGS", NO_BUFFER))
    if v < 0 or words == NO_BUFFER:
        return None
    if stream is Stream.X:
        ok = x is not None and reads_all(t, x)
        return TaggedRead(stream, v, x, Region(words, 0, 2 * x.length)) if ok else None
    p = t.params
    return TaggedRead(stream, v, Region(p.inp, p.inp_off + p.k0, p.klen), Region(words, 2 * p.k0, 2 * p.klen))


def _inside(w: Region, r: Region) -> bool:
    return w.buffer == r.buffer and r.start <= w.start and w.end <= r.end


def carries(signallers, read: TaggedRead) -> bool:
    """Do tagged values carry a wait on a counter these tasks signal, for `read`? Each must write the stream at the
    version read and write nothing outside the region read and its words: the reader sees every one of them done
    when it sees its values, and nothing else they wrote is left unordered."""
    return bool(signallers) and all(
        write_tag(s, read.stream) == read.version
        and all(_inside(w, read.region) or _inside(w, read.words) for w in s.writes)
        for s in signallers)


def signallers_of(tasks: list[Task]) -> dict[int, list[Task]]:
    """Counter id -> the tasks that signal it."""
    by_counter: dict[int, list[Task]] = {}
    for t in tasks:
        for k in t.signals:
            by_counter.setdefault(k, []).append(t)
    return by_counter


class CarryVerdicts:
    """carries() over counters, cached by (counter, read): a stage's readers share their counters and reads."""

    def __init__(self, tasks: list[Task]):
        self.by_counter = signallers_of(tasks)
        self.cache: dict[tuple, bool] = {}

    def __call__(self, counter: int, read: TaggedRead) -> bool:
        key = (counter, read)
        if key not in self.cache:
            self.cache[key] = carries(self.by_counter.get(counter, ()), read)
        return self.cache[key]


def attach_carried(tasks: list[Task], x: Region | None, build: dict) -> None:
    """Set each tagged reader's carried waits: those on counters whose every signaller its tagged read sees."""
    verdicts = None
    for t in tasks:
        read = tagged_read(t, x, build)
        if read is not None:
            verdicts = verdicts or CarryVerdicts(tasks)
            t.carried = tuple(w.counter for w in t.waits if verdicts(w.counter, read))
