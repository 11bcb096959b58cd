"""What every opcode computes, in torch: the living definition the CUDA VM must match.

Numerics: activations live in fp32 but are rounded to the model dtype wherever eager transformers
rounds (after each linear, norm, RoPE product, residual add and SiLU-mul), so that the only
difference from eager is the order of fp32 accumulation. Weights stay in the model dtype.
"""

from __future__ import annotations

import collections
import math

import torch
import torch.nn.functional as F

from amk.schedule.opcodes import NO_BUFFER, AttnCombineParams, Epilogue, Opcode
from amk.schedule.program import ProgramConstants

from .tag_words import TagWords


class Memory:
    """Flat tensors by buffer id; arena-resident values are addressed through the arena's id."""

    def __init__(self, tensors: dict[int, torch.Tensor], cols: dict[int, int]):
        self.t = tensors
        self.cols = cols
        # this step's count per counter id; a join's tasks add to their arrival counter (the runner may share its
        # own counts here, so that the arrivals are checked with every other counter)
        self.arrivals: list[int] | collections.Counter = collections.Counter()

    def __getitem__(self, bid: int) -> torch.Tensor:
        return self.t[bid]

    def matrix(self, bid: int) -> torch.Tensor:
        return self.t[bid].view(-1, self.cols[bid])


