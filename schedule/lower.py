"""lower(model, target, config) -> MegakernelProgram, as a flat pipeline of named steps."""

from __future__ import annotations

import dataclasses
import gc
import math
import numbers

from .assign import assign_sms
from .autotile import max_head_warps
from .autotile import resolve as resolve_tiling
from .buffers import allocate_scratch, plan_model_buffers
from .config import AttentionSoftmax, ScheduleConfig, with_value
from .config_text import parse_config
from .errors import ArgumentError, LoweringError
from .graph import Graph, ModelDims, build_graph
from .opcodes import DType
from .program import Counter, Join, MegakernelProgram, ProgramConstants, Task, Wait
from .smem import consumer_threads
from .stages import Stage, plan_stages, value_sizes
from .sync import StageGraph, stage_graph
from .tags import attach_tags
from .targets import GpuTarget, get_target
from .tile import TaskDraft, Tiler, build_defines, effective_head_warps, effective_q_splits

DEFAULT_MAX_SEQ = 2048


def lower(model, target: GpuTarget | str, config: ScheduleConfig | dict | None = None,
          max_seq: int | None = None) -> MegakernelProgram:
    """`model` is anything with `.dims` (ModelDims) and `.dtype` (torch dtype or DType): an amk Model,
    or a ModelDims with dtype given through `lower_dims`. `config`: None (the default), a dict, a JSON string or
    a ScheduleConfig. Raises ArgumentError naming `model` or `max_seq` (past max_position_embeddings for a
    dynamic RoPE), ConfigError naming a config field, and LoweringError for a config this model cannot take."""
    if not isinstance(getattr(model, "dims", None), ModelDims) or not hasattr(model, "dtype"):
        raise ArgumentError("model", f"expected a model from amk.load_model(name or path), got {model!r:.80}")
    if isinstance(max_seq, numbers.Integral) and not isinstance(max_seq, bool | int):
        max_seq = int(max_seq)  # a numpy integer is the int it holds, as evaluate and generate take it
    check_rope_context(model, max_seq)
    return lower_dims(model.dims, _dtype_of(model), target, config, max_seq=max_seq,
                      name=getattr(model, "name", "model"))


def check_rope_context(model, max_seq: int | None) -> None:
    """Raises ArgumentError naming max_seq when `model` (an amk Model: its hf_config) has a dynamic (NTK) RoPE and
    max_seq is past its max_position_embeddings: within them transformers leaves the frequencies unscaled (tables
    of the position alone), past them it rescales every position by the sequence length it is given."""
    params = getattr(getattr(model, "hf_config", None), "rope_parameters", None) or {}
    kind = (params.get("rope_type") or params.get("type")) if isinstance(params, dict) else None
    limit = model.dims.max_positions
    if kind == "dynamic" and isinstance(max_seq, int) and max_seq > limit:
        raise ArgumentError("max_seq", f"{max_seq} positions: this model's RoPE is dynamic (NTK), which transformers "
                                       f"rescales by the sequence length past max_position_embeddings ({limit}); "
                                       f"use max_seq <= {limit}")


def lower_dims(dims: ModelDims, dtype: DType, target: GpuTarget | str, config: ScheduleConfig | dict | None = None,
               max_seq: int | None = None, name: str = "model") -> MegakernelProgram:
    if max_seq is not None and (isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 1):
        raise ArgumentError("max_seq", f"expected a positive integer or None, got {max_seq!r}")
    target = get_target(target)
    config = _as_config(config)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small objects: collection passes would dominate the lowering time
    try:
        return _lower(dims, dtype, target, config, max_seq, name)
    finally:
        if gc_was_enabled:
            gc.enable()


