// ---- attention over KV partitions: the combine, and the per-partition softmax (ATTN_PARTIAL) ------------
// Uses the passes of attention.cuh.

// One KV head's attention output from its partitions: x[i] = rnd(sum_k w_k part_k[i]) with w_k = l_k exp(m_k - M) /
// sum_j l_j exp(m_j - M) over the partitions of i's q head, or w_k = 1 when the partitions shared one softmax.
// R adjacent lanes take one element, each loading the values and (max, sum) of every R-th partition at once (up
// to JOIN_BATCH a lane: one L2 round trip for 16 partitions), then merge their running (max, sum, value) with
// shuffles. The combine sits on the path from the attention to O, so it is one round trip, not one per partition.
#define JOIN_BATCH 8
__device__ void op_attn_combine(const Ctx& c, const AttnCombineParams& p) {
  constexpr int E = AMK_GROUP * AMK_HEAD_DIM;
  int R = 1;
  while (R < 32 && 2 * R * E <= AMK_THREADS && 2 * R <= p.parts) R *= 2;
  const ptype* src = part_ptr(c, p.partial, p.partial_off) + p.kv_head * E;
  const float* st = p.part_stats >= 0 ? buf<float>(c, p.part_stats) + p.part_stats_off : nullptr;
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * E;
  for (int base = 0; base < E * R; base += AMK_THREADS) {  // the same trips for every lane of a warp: shuffles below
    const int idx = base + threadIdx.x, i = idx / R, r = idx % R;
    const bool live = idx < E * R;
    const int hq = p.kv_head * AMK_GROUP + i / AMK_HEAD_DIM;
    float acc = 0.f, M = NEG_INF, T = 0.f;
    for (int q = r; q < p.parts; q += R * JOIN_BATCH) {
      float v[JOIN_BATCH];
      float2 ml[JOIN_BATCH];
#pragma unroll
      for (int e = 0; e < JOIN_BATCH; ++e) {
        const int k = q + e * R;
        const bool in = live && k < p.parts;
        v[e] = in ? ldpart(src + k * AMK_HEADS * AMK_HEAD_DIM + i) : 0.f;
        ml[e] = (in && st) ? __ldcg(reinterpret_cast<const float2*>(st + (k * AMK_HEADS + hq) * 2))
                           : make_float2(in ? 0.f : NEG_INF, 1.f);
      }
      if (st) {
        float mx = M;
#pragma unroll
        for (int e = 0; e < JOIN_BATCH; ++e) mx = fmaxf(mx, ml[e].x);
        if (mx > M) {  // rescale what the earlier partitions added to the new maximum
          const float s = M == NEG_INF ? 0.f : expf(M - mx);
          acc *= s;
          T *= s;
          M = mx;
        }
      }
#pragma unroll
      for (int e = 0; e < JOIN_BATCH; ++e) {
        const float w = st ? (ml[e].x == NEG_INF ? 0.f : ml[e].y * expf(ml[e].x - M)) : (ml[e].x == NEG_INF ? 0.f : 1.f);
        acc = fmaf(w, v[e], acc);
        T += w;
      }
    }
    for (int o = R / 2; o > 0; o >>= 1) {  // merge the R lanes' running states
      const float M2 = __shfl_xor_sync(0xffffffffu, M, o), T2 = __shfl_xor_sync(0xffffffffu, T, o);
      const float a2 = __shfl_xor_sync(0xffffffffu, acc, o);
      if (st) {
        const float mx = fmaxf(M, M2);
        const float s1 = M == NEG_INF ? 0.f : expf(M - mx), s2 = M2 == NEG_INF ? 0.f : expf(M2 - mx);
        acc = acc * s1 + a2 * s2;
        T = T * s1 + T2 * s2;
        M = mx;
      } else {
        acc += a2;
      }
    }
    if (live && r == 0) stcg(out + i, rnd(st ? acc / T : acc));
  }
}

