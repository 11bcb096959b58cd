// AMK persistent decode megakernel. One block per SM walks its queue of packed instructions.
// The ABI (opcodes, parameter structs, model constants, build knobs) comes from the generated header
// that amk.vm.abi prepends; amk.vm.semantics is the definition of what each opcode computes.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#if AMK_DTYPE == DT_BF16
typedef __nv_bfloat16 wtype;
__device__ __forceinline__ float to_f(wtype v) { return __bfloat162float(v); }
__device__ __forceinline__ wtype from_f(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float rnd(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
#elif AMK_DTYPE == DT_F16
typedef __half wtype;
__device__ __forceinline__ float to_f(wtype v) { return __half2float(v); }
__device__ __forceinline__ wtype from_f(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float rnd(float v) { return __half2float(__float2half_rn(v)); }
#else
typedef float wtype;
__device__ __forceinline__ float to_f(wtype v) { return v; }
__device__ __forceinline__ wtype from_f(float v) { return v; }
__device__ __forceinline__ float rnd(float v) { return v; }
#endif

#define VEC (16 / (int)sizeof(wtype))  // weights per 16-byte load
#define NWARPS (AMK_THREADS / 32)
#define HALF_HD (AMK_HEAD_DIM / 2)
#define HD_VECS (AMK_HEAD_DIM / VEC)
#define NEG_INF (__int_as_float(0xff800000))

struct Ctx {
  const unsigned long long* bufs;
  const int* cols;
  float* smem;
  float* red;  // 64 floats of reduction scratch
  int pos;
};

template <typename T>
__device__ __forceinline__ T* buf(const Ctx& c, int id) { return reinterpret_cast<T*>(c.bufs[id]); }

// Activations and the KV cache are written by other SMs during the step: read them at L2 (coherent).
__device__ __forceinline__ float ldcg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ void stcg(float* p, float v) { __stcg(p, v); }

__device__ __forceinline__ void unpack(const uint4& raw, float* out) {
#if AMK_DTYPE == DT_F32
  out[0] = __uint_as_float(raw.x); out[1] = __uint_as_float(raw.y);
  out[2] = __uint_as_float(raw.z); out[3] = __uint_as_float(raw.w);
#else
  const wtype* h = reinterpret_cast<const wtype*>(&raw);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_f(h[e]);
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum / max; every thread gets the result. `red` holds NWARPS floats.
__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < NWARPS; ++w) t += red[w];
  return t;
}
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = NEG_INF;
  for (int w = 0; w < NWARPS; ++w) t = fmaxf(t, red[w]);
  return t;
}

// (value, index) argmax, first maximum wins; result valid in thread 0.
__device__ void block_argmax(float& v, int& i, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
  }
  __syncthreads();
  if (lane == 0) { red[warp] = v; reinterpret_cast<int*>(red)[32 + warp] = i; }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < NWARPS; ++w) {
      float ov = red[w];
      int oi = reinterpret_cast<int*>(red)[32 + w];
      if (ov > red[0] || (ov == red[0] && oi < reinterpret_cast<int*>(red)[32])) { red[0] = ov; reinterpret_cast<int*>(red)[32] = oi; }
    }
    v = red[0];
    i = reinterpret_cast<int*>(red)[32];
  }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// ---- RMSNorm: out[k] = rnd(w[k] * rnd(x[k] * r)) ----------------------------------------------
__device__ float rms_scale(const float* x, int n, float* red) {
  float ss = 0.f;
  for (int k = threadIdx.x; k < n; k += AMK_THREADS) { float v = ldcg(x + k); ss += v * v; }
  ss = block_sum(ss, red);
  return 1.0f / sqrtf(ss / (float)n + AMK_EPS);
}

__device__ void op_embed(const Ctx& c, const EmbedParams& p, int* control, int task) {
  const int tok = __ldcg(buf<int>(c, p.token));
  if (tok < 0 || tok >= AMK_VOCAB) {
    if (threadIdx.x == 0 && atomicCAS(control + CTRL_ERR, 0, ERR_BAD_TOKEN) == 0) {
      control[CTRL_ERR_TASK] = task; control[CTRL_ERR_DETAIL] = tok;
    }
    return;
  }
  const wtype* row = buf<wtype>(c, p.table) + (long long)tok * p.dim;
  float* out = buf<float>(c, p.out) + p.out_off;
  for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) stcg(out + k, to_f(row[k]));
}

