"""The tagged residual stream (build.tagged_residual): which write of x each task makes or reads, and which of
its waits the tags carry.

Every task that writes the residual stream x (the embedding, a residual add) also stores each value it writes
as one 8-byte word, (fp32 value, tag), in the program's `x_tags` buffer; the tag names the step and the version
of x, the number of stages that wrote x before this one in the step (the embedding writes version 0). An 8-byte
store lands whole, so a reader that sees the tag it expects holds that write's value; no fence or counter orders
the two. A task that reads x as an RMSNorm's input (a matvec with the norm fused, or an RMSNORM task) spins on
the tags of the values it reads, and where every task signalling one of its counters writes only x, at the
version it reads, that wait is carried: the kernel never polls the counter. The poll and the read were two
dependent L2 round trips at each boundary; the tagged read is one. NCCL's LL protocol moves data with its flags
the same way.

The ReferenceVM and the hazard check see a carried wait as the wait it is: the tags change how the kernel learns
that the producers are done, not what it waits for. validate.check_tags holds a program to these rules.
"""

from __future__ import annotations

import dataclasses

from .buffers import BufferTable, Placement
from .config import ScheduleConfig
from .errors import LoweringError
from .opcodes import NO_BUFFER, DType, Epilogue, Opcode
from .program import BufferKind, Region, Task
from .stages import Stage

X_TAGS_BUFFER = "x_tags"


def attach_tags(stages: list[Stage], tasks: list[Task], buffers: BufferTable, placement: dict[str, Placement],
                hidden: int, config: ScheduleConfig, build: dict[str, int]) -> None:
    """Give each task that writes x the version it writes, each reader of x the version it reads, and each
    reader its carried waits; add the `x_tags` buffer (int32 [2 * hidden]: one 8-byte word a value) and
    build X_TAGS (its id, or -1 with the tags off) and X_VERSIONS (writes of x a step). Raises LoweringError
    for a task that writes x and cannot store tags (no such task is lowered today)."""
    build["X_TAGS"], build["X_VERSIONS"] = NO_BUFFER, 0
    if not config.build.tagged_residual or "x" not in placement:
        return
    x = Region(placement["x"].buffer, placement["x"].offset, hidden)
    writes, reads = stage_versions(stages)
    build["X_TAGS"] = buffers.add(X_TAGS_BUFFER, BufferKind.SCRATCH, DType.I32, 2 * hidden)
    build["X_VERSIONS"] = len(writes)
    for t in tasks:
        if t.stage in writes or t.stage in reads:
            t.params = tagged_params(t, x, writes.get(t.stage, -1), reads.get(t.stage, -1))
    by_counter: dict[int, list[Task]] = {}
    for t in tasks:
        for k in t.signals:
            by_counter.setdefault(k, []).append(t)
    verdicts: dict[tuple[int, int], bool] = {}  # (counter, version): a stage's readers share its counters
    for t in tasks:
        tag = read_tag(t)
        if tag >= 0 and reads_all(t, x):
            t.carried = tuple(w.counter for w in t.waits if _carries_cached(verdicts, by_counter, w.counter, tag, x))


def stage_versions(stages: list[Stage]) -> tuple[dict[int, int], dict[int, int]]:
    """(stage index -> the version of x it writes, stage index -> the version it reads): versions count the
    stages that write x, in stage order; a residual add reads the version before its own."""
    writes: dict[int, int] = {}
    reads: dict[int, int] = {}
    for st in sorted(stages, key=lambda s: s.index):
        if "x" in st.reads and writes:
            reads[st.index] = len(writes) - 1
        if "x" in st.writes:
            writes[st.index] = len(writes)
    return writes, reads


def _is_x(buffer: int, offset: int, x: Region) -> bool:
    return buffer == x.buffer and offset == x.start


def adds_into_x(p, x: Region) -> bool:
    """Is the epilogue of params `p` a residual add into x, the only one whose tags the kernel stores?"""
    return p.epi.kind == Epilogue.RESIDUAL_ADD and _is_x(p.epi.out, p.epi.out_off, x)


def norms_x(t: Task) -> bool:
    """Does the kernel read `t`'s input as an RMSNorm's, where it takes a tagged read (an RMSNORM task, or a matvec
    with the norm fused whose input is not in attention partitions)? Whether that input is x is _is_x's."""
    p = t.params
    return t.opcode == Opcode.RMSNORM or (t.opcode == Opcode.MATVEC and p.norm_weight != NO_BUFFER and p.inp_parts == 0)


