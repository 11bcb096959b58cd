// ---- attention (eager's numerics: rounded scores, fp32 softmax, rounded probabilities) ----------
// Positions [s0, s1) partition `part` of `parts` attends to: the live positions [lo, pos] split evenly, lo = 0, or
// pos - window + 1 under a sliding window (transformers keeps key k for query q when k > q - window). Positions
// before the window are never read.
__device__ __forceinline__ void span(int pos, int part, int parts, int window, int& s0, int& s1) {
  const int L = pos + 1, lo = window > 0 ? max(0, L - window) : 0, n = L - lo, per = (n + parts - 1) / parts;
  s0 = lo + min(n, part * per);
  s1 = lo + min(n, part * per + per);
}

// K or V rows staged in shared memory: vector v of row r sits in slot v ^ (r mod HD_VECS), so that threads
// reading one vector of consecutive rows hit different banks (when HD_VECS is a power of two; else in order).
#define HD_VECS_POW2 ((HD_VECS & (HD_VECS - 1)) == 0)
__device__ __forceinline__ int staged_slot(int r, int v) {
  return r * HD_VECS + (HD_VECS_POW2 ? (v ^ (r & (HD_VECS - 1))) : v);
}

// Copy rows [s0 + r0, s0 + r0 + n) of a cache slab into rows r0.. of `dst` with cp.async (no wait: the
// caller waits before reading).
__device__ __forceinline__ void stage_rows(uint4* dst, const wtype* __restrict__ slab, int s0, int r0, int n,
                                           int threads = AMK_THREADS) {
  const uint4* src = reinterpret_cast<const uint4*>(slab + (long long)(s0 + r0) * AMK_HEAD_DIM);
  if ((int)threadIdx.x >= threads) return;
  for (int i = threadIdx.x; i < n * HD_VECS; i += threads)
    cp_async16(dst + staged_slot(r0 + i / HD_VECS, i % HD_VECS), src + i);
}

// The block-wide passes (scores_pass .. reduce_values) take a KV group's q heads GT at a time, each tile its own
// passes over K and V: the whole group up to 8 heads, else ceil(G / 8) tiles of near-equal size (the last may be
// short: GT_RAGGED). Their per-thread arrays hold GT heads: 32 q heads a KV head held 32 scores, (max, sum) pairs
// and q slices a thread and spilled 176-528 bytes to the stack; 16 held 32 bytes there in ATTN_DECODE.
constexpr int GROUP_TILES = (AMK_GROUP + 7) / 8;
constexpr int GT = (AMK_GROUP + GROUP_TILES - 1) / GROUP_TILES;
constexpr bool GT_RAGGED = AMK_GROUP % GT != 0;
// q heads of the tile at h0 (GT unless the last of a ragged group): a compile-time GT where tiles are whole
__device__ __forceinline__ int tile_heads(int h0) { return GT_RAGGED ? min(GT, AMK_GROUP - h0) : GT; }

// Each thread of the scores and values passes holds a slice of W consecutive dims of a head for every q head of
// the tile. W is VEC halved until G * W <= 32 (while a K row still spans one warp): with 7 or 8 q heads a KV
// head and 16-bit rows, G * VEC = 64 q values and as many value accumulators spilled to local memory at 128
// registers a thread (512 threads), and the spilled lines, evicted from L1 by the weight stream, cost an L2
// round trip each.
__host__ __device__ constexpr int head_slice(bool within_warp) {
  int v = VEC;
  while (v > 1 && GT * v > 32 && (!within_warp || AMK_HEAD_DIM / (v / 2) <= 32)) v /= 2;
  return v;
}
constexpr int SV = head_slice(true);   // dims of q and K a scores lane holds
constexpr int VV = head_slice(false);  // dims of V a values thread accumulates
constexpr int HD_SV = AMK_HEAD_DIM / SV, HD_VV = AMK_HEAD_DIM / VV;
// V rows a values thread has in flight from the cache: eight, unless its GT x VV accumulators and eight loads'
// registers pass 48, which at 128 registers a thread spilled beside the rest of the kernel (llama-3.2-1b bf16:
// 4 x 8 accumulators and 8 x 4 registers of loads left 8 bytes of local memory; G 8, VV 4 and fp32 rows fit).
constexpr int V_LOAD_REGS = VV * (int)sizeof(wtype) / 4 > 0 ? VV * (int)sizeof(wtype) / 4 : 1;
constexpr int V_UNROLL = GT * VV + 8 * V_LOAD_REGS <= 48 ? 8 : 4;
static_assert(AMK_HEAD_DIM % VEC == 0, "a head must split into whole 16-byte vectors");