__device__ void op_rmsnorm(const Ctx& c, const RmsNormParams& p) {
  const float* x = buf<float>(c, p.inp) + p.inp_off;
  const wtype* w = buf<wtype>(c, p.weight);
  const float r = rms_scale(x, p.dim, c.red);
  float* out = buf<float>(c, p.out) + p.out_off;
  for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) stcg(out + k, rnd(to_f(w[k]) * rnd(ldcg(x + k) * r)));
}

// ---- epilogues: acc[0, rows) main rows, acc[rows, 2 rows) the paired rows -------------------------
__device__ void rope_head(const Ctx& c, const EpilogueParams& e, const float* vals, int u, int lane) {
  const int g = u / (AMK_GROUP + 2), j = u % (AMK_GROUP + 2);
  const int hd = AMK_HEAD_DIM;
  if (j == AMK_GROUP + 1) {  // v: appended as it is
    wtype* dst = buf<wtype>(c, e.vcache) + (((long long)e.layer * AMK_KV_HEADS + g) * AMK_MAX_SEQ + c.pos) * hd;
    for (int i = lane; i < hd; i += 32) dst[i] = from_f(vals[i]);
    return;
  }
  float r = 1.f;
  const wtype* nw = nullptr;
#if AMK_QK_NORM
  {
    float ss = 0.f;
    for (int i = lane; i < hd; i += 32) ss += vals[i] * vals[i];
    ss = warp_sum(ss);
    r = 1.0f / sqrtf(ss / (float)hd + AMK_EPS);
    nw = buf<wtype>(c, j < AMK_GROUP ? e.qnorm : e.knorm);
  }
#endif
  const wtype* cs = buf<wtype>(c, AMK_ROPE_COS) + (long long)c.pos * hd;
  const wtype* sn = buf<wtype>(c, AMK_ROPE_SIN) + (long long)c.pos * hd;
  for (int i = lane; i < HALF_HD; i += 32) {
    float a = vals[i], b = vals[i + HALF_HD];
    if (nw) { a = rnd(to_f(nw[i]) * rnd(a * r)); b = rnd(to_f(nw[i + HALF_HD]) * rnd(b * r)); }
    const float lo = rnd(rnd(a * to_f(cs[i])) + rnd(-b * to_f(sn[i])));
    const float hi = rnd(rnd(b * to_f(cs[i + HALF_HD])) + rnd(a * to_f(sn[i + HALF_HD])));
    if (j < AMK_GROUP) {
      float* q = buf<float>(c, e.out) + e.out_off + (g * AMK_GROUP + j) * hd;
      stcg(q + i, lo); stcg(q + i + HALF_HD, hi);
    } else {
      wtype* dst = buf<wtype>(c, e.kcache) + (((long long)e.layer * AMK_KV_HEADS + g) * AMK_MAX_SEQ + c.pos) * hd;
      dst[i] = from_f(lo); dst[i + HALF_HD] = from_f(hi);
    }
  }
}