def tagged_params(t: Task, x: Region, write: int, read: int):
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
    if read >= 0 and norms_x(t) and _is_x(p.inp, p.inp_off, x):
        p = dataclasses.replace(p, inp_tag=read)
    return p


def write_tag(t: Task) -> int:
    """The version of x that `t` writes with tags, or -1 (also for a malformed field, which the ABI check names)."""
    v = t.params.tag if t.opcode == Opcode.EMBED else getattr(getattr(t.params, "epi", None), "x_tag", -1)
    return v if type(v) is int else -1


def read_tag(t: Task) -> int:
    """The version of x that `t` reads as its RMSNorm's input, spinning on the tags, or -1 (as write_tag)."""
    v = getattr(t.params, "inp_tag", -1) if t.opcode in (Opcode.MATVEC, Opcode.RMSNORM) else -1
    return v if type(v) is int else -1


def reads_all(t: Task, x: Region) -> bool:
    """Does `t` declare a read of every element of x? (An RMSNorm needs the whole row.)"""
    return any(r.buffer == x.buffer and r.start <= x.start and r.end >= x.end for r in t.reads)


def _carries_cached(verdicts: dict, by_counter: dict, counter: int, tag: int, x: Region) -> bool:
    key = (counter, tag)
    if key not in verdicts:
        verdicts[key] = carries(by_counter.get(counter, ()), tag, x)
    return verdicts[key]


def carries(signallers, tag: int, x: Region) -> bool:
    """Do tagged values carry a wait on a counter these tasks signal, for a reader of all of x at version
    `tag`? Each must write x at that version and write nothing else: the reader sees every one of them done
    when it sees its values, and nothing else they wrote is left unordered."""
    return bool(signallers) and all(
        write_tag(s) == tag and all(w.buffer == x.buffer and x.start <= w.start and w.end <= x.end for w in s.writes)
        for s in signallers)


def ignored_tag(t: Task, x: Region) -> str | None:
    """Why the kernel would not act on `t`'s tags as the program says, or None. The kernel reads and writes the
    tagged words by x's element index whatever the task's buffer fields say, and acts on a tag only where lowering
    gives one: an embedding; a residual add (MATVEC or EPILOGUE) into x; an RMSNorm of x, fused into a matvec
    whose input is not in attention partitions, or its own RMSNORM task."""
    p = t.params
    if t.opcode == Opcode.EMBED:
        return None
    epi = getattr(p, "epi", None)
    if epi is not None and write_tag(t) >= 0 and not adds_into_x(p, x):
        return (f"epi.x_tag={epi.x_tag} on an epilogue that is no residual add into x (kind {epi.kind}, out "
                f"{epi.out}+{epi.out_off}): the kernel would store no tag there, or store one for another buffer")
    if read_tag(t) >= 0:
        if not _is_x(p.inp, p.inp_off, x):
            return (f"inp_tag={p.inp_tag} on an input that is not x (inp {p.inp}+{p.inp_off}): the kernel would read "
                    "x's tagged words in its place")
        if not norms_x(t):
            return (f"inp_tag={p.inp_tag} on a matvec without a fused RMSNorm of x: the kernel reads its input "
                    "untagged, so no tag orders it")
    elif t.carried:
        return f"carries the waits on counters {list(t.carried)} but reads no tagged input (inp_tag -1)"
    return None


