// ---- weight ring: matvec weights stream global -> shared memory through bulk copies (sm_90+) ------
// Thread 0 is the producer: it walks its SM's queue ahead of the consumers and fills free 16 KiB slots
// with the next pieces of matvec weight tiles, each slot completing on its own mbarrier. Weights do not
// depend on activations, so the next AMK_PIPELINE_DEPTH tasks' pieces may load before their dependencies
// are met; the ring keeps each SM's DRAM stream busy across the waits between stages.
#if AMK_WEIGHT_RING_KB > 0
#define RING_SLOT_BYTES AMK_RING_SLOT_BYTES
#define RING_SLOTS (AMK_WEIGHT_RING_KB * 1024 / RING_SLOT_BYTES)
#define SLOT_ELEMS (RING_SLOT_BYTES / (int)sizeof(wtype))
#define PIECE_ROWS_MAX 252  // two buffers of per-unit partial sums (and padding) fit the 2 KiB bookkeeping area

// Piece q of a task's weight tile: computed rows [r0, r0 + nr) x columns [c0, c0 + nc) of the slice, packed
// row-major in one slot. Whole rows when a row fits a slot, else one row cut into slot-wide pieces.
struct Piece { int r0, nr, c0, nc; };

__device__ __forceinline__ int pieces_of(const MatvecParams& p) {
  const int R = computed_rows(p);
  if (p.klen <= SLOT_ELEMS) {
    const int rpp = min(PIECE_ROWS_MAX, SLOT_ELEMS / p.klen);
    return (R + rpp - 1) / rpp;
  }
  return R * ((p.klen + SLOT_ELEMS - 1) / SLOT_ELEMS);
}

// Weight row of computed row lr: the main rows, then the paired rows (gate/up) at pair_offset.
__device__ __forceinline__ long long weight_row(const MatvecParams& p, int lr) {
  return lr < p.rows ? (long long)p.row0 + lr : (long long)p.epi.pair_offset + p.row0 + (lr - p.rows);
}

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// The producer's current instruction, read from global memory once: the pump runs on warp 0's critical
// path between pieces, where a dependent chain of L2 loads per piece would stall the whole block.
struct RingTile {
  const wtype* W;
  long long K;
  MatvecParams p;
  int pieces, rpp, cpr;  // pieces, rows per row piece, column pieces per row (1 when rows fit a slot)
  int R;                  // computed rows
  bool whole_rows;        // klen == K: the main rows and the paired rows are two contiguous runs
  unsigned row_bytes;     // bytes of one row of the slice
  const char* main_src;   // first main row of the slice
  const char* pair_src;   // first paired row
};

__device__ __forceinline__ Piece piece_at(const RingTile& t, int q) {
  Piece g;
  if (t.cpr == 1) {
    g.r0 = q * t.rpp; g.nr = min(t.rpp, computed_rows(t.p) - g.r0); g.c0 = 0; g.nc = t.p.klen;
  } else {
    g.r0 = q / t.cpr; g.nr = 1; g.c0 = (q - g.r0 * t.cpr) * SLOT_ELEMS; g.nc = min(SLOT_ELEMS, t.p.klen - g.c0);
  }
  return g;
}

struct WeightRing {
  unsigned long long* full;  // one mbarrier per slot, completed by the bytes of its piece
  char* slots;
  int head;    // pieces issued (thread 0 only)
  int tail;    // pieces consumed (the same in every thread)
  int pi, pq;  // producer cursor: queue index of the instruction, next piece of it (thread 0 only)
  bool loaded; // tile holds instruction pi
  RingTile tile;
};

