"""ScheduleConfig: the one object a coding agent edits.

Every field carries its own bounds and a one-line account of what it changes (in `metadata`), so
the strict parser (config_parse.py), the JSON schema and the search space all read the same facts. Here: the
config classes and their JSON form.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .config_guard import FieldGuard
from .config_guard import UnknownFieldError as UnknownFieldError  # raised by a misspelt field's assignment
from .config_migrate import MOVED_KNOBS as MOVED_KNOBS
from .config_migrate import MovedKnob as MovedKnob
from .config_migrate import migrate_config as migrate_config
from .config_parse import EXPLICIT_MAP_KINDS as EXPLICIT_MAP_KINDS
from .config_parse import MAX_SM_ID as MAX_SM_ID
from .config_parse import MESSAGE_VALUE_CHARS as MESSAGE_VALUE_CHARS
from .config_parse import _copy_default, _parse_leaf, _parse_plan, parse_dataclass
from .config_parse import field_default as field_default
from .config_parse import json_kind as json_kind
from .config_parse import json_value as json_value
from .config_parse import optional_base as optional_base
from .errors import ConfigError


class SmAssignment(str, Enum):
    ROUND_ROBIN = "round_robin"
    BYTES_BALANCED = "bytes_balanced"
    LIST_SCHEDULING = "list_scheduling"
    EXPLICIT = "explicit"


class ScratchPolicy(str, Enum):
    NONE = "none"  # every activation its own buffer
    LINEAR = "linear"  # one arena, each activation its own range
    LIVENESS = "liveness"  # one arena, ranges reused once a value is dead


class SyncGranularity(str, Enum):
    STAGE = "stage"  # one counter per stage
    HEAD = "head"  # QKV signals one counter per KV head, so attention starts per head


class AttentionSoftmax(str, Enum):
    GLOBAL = "global"  # eager's rounding: partitions wait for every partition's (max, sum) before the values
    PARTITION = "partition"  # each partition normalises by its own (max, sum); the combine rescales


class AttentionCombine(str, Enum):
    LAST_PARTITION = "last_partition"  # the last partition task of a KV head to finish combines the head, once
    O_INPUT = "o_input"  # every O projection task combines the partitions of its input slice while staging it
    STAGE = "stage"  # a combine stage of one task per KV head between attention and O


class SplitReduce(str, Enum):
    STAGE = "stage"  # a reduce stage of its own sums a row block's k-split partials and runs the epilogue
    LAST_TASK = "last_task"  # the last split task of a row block to finish sums them, as the stage would, and runs it


class PartialsDtype(str, Enum):
    FP32 = "fp32"  # partition outputs as the fp32 sums the attention computed
    MODEL = "model"  # rounded to the model's dtype: half the bytes a combine reads (bf16, fp16), one rounding more


def knob(default, *, help: str, choices=None, minimum=None, maximum=None, search=None):
    """A config field. `choices`/`minimum`/`maximum` bound what parses; `search` lists the values the
    search explores (defaults to `choices`). A field annotated `int | None` or `bool | None` also parses null,
    which means "derived from the model's shape and the GPU at lowering"; its default may be None."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
            "search": search if search is not None else choices}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: _copy_default(default), metadata=meta)
    return field(default=default, metadata=meta)


MAX_ROWS_PER_TASK = 1 << 20  # RowTiling.rows_per_task's bound, which the derived tiling keeps to too


@dataclass
class RowTiling(FieldGuard):
    rows_per_task: int | None = knob(None, help="output rows one task computes (null: derived from the model's "
                                                "shape and the GPU's SM count, schedule/autotile.py)",
                                     minimum=1, maximum=MAX_ROWS_PER_TASK, search=[8, 16, 32, 64, 128, 256, 512])
    k_splits: int = knob(1, help="split the reduction dimension over this many tasks (a reduce task finishes)",
                         minimum=1, maximum=16, search=[1, 2, 4])
    reduce: SplitReduce = knob(SplitReduce.STAGE,
                               help="with k_splits > 1, who sums a row block's partial sums (in split order) and "
                                    "runs the epilogue: 'stage' a reduce stage of its own after the splits; "
                                    "'last_task' the last split task of the row block to finish (an arrival "
                                    "counter says which), so that no stage boundary follows. (On the O projection "
                                    "a split task, under either, waits only for the attention of the KV heads "
                                    "whose q heads its slice holds)",
                               choices=list(SplitReduce))


