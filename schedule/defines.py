"""The program's build dict: the compile-time VM knobs of a config (the kernel sees each key as AMK_<key>), and
the attention knobs that compile in only where ATTN_PARTIAL tasks run."""

from __future__ import annotations

import dataclasses

from . import opcodes as oc
from .config import AttentionSoftmax, PartialsDtype, ScheduleConfig, get_path, with_value
from .inert import inert_reason
from .smem import pages_in_flight


def build_defines(config: ScheduleConfig, dtype: oc.DType | None = None) -> dict[str, int]:
    """The compile-time VM knobs of a config, as the program's build dict (the kernel sees each as AMK_<key>).
    With the model's `dtype`, attention.partials_dtype 'model' compiles in only where it changes the kernel
    (more than one KV partition, and a dtype narrower than fp32): a program it cannot change keeps its
    fingerprint, so the search sees it as the program it is."""
    partials = (config.attention.partials_dtype == PartialsDtype.MODEL and config.attention.kv_partitions != 1
                and (dtype is None or dtype.nbytes < 4))
    # a knob that cannot act under the rest of the config (schedule/inert.py) compiles in at its default, so that
    # the program, its fingerprint and its kernel are those of the config without it
    default = ScheduleConfig()
    parsed = False  # once with_value has parsed the config, a default is set in it without parsing it again
    for path in _BUILD_KNOBS_THAT_MAY_BE_INERT:
        if inert_reason(config, path) is not None:
            value = get_path(default, path)
            config = _with_leaf(config, path, value) if parsed else with_value(config, path, value)
            parsed = True
    b = config.build
    return {"PIPELINE_DEPTH": config.pipelining_depth, "LOADS_IN_FLIGHT": b.loads_in_flight,
            "ROWS_IN_FLIGHT": b.rows_in_flight, "SPIN_BACKOFF_NS": b.spin_backoff_ns,
            "L2_PREFETCH_KB": b.l2_prefetch_kb, "PAGES": config.pipeline.pages,
            "PAGE_BYTES": config.pipeline.page_kb * 1024, "PAGES_INFLIGHT": pages_in_flight(config.pipeline),
            "PARTIALS_MODEL_DTYPE": int(partials), "Q_SPLITS": effective_q_splits(config),
            "HEAD_WARPS": effective_head_warps(config)}


def _with_leaf(config, path: str, value):
    """`config` with the leaf at dotted `path` set to `value`, its other parts shared: with_value's result, for a
    config that parsed and a value that does (a default)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _with_leaf(getattr(config, head), rest, value)})


def runs_partition_tasks(config: ScheduleConfig) -> bool:
    """Whether the attention runs ATTN_PARTIAL tasks: the partition softmax over more than one partition (False
    while the partitions are not yet derived)."""
    a = config.attention
    return a.softmax == AttentionSoftmax.PARTITION and a.kv_partitions is not None and a.kv_partitions > 1


def effective_q_splits(config: ScheduleConfig) -> int:
    """Tasks a KV head's GQA group of q heads is split over in each partition (attention.q_splits): 1 wherever the
    attention is not the partition softmax over more than one partition (or the partitions are not yet derived),
    for only ATTN_PARTIAL splits its heads. The kernel's task group (AMK_GROUP, vm/abi.py) is the model's group
    over it."""
    return (config.attention.q_splits or 1) if runs_partition_tasks(config) else 1


def effective_head_warps(config: ScheduleConfig) -> int:
    """Warps a q head of an ATTN_PARTIAL task takes (attention.head_warps); 0 wherever no ATTN_PARTIAL task runs
    (not the partition softmax over more than one partition) or the knob is not yet derived, so that the build
    of such a program is the same whatever the knob says."""
    return (config.attention.head_warps or 0) if runs_partition_tasks(config) else 0


_BUILD_KNOBS_THAT_MAY_BE_INERT = ("build.l2_prefetch_kb", "build.loads_in_flight", "build.rows_in_flight",
                                  "pipeline.page_kb", "pipeline.inflight_kb")
