"""Knobs that cannot act in their context: the one rule set behind the verdict's notes and the search.

A knob is inert when, under the rest of the config (and the GPU target, where given), no value of it changes
what the kernel does: `attention.softmax` with one KV partition, `build.l2_prefetch_kb` without an L2
prefetch, `sm.explicit_map` under another assignment policy. Such a knob may still change the config's
schedule_id (and sometimes the build), so an edit of it would look like a new trial while measuring noise.
evaluate() names every inert knob set off its default in the verdict's `notes`; the search never moves one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .assign import assign_sms
from .config import (
    INFLIGHT_KB_CHOICES,
    AttentionSoftmax,
    ScheduleConfig,
    SmAssignment,
    SmConfig,
    get_path,
    iter_knobs,
    to_jsonable,
    value_text,
    with_value,
    with_values,
)
from .opcodes import DType
from .program import MegakernelProgram
from .smem import consumer_threads, pages_in_flight
from .targets import GpuTarget

# the pages' own knobs: they act only where there are pages
_PAGE_KNOBS = ("pipeline.page_kb", "pipeline.inflight_kb")

# the cpu-sim stand-in runs no kernel: correctness runs on the ReferenceVM and the cost model prices the
# program, and neither models these build knobs. The pipeline's pages are not among them: they change the
# lowering (the derived tiling prices a paged task by its bytes, and the pages take shared memory) and the
# cost model prices them, so a config with pages is another program there too (STAND_IN_UNSEARCHED)
_NO_KERNEL_BUILD_KNOBS = ("build.spin_backoff_ns",)
# ...and knobs that act on the stand-in but that its search leaves at their defaults: the cost model prices
# the pages' stream as hidden under the dependency waits, the design's intent, while the H200 measured every
# paged config slower than the register path (llama-3.2-1b: 1059.7-1072.2 against 923.4 us,
# bench/results/20261201-1100_h200_llama-3.2-1b_bf16_boundary_probes.json); with no kernel to measure, a
# search there would only chase that assumption
STAND_IN_UNSEARCHED = ("pipeline.pages", "matvec.o.reduce")
# ...each with why, where it is not the pages' (unsearched_reason's own text)
_STAND_IN_REASONS = {
    "matvec.o.reduce": ("and ranks the O split over KV heads with the last split's reduce faster than the unsplit "
                        "default, for the partition bytes it saves O's combine, while an H200 measured that staging "
                        "bound mostly by a fixed latency and the split 1.05-1.06x slower on three shapes "
                        "(bench/results/20261204-1700_h200_o_split_over_kv_heads.json)"),
}

# ...and knobs whose every value prices the same there (schedule/cost.py), each with why: on the stand-in a move
# of one only spends a trial on +0.00%
_UNPRICED_KNOBS = {
    "pipelining_depth": "the cost model prices the L2 prefetch as none",
    "build.l2_prefetch_kb": "it caps the L2 prefetch, which the cost model prices as none",
    "scratch": "the cost model does not price scratch placement",
    "build.tagged_residual": ("the cost model prices a wait the same whether the producers' counter or the tags of the "
                              "values carry it"),
    "build.tagged_hidden": ("the cost model prices a wait the same whether the producers' counter or the tags of the "
                            "values carry it"),
    "attention.head_warps": ("the cost model prices an attention task the same whatever warps share its q heads, and "
                             "the ReferenceVM runs no warps"),
    "pipeline.page_kb": ("the cost model reads the page size only where the pages' bytes in flight cap an SM's "
                         "stream, which they never do at the stand-in's bandwidth share"),
    "pipeline.inflight_kb": ("the cost model reads the copies in flight only where they cap an SM's stream, which "
                             "they never do at the stand-in's bandwidth share"),
}

# ...of which these predict alike on a GPU target too (the page knobs' reason is the stand-in's bandwidth share)
_PREDICTED_ALIKE = (*(k for k in _UNPRICED_KNOBS if k not in _PAGE_KNOBS), *_NO_KERNEL_BUILD_KNOBS)


# knob -> why it cannot act in an ATTN_DECODE task, and in the global softmax's scores and values tasks
_PARTITION_TASK_KNOBS = {
    "attention.q_splits": ("whose q heads do not split",
                           "take whole KV heads; only the partition softmax splits a KV head's q heads"),
    "attention.head_warps": ("which spreads its q heads itself",
                             "spread their q heads themselves; only the partition softmax's tasks take warps a q head"),
}


@dataclass(frozen=True)
class InertKnob:
    """A knob set off its default that has no effect under the rest of the config."""

    path: str  # dotted, e.g. "attention.softmax"
    value: object  # its JSON value
    reason: str  # why it cannot act, naming the knobs (or target) that make it so

    def note(self) -> str:
        return f"{self.path}={value_text(self.value)} has no effect: {self.reason}"


def inert_reason(config: ScheduleConfig, path: str, target: GpuTarget | None = None) -> str | None:
    """Why the knob at dotted `path` cannot change what runs under the rest of `config` on `target`, or None
    when it can (or when that depends on the model's shape, which the lowering decides)."""
    att = config.attention
    if path in ("attention.softmax", "attention.combine", "attention.partials_dtype") and att.kv_partitions == 1:
        return ("with attention.kv_partitions=1 each KV head is one attention task: no partitions to normalise "
                "or combine")
    if path in _PARTITION_TASK_KNOBS:  # only the partition softmax's tasks (ATTN_PARTIAL) read these
        one_task, other_tasks = _PARTITION_TASK_KNOBS[path]
        if att.kv_partitions == 1:
            return f"with attention.kv_partitions=1 each KV head is one ATTN_DECODE task, {one_task}"
        if att.softmax != AttentionSoftmax.PARTITION:
            return f"with attention.softmax={att.softmax.value} the scores and values tasks {other_tasks}"
    if path == "build.l2_prefetch_kb":
        if config.pipelining_depth == 0:
            return "it caps the L2 prefetch, which only pipelining_depth > 0 issues (pipelining_depth=0)"
        if config.pipeline.pages > 0:
            return (f"with pipeline.pages={config.pipeline.pages} the pipelined weights go into shared-memory pages, "
                    "not L2")
    if path in ("build.loads_in_flight", "build.rows_in_flight") and config.pipeline.pages > 0:
        return (f"with pipeline.pages={config.pipeline.pages} a producer warp streams the weights; these shape the "
                "consumers' register stream, which only pipeline.pages=0 uses")
    if path in _PAGE_KNOBS and config.pipeline.pages == 0:
        return "with pipeline.pages=0 there are no pages"
    if path.startswith("matvec.") and path.endswith(".reduce"):
        splits = get_path(config, path.rsplit(".", 1)[0] + ".k_splits")
        if splits == 1:
            return f"with {path.rsplit('.', 1)[0]}.k_splits=1 there are no partial sums to reduce"
    if path == "sm.explicit_map" and config.sm.assignment != SmAssignment.EXPLICIT:
        return f"only sm.assignment=explicit reads it (sm.assignment={config.sm.assignment.value})"
    return target_inert_reason(path, target)


def target_inert_reason(path: str, target: GpuTarget | None) -> str | None:
    """Why the knob at `path` cannot act on `target` whatever the rest of the config, or None."""
    if target is not None and path in _PAGE_KNOBS and target.lacks_bulk_copies:
        return (f"{target.name} has no bulk copies (cp.async.bulk), so it runs no pipeline pages "
                "(pipeline.pages=0 only)")
    if target is not None and target.arch == "none" and path in _NO_KERNEL_BUILD_KNOBS:
        return (f"{target.name} is a CPU stand-in that runs no kernel: the ReferenceVM and the cost model do not "
                "model it")
    if target is not None and target.arch == "none" and path in _UNPRICED_KNOBS:
        return (f"{target.name} is a CPU stand-in whose predicted latency is the same for every value of it "
                f"({_UNPRICED_KNOBS[path]}); only a GPU measures it")
    return None


_FP32_PARTIALS = "the model's dtype is fp32, and the partitions' outputs are fp32 already"


def dtype_inert_reason(path: str, dtype: str | None) -> str | None:
    """Why the knob at `path` cannot act on a model of `dtype` ("fp32", "fp16", "bf16"; None: any) whatever the
    rest of the config, or None: `attention.partials_dtype` on fp32, where "model" is fp32 too."""
    if dtype == "fp32" and path == "attention.partials_dtype":
        return _FP32_PARTIALS
    return None


def unsearched_reason(path: str, target: GpuTarget | None, predicted: bool = False) -> str | None:
    """Why the search leaves the knob at `path` at its default on `target` although the knob acts there (an
    inert knob is never searched either: target_inert_reason), or None. `predicted`: the run has no GPU, so a GPU
    target's latencies are the cost model's too (priced_alike_reason)."""
    if target is None or path not in STAND_IN_UNSEARCHED:
        return None
    why = _STAND_IN_REASONS.get(path, "as hiding the weight stream under the waits, which an H200 measured slower")
    if target.arch == "none":
        return f"on {target.name}, a CPU stand-in, the cost model alone prices it {why}; set it by hand, or search it on a GPU"
    if predicted:
        return (f"with no GPU, {target.name}'s latency is predicted, and the cost model alone prices it {why}; "
                "search it on a GPU")
    return None


def priced_alike_reason(path: str, target: GpuTarget | None, predicted: bool) -> str | None:
    """Why every value of the knob at `path` predicts the same latency for a GPU `target` when the run has no GPU
    (`predicted`): the knob acts on the GPU, but the cost model (schedule/cost.py) does not price it. None where a
    GPU measures it, or where `target` is the CPU stand-in, whose rules are target_inert_reason's."""
    if not predicted or target is None or target.arch == "none" or path not in _PREDICTED_ALIKE:
        return None
    why = _UNPRICED_KNOBS.get(path, "the cost model does not model it")
    return (f"with no GPU, {target.name}'s latency is predicted, the same for every value of it ({why}); "
            "only a GPU measures it")


def priced_alike_notes(config: ScheduleConfig, target: GpuTarget | None, predicted: bool,
                       skip: set[str] = frozenset()) -> list[str]:
    """A note for each knob `config` sets off its default whose values all predict alike on `target` with no GPU
    (priced_alike_reason), or that only the cost model prices there, against what a GPU measured (unsearched_reason:
    pipeline.pages, matvec.o.reduce), save those in `skip` (already named as having no effect)."""
    default = ScheduleConfig()
    # pipelining_depth is priced with pages (the prediction notes it itself where not, cost.py); the stand-in's
    # unsearched knobs are priced, but by an assumption a GPU contradicted, so that a predicted gain misleads
    kinds = [(p, priced_alike_reason, " is not priced") for p in _PREDICTED_ALIKE if p != "pipelining_depth"]
    kinds += [(p, unsearched_reason, "") for p in STAND_IN_UNSEARCHED]
    out = []
    for path, reason, says in kinds:
        value = get_path(config, path)
        why = None if path in skip or value == get_path(default, path) else reason(path, target, predicted)
        if why:
            out.append(f"{path}={value_text(to_jsonable(value))}{says}: {why}")
    return out


def with_derived(config: ScheduleConfig, derived: dict | None) -> ScheduleConfig:
    """`config` with each knob it leaves null (derived) set to the lowering's value in `derived` (dotted path ->
    value, a program's meta["derived"]): what the inert rules read."""
    todo = {p: v for p, v in (derived or {}).items() if get_path(config, p) is None}
    # the derived knobs are leaves left null: setting one changes no other's value, so all are set in one parse
    return with_values(config, todo) if todo else config


def inert_knobs(config: ScheduleConfig, target: GpuTarget | None = None, derived: dict | None = None) -> list[InertKnob]:
    """Every knob of `config` set off its default that cannot act, in declaration order. `derived` (dotted path ->
    value, a program's meta["derived"]) fills the knobs left null with what the lowering derived for them, so that a
    knob made inert by a derived value (`attention.combine` where kv_partitions is derived to 1) is named too."""
    default = ScheduleConfig()
    resolved = with_derived(config, derived)
    out = []
    for path, _, _ in iter_knobs():
        value = to_jsonable(get_path(config, path))
        if value == to_jsonable(get_path(default, path)):
            continue
        reason = inert_reason(resolved, path, target)
        if reason is not None:
            by = [p for p in (derived or {}) if p in reason and get_path(config, p) is None]
            if by:
                reason += f" ({', '.join(by)} derived from the model's shape and the GPU)"
            out.append(InertKnob(path, value, reason))
    return out


def program_inert_knobs(config: ScheduleConfig, program: MegakernelProgram, skip: set[str] = frozenset()) -> list[InertKnob]:
    """The knobs set off their default that cannot act on `program` (lowered from `config`) for a reason only the
    model or the program shows, which inert_knobs cannot see from the config: `attention.partials_dtype=fp32` on an
    fp32 model (whose partitions are fp32 under either value), and an `sm.assignment` that places every task where
    the default assignment does (a program with fewer tasks than SMs, say). Paths in `skip` (already named inert)
    are left out. A value above the most a program of this model tells apart (value_caps: a matvec's row tiling
    above its rows) is named too."""
    out = []
    default = ScheduleConfig()
    att = config.attention
    if (att.partials_dtype != default.attention.partials_dtype and program.constants.dtype == DType.F32
            and "attention.partials_dtype" not in skip):
        out.append(InertKnob("attention.partials_dtype", att.partials_dtype.value, _FP32_PARTIALS))
    warps, built = att.head_warps, int(program.build.get("HEAD_WARPS", 0))
    if warps is not None and built and "attention.head_warps" not in skip:
        group, consumers, derived = _head_warps_of(program)
        if built == derived:
            skip = skip | {"attention.head_warps"}
            out.append(InertKnob("attention.head_warps", warps,
                                 f"{consumers} consumer warps over a task's {group} q heads give "
                                 f"{'at most ' if built < warps else ''}{built} warps a q head, the derived value"))
    for cap in value_caps(config, program):
        reason = cap.inert_reason(get_path(config, cap.path), get_path(default, cap.path))
        if reason is not None and cap.path not in skip:
            out.append(InertKnob(cap.path, get_path(config, cap.path), reason))
    policy = config.sm.assignment
    if policy not in (default.sm.assignment, SmAssignment.EXPLICIT) and "sm.assignment" not in skip:
        if _placement(program, default.sm) == [t.sm for t in program.tasks]:
            out.append(InertKnob("sm.assignment", policy.value,
                                 f"it places each of the program's {len(program.tasks)} tasks on the SM the default "
                                 f"({default.sm.assignment.value}) does, over {len(program.queues)} SMs"))
    return out


def _head_warps_of(program: MegakernelProgram) -> tuple[int, int, int]:
    """(q heads of a partition task, consumer warps, the warps a q head the lowering derives for them)."""
    from .autotile import head_warps  # here: autotile imports tile, which imports this module

    group = program.constants.n_heads // program.constants.n_kv_heads // int(program.build.get("Q_SPLITS", 1))
    consumers = consumer_threads(program.threads_per_block, program.build) // 32
    return group, consumers, head_warps(group, consumers)


# matvec role -> (its ProgramConstants rows, the words for them) for value_caps' row tilings
_ROW_TILINGS = {
    "o": (lambda c: c.hidden, "the O projection's"),
    "gate_up": (lambda c: c.intermediate, "the gate/up projection's"),
    "down": (lambda c: c.hidden, "the down projection's"),
    "lm_head": (lambda c: c.vocab, "the LM head's"),
}


@dataclass(frozen=True)
class ValueCap:
    """A knob whose values from `cap` up all lower to one program: the most a program of this model tells apart."""

    path: str
    cap: int
    reason: str  # why values above `cap` act as it, naming what bounds it

    def alike(self, a: int | None, b: int | None) -> bool:
        """Whether values `a` and `b` (both set) lower to the same program."""
        return a is not None and b is not None and min(a, self.cap) == min(b, self.cap)

    def settle(self, was: int | None, now: int | None) -> int | None:
        """The value a search move from `was` to `now` comes to: `was` where the two lower alike, the cap itself
        for a move past it (the same program), else `now`."""
        if was != now and self.alike(was, now):
            return was
        return self.cap if now is not None and now > self.cap else now

    def inert_reason(self, value: int | None, default: int | None) -> str | None:
        """Why `value` (set in a config) has no effect, or None where it has one."""
        if value is None or value <= self.cap:
            return None
        return f"beyond {self.cap}: {self.reason}; the program is the one at {self.cap}"


@dataclass(frozen=True)
class ValueClasses:
    """A knob whose values build in classes, one program a class: `built` pairs each of its choices with what the
    kernel is built with under the rest of the config (values alike where that is equal)."""

    path: str
    built: tuple[tuple[int, int], ...]
    reason: str  # why a value off the default acts as the default: {built}, {value} and {default} filled in

    def _of(self, value: int | None) -> int | None:
        return dict(self.built).get(value)

    def alike(self, a: int | None, b: int | None) -> bool:
        """Whether values `a` and `b` (both set) build the same program."""
        return a is not None and b is not None and self._of(a) is not None and self._of(a) == self._of(b)

    def settle(self, was: int | None, now: int | None) -> int | None:
        """`was` where a search move from it to `now` builds the same program, else `now`."""
        return was if was != now and self.alike(was, now) else now

    def inert_reason(self, value: int | None, default: int | None) -> str | None:
        """Why `value`, set off the knob's `default`, has no effect (it builds the default's program), or None."""
        if value == default or not self.alike(value, default):
            return None
        return self.reason.format(built=self._of(value), value=value, default=default)


def value_caps(config: ScheduleConfig, program: MegakernelProgram) -> list[ValueCap | ValueClasses]:
    """The knobs of `config` whose values above a bound lower to the same `program` (lowered from `config`): a
    matvec's `rows_per_task` (every value from its rows up is one task a row block; schedule/tile.py _row_tiles),
    `matvec.qkv.heads_per_task` (from its q, k and v heads up), and `attention.head_warps` where partition tasks
    run (from what the consumer warps give a task's q heads up; vm/attention_partitions.cuh); and, with pages,
    `pipeline.inflight_kb` in classes of the copies in flight each value builds (smem.pages_in_flight: 0 and
    the values from all the pages up are alike, as are those under one page). The search sets a move between two
    values alike back to the incumbent's (search/rounds.py)."""
    c = program.constants
    caps = [ValueCap(f"matvec.{role}.rows_per_task", rows(c), f"{words} {rows(c)} rows are one task")
            for role, (rows, words) in _ROW_TILINGS.items()]
    heads = c.n_heads + 2 * c.n_kv_heads
    caps.append(ValueCap("matvec.qkv.heads_per_task", heads, f"the QKV projection's {heads} q, k and v heads are one task"))
    pipe = config.pipeline
    if pipe.pages > 0:
        caps.append(ValueClasses("pipeline.inflight_kb",
                                 tuple((kb, pages_in_flight(dataclasses.replace(pipe, inflight_kb=kb)))
                                       for kb in INFLIGHT_KB_CHOICES),
                                 f"with {pipe.pages} pages of {pipe.page_kb} KiB it allows the same copies in flight "
                                 f"as the default {{default}} ({{built}})"))
    if int(program.build.get("HEAD_WARPS", 0)):
        from .autotile import max_head_warps  # here: autotile imports tile, which imports this module

        group, consumers, _ = _head_warps_of(program)
        most = max_head_warps(group, consumers)
        caps.append(ValueCap("attention.head_warps", most, f"{consumers} consumer warps over a task's {group} q heads "
                                                              f"give at most {most} warps a q head"))
    return caps


def taken_as_derived(config: ScheduleConfig, program: MegakernelProgram) -> list[str]:
    """The knobs `config` sets whose value `program` (lowered from it) takes as the one it derives for null, so that
    setting them back to null gives the same program: attention.head_warps at or above what the warps give a
    partition task's q heads, where that is the derived count too."""
    built = int(program.build.get("HEAD_WARPS", 0))
    if config.attention.head_warps is None or not built:
        return []
    return ["attention.head_warps"] if built == _head_warps_of(program)[2] else []


def derived_alike(config: ScheduleConfig, program: MegakernelProgram, dims, target: GpuTarget,
                  skip: set[str] = frozenset()) -> list[tuple[str, object]]:
    """(path, value) of each knob `config` sets to the very value the lowering would derive for it were it null
    under the rest of `config` (autotile.resolve, for `program`'s dtype and positions), save those in `skip`:
    the program is the one null gives, and a null would go on following the shape where this value does not."""
    from .autotile import resolve  # here: autotile imports tile, which imports this module

    nbytes, seq = DType(program.constants.dtype).nbytes, program.constants.max_seq
    default = ScheduleConfig()
    out = []
    for path, _, _ in iter_knobs(ScheduleConfig):
        value = get_path(config, path)
        if path in skip or value is None or get_path(default, path) is not None:  # derived knobs default to null
            continue
        _, values = resolve(with_value(config, path, None), dims, nbytes, target, seq)
        if path in values and values[path] == to_jsonable(value):
            out.append((path, to_jsonable(value)))
    return out


def _placement(program: MegakernelProgram, sm: SmConfig) -> list[int]:
    """The SM of each task of `program` under assignment `sm` (the program itself is left as it is)."""
    tasks = [dataclasses.replace(t) for t in program.tasks]
    assign_sms(tasks, program.counters, program.constants, len(program.queues), sm)
    return [t.sm for t in tasks]