__device__ void epilogue(const Ctx& c, const EpilogueParams& e, int row0, int rows, float* acc) {
  const int tid = threadIdx.x;
  if (e.bias >= 0 && e.kind != EPI_PARTIAL) {
    const wtype* b = buf<wtype>(c, e.bias);
    for (int i = tid; i < rows; i += AMK_THREADS) acc[i] += to_f(b[row0 + i]);
    __syncthreads();
  }
  float* out = buf<float>(c, e.out);
  const long long lo = (long long)e.out_off + row0;
  switch (e.kind) {
    case EPI_STORE:
      for (int i = tid; i < rows; i += AMK_THREADS) {
        stcg(out + lo + i, rnd(acc[i]));
        if (e.pair_offset) stcg(out + lo + e.pair_offset + i, rnd(acc[rows + i]));
      }
      break;
    case EPI_PARTIAL: {
      const long long base = (long long)e.out_off + (long long)e.split * e.split_stride + row0;
      for (int i = tid; i < rows; i += AMK_THREADS) {
        stcg(out + base + i, acc[i]);
        if (e.pair_offset) stcg(out + base + e.pair_offset + i, acc[rows + i]);
      }
      break;
    }
    case EPI_RESIDUAL_ADD:
      for (int i = tid; i < rows; i += AMK_THREADS) stcg(out + lo + i, rnd(ldcg(out + lo + i) + rnd(acc[i])));
      break;
    case EPI_SILU_MUL:
      for (int i = tid; i < rows; i += AMK_THREADS) {
        const float g = rnd(acc[i]), u = rnd(acc[rows + i]);
        stcg(out + lo + i, rnd(rnd(silu(g)) * u));
      }
      break;
    case EPI_LOGITS: {
      float best = NEG_INF;
      int bi = 0x7fffffff;
      for (int i = tid; i < rows; i += AMK_THREADS) {
        const float v = rnd(acc[i]);
        stcg(out + lo + i, v);
        if (v > best || (v == best && row0 + i < bi)) { best = v; bi = row0 + i; }
      }
      block_argmax(best, bi, c.red);
      if (tid == 0) {
        float* pairs = buf<float>(c, e.argmax);
        stcg(pairs + 2 * e.argmax_slot, best);
        stcg(pairs + 2 * e.argmax_slot + 1, (float)bi);
      }
      break;
    }
    case EPI_ROPE_KV: {
      const int lane = tid & 31, warp = tid >> 5;
      for (int i = tid; i < rows; i += AMK_THREADS) acc[i] = rnd(acc[i]);
      __syncthreads();
      const int h0 = row0 / AMK_HEAD_DIM, nh = rows / AMK_HEAD_DIM;
      for (int h = warp; h < nh; h += NWARPS) rope_head(c, e, acc + h * AMK_HEAD_DIM, h0 + h, lane);
      break;
    }
  }
}

// ---- matvec ------------------------------------------------------------------------------------
#ifndef AMK_ROWS_IN_FLIGHT
#define AMK_ROWS_IN_FLIGHT 1
#endif

// NR units at once, LOADS_IN_FLIGHT 16-byte loads per unit per lane before any use: the memory-level
// parallelism one SM needs to stream at its share of DRAM bandwidth. A unit is `n` consecutive weight
// vectors of one row (rp[r]) against the staged input from xp[r]. out[r] gets the warp-reduced dot.
template <int NR>
__device__ __forceinline__ void dot_units(const uint4* const* rp, const float* const* xp, int n, int lane, float* out) {
  float acc[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) acc[r] = 0.f;
  int v = lane;
  for (; v + (AMK_LOADS_IN_FLIGHT - 1) * 32 < n; v += AMK_LOADS_IN_FLIGHT * 32) {
    uint4 raw[NR][AMK_LOADS_IN_FLIGHT];
#pragma unroll
    for (int u = 0; u < AMK_LOADS_IN_FLIGHT; ++u)
#pragma unroll
      for (int r = 0; r < NR; ++r) raw[r][u] = __ldg(rp[r] + v + u * 32);
#pragma unroll
    for (int u = 0; u < AMK_LOADS_IN_FLIGHT; ++u)
#pragma unroll
      for (int r = 0; r < NR; ++r) {
        const float4* x4 = reinterpret_cast<const float4*>(xp[r] + (v + u * 32) * VEC);
        float f[VEC];
        unpack(raw[r][u], f);
#pragma unroll
        for (int e = 0; e < VEC / 4; ++e) {
          const float4 q = x4[e];
          acc[r] = fmaf(f[4 * e], q.x, acc[r]);
          acc[r] = fmaf(f[4 * e + 1], q.y, acc[r]);
          acc[r] = fmaf(f[4 * e + 2], q.z, acc[r]);
          acc[r] = fmaf(f[4 * e + 3], q.w, acc[r]);
        }
      }
  }
  for (; v < n; v += 32) {
#pragma unroll
    for (int r = 0; r < NR; ++r) {
      float f[VEC];
      unpack(__ldg(rp[r] + v), f);
      const float* x = xp[r] + v * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[r] = fmaf(f[e], x[e], acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < NR; ++r) out[r] = warp_sum(acc[r]);
}

// Units of this warp, NR at a time: unit u is chunk (u % S) of computed row (u / S).
template <int NR>
__device__ __forceinline__ void warp_units(const wtype* W, const MatvecParams& p, int K, int u0, int S, int per,
                                           const float* xs, int lane, float* part) {
  const uint4* rp[NR];
  const float* xp[NR];
#pragma unroll
  for (int r = 0; r < NR; ++r) {
    const int u = u0 + r * NWARPS, cr = u / S, ch = u % S;
    const int row = cr < p.rows ? p.row0 + cr : p.epi.pair_offset + p.row0 + (cr - p.rows);
    rp[r] = reinterpret_cast<const uint4*>(W + (long long)row * K + p.k0) + ch * per;
    xp[r] = xs + ch * per * VEC;
  }
  float out[NR];
  dot_units<NR>(rp, xp, per, lane, out);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < NR; ++r) part[u0 + r * NWARPS] = out[r];
  }
}