class Semantics:
    def __init__(self, c: ProgramConstants, partials_rounded: bool = False, words: TagWords | None = None):
        """`partials_rounded`: attention partition outputs are stored in the model's dtype
        (attention.partials_dtype 'model'), so every combine reads them rounded. `words`: the tagged streams'
        words, which tagged writes also store and tagged reads take their values from (vm/tag_words.py)."""
        self.c = c
        self.dt = c.dtype.torch
        self.exact = c.dtype.torch == torch.float32
        self.partials_rounded = partials_rounded
        self.words = words

    def _tagged(self, stream: str, tag) -> bool:
        """Does a tag field of value `tag` make the kernel touch `stream`'s words?"""
        return self.words is not None and self.words.on(stream) and type(tag) is int and tag >= 0

    def rnd(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.exact else x.to(self.dt).float()

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """A partition's output as stored for its combine: fp32, or rounded to the model's dtype."""
        return self.rnd(x) if self.partials_rounded else x

    def rmsnorm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c.rms_eps)
        return self.rnd(w.float() * self.rnd(x * r))

    # ---- opcodes -------------------------------------------------------------------------------
    def run(self, mem: Memory, opcode: Opcode, p) -> None:
        getattr(self, f"op_{opcode.name.lower()}")(mem, p)

    def op_embed(self, mem: Memory, p) -> None:
        tok = int(mem[p.token][0])
        if not 0 <= tok < self.c.vocab:
            raise IndexError(f"token {tok} outside the vocabulary of {self.c.vocab}")
        mem[p.out][p.out_off:p.out_off + p.dim] = mem.matrix(p.table)[tok].float()
        if self._tagged("X", p.tag):
            self.words.store(mem, "X", 0, mem[p.out][p.out_off:p.out_off + p.dim], p.tag)

    def op_rmsnorm(self, mem: Memory, p) -> None:
        if self._tagged("X", p.inp_tag):
            x = self.words.read(mem, "X", 0, p.dim, p.inp_tag)
        else:
            x = mem[p.inp][p.inp_off:p.inp_off + p.dim]
        mem[p.out][p.out_off:p.out_off + p.dim] = self.rmsnorm(x, mem[p.weight][:p.dim])

    def op_matvec(self, mem: Memory, p) -> None:
        W = mem.matrix(p.weight)
        K = W.shape[1]
        if p.inp_parts:
            x = self.combined_input(mem, p, K)[p.k0:p.k0 + p.klen]
        elif p.norm_weight != NO_BUFFER:
            row = self.words.read(mem, "X", 0, K, p.inp_tag) if self._tagged("X", p.inp_tag) \
                else mem[p.inp][p.inp_off:p.inp_off + K]
            x = self.rmsnorm(row, mem[p.norm_weight][:K])[p.k0:p.k0 + p.klen]
        elif self._tagged("H", p.inp_tag):
            x = self.words.read(mem, "H", p.k0, p.klen, p.inp_tag)
        else:
            x = mem[p.inp][p.inp_off + p.k0:p.inp_off + p.k0 + p.klen]
        acc = W[p.row0:p.row0 + p.rows, p.k0:p.k0 + p.klen].float() @ x
        accp = None
        if p.epi.pair_offset:
            r = p.epi.pair_offset + p.row0
            accp = W[r:r + p.rows, p.k0:p.k0 + p.klen].float() @ x
        j = p.join
        if not j.active:
            self.epilogue(mem, p.epi, p.row0, p.rows, acc, accp)
            return
        # a k-split join: store this split's sums; the row block's last split task reduces them as a reduce
        # stage's EPILOGUE task would, and finishes the rows
        self.store_partials(mem[j.part], j.part_off + j.split * j.stride + p.row0, p.epi.pair_offset, acc, accp)
        mem.arrivals[j.arrivals] += 1
        if mem.arrivals[j.arrivals] == j.splits:
            self.finish_splits(mem, p.epi, j.part, j.part_off, j.splits, j.stride, p.row0, p.rows)

    def combined_input(self, mem: Memory, p, K: int) -> torch.Tensor:
        """The attention output the O projection reads, from its partitions (ATTN_COMBINE's result)."""
        hd = self.c.head_dim
        parts = mem[p.inp][p.inp_off:p.inp_off + p.inp_parts * K].view(p.inp_parts, -1, hd)  # [part, q head, hd]
        if p.inp_stats == NO_BUFFER:
            return self.rnd(parts.sum(0).flatten())
        w = torch.tensor([self._weights(mem, p.inp_stats, p.inp_stats_off, p.inp_parts, hq)
                          for hq in range(parts.shape[1])], device=parts.device)  # [q head, part]
        return self.rnd((w.t()[:, :, None] * parts).sum(0).flatten())

    def op_epilogue(self, mem: Memory, p) -> None:
        self.finish_splits(mem, p.epi, p.src, p.src_off, p.splits, p.stride, p.row0, p.rows)

    def finish_splits(self, mem: Memory, epi, src_id: int, src_off: int, splits: int, stride: int, row0: int,
                      rows: int) -> None:
        """Sum the fp32 partial sums of rows [row0, row0 + rows) (and their paired rows) over `splits` splits
        `stride` elements apart, in split order from zero, and run `epi` on them."""
        src = mem[src_id]

        def total(first: int) -> torch.Tensor:
            acc = torch.zeros(rows, dtype=torch.float32, device=src.device)
            for s in range(splits):
                o = src_off + s * stride + first
                acc += src[o:o + rows]
            return acc

        acc = total(row0)
        accp = total(epi.pair_offset + row0) if epi.pair_offset else None
        self.epilogue(mem, epi, row0, rows, acc, accp)

    @staticmethod
    def store_partials(out: torch.Tensor, base: int, pair: int, acc: torch.Tensor, accp: torch.Tensor | None) -> None:
        """A k-split's unrounded sums: `acc` from element `base` of `out`, and the paired rows' `accp` `pair` on."""
        out[base:base + len(acc)] = acc
        if accp is not None:
            out[base + pair:base + pair + len(accp)] = accp

    def epilogue(self, mem: Memory, e, row0: int, rows: int, acc: torch.Tensor, accp: torch.Tensor | None) -> None:
        kind = Epilogue(e.kind)
        if e.bias != NO_BUFFER and kind != Epilogue.PARTIAL:
            acc = acc + mem[e.bias][row0:row0 + rows].float()
            if accp is not None:
                accp = accp + mem[e.bias][e.pair_offset + row0:e.pair_offset + row0 + rows].float()
        out = mem[e.out]
        lo = e.out_off + row0
        if kind == Epilogue.STORE:
            out[lo:lo + rows] = self.rnd(acc)
            if accp is not None:
                out[lo + e.pair_offset:lo + e.pair_offset + rows] = self.rnd(accp)
        elif kind == Epilogue.PARTIAL:
            self.store_partials(out, e.out_off + e.split * e.split_stride + row0, e.pair_offset, acc, accp)
        elif kind == Epilogue.RESIDUAL_ADD:
            if self._tagged("X", e.x_tag):  # the version before its own, from the words, and its own stored both ways
                out[lo:lo + rows] = self.rnd(self.words.read(mem, "X", row0, rows, e.x_tag - 1) + self.rnd(acc))
                self.words.store(mem, "X", row0, out[lo:lo + rows], e.x_tag)
            else:
                out[lo:lo + rows] = self.rnd(out[lo:lo + rows] + self.rnd(acc))
        elif kind == Epilogue.SILU_MUL:
            g, u = self.rnd(acc), self.rnd(accp)
            out[lo:lo + rows] = self.rnd(self.rnd(F.silu(g)) * u)
            if self._tagged("H", e.h_tag):
                self.words.store(mem, "H", row0, out[lo:lo + rows], e.h_tag)
        elif kind == Epilogue.LOGITS:
            v = self.rnd(acc)
            out[lo:lo + rows] = v
            i = int(torch.argmax(v))  # first maximum, as torch.argmax and the CUDA VM pick
            pairs = mem[e.argmax]
            pairs[2 * e.argmax_slot] = v[i]
            pairs[2 * e.argmax_slot + 1] = float(row0 + i)
        elif kind == Epilogue.ROPE_KV and accp is not None:
            self.rope_kv_pairs(mem, e, row0, rows, self.rnd(acc), self.rnd(accp))
        elif kind == Epilogue.ROPE_KV:
            self.rope_kv(mem, e, row0, rows, self.rnd(acc))
        else:
            raise ValueError(f"unknown epilogue {e.kind}")

    def rope_kv(self, mem: Memory, e, row0: int, rows: int, vals: torch.Tensor) -> None:
        c = self.c
        hd, G = c.head_dim, c.n_heads // c.n_kv_heads
        pos = int(mem[c.pos][0])
        cos = mem[c.rope_cos][pos * hd:(pos + 1) * hd].float()
        sin = mem[c.rope_sin][pos * hd:(pos + 1) * hd].float()
        for u in range(row0 // hd, (row0 + rows) // hd):
            h = vals[(u * hd - row0):(u * hd - row0) + hd]
            g, j = divmod(u, G + 2)
            if j <= G:  # q or k: optional per-head norm, then RoPE
                h = self.rotate(mem, h, e.qnorm if j < G else e.knorm, cos, sin)
            if j < G:
                q = e.out_off + (g * G + j) * hd
                mem[e.out][q:q + hd] = h
            else:
                slot = ((e.layer * c.n_kv_heads + g) * c.max_seq + pos) * hd
                cache = mem[e.kcache if j == G else e.vcache]
                cache[slot:slot + hd] = h.to(cache.dtype)

    def rotate(self, mem: Memory, h: torch.Tensor, norm: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One q or k head [head_dim] (rounded QKV output): its q/k norm (weights `norm`, on a q/k-norm model),
        then RoPE at the step's position (cos, sin: its table rows), rounded as eager rounds."""
        c = self.c
        half = c.head_dim // 2
        if c.qk_norm:
            h = self.rmsnorm(h, mem[norm][:c.head_dim])
        rot = torch.cat([-h[half:], h[:half]])
        return self.rnd(self.rnd(h * cos) + self.rnd(rot * sin))

    def rope_kv_pairs(self, mem: Memory, e, row0: int, rows: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Rows [row0, row0 + rows) of one head (a) and their partners head_dim/2 on (b): RoPE rotates each
        pair on its own, so a head split this way gives what the whole head gives (no q/k norm here)."""
        c = self.c
        hd, G, half = c.head_dim, c.n_heads // c.n_kv_heads, c.head_dim // 2
        u, d0 = divmod(row0, hd)
        g, j = divmod(u, G + 2)
        pos = int(mem[c.pos][0])
        cos = mem[c.rope_cos][pos * hd:(pos + 1) * hd].float()
        sin = mem[c.rope_sin][pos * hd:(pos + 1) * hd].float()
        lo_i, hi_i = slice(d0, d0 + rows), slice(d0 + half, d0 + half + rows)
        if j <= G:
            a, b = (self.rnd(self.rnd(a * cos[lo_i]) + self.rnd(-b * sin[lo_i])),
                    self.rnd(self.rnd(b * cos[hi_i]) + self.rnd(a * sin[hi_i])))
        if j < G:
            q = e.out_off + (g * G + j) * hd
            mem[e.out][q + d0:q + d0 + rows] = a
            mem[e.out][q + d0 + half:q + d0 + half + rows] = b
        else:
            slot = ((e.layer * c.n_kv_heads + g) * c.max_seq + pos) * hd
            cache = mem[e.kcache if j == G else e.vcache]
            cache[slot + d0:slot + d0 + rows] = a.to(cache.dtype)
            cache[slot + d0 + half:slot + d0 + half + rows] = b.to(cache.dtype)

    # Attention follows eager exactly: scores rounded after the product and after the scale, a
    # float32 softmax whose probabilities are rounded before they weight V. Partitions therefore need
    # the global (max, sum) before the values pass: scores first, values second.
    def _span(self, mem: Memory, part: int, parts: int, window: int = 0) -> tuple[int, int]:
        """Positions [s0, s1) partition `part` of `parts` attends to: the live positions [lo, pos] split evenly,
        where lo is 0, or pos - window + 1 under a sliding window (transformers keeps key k for query q when
        k > q - window, so a window of W sees W positions, q's own included)."""
        L = int(mem[self.c.pos][0]) + 1
        lo = max(0, L - window) if window > 0 else 0
        n = L - lo
        per = -(-n // parts)
        return lo + min(n, part * per), lo + min(n, part * per + per)

    def _scores(self, mem: Memory, p, part: int, parts: int, q: torch.Tensor | None = None
                ) -> list[tuple[float, float]]:
        """Write this partition's scores of each q head of the group; return their (max, sum). `q`: the group's
        q heads [G, head_dim] (None: read from p.q)."""
        c = self.c
        hd, (G, kv) = c.head_dim, self._task_group(p)
        cap = -(-c.max_seq // parts)
        s0, s1 = self._span(mem, part, parts, p.window)
        base = (p.layer * c.n_kv_heads + kv) * c.max_seq
        k = mem.matrix(p.kcache)[base + s0:base + s1].float()
        if q is None:
            q0 = p.q_off + p.kv_head * G * hd
            q = mem[p.q][q0:q0 + G * hd].view(G, hd)
        s = self.rnd(self.rnd(q @ k.t()) * c.attn_scale)  # [q head, position]
        o = p.scores_off + (part * c.n_heads + p.kv_head * G) * cap
        mem[p.scores][o:o + G * cap].view(G, cap)[:, :s1 - s0] = s
        if s1 <= s0:
            return [(-math.inf, 0.0)] * G
        m = s.max(1).values
        return list(zip(m.tolist(), torch.exp(s - m[:, None]).sum(1).tolist()))

    def _values(self, mem: Memory, p, part: int, parts: int, stats: list[tuple[float, float]],
                round_probs: bool = True) -> list[torch.Tensor]:
        """stats[j]: the (max, sum) that normalise q head j of the group. Returns unrounded p @ V per q head, the
        probabilities p rounded to the model dtype first (eager's numerics) unless `round_probs` is False."""
        c = self.c
        G, kv = self._task_group(p)
        cap = -(-c.max_seq // parts)
        s0, s1 = self._span(mem, part, parts, p.window)
        base = (p.layer * c.n_kv_heads + kv) * c.max_seq
        v = mem.matrix(p.vcache)[base + s0:base + s1].float()
        o = p.scores_off + (part * c.n_heads + p.kv_head * G) * cap
        s = mem[p.scores][o:o + G * cap].view(G, cap)[:, :s1 - s0]
        m, lsum = (torch.tensor(x, dtype=torch.float32, device=s.device)[:, None] for x in zip(*stats))
        probs = torch.exp(s - m) / lsum
        return list((self.rnd(probs) if round_probs else probs) @ v)

    def op_attn_decode(self, mem: Memory, p) -> None:
        c = self.c
        hd, G = c.head_dim, c.n_heads // c.n_kv_heads
        stats = self._scores(mem, p, 0, 1)
        for j, o in enumerate(self._values(mem, p, 0, 1, stats)):
            hq = p.kv_head * G + j
            mem[p.out][p.out_off + hq * hd:p.out_off + (hq + 1) * hd] = self.rnd(o)

    def op_attn_scores(self, mem: Memory, p) -> None:
        c = self.c
        G = c.n_heads // c.n_kv_heads
        for j, (m, lsum) in enumerate(self._scores(mem, p, p.part, p.parts)):
            r = p.stats_off + (p.part * c.n_heads + p.kv_head * G + j) * 2
            mem[p.stats][r] = m
            mem[p.stats][r + 1] = lsum

    def op_attn_values(self, mem: Memory, p) -> None:
        c = self.c
        hd, G = c.head_dim, c.n_heads // c.n_kv_heads
        rec = mem[p.stats][p.stats_off:p.stats_off + p.parts * c.n_heads * 2].view(p.parts, c.n_heads, 2)
        rec = rec[:, p.kv_head * G:(p.kv_head + 1) * G]  # [part, q head of the group, (max, sum)]
        m, M = rec[..., 0], rec[..., 0].max(0).values
        w = torch.where(m == -math.inf, torch.zeros_like(m), torch.exp(m - M))
        stats = list(zip(M.tolist(), (rec[..., 1] * w).sum(0).tolist()))
        for j, o in enumerate(self._values(mem, p, p.part, p.parts, stats)):
            r = p.out_off + (p.part * c.n_heads + p.kv_head * G + j) * hd
            mem[p.out][r:r + hd] = self.partial(o)
        self.join_combine(mem, p, NO_BUFFER, 0)

    # Under a per-partition softmax the probabilities are divided by the partition's own sum, not the global
    # one, and stay in fp32: eager rounds them to the model dtype at the global scale, which a partition cannot
    # reproduce, and rounding them at the partition's scale instead left fp16 outputs about twice as far from
    # an fp32 reference as eager's (toy and toy-2L, greedy8 and pos128). Without that rounding the only departure
    # from eager's numerics is one rounding fewer. The combine weighs partition k by exp(m_k - M) * l_k / L,
    # which undoes the local normalisation.
    def op_attn_partial(self, mem: Memory, p) -> None:
        c = self.c
        hd, (G, _) = c.head_dim, self._task_group(p)
        stats = self._scores(mem, p, p.part, p.parts, self.folded_rope(mem, p) if p.rope else None)
        for j, o in enumerate(self._values(mem, p, p.part, p.parts, stats, round_probs=False)):
            row = p.part * c.n_heads + p.kv_head * G + j
            mem[p.out][p.out_off + row * hd:p.out_off + (row + 1) * hd] = self.partial(o)
            mem[p.stats][p.stats_off + 2 * row] = stats[j][0]
            mem[p.stats][p.stats_off + 2 * row + 1] = stats[j][1]
        self.join_combine(mem, p, p.stats, p.stats_off)

    def folded_rope(self, mem: Memory, p) -> torch.Tensor:
        """fusion.rope_kv_into_attention: the group's q heads [G, head_dim] from QKV's raw rows, normalised and
        rotated; and where this partition holds the step's position, k normalised and rotated and v as it is,
        appended to the caches at it before the partition reads them (no other task reads that row this step)."""
        c = self.c
        hd, G, (Gt, kv) = c.head_dim, c.n_heads // c.n_kv_heads, self._task_group(p)
        pos = int(mem[c.pos][0])
        cos = mem[c.rope_cos][pos * hd:(pos + 1) * hd].float()
        sin = mem[c.rope_sin][pos * hd:(pos + 1) * hd].float()
        raw = mem[p.q][p.q_off + kv * (G + 2) * hd:p.q_off + (kv + 1) * (G + 2) * hd].view(G + 2, hd)
        s0, s1 = self._span(mem, p.part, p.parts, p.window)
        if s0 <= pos < s1:  # under attention.q_splits every share of the KV head writes the same row
            slot = ((p.layer * c.n_kv_heads + kv) * c.max_seq + pos) * hd
            k = self.rotate(mem, raw[G], p.knorm, cos, sin)
            mem[p.kcache][slot:slot + hd] = k.to(mem[p.kcache].dtype)
            mem[p.vcache][slot:slot + hd] = raw[G + 1].to(mem[p.vcache].dtype)
        first = (p.kv_head % p.q_splits) * Gt
        return torch.stack([self.rotate(mem, raw[first + j], p.qnorm, cos, sin) for j in range(Gt)])

    def _task_group(self, p) -> tuple[int, int]:
        """(q heads of the task's group, the physical KV head whose K and V rows it reads): a KV head's whole GQA
        group, or under attention.q_splits one share of it (schedule/opcodes.py AttnPartialParams.q_splits)."""
        splits = getattr(p, "q_splits", 1)
        return self.c.n_heads // self.c.n_kv_heads // splits, p.kv_head // splits

    def join_combine(self, mem: Memory, p, stats: int, stats_off: int) -> None:
        """After a partition task of a join has stored its part: the last of the head's tasks combines the head."""
        j = p.join
        if j.out == NO_BUFFER:
            return
        mem.arrivals[j.arrivals] += 1
        if mem.arrivals[j.arrivals] == p.parts:
            self.op_attn_combine(mem, AttnCombineParams(p.kv_head, p.out, p.out_off, p.parts, j.out, j.out_off,
                                                        stats, stats_off, getattr(p, "q_splits", 1)))

    def op_attn_combine(self, mem: Memory, p) -> None:
        c = self.c
        hd, (G, _) = c.head_dim, self._task_group(p)
        src = mem[p.partial]
        for j in range(G):
            hq = p.kv_head * G + j
            parts = [src[p.partial_off + (pp * c.n_heads + hq) * hd:][:hd] for pp in range(p.parts)]
            if p.part_stats != NO_BUFFER:
                w = self._weights(mem, p.part_stats, p.part_stats_off, p.parts, hq)
                parts = [wk * o for wk, o in zip(w, parts)]
            mem[p.out][p.out_off + hq * hd:p.out_off + (hq + 1) * hd] = self.rnd(sum(parts))

    def _weights(self, mem: Memory, stats: int, off: int, parts: int, hq: int) -> list[float]:
        """exp(m_k - M) * l_k / L of each partition k of q head hq; an empty partition weighs 0."""
        rec = torch.stack([mem[stats][off + (k * self.c.n_heads + hq) * 2:][:2] for k in range(parts)])
        m, lsum = rec[:, 0], rec[:, 1]
        M = m.max()
        scaled = torch.where(m == -math.inf, torch.zeros_like(m), lsum * torch.exp(m - M))
        return (scaled / scaled.sum()).tolist()

    def op_argmax(self, mem: Memory, p) -> None:
        pairs = mem[p.pairs][p.pairs_off:p.pairs_off + 2 * p.slots].view(-1, 2)
        vals, idx = pairs[:, 0], pairs[:, 1]
        best = vals.max()
        ties = idx[vals == best]
        # NaN logits (a race the poison exposed) leave no maximum: keep the step alive so verify reports them
        tok = int(ties.min()) if ties.numel() else 0
        mem[p.token][0] = tok