// After a partition task of a KV head has stored its part: the last of the head's partition tasks to get here
// combines the head (op_attn_combine into j.out), once, so that O reads one rounded input instead of every
// partition. Each task adds 1 to the head's arrival counter once its part is visible (barrier, then a fence
// that the barrier makes cumulative over the block's stores); the add that reaches parts * epoch is the last,
// and its fence orders the parts' reads after it. The counter counts on across steps, like every counter.
__device__ void join_combine(const Ctx& c, const JoinCombine& j, int kv_head, int part, int part_off, int parts,
                             int stats, int stats_off) {
  if (j.out < 0) return;
  __shared__ int s_last;
  block_sync();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned before = atomicAdd(c.counters + j.arrivals, 1u);
    s_last = before + 1u == (unsigned)parts * c.epoch;
    if (s_last) __threadfence();
  }
  block_sync();
  if (!s_last) return;
  const AttnCombineParams cp{kv_head, part, part_off, parts, j.out, j.out_off, stats, stats_off, AMK_Q_SPLITS};
  op_attn_combine(c, cp);
}

// The partition's attention by warps of q heads, when every K and V row of the span sits in shared memory and its
// scores fit `probs`. HEAD_WARPS warps share a q head (attention.head_warps, at most NWARPS / G: each warp keeps a
// head's values in wacc), each over a contiguous share of the positions: lanes take positions for the scores and
// head dims for the values, the (max, sum) come from warp shuffles. One warp a q head needs no block barrier;
// several merge their (max, sum, values) through shared memory after one barrier (on llama-3.2-1b with four, the
// barrier and the merge took 1.0 of the task's 2.6 us: schedule/autotile.py head_warps). Numerics as the
// block-wide path: rounded scores, fp32 probabilities, fp32 sums (in another order).
#define DIMS_PER_LANE ((AMK_HEAD_DIM + 31) / 32)
#ifndef AMK_HEAD_WARPS
#define AMK_HEAD_WARPS 0
#endif
// 0 where no ATTN_PARTIAL task runs (schedule/tile.py effective_head_warps)
#define HEAD_WARPS (AMK_HEAD_WARPS > 0 ? AMK_HEAD_WARPS : 1)
static_assert(HEAD_WARPS * AMK_GROUP <= NWARPS || HEAD_WARPS == 1, "attention.head_warps over NWARPS / G");
#define VROWS (HD_VECS <= 32 && 32 % HD_VECS == 0 ? 32 / HD_VECS : 0)  // rows one warp-wide load of V covers
// The scores' K vectors a row, unrolled whole where that was measured (bf16 and fp16, head_dim up to 128); 32
// of them (fp32 rows of 128) spill to the stack.
constexpr int SCORE_UNROLL = HD_VECS <= 16 ? HD_VECS : 4;
// `mark(k)` ends phase k of a tracing build (thread 0's warp): 1 the scores and softmax, 2 the values (a warp of
// several q heads adds each head's scores to 1 from the end of the head before).
template <class Mark>
__device__ void partial_warp_heads(const AttnPartialParams& p, const float* qs, const uint4* ks, const uint4* vs,
                                   float* probs, int n, ptype* out, float* stats, float* red, float* wacc,
                                   Mark&& mark) {
  constexpr int W = HEAD_WARPS;
  const int lane = threadIdx.x & 31;
  for (int jw = threadIdx.x >> 5; jw < AMK_GROUP * W; jw += NWARPS) {
    const int j = jw / W, w = jw % W, a = n * w / W, b = n * (w + 1) / W;
    const float4* q4 = reinterpret_cast<const float4*>(qs + j * AMK_HEAD_DIM);
    float* pj = probs + j * p.chunk;
    float mx = NEG_INF;
#pragma unroll 1
    for (int r = a + lane; r < b; r += 32) {
      // four partial sums, not one chain of HD dependent FMAs: the scores are latency-bound (llama-3.2-1b 896.2
      // against 897.5 us, qwen2.5-3b shape 2322.6 against 2332.4; bench/results/20261202-0700_h200_score_partial_sums.json)
      float d4[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll SCORE_UNROLL
      for (int v = 0; v < HD_VECS; ++v) {
        float f[VEC];
        unpack(ks[staged_slot(r, v)], f);
#pragma unroll
        for (int e = 0; e < VEC / 4; ++e) {
          const float4 qv = q4[v * (VEC / 4) + e];
          d4[0] = fmaf(f[4 * e], qv.x, d4[0]);
          d4[1] = fmaf(f[4 * e + 1], qv.y, d4[1]);
          d4[2] = fmaf(f[4 * e + 2], qv.z, d4[2]);
          d4[3] = fmaf(f[4 * e + 3], qv.w, d4[3]);
        }
      }
      const float d = (d4[0] + d4[1]) + (d4[2] + d4[3]);
      const float sc = rnd(rnd(d) * AMK_ATTN_SCALE);
      pj[r] = sc;
      mx = fmaxf(mx, sc);
    }
    mx = warp_max(mx);
    float l = 0.f;
#pragma unroll 1
    for (int r = a + lane; r < b; r += 32) {
      const float e = expf(pj[r] - mx);
      pj[r] = e;
      l += e;
    }
    l = warp_sum(l);
    if (W == 1) {  // the probabilities, in the lanes that wrote their exps; several warps divide after the merge
#pragma unroll 1
      for (int r = a + lane; r < b; r += 32) pj[r] /= l;
    }
    __syncwarp();  // every lane's probabilities are in pj
    mark(1);
    const float m_out = b > a ? mx : NEG_INF, l_out = b > a ? l : 0.f;
    if (lane == 0) {
      if (W == 1) {
        stcg(stats + 2 * j, m_out);
        stcg(stats + 2 * j + 1, l_out);
      } else {
        red[2 * jw] = m_out;
        red[2 * jw + 1] = l_out;
      }
    }
    // the values: into out (one warp a q head) or this warp's row of wacc (merged below)
    ptype* oj = out + j * AMK_HEAD_DIM;
    float* wj = wacc + jw * AMK_HEAD_DIM;
    if (VROWS > 0) {
      // lane (row group g, vector v) adds vector v of rows a + g, a + g + VROWS, ...: a warp's load covers VROWS
      // whole rows at the full shared-memory width, then the row groups' sums meet by shuffles
      const int g = lane / HD_VECS, v = lane % HD_VECS;
      float acc[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = 0.f;
#pragma unroll 4
      for (int r = a + g; r < b; r += (VROWS > 0 ? VROWS : 1)) {
        const float pr = pj[r];
        float f[VEC];
        unpack(vs[staged_slot(r, v)], f);
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] = fmaf(pr, f[e], acc[e]);
      }
#pragma unroll
      for (int o = HD_VECS; o < 32; o <<= 1)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
      if (g == 0) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          if (W == 1) stpart(oj + v * VEC + e, acc[e]);
          else wj[v * VEC + e] = acc[e];
        }
      }
    } else {  // a row that is not a power-of-two number of vectors of at most a warp: lanes over head dims
      float acc[DIMS_PER_LANE];
#pragma unroll
      for (int k = 0; k < DIMS_PER_LANE; ++k) acc[k] = 0.f;
#pragma unroll 4
      for (int r = a; r < b; ++r) {
        const float pr = pj[r];
        const wtype* row = reinterpret_cast<const wtype*>(vs + r * HD_VECS);
#pragma unroll
        for (int k = 0; k < DIMS_PER_LANE; ++k) {
          const int dd = lane + 32 * k;
          if (dd < AMK_HEAD_DIM) {
            const int slot = HD_VECS_POW2 ? ((dd / VEC) ^ (r & (HD_VECS - 1))) : dd / VEC;
            acc[k] = fmaf(pr, to_f(row[slot * VEC + dd % VEC]), acc[k]);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < DIMS_PER_LANE; ++k) {
        if (lane + 32 * k >= AMK_HEAD_DIM) continue;
        if (W == 1) stpart(oj + lane + 32 * k, acc[k]);
        else wj[lane + 32 * k] = acc[k];
      }
    }
  }
  mark(2);
  if (W == 1) return;
  block_sync();  // every warp's (max, sum) and unnormalised values are in red and wacc
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) {
    const int j = i / AMK_HEAD_DIM, d = i % AMK_HEAD_DIM;
    float M = NEG_INF;
#pragma unroll
    for (int w = 0; w < W; ++w) M = fmaxf(M, red[2 * (j * W + w)]);
    float T = 0.f, A = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float mw = red[2 * (j * W + w)];
      const float s = mw == NEG_INF ? 0.f : expf(mw - M);
      T = fmaf(red[2 * (j * W + w) + 1], s, T);
      A = fmaf(wacc[(j * W + w) * AMK_HEAD_DIM + d], s, A);
    }
    stpart(out + i, T > 0.f ? A / T : 0.f);
    if (d == 0) {
      stcg(stats + 2 * j, M);
      stcg(stats + 2 * j + 1, T);
    }
  }
}