// Split each row into S chunks (S divides the row's vectors, chunks at least a warp wide) so that there
// are enough units to keep every warp streaming ROWS_IN_FLIGHT units at once.
__device__ __forceinline__ int row_chunks(int R, int nvec) {
  int S = 1;
  while (R * S < NWARPS * AMK_ROWS_IN_FLIGHT && (nvec % (2 * S)) == 0 && nvec / (2 * S) >= 32) S *= 2;
  return S;
}

__device__ void op_matvec(const Ctx& c, const MatvecParams& p) {
  const int K = __ldg(c.cols + p.weight);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int R = p.rows * (p.epi.pair_offset ? 2 : 1);
  const float* x = buf<float>(c, p.inp) + p.inp_off;
  float* xs;
  if (p.norm_weight >= 0) {  // one pass over x: stage all of it, reduce from shared memory, normalise in place
    float ss = 0.f;
    for (int k = tid; k < K; k += AMK_THREADS) { const float v = ldcg(x + k); c.smem[k] = v; ss += v * v; }
    ss = block_sum(ss, c.red);
    const float r = 1.0f / sqrtf(ss / (float)K + AMK_EPS);
    const wtype* w = buf<wtype>(c, p.norm_weight);
    xs = c.smem + p.k0;
    for (int k = tid; k < p.klen; k += AMK_THREADS) xs[k] = rnd(to_f(w[p.k0 + k]) * rnd(xs[k] * r));
  } else {
    xs = c.smem;
    for (int k = tid; k < p.klen; k += AMK_THREADS) xs[k] = ldcg(x + p.k0 + k);
  }
  float* acc = xs + p.klen + ((4 - (p.klen & 3)) & 3);
  const int nvec = p.klen / VEC;
  const int S = row_chunks(R, nvec), per = nvec / S, units = R * S;
  float* part = S > 1 ? acc + ((R + 3) & ~3) : acc;  // per-unit partial sums when rows are split
  __syncthreads();
  const wtype* W = buf<wtype>(c, p.weight);
  const int mine = (units - warp + NWARPS - 1) / NWARPS;  // units warp, warp + NWARPS, ...
  int j = 0;
  for (; j + AMK_ROWS_IN_FLIGHT <= mine; j += AMK_ROWS_IN_FLIGHT)
    warp_units<AMK_ROWS_IN_FLIGHT>(W, p, K, warp + j * NWARPS, S, per, xs, lane, part);
  for (; j < mine; ++j) warp_units<1>(W, p, K, warp + j * NWARPS, S, per, xs, lane, part);
  __syncthreads();
  if (S > 1) {  // chunks of a row summed in a fixed order
    for (int r = tid; r < R; r += AMK_THREADS) {
      float s = 0.f;
      for (int k = 0; k < S; ++k) s += part[r * S + k];
      acc[r] = s;
    }
    __syncthreads();
  }
  epilogue(c, p.epi, p.row0, p.rows, acc);
}

