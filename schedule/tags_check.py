"""The validator's rules for tagged streams (schedule/tags.py), where a hand-edited program could break them: a
reader expecting a version another write makes would read stale values or spin until it times out, a carried wait
whose producers write more than the reader sees would leave those writes unordered, and a tag the kernel would
not act on as the program says would do either."""

from __future__ import annotations

from collections import Counter

from . import param_buffers
from .opcodes import NO_BUFFER, DType, Epilogue, Opcode
from .program import BufferKind, Region
from .tags import (
    CarryVerdicts,
    Stream,
    adds_into_x,
    aligned_slice,
    norms_x,
    read_tag,
    stages_plain,
    tagged_read,
    write_tag,
)

KIND = "TAGGED_READ"
_NAME = {Stream.X: "x", Stream.HIDDEN: "the hidden row"}
_WORDS = {Stream.X: "x_tags", Stream.HIDDEN: "h_tags"}


def check(program, report, tname, fields: param_buffers.TaskFields | None = None) -> None:
    """Hold `program`'s tags to schedule/tags.py's rules. `report(kind_name, message, tasks, buffers)` as
    validate's. Checks, for each stream the build tags: its words buffer (int32 scratch of its own, two words a
    value, not the other stream's); the writes of the stream in stage order writing versions 0, 1, ... (X_VERSIONS /
    H_VERSIONS of them), no writer of it without tags; each tagged read expecting the version the last write before
    its stage makes, where the kernel reads it; the words each task's tags read and write declared among its
    regions (the hazard check then orders and bounds them), and no params field naming a words buffer; and each
    carried wait being one of the task's waits, on a counter that only writers of what the task reads tagged, at
    the version it reads, signal. `fields`: the program's param_buffers.TaskFields where another check shares
    them."""
    tasks, build = program.tasks, program.build
    x = _x_region(program, report)
    streams = {s: int(build.get(f"{s.value}_TAGS", NO_BUFFER)) for s in Stream}
    for t in tasks:
        for s in Stream:
            if streams[s] != NO_BUFFER or (write_tag(t, s) < 0 and read_tag(t, s) < 0):
                continue
            plain = " (a matvec without a fused RMSNorm of x reads the hidden row)" if read_tag(t, s) >= 0 \
                and s is Stream.HIDDEN else ""
            report(KIND, f"{tname(t.id)} has tags of {_NAME[s]}{plain}, but the build names no {_WORDS[s]} buffer "
                         f"({s.value}_TAGS -1): the kernel would store none, or read its input untagged, so no tag "
                         "orders it", (t.id,))
    if NO_BUFFER != streams[Stream.X] == streams[Stream.HIDDEN]:
        report(KIND, f"build X_TAGS and H_TAGS name one buffer ({streams[Stream.X]}): the hidden row's words would "
                     "overwrite x's")
        return
    ok = {Stream.X: x is not None and streams[Stream.X] != NO_BUFFER
          and _words_ok(program, report, Stream.X, x.length),
          Stream.HIDDEN: streams[Stream.HIDDEN] != NO_BUFFER
          and _words_ok(program, report, Stream.HIDDEN, program.constants.intermediate)}
    if ok[Stream.X]:
        _check_x(program, x, report, tname)
    if ok[Stream.HIDDEN]:
        _check_hidden(program, program.constants.intermediate, report, tname)
    _check_declared_words(program, x, {s: streams[s] for s in Stream if ok[s]}, report, tname,
                          fields if fields is not None else param_buffers.TaskFields(program))
    _check_carried(tasks, x, program.build, report, tname)


def _x_region(program, report) -> Region | None:
    embeds = [t for t in program.tasks if t.opcode == Opcode.EMBED]
    if len(embeds) != 1:
        if int(program.build.get("X_TAGS", NO_BUFFER)) != NO_BUFFER:
            report(KIND, f"the program has {len(embeds)} embedding tasks, where the tags of x need one to find x")
        return None
    e = embeds[0].params
    if not all(type(v) is int for v in (e.out, e.out_off, e.dim)):
        return None  # a malformed embedding: the ABI check names the field
    return Region(e.out, e.out_off, e.dim)