// fusion.rope_kv_into_attention: the q/k norm (on a q/k-norm model) and RoPE of the group's q heads in `qs`, and
// where `own` (this partition holds the step's position) of the raw k in kv[0, hd), which with v in kv[hd, 2 hd)
// is appended to the caches. A warp a head; each lane rotates the pairs (i, i + hd/2) it alone reads. Rounded as
// the RoPE epilogue (rope_head) rounds. No barrier at the end.
__device__ void fold_rope(const Ctx& c, const AttnPartialParams& p, float* qs, float* kv, bool own) {
  const int lane = threadIdx.x & 31, hd = AMK_HEAD_DIM;
  for (int h = threadIdx.x >> 5; h < AMK_GROUP + (own ? 1 : 0); h += NWARPS) {
    float* x = h < AMK_GROUP ? qs + h * hd : kv;
    float r = 1.f;
    const wtype* nw = nullptr;
#if AMK_QK_NORM
    float ss = 0.f;
    for (int i = lane; i < hd; i += 32) ss += x[i] * x[i];
    r = 1.0f / sqrtf(warp_sum(ss) / (float)hd + AMK_EPS);
    nw = buf<wtype>(c, h < AMK_GROUP ? p.qnorm : p.knorm);
#endif
    for (int i = lane; i < HALF_HD; i += 32) {
      float a = x[i], b = x[i + HALF_HD];
      if (nw) { a = rnd(to_f(nw[i]) * rnd(a * r)); b = rnd(to_f(nw[i + HALF_HD]) * rnd(b * r)); }
      x[i] = rnd(rnd(a * rope_cos(i)) + rnd(-b * rope_sin(i)));
      x[i + HALF_HD] = rnd(rnd(b * rope_cos(i + HALF_HD)) + rnd(a * rope_sin(i + HALF_HD)));
    }
    if (h == AMK_GROUP) {  // k, rotated by this warp alone: append it and v
      // under attention.q_splits every share of the KV head appends the same bytes: a share whose partition is
      // longer than its staged rows reads the row back from the cache, which must then hold it already
      __syncwarp();
      const long long row = ((long long)p.layer * AMK_KV_HEADS + p.kv_head / AMK_Q_SPLITS) * AMK_MAX_SEQ + c.pos;
      wtype* kd = buf<wtype>(c, p.kcache) + row * hd;
      wtype* vd = buf<wtype>(c, p.vcache) + row * hd;
      for (int i = lane; i < hd; i += 32) { kd[i] = from_f(x[i]); vd[i] = from_f(kv[hd + i]); }
    }
  }
}

