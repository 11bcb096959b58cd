"""Attention tiling: the tasks of the attention stages, one a KV head's GQA group or, over KV partitions, one a
(task group, partition), and the combine of the partitions' outputs: as tasks of its own, as a join of the
partition tasks, or in the O matvec's input (its slots, reads and the elements one copy holds)."""

from __future__ import annotations

from . import opcodes as oc
from .config import AttentionCombine, AttentionSoftmax
from .errors import LoweringError
from .opcodes import NO_BUFFER, Opcode
from .program import Region
from .smem import (
    attention_chunk,
    attention_partial_smem_bytes,
    attention_smem_bytes,
    combine_heads,
    combine_per_copy,
    combine_slots,
    combine_smem_bytes,
    partial_positions,
)
from .stages import Stage, score_capacity
from .tile_drafts import JoinDraft, TaskDraft


class AttentionTiling:
    """The attention half of Tiler (schedule/tile.py), which it is a base of: these methods read the Tiler's model
    dims, config, buffers and build dict and call its placement and shared-memory helpers."""

    def _attention_chunk(self) -> int:
        """Positions an ATTN_DECODE, ATTN_SCORES or ATTN_VALUES task scores a round (schedule/smem.py
        attention_chunk); LoweringError where even that chunk, or the value reduction's partial output per
        consumer warp, does not fit the working shared memory."""
        d, threads = self.d, self._consumers()
        chunk = attention_chunk(self._work_smem(), d)
        need = attention_smem_bytes(chunk, d, threads)
        if need > self._work_smem():
            knob, room = self._smem_room()
            raise LoweringError(knob, f"attention tasks of {d.group} q heads hold a chunk of {chunk} positions and "
                                f"a partial output for each of {threads // 32} consumer warps, and need {need} bytes "
                                f"of shared memory; {room}")
        return chunk

    def _window(self, st: Stage) -> int:
        """The layer's sliding window as its tasks take it: 0 (every cached position) where the window holds the
        program's whole context, for no position reaches its edge there (a window of 2**31 fits no int32)."""
        return st.window if st.window < self.max_seq else 0

    def _attention(self, st: Stage) -> list[TaskDraft]:
        """parts == 1: one ATTN_DECODE task per KV group; else ATTN_SCORES tasks per (group, part), or ATTN_PARTIAL
        tasks when each partition keeps its own softmax."""
        d, layer = self.d, st.layer
        parts = self.cfg.attention.kv_partitions
        if self.cfg.fusion.rope_kv_into_attention:  # partition tasks on QKV's raw rows (the lowering checks)
            return [t for g in range(d.n_kv_heads) for t in self._partials(layer, g, [], self._window(st))]
        q, sc = self.val("q", layer), self.val("scores", layer)
        G, hd = d.group, d.head_dim
        cap = score_capacity(self.max_seq, parts)
        # the chunk of a task holding a whole KV head's scores; partition tasks size their own (_partials), for
        # their task group (attention.q_splits), and need not fit this one
        partials = parts > 1 and self.cfg.attention.softmax == AttentionSoftmax.PARTITION
        chunk = 0 if partials else self._attention_chunk()
        out = []
        for g in range(d.n_kv_heads):
            q_reg = [self.region(q, g * G * hd, G * hd), self.kv_slab("kcache", layer, g), Region(self.b["pos"], 0, 1)]
            if parts == 1:
                o = self.val("attn", layer)
                p = oc.AttnDecodeParams(layer, g, q.buffer, q.offset, self.b["kcache"], self.b["vcache"], sc.buffer,
                                        sc.offset, o.buffer, o.offset, chunk, self._window(st))
                s_reg = self.region(sc, g * G * cap, G * cap)
                out.append(TaskDraft(Opcode.ATTN_DECODE, p, q_reg + [self.kv_slab("vcache", layer, g), s_reg],
                                     [s_reg, self.region(o, g * G * hd, G * hd)], [], 0, (g,)))
                continue
            if partials:
                out += self._partials(layer, g, q_reg, self._window(st))
                continue
            stats = self.val("attn_stats", layer)
            for part in range(parts):
                p = oc.AttnScoresParams(layer, g, q.buffer, q.offset, self.b["kcache"], part, parts, sc.buffer,
                                        sc.offset, stats.buffer, stats.offset, chunk, self._window(st))
                w = [self.region(sc, (part * d.n_heads + g * G) * cap, G * cap),
                     self.region(stats, (part * d.n_heads + g * G) * 2, G * 2)]
                out.append(TaskDraft(Opcode.ATTN_SCORES, p, q_reg, w, [], 0, (g,)))
        return out

    def _partials(self, layer: int, g: int, q_reg: list[Region], window: int) -> list[TaskDraft]:
        """The partition tasks of KV head g: one a (q split, partition), q split s of g being task group
        g * q_splits + s of G / q_splits q heads (the params' kv_head), which reads g's K and V rows."""
        d, parts, splits = self.d, self.cfg.attention.kv_partitions, self.build["Q_SPLITS"]
        sc, rope = self.val("scores", layer), {}
        if self.cfg.fusion.rope_kv_into_attention:
            q, q_reg = self.val("qkv_raw", layer), self._folded_rope_reads(layer, g)
            rope = {"rope": 1, "qnorm": self.b.get(f"layers.{layer}.q_norm"),
                    "knorm": self.b.get(f"layers.{layer}.k_norm")}
        else:
            q = self.val("q", layer)
        stats, o = self.val("attn_stats", layer), self.val("attn_part", layer)
        G, hd, td = d.group // splits, d.head_dim, d.split_groups(splits)
        cap = score_capacity(self.max_seq, parts)
        work = self._work_smem()
        chunk = partial_positions(work, cap, td, self._consumers(), self.dtype.nbytes)
        if chunk < 1:
            need = attention_partial_smem_bytes(1, 1, td, self._consumers(), self.dtype.nbytes)
            raise LoweringError("smem_per_block", f"leaves {work} bytes of working shared memory; attention.softmax="
                                f"partition needs at least {need}")
        out = []
        for t in range(g * splits, (g + 1) * splits):  # the task groups of KV head g
            join, jp = self._join(layer, t)
            for part in range(parts):
                p = oc.AttnPartialParams(layer, t, q.buffer, q.offset, self.b["kcache"], self.b["vcache"], part, parts,
                                         sc.buffer, sc.offset, stats.buffer, stats.offset, o.buffer, o.offset, chunk,
                                         chunk, window, jp, **rope, q_splits=splits)
                s_reg = self.region(sc, (part * d.n_heads + t * G) * cap, G * cap)
                w = [s_reg, self.region(stats, (part * d.n_heads + t * G) * 2, G * 2),
                     self.region(o, (part * d.n_heads + t * G) * hd, G * hd)]
                out.append(TaskDraft(Opcode.ATTN_PARTIAL, p, q_reg + [self.kv_slab("vcache", layer, g), s_reg], w, [],
                                     0, (g,), join))
        return out

    def _folded_rope_reads(self, layer: int, g: int) -> list[Region]:
        """What a partition task of KV group g reads under fusion.rope_kv_into_attention besides the V slab: the
        group's raw QKV rows, its K slab, the step's position, the RoPE tables and any q/k norm weights. The
        task whose partition holds the position also appends k and v at it; that write is not among the task's
        regions: no task of the step reads the appended row from the caches (each one that attends to the
        position computes its k and v from the raw rows, vm/semantics.py), and the caches' other rows, which the
        other partitions read, it leaves alone, which no region of the slab could say."""
        d, hd = self.d, self.d.head_dim
        raw = self.val("qkv_raw", layer)
        per = (d.group + 2) * hd
        reads = [self.region(raw, g * per, per), self.kv_slab("kcache", layer, g), Region(self.b["pos"], 0, 1),
                 Region(self.b["rope_cos"], 0, self.max_seq * hd), Region(self.b["rope_sin"], 0, self.max_seq * hd)]
        qn = self.b.get(f"layers.{layer}.q_norm")
        if qn != oc.NO_BUFFER:
            reads += [Region(qn, 0, hd), Region(self.b[f"layers.{layer}.k_norm"], 0, hd)]
        return reads

    def _combined(self, layer: int, g: int) -> tuple[oc.AttnCombineParams, list[Region], list[Region]]:
        """Combining task group g's partitions (a KV head's q heads, or under attention.q_splits a share of them):
        the params, the regions read (every partition's values of the group and, under the partition softmax,
        their (max, sum)) and the region written (the group's attention output)."""
        d, parts, splits = self.d, self.cfg.attention.kv_partitions, self.build["Q_SPLITS"]
        part_v, o = self.val("attn_part", layer), self.val("attn", layer)
        G, hd = d.group // splits, d.head_dim
        reads = [self.region(part_v, (p * d.n_heads + g * G) * hd, G * hd) for p in range(parts)]
        stats = (NO_BUFFER, 0)
        if self.cfg.attention.softmax == AttentionSoftmax.PARTITION:
            st_v = self.val("attn_stats", layer)
            stats = (st_v.buffer, st_v.offset)
            reads += [self.region(st_v, (p * d.n_heads + g * G) * 2, G * 2) for p in range(parts)]
        p = oc.AttnCombineParams(g, part_v.buffer, part_v.offset, parts, o.buffer, o.offset, *stats, splits)
        return p, reads, [self.region(o, g * G * hd, G * hd)]

    def _join(self, layer: int, g: int) -> tuple[JoinDraft | None, oc.JoinCombine]:
        """With attention.combine = last_partition: KV head g's combine as a join of its partition tasks, and the
        params that name the output (the arrival counter is set when lowering allocates it)."""
        if self.cfg.attention.combine != AttentionCombine.LAST_PARTITION:
            return None, oc.JoinCombine()
        p, reads, writes = self._combined(layer, g)
        return JoinDraft(g, tuple(reads), tuple(writes)), oc.JoinCombine(p.out, p.out_off)

    def _values(self, st: Stage) -> list[TaskDraft]:
        d, layer = self.d, st.layer
        parts = self.cfg.attention.kv_partitions
        sc, stats, o = self.val("scores", layer), self.val("attn_stats", layer), self.val("attn_part", layer)
        G, hd = d.group, d.head_dim
        cap = score_capacity(self.max_seq, parts)
        chunk = self._attention_chunk()
        out = []
        for g in range(d.n_kv_heads):
            join, jp = self._join(layer, g)
            for part in range(parts):
                p = oc.AttnValuesParams(layer, g, self.b["vcache"], part, parts, sc.buffer, sc.offset, stats.buffer,
                                        stats.offset, o.buffer, o.offset, chunk, self._window(st), jp)
                r = [self.region(sc, (part * d.n_heads + g * G) * cap, G * cap), self.kv_slab("vcache", layer, g),
                     Region(self.b["pos"], 0, 1)]
                r += [self.region(stats, (pp * d.n_heads + g * G) * 2, G * 2) for pp in range(parts)]
                w = [self.region(o, (part * d.n_heads + g * G) * hd, G * hd)]
                out.append(TaskDraft(Opcode.ATTN_VALUES, p, r, w, [], 0, (g,), join))
        return out

    def _combine(self, st: Stage) -> list[TaskDraft]:
        """One ATTN_COMBINE task a task group (a KV head, or a q split of one: attention.q_splits), in its KV
        head's group for the head-aligned waits."""
        out, splits = [], self.build["Q_SPLITS"]
        for t in range(self.d.n_kv_heads * splits):
            p, reads, writes = self._combined(st.layer, t)
            out.append(TaskDraft(Opcode.ATTN_COMBINE, p, reads, writes, [], 0, (t // splits,)))
        return out

    def _combine_slots(self, st: Stage, k0: int, klen: int) -> int:
        """Partition slots a thread of a task combining its input slice [k0, k0 + klen) gets (schedule/smem.py
        combine_slots); LoweringError naming smem_per_block when not even one fits."""
        heads = combine_heads(k0, klen, self.d.head_dim) if st.combine_weighted else 0
        threads, work, per_copy = self._consumers(), self._work_smem(), self._partials_per_copy()
        slots = combine_slots(work, klen, st.combine_parts, heads, threads, per_copy)
        if slots < 1:
            knob, room = self._smem_room()
            raise LoweringError(knob, f"{st.role} tasks combine an input of {klen} elements from {st.combine_parts} "
                                f"attention partitions, a 16-byte slot a copying thread, and need at least "
                                f"{combine_smem_bytes(klen, st.combine_parts, heads, threads, 1, per_copy)} bytes "
                                f"of shared memory; {room}")
        return slots

    def _partials_per_copy(self) -> int:
        """Partition output elements one 16-byte copy of stage_combined holds (schedule/smem.py combine_per_copy):
        4 or 8. A copy must stay inside one q head, as the kernel weighs it by one head's (max, sum): amk.models
        refuses a head_dim that is not a multiple of 8, and the O tiling checks it for shapes given directly."""
        return combine_per_copy(self.build, self.dtype.nbytes)

    def _combined_input_reads(self, st: Stage, k0: int, klen: int, K: int) -> list[Region]:
        """Partitions 1.. of the input slice (partition 0 is the plain input region) and, when weighted, the
        (max, sum) of every partition of the q heads the slice covers."""
        part = self.val("attn_part", st.layer)
        reads = [self.region(part, k * K + k0, klen) for k in range(1, st.combine_parts)]
        if st.combine_weighted:
            stats, hd, H = self.val("attn_stats", st.layer), self.d.head_dim, self.d.n_heads
            h0, h1 = k0 // hd, -(-(k0 + klen) // hd)
            reads += [self.region(stats, (k * H + h0) * 2, (h1 - h0) * 2) for k in range(st.combine_parts)]
        return reads