def _lower(dims: ModelDims, dtype: DType, target: GpuTarget, config: ScheduleConfig, max_seq: int | None,
           name: str) -> MegakernelProgram:
    max_seq = int(max_seq or min(dims.max_positions, DEFAULT_MAX_SEQ))
    if max_seq < 1:
        raise LoweringError("max_seq", f"must be >= 1, got {max_seq}")
    schedule_id = config.schedule_id
    config, derived = resolve_tiling(config, dims, dtype.nbytes, target, max_seq)
    _check_q_splits(config, dims)
    config = _fit_head_warps(config, dims)
    _check_folded_rope(config)
    graph: Graph = build_graph(dims)
    stages = plan_stages(graph, config)
    sgraph = stage_graph(stages, config.attention.sync)
    buffers = plan_model_buffers(dims, dtype, max_seq)
    placement = allocate_scratch(buffers, stages, value_sizes(graph, config, max_seq), config.scratch, sgraph)
    tiler = Tiler(dims, dtype, max_seq, config, buffers, placement)
    drafts = [tiler.tile(st) for st in stages]
    tasks = _make_tasks(stages, drafts)
    counters = _attach_sync(stages, sgraph, tasks, drafts)
    joins = _attach_joins(tasks, drafts, counters)
    attach_tags(stages, tasks, joins, buffers, placement, dims.hidden, dims.intermediate, config, tiler.build)
    constants = _constants(dims, dtype, max_seq, buffers)
    queues = assign_sms(tasks, counters, constants, target.sm_count, config.sm)
    return MegakernelProgram(
        constants=constants, buffers=buffers.buffers, counters=counters, tasks=tasks, queues=queues,
        threads_per_block=config.threads_per_block, smem_per_block=config.smem_per_block,
        build=tiler.build,
        meta={"model": name, "target": target.name, "schedule_id": schedule_id, "max_seq": max_seq,
              "dtype": dtype.name, "stages": len(stages), "derived": derived},
        joins=joins,
    )


def _check_q_splits(config: ScheduleConfig, dims: ModelDims) -> None:
    """LoweringError naming attention.q_splits where it splits the partition attention's tasks (softmax partition,
    kv_partitions above 1, `config` resolved) into shares of a GQA group that it does not divide."""
    a = config.attention
    if a.q_splits == 1 or a.softmax != AttentionSoftmax.PARTITION or a.kv_partitions == 1:
        return
    if dims.group % a.q_splits:
        fits = [s for s in range(1, dims.group + 1) if dims.group % s == 0]
        raise LoweringError("attention.q_splits", f"{a.q_splits} does not divide this model's GQA group of "
                                                  f"{dims.group} q heads a KV head; one of {fits}")