def _words_ok(program, report, stream: Stream, length: int) -> bool:
    words = int(program.build.get(f"{stream.value}_TAGS"))
    if not 0 <= words < len(program.buffers):
        report(KIND, f"build {stream.value}_TAGS={words} names no buffer of the program")
        return False
    b = program.buffers[words]
    if b.kind != BufferKind.SCRATCH or b.dtype != DType.I32 or b.arena != NO_BUFFER or b.numel < 2 * length:
        report(KIND, f"build {stream.value}_TAGS={words} ({b.name}) must be an int32 scratch buffer of its own with "
                     f"two words a value of {_NAME[stream]} ({2 * length}), not {b.kind.value} {b.dtype.name} "
                     f"[{b.numel}]", buffers=(b.name,))
        return False
    return True


def _versions(program, stream: Stream, writers, report, tname) -> dict[int, int] | None:
    """stage -> the version of `stream` its tagged writers write, held to 0, 1, ... in stage order; None (after a
    report) where they are not."""
    version: dict[int, int] = {}
    for t in writers:
        v = write_tag(t, stream)
        if version.setdefault(t.stage, v) != v:
            report(KIND, f"{tname(t.id)} writes version {v} of {_NAME[stream]} where its stage writes "
                         f"{version[t.stage]}", (t.id,))
    stages = sorted(version)
    key = f"{stream.value}_VERSIONS"
    if [version[s] for s in stages] != list(range(len(stages))) or int(program.build.get(key, 0)) != len(stages):
        report(KIND, f"the stages that write {_NAME[stream]} write versions {[version[s] for s in stages]} and the "
                     f"build counts {program.build.get(key)}: they must be 0, 1, ... in stage order, {len(stages)} "
                     "of them")
        return None
    return version


def _last_before(version: dict[int, int], stage: int) -> int:
    return max((v for s, v in version.items() if s < stage), default=-1)


class _LastBefore:
    """_last_before of each stage asked, worked out once a stage (its readers are many)."""

    def __init__(self, version: dict[int, int]):
        self.version, self.memo = version, {}

    def __call__(self, stage) -> int:
        if type(stage) is not int:  # a malformed stage fails as _last_before fails on it
            return _last_before(self.version, stage)
        got = self.memo.get(stage)
        if got is None:
            got = self.memo[stage] = _last_before(self.version, stage)
        return got


def _check_x(program, x: Region, report, tname) -> None:
    tasks = program.tasks
    for t in tasks:
        try:
            why = _ignored_x_tag(t, x, program.buffers)
        except (TypeError, AttributeError):  # a malformed field: the ABI check names it
            continue
        if why:
            report(KIND, f"{tname(t.id)}: {why}", (t.id,))
    writers = []
    for t in tasks:
        v = write_tag(t, Stream.X)
        if v >= 0:
            writers.append(t)
        elif any(w.buffer == x.buffer and w.start < x.end and x.start < w.end for w in t.writes) or _adds(t, x):
            report(KIND, f"{tname(t.id)} writes x without its tags: a tagged read of x would miss it", (t.id,))
    version = _versions(program, Stream.X, writers, report, tname)
    if version is None:
        return
    last_before = _LastBefore(version)
    for t in tasks:
        last = None
        expects = []
        if write_tag(t, Stream.X) > 0:
            expects.append((f"{'epi.x_tag' if t.opcode != Opcode.EMBED else 'tag'} - 1", write_tag(t, Stream.X) - 1))
        if read_tag(t, Stream.X) >= 0:
            expects.append(("inp_tag", read_tag(t, Stream.X)))
        for field, v in expects:
            last = last_before(t.stage) if last is None else last
            if v != last:
                report(KIND, f"{tname(t.id)} reads version {v} of x ({field}) where the last write before its stage "
                             f"is version {last}", (t.id,))