__device__ void op_epilogue(const Ctx& c, const EpilogueTaskParams& p) {
  const float* src = buf<float>(c, p.src) + p.src_off;
  float* acc = c.smem;
  const int pair = p.epi.pair_offset;
  for (int i = threadIdx.x; i < p.rows * (pair ? 2 : 1); i += AMK_THREADS) {
    const int row = i < p.rows ? p.row0 + i : pair + p.row0 + (i - p.rows);
    float s = 0.f;
    for (int k = 0; k < p.splits; ++k) s += ldcg(src + (long long)k * p.stride + row);
    acc[i] = s;
  }
  __syncthreads();
  epilogue(c, p.epi, p.row0, p.rows, acc);
}

// ---- attention (eager's numerics: rounded scores, fp32 softmax, rounded probabilities) ----------
__device__ __forceinline__ void span(int pos, int part, int parts, int& s0, int& s1) {
  const int L = pos + 1, per = (L + parts - 1) / parts;
  s0 = min(L, part * per);
  s1 = min(L, part * per + per);
}

// Scores of positions [s0, s1) for every q head of the group, one thread per position, written to
// dst[j * stride + t - s0]; m[] gets the thread's running max per head.
template <bool kSmem>
__device__ void scores_pass(const wtype* __restrict__ kc, const float* qs, int s0, int s1, float* dst, int stride,
                            float* m, float* l) {
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j) { m[j] = NEG_INF; l[j] = 0.f; }
  for (int t = s0 + threadIdx.x; t < s1; t += AMK_THREADS) {
    float d[AMK_GROUP];
#pragma unroll
    for (int j = 0; j < AMK_GROUP; ++j) d[j] = 0.f;
    const uint4* kr = reinterpret_cast<const uint4*>(kc + (long long)t * AMK_HEAD_DIM);
    uint4 raw[HD_VECS];
#pragma unroll
    for (int v = 0; v < HD_VECS; ++v) raw[v] = __ldcg(kr + v);
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

// Accumulate sum_t rnd(exp(s - M) / L) * V[t] over [s0, s1) into acc[j][VEC] for this thread's vector.
__device__ void values_pass(const wtype* __restrict__ vc, const float* sc, int stride, int s0, int s1,
                            const float* M, const float* Lsum, float* probs, int chunk, float acc[AMK_GROUP][VEC]) {
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
#pragma unroll 8
      for (int t = tp; t < n; t += np) {
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
  const float* src = buf<float>(c, q) + q_off + g * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) qs[i] = ldcg(src + i);
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
  if (in_smem) scores_pass<true>(kc, qs, 0, L, sc, stride, m, l); else scores_pass<false>(kc, qs, 0, L, sc, stride, m, l);
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
    values_pass(vc, sc, stride, 0, L, M, Ls, probs, p.chunk, acc);
  }
  reduce_values(acc, out_s, probs);
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stcg(out + i, rnd(out_s[i]));
}

__device__ void op_attn_scores(const Ctx& c, const AttnScoresParams& p) {
  float* qs = c.smem;
  load_q(c, p.q, p.q_off, p.kv_head, qs);
  int s0, s1;
  span(c.pos, p.part, p.parts, s0, s1);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  const wtype* kc = buf<wtype>(c, p.kcache) + kv_row0(p.layer, p.kv_head);
  float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  float m[AMK_GROUP], l[AMK_GROUP];
  scores_pass<false>(kc, qs, s0, s1, sc, cap, m, l);
  float* stats = buf<float>(c, p.stats) + p.stats_off + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * 2;
  for (int j = 0; j < AMK_GROUP; ++j) {
    float mj, lj;
    block_softmax_stats(m[j], l[j], c.red, mj, lj);
    if (threadIdx.x == 0) { stcg(stats + 2 * j, s1 > s0 ? mj : NEG_INF); stcg(stats + 2 * j + 1, s1 > s0 ? lj : 0.f); }
  }
}

