"""Tiling: each stage becomes tasks of one opcode, with exact read/write regions and weight prefetches.

QKV rows are laid out by KV group: [q heads of group 0, k0, v0, q heads of group 1, k1, v1, ...], so a
task of consecutive heads touches few groups and attention can start per group.

The attention stages' tasks, and the combine of KV partitions in O's input, are tile_attention.py's; the build
dict the tiler sizes tasks by is defines.py's.
"""

from __future__ import annotations

from . import opcodes as oc
from .buffers import BufferTable, Placement, lm_head_buffer
from .config import ScheduleConfig
from .defines import build_defines as build_defines
from .defines import effective_head_warps as effective_head_warps
from .defines import effective_q_splits as effective_q_splits
from .defines import runs_partition_tasks as runs_partition_tasks
from .errors import LoweringError
from .graph import ModelDims
from .opcodes import Epilogue, EpilogueParams, Opcode
from .program import Prefetch, Region
from .smem import consumer_threads, matvec_smem_bytes, page_partials, program_work_smem_bytes
from .stages import Stage
from .tile_attention import AttentionTiling
from .tile_drafts import JoinDraft as JoinDraft
from .tile_drafts import TaskDraft as TaskDraft

ELEMENTWISE_ROWS = 1024  # rows per unfused elementwise task (add, silu_mul)
EPILOGUE_OF = {"store": Epilogue.STORE, "rope_kv": Epilogue.ROPE_KV, "silu_mul": Epilogue.SILU_MUL,
               "residual_add": Epilogue.RESIDUAL_ADD, "logits": Epilogue.LOGITS, "partial": Epilogue.PARTIAL}


class Tiler(AttentionTiling):
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

    def _argmax(self) -> TaskDraft:
        pairs = self.val("argmax_pairs", -1)
        p = oc.ArgmaxParams(pairs.buffer, pairs.offset, self.lm_slot, self.b["token"])
        return TaskDraft(Opcode.ARGMAX, p, [self.region(pairs, 0, 2 * self.lm_slot)], [Region(self.b["token"], 0, 1)],
                         [], 0)