def check(program, report, tname) -> None:
    """Hold `program`'s tags to the rules of the module docstring, where a hand-edited program could break them:
    a reader expecting a version another write makes would read stale values or spin until it times out, and a
    carried wait whose producers write more than x would leave those writes unordered. `report(kind_name,
    message, tasks, buffers)` as validate's. Checks: the `x_tags` buffer the build names (int32, two words a value
    of x); every task that writes x (the embedding's rows) stores tags, the stages in order writing versions 0, 1,
    ... (X_VERSIONS of them), and no other writes them; each tagged read expects the version the last write
    before its stage makes; each carried wait is one of the task's waits, on a counter that only writers of all
    x at the version it reads signal, for a task that reads all of x."""
    tasks, build = program.tasks, program.build
    words = int(build.get("X_TAGS", NO_BUFFER))
    tagged = [t for t in tasks if write_tag(t) >= 0 or read_tag(t) >= 0 or t.carried]
    if words == NO_BUFFER:
        for t in tagged:
            report("TAGGED_READ", f"{tname(t.id)} has tags or carried waits, but the build names no x_tags buffer "
                                  "(X_TAGS -1): the kernel would store no tag and poll no carried counter", (t.id,))
        return
    embeds = [t for t in tasks if t.opcode == Opcode.EMBED]
    if not 0 <= words < len(program.buffers) or len(embeds) != 1:
        report("TAGGED_READ", f"build X_TAGS={words} names no buffer of the program, or the program has "
                              f"{len(embeds)} embedding tasks where the tags need one to find x")
        return
    b, e = program.buffers[words], embeds[0].params
    if not all(type(v) is int for v in (e.out, e.out_off, e.dim)):
        return  # a malformed embedding: the ABI check names the field
    x = Region(e.out, e.out_off, e.dim)
    if b.kind != BufferKind.SCRATCH or b.dtype != DType.I32 or b.arena != NO_BUFFER or b.numel < 2 * x.length:
        report("TAGGED_READ", f"build X_TAGS={words} ({b.name}) must be an int32 scratch buffer of its own with two "
                              f"words a value of x ({2 * x.length}), not {b.kind.value} {b.dtype.name} [{b.numel}]",
               buffers=(b.name,))
        return
    for t in tagged:
        try:
            why = ignored_tag(t, x)
        except (TypeError, AttributeError):  # a malformed field: the ABI check names it
            continue
        if why:
            report("TAGGED_READ", f"{tname(t.id)}: {why}", (t.id,))
    version: dict[int, int] = {}  # stage -> the version its tasks write
    for t in tasks:
        v = write_tag(t)
        writes_x = any(w.buffer == x.buffer and w.start < x.end and x.start < w.end for w in t.writes)
        if writes_x and v < 0:
            report("TAGGED_READ", f"{tname(t.id)} writes x without its tags: a tagged read of x would miss it", (t.id,))
        elif v >= 0 and version.setdefault(t.stage, v) != v:
            report("TAGGED_READ", f"{tname(t.id)} writes version {v} of x where its stage writes {version[t.stage]}",
                   (t.id,))
    stages = sorted(version)
    if [version[s] for s in stages] != list(range(len(stages))) or int(build.get("X_VERSIONS", 0)) != len(stages):
        report("TAGGED_READ", f"the stages that write x write versions {[version[s] for s in stages]} and the build "
                              f"counts {build.get('X_VERSIONS')}: they must be 0, 1, ... in stage order, "
                              f"{len(stages)} of them")
        return
    by_counter: dict[int, list[Task]] = {}
    for t in tasks:
        for k in t.signals:
            by_counter.setdefault(k, []).append(t)
    verdicts: dict[tuple[int, int], bool] = {}
    before = {}  # stage -> the last version written before it
    for t in tagged:
        if t.stage not in before:
            before[t.stage] = max((version[s] for s in stages if s < t.stage), default=-1)
        last = before[t.stage]
        expects = [(f"{'epi.x_tag' if t.opcode != Opcode.EMBED else 'tag'} - 1", write_tag(t) - 1)] \
            if write_tag(t) > 0 else []
        expects += [("inp_tag", read_tag(t))] if read_tag(t) >= 0 else []
        for field, v in expects:
            if v != last:
                report("TAGGED_READ", f"{tname(t.id)} reads version {v} of x ({field}) where the last write before "
                                      f"its stage is version {last}", (t.id,))
        waited = {w.counter for w in t.waits}
        for k in t.carried:
            if k not in waited:
                report("TAGGED_READ", f"{tname(t.id)} carries counter {k}, which it does not wait on", (t.id,))
            elif (read_tag(t) < 0 or not reads_all(t, x)
                  or not _carries_cached(verdicts, by_counter, k, read_tag(t), x)):
                report("TAGGED_READ", f"{tname(t.id)} carries its wait on counter {k}, but the tags cannot: it must "
                                      "read all of x with tags, at the version that every task signalling the counter "
                                      "writes, and those tasks must write nothing but x", (t.id,))