__device__ void op_attn_values(const Ctx& c, const AttnValuesParams& p) {
  float* M = c.smem;
  float* Ls = M + AMK_GROUP;
  float* out_s = Ls + AMK_GROUP;
  float* probs = out_s + AMK_GROUP * AMK_HEAD_DIM;
  if (threadIdx.x < AMK_GROUP) {  // global (max, sum) of each q head from every partition's stats
    const int hq = p.kv_head * AMK_GROUP + threadIdx.x;
    const float* st = buf<float>(c, p.stats) + p.stats_off;
    float mx = NEG_INF;
    for (int k = 0; k < p.parts; ++k) mx = fmaxf(mx, ldcg(st + (k * AMK_HEADS + hq) * 2));
    float l = 0.f;
    for (int k = 0; k < p.parts; ++k) {
      const float mk = ldcg(st + (k * AMK_HEADS + hq) * 2);
      if (mk != NEG_INF) l += ldcg(st + (k * AMK_HEADS + hq) * 2 + 1) * expf(mk - mx);
    }
    M[threadIdx.x] = mx;
    Ls[threadIdx.x] = l;
  }
  __syncthreads();
  int s0, s1;
  span(c.pos, p.part, p.parts, s0, s1);
  const int cap = (AMK_MAX_SEQ + p.parts - 1) / p.parts;
  const wtype* vc = buf<wtype>(c, p.vcache) + kv_row0(p.layer, p.kv_head);
  const float* sc = buf<float>(c, p.scores) + p.scores_off + (long long)(p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * cap;
  float acc[AMK_GROUP][VEC];
#pragma unroll
  for (int j = 0; j < AMK_GROUP; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[j][e] = 0.f;
  values_pass(vc, sc, cap, s0, s1, M, Ls, probs, p.chunk, acc);
  reduce_values(acc, out_s, probs);
  float* out = buf<float>(c, p.out) + p.out_off + (p.part * AMK_HEADS + p.kv_head * AMK_GROUP) * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) stcg(out + i, out_s[i]);
}

__device__ void op_attn_combine(const Ctx& c, const AttnCombineParams& p) {
  const float* src = buf<float>(c, p.partial) + p.partial_off;
  float* out = buf<float>(c, p.out) + p.out_off + p.kv_head * AMK_GROUP * AMK_HEAD_DIM;
  for (int i = threadIdx.x; i < AMK_GROUP * AMK_HEAD_DIM; i += AMK_THREADS) {
    float s = 0.f;
    for (int k = 0; k < p.parts; ++k) s += ldcg(src + (k * AMK_HEADS + p.kv_head * AMK_GROUP) * AMK_HEAD_DIM + i);
    stcg(out + i, rnd(s));
  }
}

__device__ void op_argmax(const Ctx& c, const ArgmaxParams& p) {
  const float* pairs = buf<float>(c, p.pairs) + p.pairs_off;
  float best = NEG_INF;
  int bi = 0x7fffffff;
  for (int s = threadIdx.x; s < p.slots; s += AMK_THREADS) {
    const float v = ldcg(pairs + 2 * s);
    const int i = (int)ldcg(pairs + 2 * s + 1);
    if (v > best || (v == best && i < bi)) { best = v; bi = i; }
  }
  block_argmax(best, bi, c.red);
  if (threadIdx.x == 0) __stcg(buf<int>(c, p.token), bi);
}

// ---- synchronisation ---------------------------------------------------------------------------
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
}
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Counters this block has already seen satisfied in this step: a later task with the same wait skips the
// round trip to L2. Thread 0 only.
struct SeenCounters {
  int cid[4];
  unsigned val[4];
  int next;
  __device__ void clear() { for (int k = 0; k < 4; ++k) cid[k] = -1; next = 0; }
  __device__ bool covers(int id, unsigned target) const {
    for (int k = 0; k < 4; ++k) if (cid[k] == id && (int)(val[k] - target) >= 0) return true;
    return false;
  }
  __device__ void add(int id, unsigned v) { cid[next] = id; val[next] = v; next = (next + 1) & 3; }
};

