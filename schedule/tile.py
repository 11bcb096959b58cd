"""Tiling: each stage becomes tasks of one opcode, with exact read/write regions and weight prefetches.

QKV rows are laid out by KV group: [q heads of group 0, k0, v0, q heads of group 1, k1, v1, ...], so a
task of consecutive heads touches few groups and attention can start per group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import opcodes as oc
from .buffers import BufferTable, Placement, lm_head_buffer
from .config import AttentionCombine, AttentionSoftmax, PartialsDtype, ScheduleConfig, get_path, with_value
from .errors import LoweringError
from .graph import ModelDims
from .inert import inert_reason
from .opcodes import NO_BUFFER, Epilogue, EpilogueParams, Opcode
from .program import Prefetch, Region
from .smem import (
    attention_chunk,
    attention_partial_smem_bytes,
    attention_smem_bytes,
    combine_heads,
    combine_per_copy,
    combine_slots,
    combine_smem_bytes,
    consumer_threads,
    matvec_smem_bytes,
    page_partials,
    pages_in_flight,
    partial_positions,
    program_work_smem_bytes,
)
from .stages import Stage, score_capacity

ELEMENTWISE_ROWS = 1024  # rows per unfused elementwise task (add, silu_mul)
EPILOGUE_OF = {"store": Epilogue.STORE, "rope_kv": Epilogue.ROPE_KV, "silu_mul": Epilogue.SILU_MUL,
               "residual_add": Epilogue.RESIDUAL_ADD, "logits": Epilogue.LOGITS, "partial": Epilogue.PARTIAL}


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


@dataclass
class TaskDraft:
    opcode: Opcode
    params: object
    reads: list[Region]
    writes: list[Region]
    prefetch: list[Prefetch]
    weight_bytes: int
    groups: tuple[int, ...] = ()
    join: JoinDraft | None = None  # the combine the last of its group's partition tasks does


@dataclass(frozen=True)
class JoinDraft:
    """A KV head's combine, done by the last of the head's partition tasks to finish, or a row block's k-split
    reduce and epilogue, done by its last split task to finish (a Join of the program: lowering gives each
    (stage, key) its arrival counter)."""
    key: int  # the KV head, or the row tile of a k-split matvec
    reads: tuple[Region, ...]
    writes: tuple[Region, ...]
    what: str = "g"  # what the key counts, in the arrival counter's name: g(roup) or rows (a row tile)


class Tiler:
    def __init__(self, dims: ModelDims, dtype: oc.DType, max_seq: int, config: ScheduleConfig,
                 buffers: BufferTable, place: dict[str, Placement]):
        self.d, self.dtype, self.max_seq, self.cfg = dims, dtype, max_seq, config
        self.b, self.place = buffers, place
        self.lm_slot = 0
        self._smem_ok: set[tuple[int, int, int]] = set()  # (width, klen, rows) of matvec tasks known to fit
        self.build = build_defines(config, dtype)  # the program's build dict, as _lower gives it

    # ---- helpers -----------------------------------------------------------------------------
    def val(self, name: str, layer: int) -> Placement:
        key = name if layer < 0 or name == "x" else f"L{layer}.{name}"
        return self.place[key]

    def region(self, p: Placement, start: int, length: int) -> Region:
        return Region(p.buffer, p.offset + start, length)

    def kv_slab(self, which: str, layer: int, g: int) -> Region:
        n = self.max_seq * self.d.head_dim
        return Region(self.b[which], (layer * self.d.n_kv_heads + g) * n, n)

    def unified_head(self, u: int) -> tuple[str, int, int]:
        """grouped QKV head index -> (q|k|v, head index in its kind, kv group)."""
        per = self.d.group + 2
        g, j = divmod(u, per)
        if j < self.d.group:
            return "q", g * self.d.group + j, g
        return ("k" if j == self.d.group else "v"), g, g

    # ---- per stage -----------------------------------------------------------------------------
    def tile(self, st: Stage) -> list[TaskDraft]:
        if st.kind == "embed":
            return [self._embed()]
        if st.kind == "norm":
            return [self._norm(st)]
        if st.kind == "attention":
            return self._attention(st)
        if st.kind == "attention_values":
            return self._values(st)
        if st.kind == "attention_combine":
            return self._combine(st)
        if st.kind == "argmax":
            return [self._argmax()]
        if st.kind in ("qkv", "o", "gate_up", "down", "lm_head"):
            return self._matvec(st)
        return self._epilogue_tasks(st)

    def _embed(self) -> TaskDraft:
        x = self.val("x", -1)
        table = self.b["embed"]
        p = oc.EmbedParams(table, self.b["token"], x.buffer, x.offset, self.d.hidden)
        return TaskDraft(Opcode.EMBED, p, [Region(self.b["token"], 0, 1), Region(table, 0, self.d.vocab * self.d.hidden)],
                         [self.region(x, 0, self.d.hidden)], [], 0)

    def _norm(self, st: Stage) -> TaskDraft:
        x = self.val("x", -1)
        out = self.val("xf" if st.layer < 0 else "xn", st.layer)
        w = self.b[st.norm]
        p = oc.RmsNormParams(x.buffer, x.offset, w, out.buffer, out.offset, self.d.hidden)
        return TaskDraft(Opcode.RMSNORM, p, [self.region(x, 0, self.d.hidden), Region(w, 0, self.d.hidden)],
                         [self.region(out, 0, self.d.hidden)], [], self.d.hidden * self.dtype.nbytes)

    def _shape(self, role: str) -> tuple[int, int, int, str]:
        """(rows, K, pair_offset, weight buffer name) of a matvec role; rows exclude the paired up rows."""
        d = self.d
        return {
            "qkv": (d.qkv_rows, d.hidden, 0, "qkv"),
            "o": (d.hidden, d.n_heads * d.head_dim, 0, "o"),
            "gate_up": (d.intermediate, d.hidden, d.intermediate, "gate_up"),
            "down": (d.hidden, d.intermediate, 0, "down"),
            "lm_head": (d.vocab, d.hidden, 0, "lm_head"),
        }[role]

    def _row_tiles(self, role: str) -> list[tuple[int, int]]:
        rows, _, _, _ = self._shape(role)
        if role == "qkv" and self.cfg.matvec.qkv.head_splits > 1:  # rows [a, a + n) with their pairs, per head
            n = self.d.head_dim // 2 // self.cfg.matvec.qkv.head_splits
            return [(r, n) for h in range(0, rows, self.d.head_dim) for r in range(h, h + self.d.head_dim // 2, n)]
        if role == "qkv":
            step = self.cfg.matvec.qkv.heads_per_task * self.d.head_dim
        else:
            step = getattr(self.cfg.matvec, role).rows_per_task
        return [(r, min(step, rows - r)) for r in range(0, rows, step)]

    def _weight(self, role: str, layer: int) -> int:
        return lm_head_buffer(self.b) if role == "lm_head" else self.b[f"layers.{layer}.{role}"]

    def _qkv_pair(self) -> int:
        """Row offset of the paired rows of a QKV task: head_dim/2 when heads are split, else none. Raises
        LoweringError (naming matvec.qkv.head_splits) for a split the other knobs or the model rule out."""
        q, d = self.cfg.matvec.qkv, self.d
        if q.head_splits == 1:
            return 0
        field = "matvec.qkv.head_splits"
        if q.heads_per_task != 1:
            raise LoweringError(field, f"{q.head_splits} splits of a head need heads_per_task=1, not {q.heads_per_task}")
        if q.k_splits != 1:
            raise LoweringError(field, f"{q.head_splits} splits of a head need k_splits=1, not {q.k_splits}")
        if (d.head_dim // 2) % q.head_splits:
            raise LoweringError(field, f"{q.head_splits} does not divide head_dim/2={d.head_dim // 2}")
        if d.qk_norm and self.cfg.fusion.rope_kv_into_qkv:
            raise LoweringError(field, "the q/k norm fused into the QKV epilogue needs whole heads")
        return d.head_dim // 2

    def _work_smem(self) -> int:
        return program_work_smem_bytes(self.cfg.smem_per_block, self.build)

    def _consumers(self) -> int:
        return consumer_threads(self.cfg.threads_per_block, self.build)

    def _matvec(self, st: Stage) -> list[TaskDraft]:
        rows_total, K, pair, _ = self._shape(st.role)
        if st.role == "qkv":
            pair = self._qkv_pair()
        w = self._weight(st.role, st.layer)
        nb = self.dtype.nbytes
        combine = ()
        if st.combine_parts:  # the attention output still in partitions: all of them (and their stats) are read
            inp, norm_w = self.val("attn_part", st.layer), oc.NO_BUFFER
            stats = self.val("attn_stats", st.layer) if st.combine_weighted else None
            combine = (st.combine_parts, stats.buffer if stats else oc.NO_BUFFER, stats.offset if stats else 0)
            per_copy = self._partials_per_copy()
            if self.d.head_dim % per_copy:  # the knob that would lift it: fp32 partials copy 4
                knob = "attention.partials_dtype" if self.d.head_dim % 4 == 0 else "attention.combine"
                raise LoweringError(knob, f"'o_input' combines {per_copy} elements of one head at a time; "
                                    f"head_dim={self.d.head_dim} is not a multiple of {per_copy}")
        elif st.norm:
            inp, norm_w = self.val("x", -1), self.b[st.norm]
        else:
            src = {"qkv": "xn", "o": "attn", "gate_up": "xn", "down": "act", "lm_head": "xf"}[st.role]
            inp, norm_w = self.val(src, st.layer), oc.NO_BUFFER
        S = st.splits
        kchunk = (-(-K // S) + 7) // 8 * 8  # 16-byte aligned split boundaries
        out: list[TaskDraft] = []
        for tile, (row0, nrows) in enumerate(self._row_tiles(st.role)):
            final = self._epilogue(st, row0, nrows, 0, rows_total, pair) if st.join_reduce else None
            for s in range(S):
                k0 = s * kchunk
                klen = min(kchunk, K - k0)
                if klen <= 0:
                    raise LoweringError(f"matvec.{st.role}.k_splits", f"{S} splits leave split {s} empty for K={K}")
                join, sj = None, oc.SplitJoin()
                if final is None:
                    epi, writes, reads, groups = self._epilogue(st, row0, nrows, s, rows_total, pair)
                else:
                    epi, join, sj, writes = self._split_join(st, tile, row0, nrows, s, rows_total, pair, final)
                    reads, groups = [], final[3]
                if st.role == "o" and S > 1:  # a split waits only for the KV heads whose q heads it holds
                    groups = self._o_groups(k0, klen)
                slots = (self._combine_slots(st, k0, klen),) if combine else ()
                extra = {"inp_parts": combine[0], "inp_stats": combine[1], "inp_stats_off": combine[2],
                         "inp_slots": slots[0]} if combine else {}
                p = oc.MatvecParams(w, row0, nrows, k0, klen, inp.buffer, inp.offset, norm_w, epi, **extra, join=sj)
                in_region = self.region(inp, 0, K) if norm_w != oc.NO_BUFFER else self.region(inp, k0, klen)
                reads = [in_region] + reads
                if combine:
                    reads += self._combined_input_reads(st, k0, klen, K)
                if norm_w != oc.NO_BUFFER:
                    reads.append(Region(norm_w, 0, K))
                span = (nrows - 1) * K + klen
                pf = [Prefetch(w, row0 * K + k0, span)]
                reads.append(Region(w, row0 * K + k0, span))
                if pair:
                    pf.append(Prefetch(w, (pair + row0) * K + k0, span))
                    reads.append(Region(w, (pair + row0) * K + k0, span))
                wbytes = nrows * klen * nb * (2 if pair else 1)
                out.append(TaskDraft(Opcode.MATVEC, p, reads, writes, pf, wbytes, groups, join))
                self._check_matvec_smem(st, K if norm_w != oc.NO_BUFFER else klen, klen, nrows * (2 if pair else 1))
        return out

    def _split_join(self, st: Stage, tile: int, row0: int, nrows: int, split: int, rows_total: int, pair: int,
                    final) -> tuple[EpilogueParams, JoinDraft, oc.SplitJoin, list[Region]]:
        """Split `split` of row tile `tile` under reduce last_task: the final epilogue (`final`, as _epilogue gave
        it), the join that the row block's last split task does (it reads every split's partial sums and what the
        epilogue reads, and writes what the epilogue writes), the params that name the partials, and the region
        of them this task writes."""
        epi, f_writes, f_reads, _ = final
        part, stride = self.val(f"split.{st.role}", st.layer), rows_total + pair
        starts = [row0] + ([pair + row0] if pair else [])
        own = [self.region(part, split * stride + r, nrows) for r in starts]
        every = [self.region(part, k * stride + r, nrows) for k in range(st.splits) for r in starts]
        join = JoinDraft(tile, tuple(every + f_reads), tuple(f_writes), "rows")
        return epi, join, oc.SplitJoin(st.splits, split, part.buffer, part.offset, stride), own

    def _o_groups(self, k0: int, klen: int) -> tuple[int, ...]:
        """The KV heads whose q heads the O input slice [k0, k0 + klen) holds: the attention it waits for."""
        per = self.d.group * self.d.head_dim
        return tuple(range(k0 // per, (k0 + klen - 1) // per + 1))

    def _check_matvec_smem(self, st: Stage, width: int, klen: int, rows: int) -> None:
        """LoweringError, naming pipeline.pages when the weight pipeline's pages take the room and smem_per_block
        otherwise, when a task's staged input, row accumulators and page partials (schedule/smem.py, as the
        validator counts them) do not fit the block's working shared memory."""
        key = (width, klen, rows)
        if key in self._smem_ok:
            return
        need = matvec_smem_bytes(width, rows, page_partials(klen, rows, self.build, self.dtype.nbytes))
        if need > self._work_smem():
            knob, room = self._smem_room()
            raise LoweringError(knob, f"{st.role} tasks stage an input of {width} elements and {rows} rows and need "
                                f"{need} bytes of shared memory; {room}")
        self._smem_ok.add(key)

    def _smem_room(self) -> tuple[str, str]:
        """The knob to name when a task's shared memory does not fit (pipeline.pages where pages take part of
        smem_per_block), and what is left, in words."""
        pages, work = self.cfg.pipeline.pages, self._work_smem()
        if pages > 0:
            return "pipeline.pages", (f"smem_per_block={self.cfg.smem_per_block} less {pages} pages of "
                                      f"{self.cfg.pipeline.page_kb} KiB leaves {work}")
        return "smem_per_block", f"smem_per_block={self.cfg.smem_per_block}"

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

    def _epilogue(self, st: Stage, row0: int, nrows: int, split: int, rows_total: int, pair: int):
        """EpilogueParams plus the regions it writes and reads, for rows [row0, row0 + nrows)."""
        kind = st.epilogue
        layer = st.layer
        bias = self.b.get(f"layers.{layer}.qkv_bias") if st.role == "qkv" and kind != "partial" and st.kind != "rope_kv" \
            else oc.NO_BUFFER
        reads: list[Region] = []
        if bias != oc.NO_BUFFER:
            reads.append(Region(bias, row0, nrows))
            if pair:
                reads.append(Region(bias, pair + row0, nrows))
        groups = self._groups(row0, nrows) if st.role == "qkv" else ()
        if kind == "partial":
            part = self.val(f"split.{st.role}", layer)
            stride = rows_total + pair
            epi = EpilogueParams(Epilogue.PARTIAL, part.buffer, part.offset, pair_offset=pair, split=split,
                                 split_stride=stride)
            writes = [self.region(part, split * stride + row0, nrows)]
            if pair:
                writes.append(self.region(part, split * stride + pair + row0, nrows))
            return epi, writes, reads, groups
        if kind == "store":
            stored = {"qkv": "qkv_raw", "o": "o_out", "gate_up": "gu", "down": "d_out"}[st.role]
            o = self.val(stored, layer)
            epi = EpilogueParams(Epilogue.STORE, o.buffer, o.offset, bias=bias, pair_offset=pair)
            writes = [self.region(o, row0, nrows)] + ([self.region(o, pair + row0, nrows)] if pair else [])
            return epi, writes, reads, groups
        if kind == "residual_add":
            x = self.val("x", -1)
            r = self.region(x, row0, nrows)
            return EpilogueParams(Epilogue.RESIDUAL_ADD, x.buffer, x.offset), [r], reads + [r], groups
        if kind == "silu_mul":
            a = self.val("act", layer)
            return (EpilogueParams(Epilogue.SILU_MUL, a.buffer, a.offset, pair_offset=pair),
                    [self.region(a, row0, nrows)], reads, groups)
        if kind == "logits":
            pairs = self.val("argmax_pairs", -1)
            slot = self.lm_slot
            self.lm_slot += 1
            epi = EpilogueParams(Epilogue.LOGITS, self.b["logits"], 0, argmax=pairs.buffer,
                                 argmax_slot=pairs.offset // 2 + slot)
            return epi, [Region(self.b["logits"], row0, nrows), self.region(pairs, 2 * slot, 2)], reads, groups
        if kind == "rope_kv":
            return self._rope_epilogue(layer, row0, nrows, bias, reads, groups, pair)
        raise LoweringError("fusion", f"no epilogue {kind!r}")

    def _rope_epilogue(self, layer, row0, nrows, bias, reads, groups, pair=0):
        """RoPE + KV append of whole heads [row0, row0 + nrows), or with `pair` of rows [row0, row0 + nrows)
        of one head and their partners pair rows on."""
        d = self.d
        hd = d.head_dim
        if pair:
            if row0 % hd + nrows > pair:
                raise LoweringError("matvec.qkv.head_splits", "a split QKV task must take rows below head_dim/2")
        elif row0 % hd or nrows % hd:
            raise LoweringError("matvec.qkv.heads_per_task", "QKV tasks must cover whole heads")
        q = self.val("q", layer)
        qn = self.b.get(f"layers.{layer}.q_norm")
        kn = self.b.get(f"layers.{layer}.k_norm")
        epi = EpilogueParams(Epilogue.ROPE_KV, q.buffer, q.offset, bias=bias, kcache=self.b["kcache"],
                             vcache=self.b["vcache"], layer=layer, qnorm=qn, knorm=kn, pair_offset=pair)
        writes: list[Region] = []
        if pair:
            u, d0 = divmod(row0, hd)
            kind, h, g = self.unified_head(u)
            if kind == "q":
                writes += [self.region(q, h * hd + d0, nrows), self.region(q, h * hd + d0 + pair, nrows)]
            else:
                # The task writes columns d0.. and d0 + pair.. of the slab's row at the step's position, which
                # no range of the slab describes; its 1/splits share of the slab stands in for them: the
                # splits of a head are disjoint and together cover the slab, which every reader reads whole.
                slab = self.kv_slab("kcache" if kind == "k" else "vcache", layer, g)
                share = slab.length // (pair // nrows)
                writes.append(Region(slab.buffer, slab.start + d0 // nrows * share, share))
        else:
            for u in range(row0 // hd, (row0 + nrows) // hd):
                kind, h, g = self.unified_head(u)
                if kind == "q":
                    writes.append(self.region(q, h * hd, hd))
                else:
                    writes.append(self.kv_slab("kcache" if kind == "k" else "vcache", layer, g))
        reads = reads + [Region(self.b["rope_cos"], 0, self.max_seq * hd), Region(self.b["rope_sin"], 0, self.max_seq * hd),
                         Region(self.b["pos"], 0, 1)]
        if qn != oc.NO_BUFFER:
            reads += [Region(qn, 0, hd), Region(kn, 0, hd)]
        return epi, writes, reads, groups

    def _groups(self, row0: int, nrows: int) -> tuple[int, ...]:
        per = (self.d.group + 2) * self.d.head_dim
        return tuple(range(row0 // per, (row0 + nrows - 1) // per + 1))

    def _epilogue_tasks(self, st: Stage) -> list[TaskDraft]:
        """reduce (k-split), rope_kv, add and silu_mul stages: finish rows that a matvec stored."""
        rows_total, _, pair, _ = self._shape(st.role)
        if st.kind == "reduce":
            tiles = self._row_tiles(st.role)
            stride = rows_total + pair
        elif st.kind == "rope_kv":
            per = (self.d.group + 2) * self.d.head_dim
            tiles = [(g * per, per) for g in range(self.d.n_kv_heads)]
            stride = 0
        else:
            tiles = [(r, min(ELEMENTWISE_ROWS, rows_total - r)) for r in range(0, rows_total, ELEMENTWISE_ROWS)]
            stride = 0
        srcname = st.src.split(".", 1)[1] if st.src.startswith("L") else st.src
        src = self.val(srcname, st.layer)
        out = []
        for row0, nrows in tiles:
            epi, writes, reads, groups = self._epilogue(st, row0, nrows, 0, rows_total, pair)
            for s in range(st.splits):
                reads.append(self.region(src, s * stride + row0, nrows))
                if pair:
                    reads.append(self.region(src, s * stride + pair + row0, nrows))
            p = oc.EpilogueTaskParams(src.buffer, src.offset, st.splits, stride, row0, nrows, epi)
            out.append(TaskDraft(Opcode.EPILOGUE, p, reads, writes, [], 0, groups))
        return out

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

    def _argmax(self) -> TaskDraft:
        pairs = self.val("argmax_pairs", -1)
        p = oc.ArgmaxParams(pairs.buffer, pairs.offset, self.lm_slot, self.b["token"])
        return TaskDraft(Opcode.ARGMAX, p, [self.region(pairs, 0, 2 * self.lm_slot)], [Region(self.b["token"], 0, 1)],
                         [], 0)