template <int BYTES> struct RawOf;
template <> struct RawOf<16> { typedef uint4 T; };
template <> struct RawOf<8> { typedef uint2 T; };
template <> struct RawOf<4> { typedef unsigned T; };
template <> struct RawOf<2> { typedef unsigned short T; };
template <int W> using raw_t = typename RawOf<W * (int)sizeof(wtype)>::T;

template <int W>
__device__ __forceinline__ void unpack_w(const raw_t<W>& raw, float* out) {
  const wtype* h = reinterpret_cast<const wtype*>(&raw);
#pragma unroll
  for (int e = 0; e < W; ++e) out[e] = to_f(h[e]);
}

// Slice d (W dims) of row t of a K or V cache slab, read at L2 (this step's row was written by another SM).
template <int W>
__device__ __forceinline__ void load_slice(const wtype* __restrict__ slab, long long t, int d, float* out) {
  unpack_w<W>(__ldcg(reinterpret_cast<const raw_t<W>*>(slab + t * AMK_HEAD_DIM + d * W)), out);
}

// The same from row r staged in shared memory: a part of the 16-byte slot that holds it.
template <int W>
__device__ __forceinline__ void load_staged_slice(const uint4* staged, int r, int d, float* out) {
  constexpr int per = VEC / W;  // slices in one 16-byte slot
  unpack_w<W>(reinterpret_cast<const raw_t<W>*>(staged + staged_slot(r, d / per))[d % per], out);
}

// dst[j * stride + t - s0]; m[] gets the thread's running max per head. Rows s0 .. s0 + n_staged - 1 are read
// from `staged` (shared memory), the others from the cache.
// Scores: SCORE_LANES consecutive lanes (HD_SV rounded up to a power of two) share one position, each lane
// one slice of SV dims of its K row against its slice of every q head (held in registers), summed across the
// lanes by shuffles. Reading q from shared memory once per thread, not once per position, keeps it short.
static_assert(HD_SV <= 32, "a K row must span lanes of one warp");
#define SCORE_LANES (HD_SV <= 1 ? 1 : HD_SV <= 2 ? 2 : HD_SV <= 4 ? 4 : HD_SV <= 8 ? 8 : HD_SV <= 16 ? 16 : 32)

__device__ __forceinline__ void score_position(const float (&f)[SV], bool valid, int r, const float (&qv)[GT][SV],
                                               float* dst, int stride, bool to_smem, float* m, float* l, int nh) {
  float d[GT];
#pragma unroll
  for (int j = 0; j < GT; ++j) {
    d[j] = 0.f;
#pragma unroll
    for (int e = 0; e < SV; ++e) d[j] = fmaf(f[e], qv[j][e], d[j]);
#pragma unroll
    for (int o = 1; o < SCORE_LANES; o <<= 1) d[j] += __shfl_xor_sync(0xffffffffu, d[j], o);
  }
  if (valid && threadIdx.x % SCORE_LANES == 0) {
#pragma unroll
    for (int j = 0; j < GT; ++j) {
      if (GT_RAGGED && j >= nh) break;
      const float s = rnd(rnd(d[j]) * AMK_ATTN_SCALE);
      if (s > m[j]) { l[j] = l[j] * expf(m[j] - s) + 1.f; m[j] = s; } else { l[j] += expf(s - m[j]); }
      if (to_smem) dst[j * stride + r] = s; else stcg(dst + j * stride + r, s);
    }
  }
}