def _adds(t, x: Region) -> bool:
    """Is `t` a residual add into x by its params (as its own task, a reduce stage's, or a k-split join's last)?"""
    try:
        return t.opcode in (Opcode.MATVEC, Opcode.EPILOGUE) and adds_into_x(t.params, x)
    except (TypeError, AttributeError):
        return False


def _x_read_length(t, bufs) -> int:
    """How many values of x the kernel reads for `t`'s tagged RMSNorm: an RMSNORM task's dim, a fused norm's K
    (the weight's columns)."""
    if t.opcode == Opcode.RMSNORM:
        return t.params.dim
    w = t.params.weight
    return bufs[w].cols if type(w) is int and 0 <= w < len(bufs) else -1


def _ignored_x_tag(t, x: Region, bufs) -> str | None:
    """Why the kernel would not act on `t`'s tags of x as the program says, or None. The kernel reads and writes
    x's words by element index whatever the task's buffer fields say, and acts on a tag only where lowering gives
    one: an embedding; a residual add (MATVEC or EPILOGUE) into x; an RMSNorm of x, fused into a matvec whose
    input is not in attention partitions, or its own RMSNORM task."""
    p = t.params
    if t.opcode == Opcode.EMBED:
        return None
    epi = getattr(p, "epi", None)
    if epi is not None and write_tag(t, Stream.X) >= 0 and not adds_into_x(p, x):
        return (f"epi.x_tag={epi.x_tag} on an epilogue that is no residual add into x (kind {epi.kind}, out "
                f"{epi.out}+{epi.out_off}): the kernel would store no tag there, or store one for another buffer")
    if read_tag(t, Stream.X) >= 0:
        if not (p.inp == x.buffer and p.inp_off == x.start):
            return (f"inp_tag={p.inp_tag} on an input that is not x (inp {p.inp}+{p.inp_off}): the kernel would read "
                    "x's tagged words in its place")
        if not norms_x(t):
            return (f"inp_tag={p.inp_tag} on a matvec whose input the kernel combines from attention partitions, "
                    "untagged: no tag orders it")
        n = _x_read_length(t, bufs)
        if n != x.length:
            return (f"inp_tag={p.inp_tag} on an RMSNorm of {n} values, where x holds {x.length}: the tags it reads "
                    "cannot stand for every write of x (nor can the words past x's be read)")
    return None


