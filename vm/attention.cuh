// ---- attention (eager's numerics: rounded scores, fp32 softmax, rounded probabilities) ----------
__device__ __forceinline__ void span(int pos, int part, int parts, int& s0, int& s1) {
  const int L = pos + 1, per = (L + parts - 1) / parts;
  s0 = min(L, part * per);
  s1 = min(L, part * per + per);
}

// Scores of positions [s0, s1) for every q head of the group, one thread per position, written to
// dst[j * stride + t - s0]; m[] gets the thread's running max per head.
// `first`: this thread's first K row (position s0 + threadIdx.x), when have_first says it was loaded early.
template <bool kSmem>
__device__ __forceinline__ void scores_pass(const wtype* __restrict__ kc, const float* qs, int s0, int s1, float* dst,
                                            int stride, float* m, float* l, bool have_first,
                                            const uint4 (&first)[HD_VECS]) {
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j) { m[j] = NEG_INF; l[j] = 0.f; }
  for (int t = s0 + threadIdx.x; t < s1; t += AMK_THREADS) {
    float d[AMK_GROUP];
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j) d[j] = 0.f;
    const uint4* kr = reinterpret_cast<const uint4*>(kc + (long long)t * AMK_HEAD_DIM);
    uint4 raw[HD_VECS];
    const bool loaded = have_first && t == s0 + (int)threadIdx.x;
#pragma unroll
    for (int v = 0; v < HD_VECS; ++v) raw[v] = loaded ? first[v] : __ldcg(kr + v);
#pragma unroll
    for (int v = 0; v < HD_VECS; ++v) {
      float f[VEC];
      unpack(raw[v], f);
#pragma unroll
      for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) d[j] = fmaf(f[e], qs[j * AMK_HEAD_DIM + v * VEC + e], d[j]);
    }
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j) {
      const float s = rnd(rnd(d[j]) * AMK_ATTN_SCALE);
      if (s > m[j]) { l[j] = l[j] * expf(m[j] - s) + 1.f; m[j] = s; } else { l[j] += expf(s - m[j]); }
      if (kSmem) dst[j * stride + (t - s0)] = s; else stcg(dst + j * stride + (t - s0), s);
    }
  }
}

// Block-wide (max, sum) of per-thread online softmax statistics; every thread gets the result.
__device__ void block_softmax_stats(float m, float l, float* red, float& M, float& L) {
  M = block_max(m, red);
  L = block_sum(m == NEG_INF ? 0.f : l * expf(m - M), red);
}

// The same for all AMK_GROUP heads at once, in two barriers instead of four per head. `red` holds
// 2 * NWARPS * AMK_GROUP floats; warps' values combine in warp order, as block_max / block_sum do.
__device__ void group_softmax_stats(const float (&m)[AMK_GROUP], const float (&l)[AMK_GROUP], float* red,
                                    float (&M)[AMK_GROUP], float (&L)[AMK_GROUP]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* rl = red + NWARPS * AMK_GROUP;
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j) {
    const float mw = warp_max(m[j]);
    if (lane == 0) red[warp * AMK_GROUP + j] = mw;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j) {
    float t = NEG_INF;
    for (int w = 0; w < NWARPS; ++w) t = fmaxf(t, red[w * AMK_GROUP + j]);
    M[j] = t;
    const float lw = warp_sum(m[j] == NEG_INF ? 0.f : l[j] * expf(m[j] - t));
    if (lane == 0) rl[warp * AMK_GROUP + j] = lw;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j) {
    float t = 0.f;
    for (int w = 0; w < NWARPS; ++w) t += rl[w * AMK_GROUP + j];
    L[j] = t;
  }
}

// Accumulate sum_t rnd(exp(s - M) / L) * V[t] over [s0, s1) into acc[j][VEC] for this thread's vector.
// V rows a values task loads before its dependency wait: this thread's first V_EARLY positions of the first
// chunk (those of earlier steps; bit k of `mask` says position k was loaded into early[k]).
#define V_EARLY 4
struct EarlyV {
  uint4 v[V_EARLY];
  unsigned mask;
};