// Thread 0 only. Returns false when the step must stop (this wait timed out, or another block failed).
__device__ bool wait_all(const int* ins, const unsigned* counters, const int* producers, unsigned epoch,
                         int* control, long long timeout_ns, SeenCounters& seen) {
  const int n = ins[2];
  for (int w = 0; w < n; ++w) {
    const int cid = ins[AMK_WAIT_BASE + 2 * w], count = ins[AMK_WAIT_BASE + 2 * w + 1];
    const unsigned target = (unsigned)producers[cid] * (epoch - 1u) + (unsigned)count;
    if (seen.covers(cid, target)) continue;
    unsigned long long start = 0;
    unsigned spins = 0;
    unsigned v;
    while ((int)((v = ld_acquire(counters + cid)) - target) < 0) {
      if (*((volatile int*)(control + CTRL_ERR)) != 0) return false;
      if ((++spins & 63u) == 0) {
        const unsigned long long now = global_ns();
        if (start == 0) start = now;
        else if ((long long)(now - start) > timeout_ns) {
          if (atomicCAS(control + CTRL_ERR, 0, ERR_TIMEOUT) == 0) {
            control[CTRL_ERR_TASK] = ins[1];
            control[CTRL_ERR_DETAIL] = cid;
          }
          return false;
        }
      }
#if AMK_SPIN_BACKOFF_NS > 0
      __nanosleep(AMK_SPIN_BACKOFF_NS);
#endif
    }
    seen.add(cid, v);
  }
  return true;
}

// Start streaming an instruction's weights into L2 before its dependencies are met (one warp).
__device__ void prefetch_weights(const Ctx& c, const int* ins, int lane) {
  for (int k = 0; k < AMK_MAX_PREFETCH; ++k) {
    const int bid = ins[AMK_PREFETCH_BASE + 3 * k];
    if (bid < 0) continue;
    const char* base = reinterpret_cast<const char*>(c.bufs[bid]) + (long long)ins[AMK_PREFETCH_BASE + 3 * k + 1] * sizeof(wtype);
    const long long bytes = (long long)ins[AMK_PREFETCH_BASE + 3 * k + 2] * sizeof(wtype);
#if __CUDA_ARCH__ >= 900
    const long long piece = 16384;
    for (long long off = (long long)lane * piece; off < bytes; off += 32 * piece) {
      const unsigned n = (unsigned)min(piece, bytes - off);
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(base + off), "r"(n) : "memory");
    }
#else
    for (long long off = (long long)lane * 128; off < bytes; off += 32 * 128)
      asm volatile("prefetch.global.L2 [%0];" :: "l"(base + off));
#endif
  }
}

#ifndef AMK_TRACE
#define AMK_TRACE 0
#endif