def _check_hidden(program, inter: int, report, tname) -> None:
    tasks = program.tasks
    writers = []
    for t in tasks:
        epi = getattr(t.params, "epi", None)
        v = write_tag(t, Stream.HIDDEN)
        silu = t.opcode in (Opcode.MATVEC, Opcode.EPILOGUE) and epi is not None and epi.kind == Epilogue.SILU_MUL
        if v >= 0 and not silu:
            report(KIND, f"{tname(t.id)}: epi.h_tag={v} on an epilogue that is no SiLU-mul: the kernel would store no "
                         "tag there, and the readers of that version would spin to a time-out", (t.id,))
        elif silu and v < 0:
            report(KIND, f"{tname(t.id)} writes the hidden row without its tags: a tagged read of it would miss it",
                   (t.id,))
        elif v >= 0:
            writers.append(t)
    version = _versions(program, Stream.HIDDEN, writers, report, tname)
    if version is None:
        return
    places: dict[int, Counter] = {}  # version -> how many of its writers write it where
    for t in writers:
        places.setdefault(write_tag(t, Stream.HIDDEN), Counter())[(t.params.epi.out, t.params.epi.out_off)] += 1
    value = {v: Region(*n.most_common(1)[0][0], inter) for v, n in places.items()}  # where most of them write it
    for t in writers:
        v, epi = write_tag(t, Stream.HIDDEN), t.params.epi
        if (epi.out, epi.out_off) != (value[v].buffer, value[v].start):
            report(KIND, f"{tname(t.id)} writes version {v} of the hidden row at {epi.out}+{epi.out_off}, where the "
                         f"other writers of it write at {value[v].buffer}+{value[v].start}: the kernel indexes the "
                         "words by row", (t.id,))
    readers = [t for t in tasks if read_tag(t, Stream.HIDDEN) >= 0]
    last_before = _LastBefore(version)
    for t in readers:
        p, v = t.params, read_tag(t, Stream.HIDDEN)
        last = last_before(t.stage)
        if v != last:
            report(KIND, f"{tname(t.id)} reads version {v} of the hidden row (inp_tag) where the last write before "
                         f"its stage is version {last}", (t.id,))
        elif not stages_plain(t):
            report(KIND, f"{tname(t.id)}: inp_tag={v} on a matvec whose input the kernel combines from attention "
                         "partitions, untagged: no tag orders it", (t.id,))
        elif (p.inp, p.inp_off) != (value[v].buffer, value[v].start) or p.k0 < 0 or p.k0 + p.klen > inter:
            report(KIND, f"{tname(t.id)} reads the hidden row tagged from {p.inp}+{p.inp_off} [{p.k0}, +{p.klen}), "
                         f"where version {v} is written at {value[v].buffer}+{value[v].start} [0, {inter}): the "
                         "kernel would read the words of other values", (t.id,))
        elif not aligned_slice(p.k0, p.klen):
            report(KIND, f"{tname(t.id)} reads the hidden row tagged over [{p.k0}, +{p.klen}): the kernel reads a "
                         "non-empty slice's words four at a time from a multiple of four and would miss its tail",
                   (t.id,))
    # a write into a version's value after its tagged write and before its last tagged read: the readers would see
    # the tagged words, not it
    last_read: dict[int, int] = {}
    last_reader: dict[int, int] = {}
    for t in readers:
        v = read_tag(t, Stream.HIDDEN)
        if t.stage > last_read.get(v, -1):
            last_read[v], last_reader[v] = t.stage, t.id
    by_stage: dict[int, list] = {}
    for t in tasks:
        by_stage.setdefault(t.stage, []).append(t)
    for first, v in version.items():
        r = value.get(v)
        for stage in (s for s in by_stage if r is not None and first <= s <= last_read.get(v, first)):
            for t in by_stage[stage]:
                if write_tag(t, Stream.HIDDEN) != v and any(
                        w.buffer == r.buffer and w.start < r.end and r.start < w.end for w in t.writes):
                    report(KIND, f"{tname(t.id)} writes version {v}'s hidden row without its tags before "
                                 f"{tname(last_reader[v])} reads that version tagged: the tagged reads would miss "
                                 "it", (t.id, last_reader[v]))


def _expected_words(t, x: Region | None, bufs) -> list[tuple[Stream, bool, int, int]]:
    """(stream, write?, first word, words) of each access the kernel makes of a stream's words for `t`'s tags
    (none for a tag it does not act on: the checks above name those)."""
    p, out = t.params, []
    if write_tag(t, Stream.X) >= 0 and x is not None:
        if t.opcode == Opcode.EMBED:
            out.append((Stream.X, True, 0, 2 * p.dim))
        elif _adds(t, x):  # a residual add: the version before its own, then its own
            out += [(Stream.X, True, 2 * p.row0, 2 * p.rows), (Stream.X, False, 2 * p.row0, 2 * p.rows)]
    if read_tag(t, Stream.X) >= 0 and norms_x(t):
        out.append((Stream.X, False, 0, 2 * _x_read_length(t, bufs)))
    if write_tag(t, Stream.HIDDEN) >= 0 and t.opcode in (Opcode.MATVEC, Opcode.EPILOGUE) \
            and p.epi.kind == Epilogue.SILU_MUL:
        out.append((Stream.HIDDEN, True, 2 * p.row0, 2 * p.rows))
    if read_tag(t, Stream.HIDDEN) >= 0 and stages_plain(t):
        out.append((Stream.HIDDEN, False, 2 * p.k0, 2 * p.klen))
    return out