@dataclass
class QkvTiling(FieldGuard):
    heads_per_task: int = knob(1, help="q/k/v heads one QKV task computes (RoPE needs whole heads)",
                               minimum=1, maximum=1024, search=[1, 2, 4, 8])
    head_splits: int | None = knob(None, help="split each q/k/v head over this many QKV tasks; each takes rows i "
                                              "and i + head_dim/2 together, the pairs RoPE rotates (needs "
                                              "heads_per_task=1, k_splits=1 and, with RoPE fused, a model without "
                                              "q/k norm; null: derived from the shape, 1 where those do not hold)",
                                   minimum=1, maximum=32, search=[1, 2, 4])
    k_splits: int = knob(1, help="split the reduction dimension over this many tasks (a reduce task finishes)",
                         minimum=1, maximum=16, search=[1, 2, 4])


@dataclass
class MatvecConfig(FieldGuard):
    qkv: QkvTiling = knob(QkvTiling(), help="QKV projection tiling")
    o: RowTiling = knob(RowTiling(), help="attention output projection tiling")
    gate_up: RowTiling = knob(RowTiling(), help="gate/up projection tiling (rows of the activation)")
    down: RowTiling = knob(RowTiling(), help="down projection tiling")
    lm_head: RowTiling = knob(RowTiling(), help="LM head tiling")


@dataclass
class AttentionConfig(FieldGuard):
    kv_partitions: int | None = knob(None, help="split each KV head's positions over this many tasks, then combine "
                                                "(null: derived, about one attention task per SM)",
                                     minimum=1, maximum=64, search=[1, 2, 4, 8, 16])
    q_splits: int | None = knob(None, help="with attention.softmax partition over kv_partitions > 1, split each KV "
                                           "head's GQA group of q heads over this many tasks a partition, each "
                                           "reading the partition's K and V rows for its share of the q heads: "
                                           "more attention tasks where KV heads are few; must divide the group "
                                           "(q heads a KV head) (null: derived, the most splits that keep the "
                                           "attention tasks to one per two SMs)",
                                minimum=1, maximum=64, search=[1, 2, 4])
    head_warps: int | None = knob(None, help="with attention.softmax partition over kv_partitions > 1, warps that "
                                             "share a q head of a partition task (each over a share of the "
                                             "positions, merged after one block barrier; 1: no barrier); more than "
                                             "the consumer warps over the task's q heads (at least 1) act as that "
                                             "many (null: derived, 2 where the warps allow, else 1)",
                                  minimum=1, maximum=32, search=[1, 2, 4])
    sync: SyncGranularity = knob(SyncGranularity.HEAD, help="counter granularity between QKV and attention",
                                 choices=list(SyncGranularity))
    softmax: AttentionSoftmax = knob(AttentionSoftmax.PARTITION,
                                     help="with kv_partitions > 1: 'global' scores, then values from the global "
                                          "(max, sum), then a sum (3 stages, eager's rounding of probabilities); "
                                          "'partition' scores and values in one task per partition under its own "
                                          "(max, sum), probabilities kept in fp32, then a combine that rescales them "
                                          "(2 stages)",
                                     choices=list(AttentionSoftmax))
    combine: AttentionCombine = knob(AttentionCombine.O_INPUT,
                                     help="with kv_partitions > 1, who combines a KV head's partitions: "
                                          "'last_partition' the head's last partition task to finish (an arrival "
                                          "counter says which), once per head, and O reads the combined output; "
                                          "'o_input' every O task, for its input slice, while it stages it; "
                                          "'stage' a combine stage of one task per KV head before O",
                                     choices=list(AttentionCombine))
    partials_dtype: PartialsDtype = knob(PartialsDtype.MODEL,
                                         help="with kv_partitions > 1, the dtype of the partition outputs a combine "
                                              "reads (their (max, sum) stay fp32): 'model', rounded to the model's "
                                              "dtype, half the bytes from L2 on a bf16 or fp16 model (one rounding "
                                              "more; the same as 'fp32' on an fp32 model), or 'fp32'",
                                         choices=list(PartialsDtype))


