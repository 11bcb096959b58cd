"""The search space over ScheduleConfig, read from the fields' own metadata and trimmed to one GPU target.

propose() shows it to an agent; the loop's candidate rounds draw from it: neighbours (one knob changed to
another search value), mutations (several knobs at once), uniform crossover of two configs, random configs.
A knob typed `int | None` is nullable: None ("derived at lowering") is one of the values a move may set. Everything here derives from `config.py`, so a knob added there appears
here, in the JSON schema and in the loop with no further edit.
"""

from __future__ import annotations

import random
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .config import (
    AttentionSoftmax,
    ScheduleConfig,
    get_path,
    iter_knobs,
    optional_base,
    value_text,
    with_value,
)
from .errors import ConfigError
from .inert import (
    dtype_inert_reason,
    inert_reason,
    priced_alike_reason,
    target_inert_reason,
    unsearched_reason,
    with_derived,
)
from .smem import max_dynamic_smem
from .targets import GpuTarget, get_target


class KnobType(str, Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    ENUM = "enum"
    OBJECT = "object"  # explicit_map: edited by hand, never searched


@dataclass(frozen=True)
class Knob:
    path: str  # dotted, e.g. "matvec.qkv.k_splits"
    type: KnobType
    default: object  # JSON form
    help: str
    search: tuple = ()  # JSON-form values the loop explores on this target (empty: not searched)
    choices: tuple | None = None  # JSON-form values that parse, when the field is an enumeration
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False  # None is a value: "derived at lowering" (from the model's shape and the GPU)
    unsearched: str | None = None  # why the search leaves it at its default on this target (inert.py), when it does

    @property
    def values(self) -> tuple:
        """What a move may set the knob to: its search values, and None when the knob is nullable."""
        if not self.search:
            return ()
        return self.search + ((None,) if self.nullable and None not in self.search else ())

    @property
    def default_text(self) -> str:
        """The default as a person reads it: null is "derived" (from the model's shape and the GPU)."""
        if self.default is None and self.nullable:
            return "derived"
        return value_text(self.default) if not isinstance(self.default, dict) else str(self.default)

    def to_dict(self) -> dict:
        out: dict = {"path": self.path, "type": self.type.value}
        if self.nullable:
            out["nullable"] = True
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.nullable:
            out["nullable"] = True
        out.update(search=list(self.search), default=self.default, help=self.help)
        if self.unsearched:
            out["unsearched"] = self.unsearched
        return out


@dataclass(frozen=True)
class Move:
    """One step from a config: knob `path` set to `value` (JSON form)."""

    path: str
    value: object
    config: ScheduleConfig

    @property
    def description(self) -> str:
        return move_key(self.path, self.value)


def move_key(path: str, value) -> str:
    """`path=value` with the value in its JSON spelling (true, null): the key of a move in descriptions,
    the prior and the ranking model."""
    return f"{path}={value_text(value) if not isinstance(value, dict) else str(value)}"


def _json(v):
    return v.value if isinstance(v, Enum) else v


def _unwrap_optional(tp) -> tuple[object, bool]:
    """(T, True) for `T | None` / Optional[T]; (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _knob_type(tp) -> KnobType:
    tp = optional_base(tp) or tp
    if isinstance(tp, type) and issubclass(tp, Enum):
        return KnobType.ENUM
    if tp is bool:
        return KnobType.BOOL
    if tp is int:
        return KnobType.INT
    if tp is float:
        return KnobType.FLOAT
    return KnobType.OBJECT


def _fits_target(path: str, value, target: GpuTarget | None) -> bool:
    """Search values the target cannot run are left out: the loop must never spend a trial on a config the
    validator rejects for the hardware alone."""
    if target is None or value is None:  # null: the lowering derives a value that fits
        return True
    if path == "smem_per_block":
        return value <= max_dynamic_smem(target.smem_per_block_max)
    if path == "threads_per_block":
        return value <= target.max_threads_per_block
    if path == "pipeline.pages":
        return value == 0 or not target.lacks_bulk_copies
    return True


MAX_SEARCHED_Q_SPLITS = 8  # a run's search splits a GQA group over at most this many tasks a partition
_HAND_EDITED = "a mapping edited by hand (which task kinds go to which SMs), never searched"


def search_space(target: GpuTarget | str | None = None, cls=ScheduleConfig, dtype: str | None = None,
                 group: int | None = None, predicted: bool = False) -> list[Knob]:
    """Every leaf knob of config dataclass `cls` (ScheduleConfig), in declaration order, with search values
    fitted to `target` and to a model of `dtype` ("fp32", "fp16", "bf16"; None: any): a knob no value of which
    acts on that dtype is unsearched, its reason given (inert.dtype_inert_reason). With the model's GQA `group`
    (q heads a KV head), attention.q_splits is searched over the group's divisors up to MAX_SEARCHED_Q_SPLITS (the
    lowering refuses any other value), and left unsearched where only 1 is (one q head a KV head). `predicted`:
    the run has no GPU, so a GPU target's latencies are predicted, and the knobs the cost model prices alike are
    unsearched (inert.priced_alike_reason), as on the CPU stand-in."""
    tgt = get_target(target) if target is not None else None
    default = cls()
    knobs = []
    for path, f, tp in iter_knobs(cls):
        meta = f.metadata
        tp, nullable = _unwrap_optional(tp)
        kind = _knob_type(tp)
        choices = tuple(_json(c) for c in meta["choices"]) if meta.get("choices") is not None else None
        search = tuple(_json(v) for v in (meta.get("search") or ()) if _fits_target(path, _json(v), tgt))
        if path == "attention.q_splits" and group is not None:
            search = tuple(s for s in range(1, min(group, MAX_SEARCHED_Q_SPLITS) + 1) if group % s == 0)
        unsearched = (_HAND_EDITED if kind == KnobType.OBJECT else None) or target_inert_reason(path, tgt) \
            or dtype_inert_reason(path, dtype) or unsearched_reason(path, tgt, predicted) \
            or priced_alike_reason(path, tgt, predicted) or _group_reason(path, search, group)
        if unsearched:
            search = ()
        knobs.append(Knob(path=path, type=kind, default=_json(get_path(default, path)) if kind != KnobType.OBJECT
                          else dict(get_path(default, path)), help=meta["help"], search=search, choices=choices,
                          minimum=meta.get("minimum"), maximum=meta.get("maximum"), nullable=nullable,
                          unsearched=unsearched))
    return knobs


def _group_reason(path: str, search: tuple, group: int | None) -> str | None:
    if path != "attention.q_splits" or group is None or len(search) >= 2:
        return None
    if group == 1:
        return "this model has one q head a KV head: no group to split"
    return (f"no divisor of this model's GQA group of {group} q heads a KV head lies between 2 and "
            f"{MAX_SEARCHED_Q_SPLITS}, the most splits a run's search tries (set a larger one by hand)")


def space_dicts(target: GpuTarget | str | None = None, dtype: str | None = None, group: int | None = None,
                predicted: bool = False) -> list[dict]:
    return [k.to_dict() for k in search_space(target, dtype=dtype, group=group, predicted=predicted)]


def conflicts(config: ScheduleConfig) -> list[str]:
    """Knob combinations the lowering rejects on every model, each named by its knobs. The search never
    proposes them (a model-specific rejection, such as split heads under a fused q/k norm, is left to the
    lowering's own error)."""
    q = config.matvec.qkv
    out = []
    # a None (derived) value is the lowering's to make consistent
    if _over1(q.head_splits) and _over1(q.heads_per_task):
        out.append(f"matvec.qkv.head_splits={q.head_splits} needs matvec.qkv.heads_per_task=1")
    if _over1(q.head_splits) and _over1(q.k_splits):
        out.append(f"matvec.qkv.head_splits={q.head_splits} needs matvec.qkv.k_splits=1")
    f, a = config.fusion, config.attention
    if f.rope_kv_into_attention and f.rope_kv_into_qkv:
        out.append("fusion.rope_kv_into_attention=true needs fusion.rope_kv_into_qkv not true")
    if f.rope_kv_into_attention and (a.softmax != AttentionSoftmax.PARTITION or a.kv_partitions == 1):
        out.append("fusion.rope_kv_into_attention=true needs attention.softmax partition with kv_partitions > 1")
    return out


def _over1(v) -> bool:
    return v is not None and v > 1


def inert(config: ScheduleConfig, path: str, target: GpuTarget | None = None) -> bool:
    """Whether the knob at `path` cannot change what the kernel does under the rest of `config` (it still
    changes the schedule_id, so a move would spend a trial on noise). The rules live in schedule/inert.py."""
    return inert_reason(config, path, target) is not None


def settle_inert(config: ScheduleConfig, base: ScheduleConfig, space: list[Knob],
                 target: GpuTarget | None = None, derived: dict | None = None) -> ScheduleConfig:
    """`config` with every searched knob that cannot act in it set back to `base`'s value: a drawn value of such
    a knob (l2_prefetch_kb with pipelining_depth 0) is no change, and would only rename the config and claim a
    move in its description. `derived` (its program's meta["derived"], once lowered): the values the lowering gave
    the knobs `config` leaves null, which can make a knob inert too (attention.combine where kv_partitions is
    derived to 1). Values that would make a conflict are left as drawn."""
    resolved = None  # with_derived(config, derived), made once for each config settled so far
    for _ in range(len(space)):  # settling one knob can make another inert; a handful of passes at most
        moved = False
        for k in space:
            was = _json(get_path(base, k.path))
            if _json(get_path(config, k.path)) == was:
                continue
            if resolved is None:
                resolved = with_derived(config, derived)
            if inert(resolved, k.path, target):
                settled = with_value(config, k.path, was)
                if not conflicts(settled):
                    config, moved, resolved = settled, True, None
        if not moved:
            return config
    return config


def neighbours(config: ScheduleConfig, space: list[Knob], target: GpuTarget | None = None) -> list[Move]:
    """Every config one knob away that has no conflict and moves a knob that acts (on `target`, when given):
    each searched knob set to each of its other search values."""
    moves = []
    for k in space:
        if inert(config, k.path, target):
            continue
        current = _json(get_path(config, k.path))
        for v in k.values:
            if v != current:
                cfg = with_value(config, k.path, v)
                if not conflicts(cfg):
                    moves.append(Move(k.path, v, cfg))
    return moves


def random_config(space: list[Knob], rng: random.Random, base: ScheduleConfig | None = None) -> ScheduleConfig:
    """Each searched knob drawn uniformly from its search values (drawn again while the draw has a conflict);
    unsearched knobs keep `base`'s value."""
    for _ in range(1000):
        data = (base or ScheduleConfig()).to_dict()
        for k in space:
            if k.search:
                _set(data, k.path, rng.choice(k.values))
        cfg = ScheduleConfig.from_dict(data)
        if not conflicts(cfg):
            return cfg
    raise RuntimeError("no conflict-free config in 1000 draws")  # unreachable while conflicts stay rare


MoveWeight = Callable[[str, object], float]  # (path, JSON value) -> relative weight of setting it


def mutate(config: ScheduleConfig, space: list[Knob], rng: random.Random, n_knobs: int = 1,
           weight: MoveWeight | None = None, tries: int = 20) -> tuple[ScheduleConfig, list[str]] | None:
    """`config` with `n_knobs` distinct searched knobs moved to another of their values (None included for
    a nullable knob), never a knob that cannot act where it is moved, never a conflict. `weight` biases
    which value (e.g. the prior's score of `path=value`). Returns (config, ["path=value", ...]) or None
    when `tries` draws found no such config."""
    searchable = [k for k in space if len(k.values) > 1]
    if not searchable:
        return None
    for _ in range(tries):
        cfg, change = config, []
        for k in rng.sample(searchable, min(n_knobs, len(searchable))):
            if inert(cfg, k.path):
                continue
            current = _json(get_path(cfg, k.path))
            options = [v for v in k.values if v != current]
            if not options:
                continue
            w = [max(1e-6, weight(k.path, v)) for v in options] if weight else None
            v = rng.choices(options, weights=w, k=1)[0]
            cfg = with_value(cfg, k.path, v)
            change.append(move_key(k.path, v))
        if change and not conflicts(cfg):
            return cfg, change
    return None


def crossover(a: ScheduleConfig, b: ScheduleConfig, space: list[Knob], rng: random.Random,
              tries: int = 20) -> ScheduleConfig | None:
    """Uniform crossover: each searched knob from `a` or `b` with equal odds (unsearched knobs from `a`).
    None when the parents agree everywhere or every draw was one parent again or held a conflict."""
    da, db = a.to_dict(), b.to_dict()
    differ = [k for k in space if k.search and _json(get_path(a, k.path)) != _json(get_path(b, k.path))]
    if len(differ) < 2:
        return None
    for _ in range(tries):
        data = ScheduleConfig.from_dict(da).to_dict()
        for k in differ:
            if rng.random() < 0.5:
                _set(data, k.path, _get(db, k.path))
        cfg = ScheduleConfig.from_dict(data)
        if cfg.schedule_id not in (a.schedule_id, b.schedule_id) and not conflicts(cfg):
            return cfg
    return None


def non_default_knobs(config: ScheduleConfig) -> list[str]:
    """Dotted paths whose value differs from the default: the loop's measure of simplicity."""
    default = ScheduleConfig()
    return [p for p, _, _ in iter_knobs() if _json(get_path(config, p)) != _json(get_path(default, p))]


def knob_values(config: ScheduleConfig, space: list[Knob]) -> dict[str, object]:
    """path -> JSON value for every searched knob (what the prior scores)."""
    return {k.path: _json(get_path(config, k.path)) for k in space if k.search}


def diff(a: ScheduleConfig, b: ScheduleConfig) -> list[str]:
    """`path=value` for each knob where b differs from a."""
    out = []
    for p, _, _ in iter_knobs():
        va, vb = _json(get_path(a, p)), _json(get_path(b, p))
        if va != vb:
            out.append(f"{p}={value_text(vb)}")
    return out


def _get(data: dict, path: str):
    node = data
    for part in path.split("."):
        node = node[part]
    return node


def _set(data: dict, path: str, value) -> None:
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError("$." + path, "no such knob")
    node[parts[-1]] = value
