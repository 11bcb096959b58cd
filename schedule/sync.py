"""Stage-level dependencies: which earlier stages each stage must wait for, reduced transitively.

An edge is *full* (every task of the consumer waits for every task of the producer) or *aligned*
(a task of KV group g waits only for the producer's tasks of group g). Aligned edges exist only
between group-structured stages under `attention.sync = head`.

Path composition: aligned then aligned is aligned; any path with a full edge is full (a group's
tasks that wait on a stage that waited fully on another have waited on all of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SyncGranularity
from .stages import Stage

GROUP_KINDS = frozenset({"qkv", "rope_kv", "attention", "attention_values", "attention_combine"})


def is_group_stage(stage: Stage) -> bool:
    """A stage whose every task belongs to KV groups (its draft's groups): QKV and the attention stages, a QKV
    reduce, and an O projection split over K, each split holding the q heads of some KV heads."""
    return (stage.kind in GROUP_KINDS or (stage.kind == "reduce" and stage.role == "qkv")
            or (stage.kind == "o" and stage.splits > 1))


@dataclass(frozen=True)
class StageEdge:
    producer: int
    aligned: bool


@dataclass
class StageGraph:
    deps: list[list[StageEdge]]  # per stage, reduced
    full_reach: list[int]  # bitmask of stages each stage has fully waited for
    aligned_reach: list[int]

    def fully_after(self, later: int, earlier: int) -> bool:
        return bool(self.full_reach[later] >> earlier & 1)


def stage_graph(stages: list[Stage], sync: SyncGranularity) -> StageGraph:
    raw = _conflict_edges(stages, sync)
    full = [0] * len(stages)
    aligned = [0] * len(stages)
    deps: list[list[StageEdge]] = []
    for s, edges in enumerate(raw):
        kept: list[StageEdge] = []
        cover_full = 0
        cover_aligned = 0
        for e in sorted(edges, key=lambda e: -e.producer):
            bit = 1 << e.producer
            if cover_full & bit or (e.aligned and cover_aligned & bit):
                continue
            kept.append(e)
            if e.aligned:
                cover_full |= full[e.producer]
                cover_aligned |= aligned[e.producer] | bit
            else:
                cover_full |= full[e.producer] | aligned[e.producer] | bit
        full[s] = cover_full
        aligned[s] = cover_aligned & ~cover_full
        deps.append(sorted(kept, key=lambda e: e.producer))
    return StageGraph(deps, full, aligned)


def _conflict_edges(stages: list[Stage], sync: SyncGranularity) -> list[list[StageEdge]]:
    """RAW, WAR and WAW edges at value granularity."""
    last_writer: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    out: list[list[StageEdge]] = []
    for st in stages:
        producers: dict[int, bool] = {}  # producer -> aligned

        def need(p: int, st=st, producers=producers):
            al = (sync == SyncGranularity.HEAD and is_group_stage(st) and is_group_stage(stages[p]))
            producers[p] = producers.get(p, True) and al

        for v in st.reads:
            if v in last_writer:
                need(last_writer[v])
        for v in st.writes:
            if v in last_writer and last_writer[v] != st.index:
                need(last_writer[v])
            for r in readers.get(v, []):
                if r != st.index:
                    need(r)
        for v in st.reads:
            readers.setdefault(v, []).append(st.index)
        for v in st.writes:
            last_writer[v] = st.index
            readers[v] = [st.index] if v in st.reads else []
        out.append([StageEdge(p, al) for p, al in producers.items()])
    return out