__device__ void values_pass(const wtype* __restrict__ vc, const float* sc, int stride, int s0, int s1,
                            const float* M, const float* Lsum, float* probs, int chunk, float acc[AMK_GROUP][VEC],
                            const EarlyV& early) {
  const int tid = threadIdx.x;
  const int dv = tid % HD_VECS, tp = tid / HD_VECS, np = AMK_THREADS / HD_VECS;
  for (int c0 = s0; c0 < s1; c0 += chunk) {
    const int n = min(chunk, s1 - c0);
    __syncthreads();
    for (int i = tid; i < n * AMK_GROUP; i += AMK_THREADS) {
      const int j = i / n, t = i % n;
      const float* sp = sc + j * stride + (c0 - s0) + t;
      const float s = ldcg(sp);
      probs[j * chunk + t] = rnd(expf(s - M[j]) / Lsum[j]);
    }
    __syncthreads();
    if (tp < np) {
      int t = tp;
      if (c0 == s0) {
#pragma unroll
        for (int k = 0; k < V_EARLY; ++k, t += np) {
          if (t >= n) break;
          float f[VEC];
          unpack((early.mask >> k & 1u) ? early.v[k]
                                        : __ldcg(reinterpret_cast<const uint4*>(vc + (long long)(c0 + t) * AMK_HEAD_DIM) + dv), f);
#pragma unroll
          for (int j = 0; j < AMK_GROUP; ++j) {
            const float pj = probs[j * chunk + t];
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
          }
        }
      }
#pragma unroll 8
      for (; t < n; t += np) {
        float f[VEC];
        unpack(__ldcg(reinterpret_cast<const uint4*>(vc + (long long)(c0 + t) * AMK_HEAD_DIM) + dv), f);
#pragma unroll
        for (int j = 0; j < AMK_GROUP; ++j) {
          const float pj = probs[j * chunk + t];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
        }
      }
    }
  }
}

// Reduce per-thread acc over position groups into out_s[j * hd + d]. Lanes with the same vector index
// first combine by shuffles (when HD_VECS divides 32), then warps' partials are summed in fixed order.
// `scratch` holds NWARPS * G * hd floats.
__device__ void reduce_values(float acc[AMK_GROUP][VEC], float* out_s, float* scratch) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int dv = tid % HD_VECS, tp = tid / HD_VECS, np = AMK_THREADS / HD_VECS;
  constexpr bool kShuffle = (32 % HD_VECS) == 0;
  if (tp >= np) {
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[j][e] = 0.f;
  }
  if (kShuffle) {
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        for (int o = HD_VECS; o < 32; o <<= 1) acc[j][e] += __shfl_xor_sync(0xffffffffu, acc[j][e], o);
  }
  __syncthreads();
  const int GH = AMK_GROUP * AMK_HEAD_DIM;
  for (int i = tid; i < NWARPS * GH; i += AMK_THREADS) scratch[i] = 0.f;
  __syncthreads();
  if (kShuffle) {
    if (lane < HD_VECS) {
#pragma unroll
      for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) scratch[warp * GH + j * AMK_HEAD_DIM + dv * VEC + e] = acc[j][e];
    }
  } else {
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
      for (int e = 0; e < VEC; ++e) atomicAdd(scratch + warp * GH + j * AMK_HEAD_DIM + dv * VEC + e, acc[j][e]);
  }
  __syncthreads();
  for (int i = tid; i < GH; i += AMK_THREADS) {
    float s = 0.f;
    for (int w = 0; w < NWARPS; ++w) s += scratch[w * GH + i];
    out_s[i] = s;
  }
  __syncthreads();
}

__device__ void load_q(const Ctx& c, int q, int q_off, int g, float* qs) {
  stage_floats(qs, buf<float>(c, q) + q_off + g * AMK_GROUP * AMK_HEAD_DIM, AMK_GROUP * AMK_HEAD_DIM);
  __syncthreads();
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
  const int L = c.pos + 1;
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head);
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head);
  // scores stay in shared memory when they fit, else go through the scratch buffer
  const bool in_smem = L <= p.chunk;
  float* sc = in_smem ? probs : buf<float>(c, p.scores) + p.scores_off + p.kv_head * AMK_GROUP * AMK_MAX_SEQ;
  const int stride = in_smem ? p.chunk : AMK_MAX_SEQ;
  float m[AMK_GROUP], l[AMK_GROUP];
  uint4 none[HD_VECS];
  if (in_smem) scores_pass<true>(kc, qs, 0, L, sc, stride, m, l, false, none);
  else scores_pass<false>(kc, qs, 0, L, sc, stride, m, l, false, none);
  for (int j = 0; j < AMK_GROUP; ++j) {
    float mj, lj;
    block_softmax_stats(m[j], l[j], c.red, mj, lj);
    if (threadIdx.x == 0) { M[j] = mj; Ls[j] = lj; }
  }
  __syncthreads();
  float acc[AMK_GROUP][VEC];
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[j][e] = 0.f;
  if (in_smem) {
    // probabilities overwrite the scores in place: each is computed from its own score only
    __syncthreads();
    for (int i = threadIdx.x; i < L * AMK_GROUP; i += AMK_THREADS) {
      const int j = i / L, t = i % L;
      sc[j * stride + t] = rnd(expf(sc[j * stride + t] - M[j]) / Ls[j]);
    }
    __syncthreads();
    const int dv = threadIdx.x % HD_VECS, tp = threadIdx.x / HD_VECS, np = AMK_THREADS / HD_VECS;
    if (tp < np) {
#pragma unroll 8
      for (int t = tp; t < L; t += np) {
        float f[VEC];
        unpack(__ldcg(reinterpret_cast<const uint4*>(vc + (long long)t * AMK_HEAD_DIM) + dv), f);
#pragma unroll
        for (int j = 0; j < AMK_GROUP; ++j) {
          const float pj = sc[j * stride + t];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[j][e] = fmaf(pj, f[e], acc[j][e]);
        }
      }
    }
  } else {
    EarlyV none_v;
    none_v.mask = 0u;
    values_pass(vc, sc, stride, 0, L, M, Ls, probs, p.chunk, acc, none_v);
  }
  reduce_values(acc, out_s, probs);
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stcg(out + i, rnd(out_s[i]));
}