def _spans(regions) -> list[tuple[int, int]]:
    """The union of `regions` (one buffer's) as sorted, disjoint [start, end) spans."""
    out: list[list[int]] = []
    for r in sorted(regions, key=lambda r: r.start):
        if r.length <= 0:
            continue
        if out and r.start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], r.end)
        else:
            out.append([r.start, r.end])
    return [tuple(s) for s in out]


def _check_declared_words(program, x: Region | None, words: dict, report, tname, fields) -> None:
    """The words each task's tags make the kernel write and read are regions it (or its join, for a split's last
    task) declares, so that the hazard check orders them and bounds them; no params field names a words buffer,
    which only tags write and read. `words`: stream -> its buffer id, for the streams whose buffer checked out;
    `fields`: the program's param_buffers.TaskFields."""
    stream_of = {b: s for s, b in words.items()}
    join_regions: dict[int, tuple[list, list]] = {}
    for jn in program.joins:
        for tid in jn.tasks:
            w, r = join_regions.setdefault(tid, ([], []))
            w.extend(jn.writes)
            r.extend(jn.reads)
    bufs = program.buffers
    for i, t in enumerate(program.tasks):
        try:
            p = t.params
            found = [*fields.written(i, p), *fields.read(i, p), *fields.weights(i, p)]
            expected = _expected_words(t, x, bufs)
        except (TypeError, AttributeError, ValueError):  # a malformed field: the ABI check names it
            continue
        for pb in found:
            if pb.buffer in stream_of:
                report(KIND, f"{tname(t.id)}: {pb.path}={pb.buffer} names the {_WORDS[stream_of[pb.buffer]]} buffer, "
                             "which only the tags of its stream write and read", (t.id,))
        jw, jr = join_regions.get(t.id, ([], []))
        if not words or _no_words(expected, words, stream_of, (t.writes, jw, t.reads, jr)):
            continue
        for stream, b in words.items():
            for write, mine in ((True, list(t.writes) + jw), (False, list(t.reads) + jr)):
                want = _spans([Region(b, a, n) for s, w, a, n in expected if s is stream and w == write])
                have = _spans([r for r in mine if r.buffer == b])
                if want == have:
                    continue
                verb = "writes" if write else "reads"
                report(KIND, f"{tname(t.id)} (or its join) declares that it {verb} {_WORDS[stream]} {have or 'nowhere'}"
                             f", where its tags make the kernel {verb[:-1]} {want or 'none of it'}: the hazard check "
                             "must see exactly the words the tags touch, to order and bound them", (t.id,))


def _no_words(expected, words: dict, stream_of: dict, regions) -> bool:
    """Whether a task neither touches a checked stream's words through its tags nor declares a region of their
    buffers, so that every comparison of _check_declared_words holds (both sides empty). Anything odd (a
    malformed region) answers False, for the comparisons themselves to judge."""
    if any(e[0] in words for e in expected):
        return False
    try:
        return not any(r.buffer in stream_of for rs in regions for r in rs)
    except Exception:  # noqa: BLE001
        return False


def _check_carried(tasks, x: Region | None, build: dict, report, tname) -> None:
    verdicts = CarryVerdicts(tasks)
    for t in tasks:
        if not t.carried:
            continue
        read = tagged_read(t, x, build)
        waited = {w.counter for w in t.waits}
        if all(read_tag(t, s) < 0 for s in Stream):
            report(KIND, f"{tname(t.id)} carries the waits on counters {list(t.carried)} but reads no tagged input "
                         "(inp_tag -1)", (t.id,))
            continue
        for k in t.carried:
            if k not in waited:
                report(KIND, f"{tname(t.id)} carries counter {k}, which it does not wait on", (t.id,))
            elif read is None or not verdicts(k, read):
                report(KIND, f"{tname(t.id)} carries its wait on counter {k}, but the tags cannot: it must read with "
                             "tags everything that every task signalling the counter writes (all of x for a reader "
                             "of x), at the version they write, and those tasks must write nothing else", (t.id,))