// Scores of positions [s0, s1) for the nh q heads of a tile (qs and dst at its first head), written to
// dst[j * stride + t - s0]; m[] and l[] get the thread's online (max, sum) per head. Rows s0 .. s0 + n_staged - 1 are read from `staged`
// (shared memory), the others from the cache, in two loops so that no cache load is issued for a staged row.
// Every lane of a warp runs the same trip count (the shuffles need them all). `to_smem` is a run-time flag
// and the loops stay rolled: attention runs about once per layer on an SM, so its instructions are rarely
// in the instruction cache, and their size is paid in fetch time.
__device__ void scores_pass(const wtype* __restrict__ kc, const float* qs, int s0, int s1, float* dst,
                                         int stride, bool to_smem, float* m, float* l, const uint4* staged,
                                         int n_staged, int nh) {
  const int lane_v = threadIdx.x % SCORE_LANES, tp = threadIdx.x / SCORE_LANES, np = AMK_THREADS / SCORE_LANES;
  const bool has_vec = lane_v < HD_SV;  // lanes past the row's slices add zeros
  const int dv = has_vec ? lane_v : 0;
#pragma unroll
  for (int j = 0; j < GT; ++j) { m[j] = NEG_INF; l[j] = 0.f; }
  float qv[GT][SV];
#pragma unroll
  for (int j = 0; j < GT; ++j)
#pragma unroll
    for (int e = 0; e < SV; ++e)
      qv[j][e] = has_vec && (!GT_RAGGED || j < nh) ? qs[j * AMK_HEAD_DIM + dv * SV + e] : 0.f;
  const int n = s1 - s0, n_smem = min(n, n_staged);
#pragma unroll 1
  for (int r0 = 0; r0 < n_smem; r0 += np) {
    const int r = r0 + tp;
    const bool valid = r < n_smem;
    float f[SV];
    load_staged_slice<SV>(staged, valid ? r : 0, dv, f);
    score_position(f, valid, r, qv, dst, stride, to_smem, m, l, nh);
  }
#pragma unroll 1
  for (int r0 = n_smem; r0 < n; r0 += np) {
    const int r = r0 + tp;
    const bool valid = r < n;
    float f[SV];
#pragma unroll
    for (int e = 0; e < SV; ++e) f[e] = 0.f;
    if (valid) load_slice<SV>(kc, s0 + r, dv, f);
    score_position(f, valid, r, qv, dst, stride, to_smem, m, l, nh);
  }
}

// Block-wide (max, sum) of per-thread online softmax statistics; every thread gets the result.
__device__ void block_softmax_stats(float m, float l, float* red, float& M, float& L) {
  M = block_max(m, red);
  L = block_sum(m == NEG_INF ? 0.f : l * expf(m - M), red);
}

// The same for a tile's GT heads at once, in two barriers instead of four per head: thread j (< GT) gets head j's
// (max, sum) in (Mj, Lj). `red` holds 2 * NWARPS * GT floats; warps' values combine in warp order, as block_max /
// block_sum do. A ragged tile's heads past its last come out as (-inf, 0), unused. No per-head array of results:
// a thread wants one head's, and GT of them a thread beside the scores' spilled at 32 q heads a KV head.
__device__ void group_softmax_stats(const float (&m)[GT], const float (&l)[GT], float* red, float& Mj, float& Lj) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* rl = red + NWARPS * GT;
#pragma unroll
  for (int j = 0; j < GT; ++j) {
    const float mw = warp_max(m[j]);
    if (lane == 0) red[warp * GT + j] = mw;
  }
  block_sync();
#pragma unroll
  for (int j = 0; j < GT; ++j) {
    float t = NEG_INF;
    for (int w = 0; w < NWARPS; ++w) t = fmaxf(t, red[w * GT + j]);
    const float lw = warp_sum(m[j] == NEG_INF ? 0.f : l[j] * expf(m[j] - t));
    if (lane == 0) rl[warp * GT + j] = lw;
  }
  block_sync();
  const int j = threadIdx.x < GT ? threadIdx.x : 0;
  float M = NEG_INF, L = 0.f;
  for (int w = 0; w < NWARPS; ++w) {
    M = fmaxf(M, red[w * GT + j]);
    L += rl[w * GT + j];
  }
  Mj = M;
  Lj = L;
}