@dataclass
class FusionConfig(FieldGuard):
    norm_into_matvec: bool = knob(True, help="recompute RMSNorm inside each consumer matvec task",
                                  choices=[True, False])
    rope_kv_into_qkv: bool | None = knob(None, help="apply RoPE (and q/k norm) and append KV in the QKV epilogue; "
                                                "false: in a stage of their own after QKV (null: derived: fused, "
                                                "except where a q/k norm would keep QKV's heads whole and split heads "
                                                "are estimated faster)",
                                         choices=[True, False])
    rope_kv_into_attention: bool | None = knob(None, help="apply RoPE (and q/k norm) to q and to this step's k, "
                                                      "and append k and v, in the partition attention tasks that "
                                                      "read them, so that no RoPE stage stands between QKV and "
                                                      "attention; needs attention.softmax partition with "
                                                      "kv_partitions > 1 and rope_kv_into_qkv not true (null: "
                                                      "derived: true on a q/k-norm model where those hold)",
                                               choices=[True, False])
    silu_mul_into_gate_up: bool = knob(True, help="compute silu(gate)*up in the gate/up epilogue",
                                       choices=[True, False])
    residual_into_matvec: bool = knob(True, help="add into the residual stream in the O/down epilogue",
                                      choices=[True, False])


@dataclass
class SmConfig(FieldGuard):
    assignment: SmAssignment = knob(SmAssignment.LIST_SCHEDULING, help="how tasks are placed on SM queues",
                                    choices=list(SmAssignment),
                                    search=[SmAssignment.ROUND_ROBIN, SmAssignment.BYTES_BALANCED,
                                            SmAssignment.LIST_SCHEDULING])
    explicit_map: dict = knob({}, help="with assignment=explicit: stage kind -> list of SM ids its tasks "
                                       "cycle over (kinds absent use every SM)")


@dataclass
class VmBuildConfig(FieldGuard):
    loads_in_flight: int = knob(4, help="16-byte weight loads per row and lane in one step of a warp's weight "
                                        "stream; the next step's loads are in flight while a step computes",
                                choices=[1, 2, 4, 8])
    rows_in_flight: int = knob(1, help="weight rows each warp streams at once (loads per step = rows x loads)",
                               choices=[1, 2, 4])
    spin_backoff_ns: int = knob(0, help="nanosleep between polls of a dependency counter",
                                choices=[0, 32, 128, 512])
    l2_prefetch_kb: int = knob(0, help="KiB of each queued task's weights the L2 prefetch asks for, in the order "
                                       "the task reads them (with pipelining_depth > 0 and no pipeline pages); 0 asks "
                                       "for all of them. A cap keeps the prefetched bytes of every SM inside L2",
                               choices=[0, 64, 128, 256], search=[0, 64, 128, 256])
    tagged_residual: bool = knob(True, help="store the residual stream x as (value, tag) words beside its fp32 values, "
                                            "the tag naming the step and which write of x it is; an RMSNorm of x "
                                            "(fused into a matvec or its own task) then spins on the tags of the "
                                            "values it reads in place of polling its producers' counter and then "
                                            "reading them: one L2 round trip a boundary instead of two (NCCL's LL "
                                            "protocol carries its flags the same way)",
                                 choices=[True, False])
    tagged_hidden: bool = knob(False, help="store the MLP's hidden row (SiLU(gate) * up, gate/up's output) as "
                                           "(value, tag) words beside its fp32 values, the tag naming the step and "
                                           "the layer; the down projection then spins on the tags of the slice it "
                                           "reads in place of polling gate/up's counter and then reading it, as "
                                           "tagged_residual does for x",
                               choices=[False, True])


PAGE_KB_CHOICES = [8, 16, 32]
PAGES_CHOICES = [0, 2, 3, 4, 6, 8, 10, 12]
INFLIGHT_KB_CHOICES = [16, 32, 64, 0]