__device__ void ring_init(WeightRing& r, unsigned long long* full, float* smem, int begin) {
  r.full = full;
  r.slots = reinterpret_cast<char*>(smem) + AMK_RING_OFFSET;
  r.head = r.tail = 0;
  r.pi = begin;
  r.pq = 0;
  r.loaded = false;
  if (threadIdx.x == 0) {
    for (int s = 0; s < RING_SLOTS; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_u32(full + s)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
}

// Thread 0: one piece into the next slot. The slot's previous piece was consumed before the barrier that
// preceded this call (the pattern of TMA pipelines: a consumer release, then the copy; no proxy fence, which
// would also wait for the copies still in flight).
__device__ __forceinline__ void bulk_copy(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// Thread 0, the common case: whole rows, at most two runs (main and paired rows). A few instructions: every
// piece passes through here on the block's critical path (barrier -> issue -> warp 0's units -> barrier).
__device__ __forceinline__ void ring_issue_rows(WeightRing& r, int q) {
  const RingTile& t = r.tile;
  const int slot = r.head % RING_SLOTS;
  const unsigned bar = smem_u32(r.full + slot);
  const unsigned dst = smem_u32(r.slots + slot * RING_SLOT_BYTES);
  const int lr0 = q * t.rpp, n = min(t.rpp, t.R - lr0), rows = t.p.rows;
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(n * t.row_bytes) : "memory");
  if (lr0 + n <= rows) {
    bulk_copy(dst, t.main_src + (long long)lr0 * t.row_bytes, n * t.row_bytes, bar);
  } else if (lr0 >= rows) {
    bulk_copy(dst, t.pair_src + (long long)(lr0 - rows) * t.row_bytes, n * t.row_bytes, bar);
  } else {
    const int n1 = rows - lr0;
    bulk_copy(dst, t.main_src + (long long)lr0 * t.row_bytes, n1 * t.row_bytes, bar);
    bulk_copy(dst + n1 * t.row_bytes, t.pair_src, (n - n1) * t.row_bytes, bar);
  }
  ++r.head;
}

// Thread 0, the other cases: a k-split slice (rows apart in memory: one copy per row) or a row cut into
// slot-wide column pieces (one row per piece).
__device__ void ring_issue(WeightRing& r, int q) {
  const RingTile& t = r.tile;
  const int slot = r.head % RING_SLOTS;
  const Piece g = piece_at(t, q);
  const wtype* W = t.W + t.p.k0 + g.c0;
  const unsigned bar = smem_u32(r.full + slot);
  const unsigned dst = smem_u32(r.slots + slot * RING_SLOT_BYTES);
  const unsigned row_bytes = g.nc * (unsigned)sizeof(wtype);
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(g.nr * row_bytes) : "memory");
  for (int k = 0; k < g.nr; ++k) bulk_copy(dst + k * row_bytes, W + weight_row(t.p, g.r0 + k) * t.K, row_bytes, bar);
  ++r.head;
}

// Thread 0: issue pieces while slots are free, for queue entries up to `limit` (inclusive).
__device__ void ring_pump(WeightRing& r, const Ctx& c, const int* instrs, int end, int limit) {
  limit = min(limit, end - 1);
  while (r.head - r.tail < RING_SLOTS) {
    if (!r.loaded) {
      if (r.pi > limit) return;
      const int* ins = instrs + (long long)r.pi * AMK_INSTR_WORDS;
      if (__ldg(ins) != OP_MATVEC) { ++r.pi; continue; }
      r.tile.p = *reinterpret_cast<const MatvecParams*>(ins + AMK_PARAM_BASE);
      r.tile.W = buf<wtype>(c, r.tile.p.weight);
      r.tile.K = __ldg(c.cols + r.tile.p.weight);
      r.tile.pieces = pieces_of(r.tile.p);
      r.tile.rpp = min(PIECE_ROWS_MAX, max(1, SLOT_ELEMS / r.tile.p.klen));
      r.tile.cpr = (r.tile.p.klen + SLOT_ELEMS - 1) / SLOT_ELEMS;
      r.tile.R = computed_rows(r.tile.p);
      r.tile.whole_rows = r.tile.p.klen == r.tile.K;
      r.tile.row_bytes = r.tile.p.klen * (unsigned)sizeof(wtype);
      r.tile.main_src = reinterpret_cast<const char*>(r.tile.W + r.tile.p.row0 * r.tile.K);
      r.tile.pair_src = reinterpret_cast<const char*>(r.tile.W + ((long long)r.tile.p.epi.pair_offset + r.tile.p.row0) * r.tile.K);
      r.pq = 0;
      r.loaded = true;
    }
    if (r.pq >= r.tile.pieces) { ++r.pi; r.loaded = false; continue; }
#if AMK_TRACE
    const long long c0 = clock64();
#endif
    if (r.tile.whole_rows && r.tile.cpr == 1) ring_issue_rows(r, r.pq++);
    else ring_issue(r, r.pq++);
#if AMK_TRACE
    c.prof[3] += clock64() - c0;
#endif
  }
}

// Wait until slot `seq % RING_SLOTS` holds piece number `seq`. Bounded: a copy that never lands (it cannot,
// short of a fault) records a time-out and lets the step finish with the error set.
__device__ void ring_wait(const WeightRing& r, int seq, int* control, int task, long long timeout_ns) {
  const unsigned bar = smem_u32(r.full + seq % RING_SLOTS), parity = (seq / RING_SLOTS) & 1;
  unsigned long long start = 0;
  for (unsigned spins = 1;; ++spins) {
    unsigned ok;
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
    if (ok) return;
    if ((spins & 255u) == 0) {
      const unsigned long long now = global_ns();
      if (start == 0) start = now;
      else if ((long long)(now - start) > timeout_ns) {
        if (atomicCAS(control + CTRL_ERR, 0, ERR_TIMEOUT) == 0) { control[CTRL_ERR_TASK] = task; control[CTRL_ERR_DETAIL] = -1; }
        return;
      }
    }
  }
}

// Thread 0, before leaving early: no copy may still be writing into this block's shared memory.
__device__ void ring_drain(const WeightRing& r, int* control, int task, long long timeout_ns) {
  for (int s = r.tail; s < r.head; ++s) ring_wait(r, s, control, task, timeout_ns);
}

// The slicing of one task's tile into pieces, and the work split of a full and of the last piece, computed
// once per task: per-piece integer division in every warp would cost more issue slots than the dot products.
struct PieceShape {
  int nr, nvec, sbits, per, units;  // rows, 16-byte vectors per row, log2 of chunks per row, vectors per unit
};

__device__ __forceinline__ PieceShape piece_shape(int nr, int nc) {
  PieceShape s;
  s.nr = nr;
  s.nvec = nc / VEC;
  const int S = row_chunks(nr, s.nvec);
  s.sbits = __ffs(S) - 1;
  s.per = s.nvec >> s.sbits;
  s.units = nr << s.sbits;
  return s;
}

// The matvec of one task from ring pieces. Units of a piece (row, column chunk) are spread over the warps;
// their partial sums go to a double-buffered area and are folded into acc in a fixed order.
__device__ void op_matvec_ring(const Ctx& c, const MatvecParams& p, WeightRing& r, const int* instrs, int end,
                               int limit, int* control, int task, long long timeout_ns) {
  const int K = __ldg(c.cols + p.weight);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int R = computed_rows(p);
  NormWeights nw;
  load_norm_weights(c, p, nw);
  float* xs = stage_input(c, p, K, nw);
  float* acc = xs + p.klen + ((4 - (p.klen & 3)) & 3);
  float* part = acc + ((R + 3) & ~3);  // 2 x PIECE_ROWS_MAX floats, inside the bookkeeping bytes
  for (int i = tid; i < R; i += AMK_THREADS) acc[i] = 0.f;
  const bool by_rows = p.klen <= SLOT_ELEMS;
  int rpp, cpr, np;
  PieceShape full, last;
  if (by_rows) {
    rpp = min(PIECE_ROWS_MAX, SLOT_ELEMS / p.klen);
    cpr = 1;
    np = (R + rpp - 1) / rpp;
    full = piece_shape(rpp, p.klen);
    last = piece_shape(R - (np - 1) * rpp, p.klen);
  } else {
    rpp = 1;
    cpr = (p.klen + SLOT_ELEMS - 1) / SLOT_ELEMS;
    np = R * cpr;
    full = piece_shape(1, SLOT_ELEMS);
    last = piece_shape(1, p.klen - (cpr - 1) * SLOT_ELEMS);
  }
  __syncthreads();
  int row = 0, col = 0;  // the piece's first computed row and its column piece
  for (int q = 0; q < np; ++q) {
    const PieceShape& sh = (by_rows ? q == np - 1 : col == cpr - 1) ? last : full;
    const uint4* slot = reinterpret_cast<const uint4*>(r.slots + (r.tail % RING_SLOTS) * RING_SLOT_BYTES);
    const float* xq = xs + col * SLOT_ELEMS;
    float* pb = part + (q & 1) * PIECE_ROWS_MAX;
#if AMK_TRACE
    const long long c0 = clock64();
#endif
    ring_wait(r, r.tail, control, task, timeout_ns);
#if AMK_TRACE
    const long long c1 = clock64();
#endif
    const int mine = (sh.units - warp + NWARPS - 1) / NWARPS;
    for (int j = 0; j < mine; j += AMK_ROWS_IN_FLIGHT) {
      const uint4* rp[AMK_ROWS_IN_FLIGHT];
      const float* xp[AMK_ROWS_IN_FLIGHT];
      float out[AMK_ROWS_IN_FLIGHT];
      const int n = min(AMK_ROWS_IN_FLIGHT, mine - j);
#pragma unroll
      for (int k = 0; k < AMK_ROWS_IN_FLIGHT; ++k) {
        const int u = warp + (j + min(k, n - 1)) * NWARPS, lr = u >> sh.sbits, ch = u & ((1 << sh.sbits) - 1);
        rp[k] = slot + lr * sh.nvec + ch * sh.per;
        xp[k] = xq + ch * sh.per * VEC;
      }
      if (n == AMK_ROWS_IN_FLIGHT) {
        dot_units<AMK_ROWS_IN_FLIGHT, true>(rp, xp, sh.per, lane, out);
      } else {
#pragma unroll
        for (int k = 0; k < AMK_ROWS_IN_FLIGHT - 1; ++k)
          if (k < n) dot_units<1, true>(rp + k, xp + k, sh.per, lane, out + k);
      }
      if (lane == 0)
        for (int k = 0; k < n; ++k) pb[warp + (j + k) * NWARPS] = out[k];
    }
    __syncthreads();  // every unit of the piece is summed: its slot and partials are free
#if AMK_TRACE
    const long long c2 = clock64();
#endif
    ++r.tail;
    if (tid == 0) ring_pump(r, c, instrs, end, limit);
    const int S = 1 << sh.sbits;
    for (int i = tid; i < sh.nr; i += AMK_THREADS) {
      float s = 0.f;
      for (int k = 0; k < S; ++k) s += pb[i * S + k];
      acc[row + i] += s;
    }
    if (by_rows) row += rpp;
    else if (++col == cpr) { col = 0; ++row; }
#if AMK_TRACE
    if (tid == 0) { c.prof[0] += c1 - c0; c.prof[1] += c2 - c1; c.prof[2] += clock64() - c2; }
#endif
  }
  __syncthreads();
  epilogue(c, p.epi, p.row0, p.rows, acc);
}
#endif