// Accumulate sum_t rnd(exp(s - M) / L) * V[t] over [s0, s1) into acc[j][VV] for this thread's value vector, for
// the nh q heads of a tile (sc, M, Lsum and probs at its first head).
// Rows s0 .. s0 + n_staged - 1 are read from `staged` (shared memory), the others from the cache.
// from_smem: the scores sit in shared memory at probs with stride == chunk and fit one chunk, so each
// probability overwrites its own score.
// round_probs: rounded to the model dtype as eager does (the global softmax); the per-partition softmax keeps
// them in fp32 (amk.vm.semantics says why).
__device__ void values_pass(const wtype* __restrict__ vc, const float* sc, int stride, bool from_smem, int s0, int s1,
                            const float* M, const float* Lsum, float* probs, int chunk, float acc[GT][VV], int nh,
                            const uint4* staged = nullptr, int n_staged = 0, bool round_probs = true) {
  const int tid = threadIdx.x;
  const int dv = tid % HD_VV, tp = tid / HD_VV, np = AMK_THREADS / HD_VV;
  for (int c0 = s0; c0 < s1; c0 += chunk) {
    const int n = min(chunk, s1 - c0);
    block_sync();
    for (int i = tid; i < n * (GT_RAGGED ? nh : GT); i += AMK_THREADS) {
      const int j = i / n, t = i % n;
      const float* sp = sc + j * stride + (c0 - s0) + t;
      const float s = from_smem ? *sp : ldcg(sp);
      const float pr = expf(s - M[j]) / Lsum[j];
      probs[j * chunk + t] = round_probs ? rnd(pr) : pr;
    }
    block_sync();
    if (tp < np) {
      // staged rows first, then the cache: two loops, so that no cache load is issued for a staged row
      const int n_smem = min(n, max(0, n_staged - (c0 - s0)));
      int t = tp;
#pragma unroll 1
      for (; t < n_smem; t += np) {
        float f[VV];
        load_staged_slice<VV>(staged, c0 - s0 + t, dv, f);
#pragma unroll
        for (int j = 0; j < GT; ++j) {
          const float pj = !GT_RAGGED || j < nh ? probs[j * chunk + t] : 0.f;
#pragma unroll
          for (int e = 0; e < VV; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
        }
      }
#pragma unroll V_UNROLL
      for (; t < n; t += np) {
        float f[VV];
        load_slice<VV>(vc, c0 + t, dv, f);
#pragma unroll
        for (int j = 0; j < GT; ++j) {
          const float pj = !GT_RAGGED || j < nh ? probs[j * chunk + t] : 0.f;
#pragma unroll
          for (int e = 0; e < VV; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
        }
      }
    }
  }
}

// Reduce per-thread acc over position groups into out_s[j * hd + d] for the nh q heads of a tile (out_s at its
// first head). Lanes with the same vector index first combine by shuffles (when HD_VV divides 32), then warps'
// partials are summed in fixed order. `scratch` holds NWARPS * GT * hd floats.
__device__ void reduce_values(float acc[GT][VV], float* out_s, float* scratch, int nh) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int dv = tid % HD_VV, tp = tid / HD_VV, np = AMK_THREADS / HD_VV;
  constexpr bool kShuffle = (32 % HD_VV) == 0;
  if (tp >= np) {
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e) acc[j][e] = 0.f;
  }
  if (kShuffle) {
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e)
        for (int o = HD_VV; o < 32; o <<= 1) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
  }
  block_sync();
  const int GH = GT * AMK_HEAD_DIM;
  for (int i = tid; i < NWARPS * GH; i += AMK_THREADS) scratch[i] = 0.f;
  block_sync();
  if (kShuffle) {
    if (lane < HD_VV) {
#pragma unroll
      for (int j = 0; j < GT; ++j)
#pragma unroll
        for (int e = 0; e < VV; ++e) scratch[warp * GH + j * AMK_HEAD_DIM + dv * VV + e] = acc[j][e];
    }
  } else {
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e) atomicAdd(scratch + warp * GH + j * AMK_HEAD_DIM + dv * VV + e, acc[j][e]);
  }
  block_sync();
  for (int i = tid; i < (GT_RAGGED ? nh : GT) * AMK_HEAD_DIM; i += AMK_THREADS) {
    float s = 0.f;
    for (int w = 0; w < NWARPS; ++w) s += scratch[w * GH + i];
    out_s[i] = s;
  }
  block_sync();
}