extern "C" __global__ void __launch_bounds__(AMK_THREADS, 1)
amk_megakernel(const int* __restrict__ instrs, const int* __restrict__ qstarts, const unsigned long long* __restrict__ bufs,
               const int* __restrict__ cols, unsigned* counters, const int* __restrict__ producers, int* control,
               long long timeout_ns, unsigned long long* trace) {
  extern __shared__ __align__(16) float smem[];
  __shared__ int s_ins[2][AMK_INSTR_WORDS];
  __shared__ float s_red[64];
  __shared__ int s_stop;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  Ctx c;
  c.bufs = bufs;
  c.cols = cols;
  c.smem = smem;
  c.red = s_red;
  c.pos = __ldcg(reinterpret_cast<const int*>(bufs[AMK_POS_BUF]));
  const unsigned epoch = (unsigned)__ldcg(control + CTRL_EPOCH);
  const int begin = qstarts[blockIdx.x], end = qstarts[blockIdx.x + 1];
  SeenCounters seen;
  seen.clear();
  int prefetched = begin;
  int executed = 0;
  if (begin < end)
    for (int k = tid; k < AMK_INSTR_WORDS; k += AMK_THREADS) s_ins[0][k] = instrs[(long long)begin * AMK_INSTR_WORDS + k];
  __syncthreads();
  (void)lane;
  (void)prefetched;
  for (int i = begin; i < end; ++i) {
    const int* ins = s_ins[(i - begin) & 1];
#if AMK_TRACE
    unsigned long long t0 = global_ns();
#endif
    // the next instruction's words arrive while this one runs
    const int nxt = (tid < AMK_INSTR_WORDS && i + 1 < end) ? instrs[(long long)(i + 1) * AMK_INSTR_WORDS + tid] : 0;
    const void* prm = ins + AMK_PARAM_BASE;
#if AMK_PIPELINE_DEPTH > 0
    // weights do not depend on activations: stream the next instructions' weights into L2 before waiting
    if (warp == 0) {
      const int upto = min(end, i + 1 + AMK_PIPELINE_DEPTH);
      for (int k = max(prefetched, i + 1); k < upto; ++k) prefetch_weights(c, instrs + (long long)k * AMK_INSTR_WORDS, lane);
    }
    prefetched = max(prefetched, min(end, i + 1 + AMK_PIPELINE_DEPTH));
#endif
    if (tid == 0) s_stop = wait_all(ins, counters, producers, epoch, control, timeout_ns, seen) ? 0 : 1;
    __syncthreads();
    if (s_stop) return;
#if AMK_TRACE
    unsigned long long t1 = global_ns();
#endif
    switch (ins[0]) {
      case OP_EMBED: op_embed(c, *reinterpret_cast<const EmbedParams*>(prm), control, ins[1]); break;
      case OP_RMSNORM: op_rmsnorm(c, *reinterpret_cast<const RmsNormParams*>(prm)); break;
      case OP_MATVEC: op_matvec(c, *reinterpret_cast<const MatvecParams*>(prm)); break;
      case OP_EPILOGUE: op_epilogue(c, *reinterpret_cast<const EpilogueTaskParams*>(prm)); break;
      case OP_ATTN_DECODE: op_attn_decode(c, *reinterpret_cast<const AttnDecodeParams*>(prm)); break;
      case OP_ATTN_SCORES: op_attn_scores(c, *reinterpret_cast<const AttnScoresParams*>(prm)); break;
      case OP_ATTN_VALUES: op_attn_values(c, *reinterpret_cast<const AttnValuesParams*>(prm)); break;
      case OP_ATTN_COMBINE: op_attn_combine(c, *reinterpret_cast<const AttnCombineParams*>(prm)); break;
      case OP_ARGMAX: op_argmax(c, *reinterpret_cast<const ArgmaxParams*>(prm)); break;
      default:
        if (tid == 0 && atomicCAS(control + CTRL_ERR, 0, ERR_BAD_OPCODE) == 0) {
          control[CTRL_ERR_TASK] = ins[1];
          control[CTRL_ERR_DETAIL] = ins[0];
        }
        return;
    }
    if (tid < AMK_INSTR_WORDS) s_ins[(i - begin + 1) & 1][tid] = nxt;
    __syncthreads();
    if (tid == 0) {
      // red.release after the barrier publishes every thread's writes of this task (cumulativity)
      for (int k = 0; k < ins[3]; ++k) red_release(counters + ins[AMK_SIGNAL_BASE + k]);
#if AMK_TRACE
      if (trace) {
        unsigned long long* t = trace + 4ll * ins[1];
        t[0] = t0; t[1] = t1; t[2] = global_ns(); t[3] = blockIdx.x;
      }
#endif
    }
    ++executed;
  }
  if (tid == 0) {
    atomicAdd(control + CTRL_TASKS, executed);
    __threadfence();
    if (atomicAdd(control + CTRL_EXIT, 1) == (int)gridDim.x - 1) {  // the last block closes the step
      control[CTRL_EXIT] = 0;
      control[CTRL_EPOCH] = (int)epoch + 1;
      if (control[CTRL_ADVANCE] && c.pos + 1 < AMK_MAX_SEQ) __stcg(reinterpret_cast<int*>(bufs[AMK_POS_BUF]), c.pos + 1);
      __threadfence();
    }
  }
}