@dataclass
class PipelineConfig(FieldGuard):
    pages: int = knob(0, help="shared-memory pages a producer warp streams every matvec's weights through with bulk "
                              "copies (sm_90+), running ahead of the consumer warps across task and stage "
                              "boundaries; taken from the end of smem_per_block. 0: each consumer warp streams its "
                              "own weights through registers", choices=PAGES_CHOICES)
    page_kb: int = knob(16, help="KiB of one page of the weight pipeline (a bulk copy target; rows wider than a page "
                                 "are cut into page-wide pieces, and 16-bit rows wider than half a page into "
                                 "half-page pieces, two rows a page, for the consumers' tensor-core products)",
                        choices=PAGE_KB_CHOICES)
    inflight_kb: int = knob(32, help="KiB of weight copies the producer warp keeps in flight: it issues a page's copy "
                                     "only once the copy this many KiB of pages back has landed (at least one page), "
                                     "so that a deep queue of weight reads does not sit ahead of the stage "
                                     "boundaries' latency-bound loads. 0: as many as there are free pages",
                            choices=INFLIGHT_KB_CHOICES)


@dataclass
class ScheduleConfig(FieldGuard):
    matvec: MatvecConfig = knob(MatvecConfig(), help="per-matvec tiling")
    attention: AttentionConfig = knob(AttentionConfig(), help="attention decode partitioning")
    fusion: FusionConfig = knob(FusionConfig(), help="which ops are fused into their neighbours")
    sm: SmConfig = knob(SmConfig(), help="SM assignment")
    pipelining_depth: int = knob(0, help="how many queued tasks past the current one each SM may load weights "
                                         "for before their dependencies are met: into the pages of the weight "
                                         "pipeline when pipeline.pages > 0, else into L2",
                                 minimum=0, maximum=8, search=[0, 1, 2, 3, 4])
    scratch: ScratchPolicy = knob(ScratchPolicy.LIVENESS, help="scratch arena allocation",
                                  choices=list(ScratchPolicy))
    # 1024 is a choice, not searched: 64 registers a thread at 1024 (the kernel wants about 156 at 256) spill 184
    # bytes a thread to local memory (NVRTC 13.0, llama-3.2-1b bf16). The loops in bench/results/loop_*/ measured
    # it 33 times on H200s (llama-3.2-1b, tinyllama-1.1b, qwen2.5-0.5b), the cost model pricing it near the
    # incumbent; the fastest of each loop's trials of it ran 1.3-2.0x that loop's best incumbent step, most 2x
    # or more
    threads_per_block: int = knob(512, help="threads of each persistent block; with pipeline.pages > 0 its last "
                                            "warp is the weight producer and the rest are consumer warps",
                                  choices=[128, 256, 512, 1024], search=[128, 256, 512])
    smem_per_block: int = knob(96 * 1024, help="dynamic shared memory per block in bytes; sets how many "
                                               "KV positions attention scores per round", minimum=16 * 1024, maximum=227 * 1024,
                               search=[48 * 1024, 96 * 1024, 160 * 1024])
    pipeline: PipelineConfig = knob(PipelineConfig(), help="the weight pipeline: pages a producer warp fills")
    build: VmBuildConfig = knob(VmBuildConfig(), help="compile-time VM knobs")

    # ---- serialisation -------------------------------------------------------------------------
    # A field may be assigned anything (the guard refuses only names that are no field): to_dict and schedule_id
    # hold its value to what from_dict takes, so that an id is never given to a config evaluate would refuse, nor
    # another id than the one evaluate reports for it (a numpy scalar is the JSON value it holds, as in a dict)
    def to_dict(self) -> dict:
        """The config's JSON form, each value as from_dict of it would read it. Raises ConfigError, as from_dict
        of the fields' values would, for a value assigned by hand that the parser refuses."""
        return checked_jsonable(self)

    @classmethod
    def from_dict(cls, data: Any) -> ScheduleConfig:
        """Strict parse of a (partial) config dict. Absent keys keep their default: a partial nested object
        merges onto that field's own default (`{"matvec": {"lm_head": {"k_splits": 2}}}` keeps lm_head's
        rows_per_task at 256). Raises ConfigError listing every problem at once."""
        return parse_dataclass(cls, data)

    def canonical_json(self) -> str:
        """Raises ConfigError as to_dict does."""
        return canonical_json(self.to_dict())

    @property
    def schedule_id(self) -> str:
        """The id of to_dict's JSON form; raises ConfigError as to_dict does."""
        return schedule_id_of(self.to_dict())