__device__ void load_q(const Ctx& c, int q, int q_off, int g, float* qs) {
  stage_floats(qs, buf<float>(c, q) + q_off + g * AMK_GROUP * AMK_HEAD_DIM, AMK_GROUP * AMK_HEAD_DIM);
  block_sync();
}

__device__ __forceinline__ long long kv_row0(int layer, int g) {
  return ((long long)layer * AMK_KV_HEADS + g) * AMK_MAX_SEQ * AMK_HEAD_DIM;
}

// Shared layout for attention: [q: G*hd][stats: 2*G][out: G*hd][probs or scores: G*chunk]
__device__ void op_attn_decode(const Ctx& c, const AttnDecodeParams& p) {
  float* qs = c.smem;
  float* M = qs + AMK_GROUP * AMK_HEAD_DIM;
  float* Ls = M + AMK_GROUP;
  float* out_s = Ls + AMK_GROUP;
  float* probs = out_s + AMK_GROUP * AMK_HEAD_DIM;
  load_q(c, p.q, p.q_off, p.kv_head, qs);
  int s0, s1;
  span(c.pos, 0, 1, p.window, s0, s1);
  const int L = s1 - s0;  // positions attended
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head);
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head);
  // scores stay in shared memory when they fit, else go through the scratch buffer
  const bool in_smem = L <= p.chunk;
  float* sc = in_smem ? probs : buf<float>(c, p.scores) + p.scores_off + p.kv_head * AMK_GROUP * AMK_MAX_SEQ;
  const int stride = in_smem ? p.chunk : AMK_MAX_SEQ;
  for (int h0 = 0; h0 < AMK_GROUP; h0 += GT) {  // a tile's scores, then its values: reduce_values' scratch is probs
    const int nh = tile_heads(h0);
    float* tsc = sc + h0 * stride;
    float m[GT], l[GT];
    scores_pass(kc, qs + h0 * AMK_HEAD_DIM, s0, s1, tsc, stride, in_smem, m, l, nullptr, 0, nh);
#pragma unroll
    for (int j = 0; j < GT; ++j) {  // m[] and l[] indexed by a constant: a run-time bound put them on the stack
      if (j >= nh) continue;  // nh is the block's: every thread reaches the same barriers
      float mj, lj;
      block_softmax_stats(m[j], l[j], c.red, mj, lj);
      if (threadIdx.x == 0) { M[h0 + j] = mj; Ls[h0 + j] = lj; }
    }
    block_sync();
    float acc[GT][VV];
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e) acc[j][e] = 0.f;
    if (in_smem) {
      // probabilities overwrite the scores in place: each is computed from its own score only
      block_sync();
      for (int i = threadIdx.x; i < L * nh; i += AMK_THREADS) {
        const int j = i / L, t = i % L;
        tsc[j * stride + t] = rnd(expf(tsc[j * stride + t] - M[h0 + j]) / Ls[h0 + j]);
      }
      block_sync();
      const int dv = threadIdx.x % HD_VV, tp = threadIdx.x / HD_VV, np = AMK_THREADS / HD_VV;
      if (tp < np) {
#pragma unroll V_UNROLL
        for (int t = tp; t < L; t += np) {
          float f[VV];
          load_slice<VV>(vc, s0 + t, dv, f);
#pragma unroll
          for (int j = 0; j < GT; ++j) {
            const float pj = !GT_RAGGED || j < nh ? tsc[j * stride + t] : 0.f;
#pragma unroll
            for (int e = 0; e < VV; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
          }
        }
      }
    } else {
      values_pass(vc, tsc, stride, false, s0, s1, M + h0, Ls + h0, probs + h0 * p.chunk, p.chunk, acc, nh);
    }
    reduce_values(acc, out_s + h0 * AMK_HEAD_DIM, probs, nh);
  }
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stcg(out + i, rnd(out_s[i]));
}