// One KV head x one partition under the partition's own softmax: scores (in shared memory when the span
// fits p.chunk, else in the scores scratch), (max, sum), probabilities, values. The K and V rows of earlier
// steps (up to p.stage of them) are copied into shared memory with cp.async before the dependency wait: they
// do not change in this step, and the copies hold no registers. Layout: [q: G*hd][M: G][L: G][out: G*hd]
// [probs: G*chunk][statistics scratch: 2*NWARPS*G][per-warp values: NWARPS*hd][K rows: stage][V rows: stage],
// rows 16-byte aligned.
template <class WaitDeps>
__device__ bool op_attn_partial(const Ctx& c, const AttnPartialParams& p, WaitDeps&& wait_deps) {
  int s0, s1;
  span(c.pos, p.part, p.parts, p.window, s0, s1);
  // kv_head is a task group: a KV head, or under attention.q_splits the (kv_head % AMK_Q_SPLITS)-th share of KV
  // head kv_head / AMK_Q_SPLITS's q heads (AMK_GROUP of them), whose K and V rows it reads
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head / AMK_Q_SPLITS);
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head / AMK_Q_SPLITS);
  float* qs = c.smem;
  float* M = qs + AMK_GROUP * AMK_HEAD_DIM;
  float* Ls = M + AMK_GROUP;
  float* out_s = Ls + AMK_GROUP;
  float* probs = out_s + AMK_GROUP * AMK_HEAD_DIM;
  float* red = probs + AMK_GROUP * p.chunk;
  float* wacc = red + 2 * NWARPS * AMK_GROUP;
  uint4* ks = reinterpret_cast<uint4*>(c.smem + ((2 * AMK_GROUP * AMK_HEAD_DIM + 2 * AMK_GROUP + AMK_GROUP * p.chunk +
                                                  2 * NWARPS * AMK_GROUP + NWARPS * AMK_HEAD_DIM + 3) & ~3));
  uint4* vs = ks + p.stage * HD_VECS;
  int n_staged = max(0, min(min(s1, c.pos) - s0, p.stage));  // the row at pos is this step's own
  // not by the polling warp: a poll queued behind its own copies sees the counter late
  stage_rows(ks, kc, s0, 0, n_staged, POLL_THREAD);
  stage_rows(vs, vc, s0, 0, n_staged, POLL_THREAD);
  cp_async_commit();
  if (!wait_deps()) {
    cp_async_wait<0>();  // no copy may land in this block's shared memory once it has left
    return false;
  }
  PHASE_START();
  // q and this step's own K/V row (written by the QKV tasks just waited for) in one more round trip, which
  // costs microseconds while other SMs stream weights. Folded (p.rope): q, and where this partition holds the
  // position k and v, come as QKV's raw rows ([q heads, k, v] a KV group), raw k and v into wacc
  // raw rows: the KV head's [G q heads, k, v], this task's q heads a share of them
  constexpr int G = AMK_KV_GROUP;
  const int kvh = p.kv_head / AMK_Q_SPLITS, share = p.kv_head % AMK_Q_SPLITS;
  const float* raw = buf<float>(c, p.q) + p.q_off + (long long)kvh * (G + 2) * AMK_HEAD_DIM;
  const float* q = p.rope ? raw + share * AMK_GROUP * AMK_HEAD_DIM
                          : buf<float>(c, p.q) + p.q_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM / 4; i += AMK_THREADS) cp_async16(qs + 4 * i, q + 4 * i);
  const bool own = p.rope && s0 <= c.pos && c.pos < s1;
  if (own) {  // wacc need not be 16-byte aligned: plain loads, in flight beside the copies
    for (int i = threadIdx.x; i < 2 * AMK_HEAD_DIM; i += AMK_THREADS) wacc[i] = ldcg(raw + G * AMK_HEAD_DIM + i);
  } else if (!p.rope && n_staged == c.pos - s0 && c.pos < s1 && n_staged < p.stage) {
    stage_rows(ks, kc, s0, n_staged, 1);
    stage_rows(vs, vc, s0, n_staged, 1);
    ++n_staged;
  }
  cp_async_commit();
  cp_async_wait<0>();
  block_sync();  // every thread's copies are in
  if (p.rope) {
    fold_rope(c, p, qs, wacc, own);
    block_sync();  // k was rotated by one warp; every thread reads it below, and q in the passes
    if (own && n_staged == c.pos - s0 && n_staged < p.stage) {  // the row lands beside the staged ones
      for (int t = threadIdx.x; t < AMK_HEAD_DIM; t += AMK_THREADS) {
        reinterpret_cast<wtype*>(ks + staged_slot(n_staged, t / VEC))[t % VEC] = from_f(wacc[t]);
        reinterpret_cast<wtype*>(vs + staged_slot(n_staged, t / VEC))[t % VEC] = from_f(wacc[AMK_HEAD_DIM + t]);
      }
      ++n_staged;
    }
    block_sync();
  }
  PHASE(0);
  const bool in_smem = s1 - s0 <= p.chunk;
  if (in_smem && n_staged == s1 - s0) {  // the common case: warps of a q head (partial_warp_heads)
    const int row0 = p.part * AMK_HEADS + p.kv_head * AMK_GROUP;
    partial_warp_heads(p, qs, ks, vs, probs, s1 - s0, part_ptr(c, p.out, p.out_off) + row0 * AMK_HEAD_DIM,
                       buf<float>(c, p.stats) + p.stats_off + row0 * 2, red, wacc, [&](int k) { PHASE(k); });
    PHASE(3);
    return true;
  }
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  float* sc = in_smem ? probs : buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  const int stride = in_smem ? p.chunk : cap;
  const int row = p.part * AMK_HEADS + p.kv_head * AMK_GROUP;
  // a tile's scores, then its values. reduce_values' scratch (NWARPS x GT heads) runs from probs on and may cover
  // the staged K and V rows (attention_partial_smem_bytes), so the tiles after the first read them from the cache,
  // which holds the same rows (this step's own too: fold_rope appended it before the barrier above)
  for (int h0 = 0; h0 < AMK_GROUP; h0 += GT) {
    const int nh = tile_heads(h0), staged = h0 == 0 ? n_staged : 0;
    float m[GT], l[GT], mj, lj;
    scores_pass(kc, qs + h0 * AMK_HEAD_DIM, s0, s1, sc + h0 * stride, stride, in_smem, m, l, ks, staged, nh);
    PHASE(1);
    group_softmax_stats(m, l, red, mj, lj);
    if (threadIdx.x < nh) {
      const int j = threadIdx.x;
      const bool any = s1 > s0;
      M[h0 + j] = mj;
      Ls[h0 + j] = lj;
      float* stats = buf<float>(c, p.stats) + p.stats_off + (row + h0 + j) * 2;
      stcg(stats, any ? mj : NEG_INF);
      stcg(stats + 1, any ? lj : 0.f);
    }
    PHASE(2);
    float acc[GT][VV];
#pragma unroll
    for (int j = 0; j < GT; ++j)
#pragma unroll
      for (int e = 0; e < VV; ++e) acc[j][e] = 0.f;
    // values_pass opens with a barrier, which publishes M and Ls
    values_pass(vc, sc + h0 * stride, stride, in_smem, s0, s1, M + h0, Ls + h0, probs + h0 * p.chunk, p.chunk, acc,
                nh, vs, staged, false);
    reduce_values(acc, out_s + h0 * AMK_HEAD_DIM, probs, nh);
  }
  ptype* out = part_ptr(c, p.out, p.out_off) + row * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stpart(out + i, out_s[i]);
  PHASE(3);
  return true;
}