def canonical_json(config: dict) -> str:
    """A config dict's JSON text with sorted keys and no spaces: what a schedule_id hashes."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def schedule_id_of(config: dict) -> str:
    """The schedule_id of a config's JSON form, as written by any version (a tuning record's `config`): the first 12
    hex digits of the sha256 of its canonical_json."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def value_text(v) -> str:
    """A knob's value as its JSON text reads (true, null, {"a":1}), for notes, descriptions and listings."""
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, bool):
        return str(v).lower()
    return "null" if v is None else str(v)


def to_jsonable(value):
    """A config (or any part of one) in its JSON form: enums as their values, `None` as null."""
    names = _field_names(type(value))
    if names is not None:
        return {n: to_jsonable(getattr(value, n)) for n in names}
    if isinstance(value, type) and dataclasses.is_dataclass(value):  # a dataclass class itself
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def checked_jsonable(config) -> dict:
    """The JSON form of config dataclass `config` as the parser reads it: to_jsonable of parse_dataclass of its
    fields' values. Raises ConfigError as that parse would."""
    cls = type(config)
    try:
        return _checked(config, cls)
    except (ConfigError, _Recheck):  # the parse of the whole says every problem, in the words a dict gets
        return to_jsonable(parse_dataclass(cls, to_jsonable(config)))


class _Recheck(Exception):
    """A value the walk of _checked does not take as it is (a nested object of another type, say)."""


def _checked(obj, cls) -> dict:
    # the parse's result without building it: a search asks for schedule_ids by the thousand, and a round trip
    # through parse_dataclass made one cost 130 us against the 36 us of the unchecked id (this walk: 26 us). Values
    # already of their parsed type and in bounds are taken by _quick; anything else goes through the parser's own
    # leaf check
    out = {}
    for name, f, tp, optional, nested, quick in _check_plan(cls):
        v = getattr(obj, name)
        if v is None and optional:
            out[name] = None
        elif nested is not None:
            if type(v) is not nested:
                raise _Recheck
            out[name] = _checked(v, nested)
        else:
            j = quick(v)
            out[name] = to_jsonable(_parse_leaf(tp, f.metadata, v, "$")) if j is _OFF else j
    return out


_OFF = object()  # _quick's "not taken as it is"


@functools.cache
def _check_plan(cls) -> tuple:
    """(name, field, type, nullable, nested config class or None, quick check) for each field of `cls`."""
    return tuple((name, f, tp, optional, tp if nested else None, _quick(tp, f.metadata))
                 for name, (f, tp, optional, nested) in _parse_plan(cls).items())


def _quick(tp, meta):
    """A function of a leaf value: its JSON form where it already is what _parse_leaf returns for it (an int in
    bounds, a bool, a member of the enum), else _OFF. Never takes a value _parse_leaf refuses."""
    if isinstance(tp, type) and issubclass(tp, Enum):
        return lambda v: v.value if type(v) is tp else _OFF
    if tp is bool:
        return lambda v: v if v is True or v is False else _OFF
    if tp is int:
        choices, lo, hi = meta.get("choices"), meta.get("minimum"), meta.get("maximum")
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
        if choices is not None:
            return lambda v: v if type(v) is int and v in choices and lo <= v <= hi else _OFF
        return lambda v: v if type(v) is int and lo <= v <= hi else _OFF
    return lambda v: _OFF


@functools.cache
def _field_names(cls) -> tuple[str, ...] | None:
    # the search turns configs into dicts by the hundred thousand: dataclasses.fields() each time was a tenth of it
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


# last: config_paths reads the classes above (iter_knobs walks ScheduleConfig by default); the package's
# __init__ imports this module first, so these names are bound before any other module reads them
from .config_paths import get_path as get_path  # noqa: E402
from .config_paths import iter_knobs as iter_knobs  # noqa: E402
from .config_paths import with_value as with_value  # noqa: E402
from .config_paths import with_values as with_values  # noqa: E402
