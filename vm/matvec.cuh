// ---- matvec ------------------------------------------------------------------------------------
#ifndef AMK_ROWS_IN_FLIGHT
#define AMK_ROWS_IN_FLIGHT 1
#endif

// NR units at once, LOADS_IN_FLIGHT 16-byte loads per unit per lane before any use: the memory-level
// parallelism one SM needs to stream at its share of DRAM bandwidth. A unit is `n` consecutive weight
// vectors of one row (rp[r]) against the staged input from xp[r]. out[r] gets the warp-reduced dot.
// kShared: the weights sit in the shared-memory ring, else they stream from global memory.
template <int NR, bool kShared>
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
      for (int r = 0; r < NR; ++r) raw[r][u] = kShared ? rp[r][v + u * 32] : __ldg(rp[r] + v + u * 32);
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
      unpack(kShared ? rp[r][v] : __ldg(rp[r] + v), f);
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
  dot_units<NR, false>(rp, xp, per, lane, out);
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

// The input slice [k0, k0 + klen) in shared memory, RMS-normalised first when the norm is fused (one pass
// over x: stage all of it, reduce from shared memory, normalise the slice in place). No barrier at the end.
__device__ float* stage_input(const Ctx& c, const MatvecParams& p, int K) {
  const int tid = threadIdx.x;
  const float* x = buf<float>(c, p.inp) + p.inp_off;
  if (p.norm_weight >= 0) {
    float ss = 0.f;
    for (int k = tid; k < K; k += AMK_THREADS) { const float v = ldcg(x + k); c.smem[k] = v; ss += v * v; }
    ss = block_sum(ss, c.red);
    const float r = 1.0f / sqrtf(ss / (float)K + AMK_EPS);
    const wtype* w = buf<wtype>(c, p.norm_weight);
    float* xs = c.smem + p.k0;
    for (int k = tid; k < p.klen; k += AMK_THREADS) xs[k] = rnd(to_f(w[p.k0 + k]) * rnd(xs[k] * r));
    return xs;
  }
  for (int k = tid; k < p.klen; k += AMK_THREADS) c.smem[k] = ldcg(x + p.k0 + k);
  return c.smem;
}

__device__ void op_matvec(const Ctx& c, const MatvecParams& p) {
  const int K = __ldg(c.cols + p.weight);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int R = p.rows * (p.epi.pair_offset ? 2 : 1);
  float* xs = stage_input(c, p, K);
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