def _fit_head_warps(config: ScheduleConfig, dims: ModelDims) -> ScheduleConfig:
    """`config` (resolved) with attention.head_warps at most the consumer warps over a partition task's q heads
    (autotile.max_head_warps), where the partition attention's tasks run: more act as that many, as a row tiling
    above a matvec's rows is one task, so that equivalent values lower to one program."""
    warps = effective_head_warps(config)
    if warps == 0:
        return config
    group = dims.group // effective_q_splits(config)
    most = max_head_warps(group, consumer_threads(config.threads_per_block, build_defines(config)) // 32)
    return config if warps <= most else with_value(config, "attention.head_warps", most)


def _check_folded_rope(config: ScheduleConfig) -> None:
    """LoweringError naming fusion.rope_kv_into_attention where it is true and the rest of `config` (resolved) cannot
    take it: only the partition attention over more than one partition applies RoPE in its tasks, and RoPE runs
    once, so not in QKV's epilogue as well."""
    if not config.fusion.rope_kv_into_attention:
        return
    field, a = "fusion.rope_kv_into_attention", config.attention
    if config.fusion.rope_kv_into_qkv:
        raise LoweringError(field, "RoPE runs once: it needs fusion.rope_kv_into_qkv false (or null), not true")
    if a.softmax != AttentionSoftmax.PARTITION or a.kv_partitions < 2:
        raise LoweringError(field, f"needs attention.softmax partition with kv_partitions > 1, not softmax "
                                   f"{a.softmax.value} with {a.kv_partitions} partition(s)")


def _as_config(config) -> ScheduleConfig:
    """The defaults for None, else config_text.parse_config's reading (a dict, JSON text or its UTF-8 bytes, a
    ScheduleConfig): ConfigError for anything else, as evaluate() refuses it."""
    return ScheduleConfig() if config is None else parse_config(config)


def _dtype_of(model) -> DType:
    dt = model.dtype
    return dt if isinstance(dt, DType) else DType.from_torch(dt)


def _constants(dims: ModelDims, dtype: DType, max_seq: int, b) -> ProgramConstants:
    return ProgramConstants(
        dtype=dtype, hidden=dims.hidden, intermediate=dims.intermediate, n_layers=dims.n_layers,
        n_heads=dims.n_heads, n_kv_heads=dims.n_kv_heads, head_dim=dims.head_dim, vocab=dims.vocab,
        max_seq=max_seq, rms_eps=dims.rms_eps, attn_scale=1.0 / math.sqrt(dims.head_dim), qk_norm=dims.qk_norm,
        rope_cos=b["rope_cos"], rope_sin=b["rope_sin"], pos=b["pos"], token=b["token"], logits=b["logits"],
    )


def model_mismatch(program: MegakernelProgram, model) -> list[str]:
    """The model facts (dtype, shape fields, rms_eps, qk_norm) in which `program`'s constants differ from those
    a lowering of `model` (`.dims` and `.dtype`, as `lower` takes) would give, each as "field: program X, model
    Y"; empty when they agree. A program holds no weights, so this is what says it was lowered for another model
    or dtype."""
    have = program.constants
    ids = {f: getattr(have, f) for f in ("rope_cos", "rope_sin", "pos", "token", "logits")}
    want = _constants(model.dims, _dtype_of(model), have.max_seq, ids)
    return [f"{f.name}: program {_shown(getattr(have, f.name))}, model {_shown(getattr(want, f.name))}"
            for f in dataclasses.fields(ProgramConstants) if getattr(have, f.name) != getattr(want, f.name)]


def _shown(value) -> str:
    return value.name if isinstance(value, DType) else repr(value)


def _make_tasks(stages: list[Stage], drafts: list[list[TaskDraft]]) -> list[Task]:
    tasks: list[Task] = []
    for st, ds in zip(stages, drafts):
        for d in ds:
            tasks.append(Task(id=len(tasks), opcode=d.opcode, params=d.params, stage=st.index, kind=st.kind,
                              reads=tuple(d.reads), writes=tuple(d.writes), prefetch=tuple(d.prefetch),
                              weight_bytes=d.weight_bytes))
    return tasks


def _attach_sync(stages: list[Stage], sg: StageGraph, tasks: list[Task], drafts: list[list[TaskDraft]]) -> list[Counter]:
    """One counter per stage that some later stage waits on fully, one per (stage, KV group) where a
    later stage waits group by group. Every wait is for all of a counter's producers."""
    by_stage: list[list[Task]] = [[] for _ in stages]
    groups_of: dict[int, tuple[int, ...]] = {}
    for t, d in zip(tasks, (d for ds in drafts for d in ds)):
        by_stage[t.stage].append(t)
        groups_of[t.id] = d.groups
    need_full = [False] * len(stages)
    need_group = [False] * len(stages)
    for deps in sg.deps:
        for e in deps:
            if e.aligned:
                need_group[e.producer] = True
            else:
                need_full[e.producer] = True
    counters: list[Counter] = []
    full_id: dict[int, int] = {}
    group_id: dict[tuple[int, int], int] = {}
    signals: dict[int, list[int]] = {t.id: [] for t in tasks}
    for st in stages:
        members = by_stage[st.index]
        if need_full[st.index]:
            full_id[st.index] = len(counters)
            counters.append(Counter(len(counters), f"{st.kind}@{st.index}", len(members)))
            for t in members:
                signals[t.id].append(full_id[st.index])
        if need_group[st.index]:
            gs = sorted({g for t in members for g in groups_of[t.id]})
            for g in gs:
                n = sum(1 for t in members if g in groups_of[t.id])
                cid = len(counters)
                group_id[(st.index, g)] = cid
                counters.append(Counter(cid, f"{st.kind}@{st.index}.g{g}", n))
                for t in members:
                    if g in groups_of[t.id]:
                        signals[t.id].append(cid)
    for t in tasks:
        waits: list[Wait] = []
        for e in sg.deps[t.stage]:
            if e.aligned:
                for g in groups_of[t.id]:
                    cid = group_id[(e.producer, g)]
                    waits.append(Wait(cid, counters[cid].producers))
            else:
                cid = full_id[e.producer]
                waits.append(Wait(cid, counters[cid].producers))
        t.waits = tuple(waits)
        t.signals = tuple(signals[t.id])
    return counters


def _attach_joins(tasks: list[Task], drafts: list[list[TaskDraft]], counters: list[Counter]) -> list[Join]:
    """One arrival counter and one Join per (stage, join key): the tasks of a KV head that combine it when last, or
    the split tasks of a row block that reduce it when last.
    The counter is appended to `counters`; each member's params learn its id."""
    members: dict[tuple[int, int], list[Task]] = {}
    found: dict[tuple[int, int], TaskDraft] = {}
    for t, d in zip(tasks, (d for ds in drafts for d in ds)):
        if d.join is not None:
            key = (t.stage, d.join.key)
            members.setdefault(key, []).append(t)
            found[key] = d
    joins: list[Join] = []
    for key, ts in members.items():
        cid = len(counters)
        counters.append(Counter(cid, f"{ts[0].kind}@{key[0]}.{found[key].join.what}{key[1]}.arrivals", len(ts)))
        for t in ts:
            t.params = dataclasses.replace(t.params, join=dataclasses.replace(t.params.join, arrivals=cid))
        j = found[key].join
        joins.append(Join(cid, tuple(t.id for t in ts), j.reads, j.writes))
    return joins