// K rows of earlier steps do not change in this one, so this thread's first row is loaded before the
// dependency wait (the step's own row, at pos, is appended by a QKV task this one waits for).
template <class WaitDeps>
__device__ bool op_attn_scores(const Ctx& c, const AttnScoresParams& p, WaitDeps&& wait_deps) {
  int s0, s1;
  span(c.pos, p.part, p.parts, s0, s1);
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head);
  const int t_first = s0 + threadIdx.x;
  const bool early = t_first < s1 && t_first < c.pos;
  uint4 first[HD_VECS];
  if (early) {
#pragma unroll
    for (int v = 0; v < HD_VECS; ++v) first[v] = __ldcg(reinterpret_cast<const uint4*>(kc + (long long)t_first * AMK_HEAD_DIM) + v);
  }
  if (!wait_deps()) return false;
  PHASE_START();
  float* qs = c.smem;
  load_q(c, p.q, p.q_off, p.kv_head, qs);
  PHASE(0);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  float m[AMK_GROUP], l[AMK_GROUP], M[AMK_GROUP], L[AMK_GROUP];
  scores_pass<false>(kc, qs, s0, s1, sc, cap, m, l, early, first);
  PHASE(1);
  float* stats = buf<float>(c, p.stats) + p.stats_off + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * 2;
  group_softmax_stats(m, l, qs + AMK_GROUP * AMK_HEAD_DIM, M, L);
  if (threadIdx.x < AMK_GROUP) {
    const int j = threadIdx.x;
    stcg(stats + 2 * j, s1 > s0 ? M[j] : NEG_INF);
    stcg(stats + 2 * j + 1, s1 > s0 ? L[j] : 0.f);
  }
  PHASE(2);
  return true;
}

// V rows of earlier steps are loaded before the dependency wait, as K rows are for the scores.
template <class WaitDeps>
__device__ bool op_attn_values(const Ctx& c, const AttnValuesParams& p, WaitDeps&& wait_deps) {
  int s0, s1;
  span(c.pos, p.part, p.parts, s0, s1);
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head);
  EarlyV early;
  early.mask = 0u;
  {
    const int dv = threadIdx.x % HD_VECS, tp = threadIdx.x / HD_VECS, np = AMK_THREADS / HD_VECS;
    const int lim = min(min(s1, c.pos), s0 + p.chunk);
#pragma unroll
    for (int k = 0; k < V_EARLY; ++k) {
      const int t = s0 + tp + k * np;
      if (tp < np && t < lim) {
        early.v[k] = __ldcg(reinterpret_cast<const uint4*>(vc + (long long)t * AMK_HEAD_DIM) + dv);
        early.mask |= 1u << k;
      }
    }
  }
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
    __syncthreads();
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
  __syncthreads();
  PHASE(0);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  const float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  float acc[AMK_GROUP][VEC];
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[j][e] = 0.f;
  values_pass(vc, sc, cap, s0, s1, M, Ls, probs, p.chunk, acc, early);
  PHASE(1);
  reduce_values(acc, out_s, probs);
  float* out = buf<float>(c, p.out) + p.out_off + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stcg(out + i, out_s[i]);
  PHASE(2);
  return true;
}

__device__ void op_attn_combine(const Ctx& c, const AttnCombineParams& p) {
  const float* src = buf<float>(c, p.partial) + p.partial_off;
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) {
    float s = 0.f;
#pragma unroll 8
    for (int k = 0; k < p.parts; ++k) s += ldcg(src + (k * AMK_HEADS + p.kv_head * AMK_GROUP) * AMK_HEAD_DIM + i);
    stcg(out + i, rnd(s));
  }
}