// (K and V rows here load after the wait: registers held across it spill in the matvec path, and the scratch
// probabilities leave no room to stage them. ATTN_PARTIAL stages them in shared memory.)
template <class WaitDeps>
__device__ bool op_attn_scores(const Ctx& c, const AttnScoresParams& p, WaitDeps&& wait_deps) {
  int s0, s1;
  span(c.pos, p.part, p.parts, p.window, s0, s1);
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head);
  if (!wait_deps()) return false;
  PHASE_START();
  float* qs = c.smem;
  load_q(c, p.q, p.q_off, p.kv_head, qs);
  PHASE(0);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  float* stats = buf<float>(c, p.stats) + p.stats_off + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * 2;
  for (int h0 = 0; h0 < AMK_GROUP; h0 += GT) {
    const int nh = tile_heads(h0);
    float m[GT], l[GT], Mj, Lj;
    scores_pass(kc, qs + h0 * AMK_HEAD_DIM, s0, s1, sc + h0 * cap, cap, false, m, l, nullptr, 0, nh);
    PHASE(1);
    group_softmax_stats(m, l, qs + AMK_GROUP * AMK_HEAD_DIM, Mj, Lj);
    if (threadIdx.x < nh) {
      const int j = threadIdx.x;
      stcg(stats + 2 * (h0 + j), s1 > s0 ? Mj : NEG_INF);
      stcg(stats + 2 * (h0 + j) + 1, s1 > s0 ? Lj : 0.f);
    }
    // group_softmax_stats' last reads of red follow its last barrier: the next tile's first writes wait for them
    if (GROUP_TILES > 1) block_sync();
  }
  PHASE(2);
  return true;
}

template <class WaitDeps>
__device__ bool op_attn_values(const Ctx& c, const AttnValuesParams& p, WaitDeps&& wait_deps) {
  int s0, s1;
  span(c.pos, p.part, p.parts, p.window, s0, s1);
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head);
  if (!wait_deps()) return false;
  PHASE_START();
  float* M = c.smem;
  float* Ls = M + AMK_GROUP;
  float* out_s = Ls + AMK_GROUP;
  float* probs = out_s + AMK_GROUP * AMK_HEAD_DIM;
  // global (max, sum) of each q head from every partition's stats: all of them are loaded at once into the
  // probabilities area (free until values_pass) when they fit, then combined in partition order
  const float* st = buf<float>(c, p.stats) + p.stats_off;
  const bool staged = 2 * p.parts <= p.chunk;
  if (staged) {
    for (int i = threadIdx.x; i < AMK_GROUP * p.parts; i += AMK_THREADS) {
      const int j = i / p.parts, k = i % p.parts;
      const float2 v = __ldcg(reinterpret_cast<const float2*>(st + (k * AMK_HEADS + p.kv_head * AMK_GROUP + j) * 2));
      probs[2 * i] = v.x;
      probs[2 * i + 1] = v.y;
    }
    block_sync();
  }
  if (threadIdx.x < AMK_GROUP) {
    const int j = threadIdx.x, hq = p.kv_head * AMK_GROUP + j;
    const float* mine = staged ? probs + 2 * j * p.parts : nullptr;  // (max, sum) of partition k at 2k
    float mx = NEG_INF;
    for (int k = 0; k < p.parts; ++k) mx = fmaxf(mx, staged ? mine[2 * k] : ldcg(st + (k * AMK_HEADS + hq) * 2));
    float l = 0.f;
    for (int k = 0; k < p.parts; ++k) {
      const float mk = staged ? mine[2 * k] : ldcg(st + (k * AMK_HEADS + hq) * 2);
      const float lk = staged ? mine[2 * k + 1] : ldcg(st + (k * AMK_HEADS + hq) * 2 + 1);
      if (mk != NEG_INF) l += lk * expf(mk - mx);
    }
    M[j] = mx;
    Ls[j] = l;
  }
  block_sync();
  PHASE(0);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  const float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  for (int h0 = 0; h0 < AMK_GROUP; h0 += GT) {
    const int nh = tile_heads(h0);
    float acc[GT][VV];
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e) acc[j][e] = 0.f;
    values_pass(vc, sc + h0 * cap, cap, false, s0, s1, M + h0, Ls + h0, probs + h0 * p.chunk, p.chunk, acc, nh);
    PHASE(1);
    reduce_values(acc, out_s + h0 * AMK_HEAD_DIM, probs, nh);
  }
  ptype* out = part_ptr(c, p.out, p.out_off) + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stpart(out + i, out_s[i]);
  PHASE(2);
  return true;
}
