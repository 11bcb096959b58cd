// ---- the partition attention on tensor cores: every q head of a KV group in one matrix product ------------
// One KV head x one partition whose K and V rows all sit in shared memory, in bf16 or fp16 rows. The group's
// G q heads are the rows of m16n8k16 products (mma.sync) against 16 positions at a time, so a K or V row is read
// from shared memory and widened once for the whole group, where the CUDA-core path (partial_warp_heads) reads
// and widens it once a q head. Numerics as that path: q is already rounded to the model's dtype (the QKV
// epilogue and RoPE round it), so its products with K are exact and summed in fp32; the scores are rounded after
// the sum and after the scale; the probabilities are fp32, weighed against V as two products of the model's
// dtype, p = hi + lo with hi = rnd(p) and lo = rnd(p - hi), which keeps about 16 of fp32's 24 significant bits
// where one rounding would keep 8 (bf16) or 11 (fp16).
//
// Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and "Warp-level
// matrix load instruction: ldmatrix". For a lane, g = lane / 4 and t = lane % 4: an A fragment holds rows g and
// g + 8 at columns 2t, 2t + 1 and 2t + 8, 2t + 9; a B fragment column g at rows 2t, 2t + 1, 2t + 8, 2t + 9; an
// accumulator rows g and g + 8 at columns 2t, 2t + 1. The scores' accumulator is then the probabilities' A
// fragment as it stands (q heads by positions), as in FlashAttention-2.

// Off until timed against the CUDA-core path on the GPU: bench/variants.py --variant base= --variant
// mma=AMK_ATTN_MMA=1 (verified first). tests/test_kernel_local_memory.py builds it for every public shape.
#ifndef AMK_ATTN_MMA
#define AMK_ATTN_MMA 0
#endif
// one M tile of q heads, whole k-steps of head dims, and at most 8 warps a tile (head_dim 128)
#define ATTN_MMA_OK (AMK_ATTN_MMA && (AMK_DTYPE == DT_BF16 || AMK_DTYPE == DT_F16) && AMK_GROUP <= 16 && \
                     AMK_HEAD_DIM % 16 == 0 && AMK_HEAD_DIM <= 128)

#if ATTN_MMA_OK
// two values in the model's dtype, the first in the low half (the lower column of a fragment)
__device__ __forceinline__ unsigned pack2(float a, float b) {
#if AMK_DTYPE == DT_BF16
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
#else
  const __half2 h = __floats2half2_rn(a, b);
#endif
  return *reinterpret_cast<const unsigned*>(&h);
}

// d += a (16 x 16, rows) * b (16 x 8, columns), fp32 accumulators
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, unsigned b0, unsigned b1) {
#if AMK_DTYPE == DT_BF16
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#endif
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 matrices of 16-bit values from shared memory; lanes 8i .. 8i + 7 name the rows of matrix i. Volatile
// so that it stays after the barrier that publishes the rows.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const uint4* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const uint4* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(row)));
}

// A tile's values take DSPLIT warps of HDW head dims each: 32 (16 accumulators a lane), or 16 where 32 does not
// divide head_dim; NWARPS / DSPLIT slots of warps. Holding 64 dims a lane, the kernel spilled (NVRTC 13.0).
constexpr int DSPLIT = AMK_HEAD_DIM % 32 == 0 ? AMK_HEAD_DIM / 32 : AMK_HEAD_DIM / 16, HDW = AMK_HEAD_DIM / DSPLIT;
// Floats of scratch partial_mma_heads needs for n positions: each busy slot's (max, sum) and unnormalised values
// of every q head.
__device__ __forceinline__ int mma_heads_scratch(int n) {
  return min(NWARPS / DSPLIT, (n + 15) / 16) * AMK_GROUP * (AMK_HEAD_DIM + 2);
}

// The DSPLIT warps of slot s take the tiles of 16 positions s, s + SLOTS, ... of the n staged rows (rows past n
// are read as row n - 1 and weigh 0) under their own running softmax, each warp the values of its HDW head dims
// (the scores and softmax whole: the same in each); after a barrier (K and V read) the busy slots' states go to
// `scratch` (mma_heads_scratch(n) floats, which may overlap ks and vs), and after another the block merges them
// into out (G x head_dim, normalised) and stats ((max, sum) a q head), as partial_warp_heads does.
__device__ void partial_mma_heads(const float* qs, const uint4* ks, const uint4* vs, int n, float* scratch,
                                  ptype* out, float* stats) {
  constexpr int G = AMK_GROUP, HD = AMK_HEAD_DIM, KSTEPS = HD / 16;
  constexpr int NT = HDW / 8, SLOTS = NWARPS / DSPLIT;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int slot = (threadIdx.x >> 5) / DSPLIT, dpart = (threadIdx.x >> 5) % DSPLIT;
  const int nw = min(SLOTS, (n + 15) / 16);  // busy slots
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};  // q heads g and g + 8
  float o[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
  if (slot < nw) {
    const int kv = (lane >> 3) & 1;
#pragma unroll 1
    for (int p0 = 16 * slot; p0 < n; p0 += 16 * SLOTS) {
      // scores s[h]: positions p0 + 8h + 2t (+1) of heads g (elements 0, 1) and g + 8 (2, 3)
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      const int kr = min(p0 + (lane & 7) + 8 * (lane >> 4), n - 1);
#pragma unroll 1  // unrolled, the kernel spilled up to 32 bytes (NVRTC 13.0)
      for (int k = 0; k < KSTEPS; ++k) {
        unsigned a[4], b[4];  // q's A fragment, built again a tile: a warp rarely has two tiles
        const float* q0 = qs + g * HD + 16 * k + 2 * t;
        const float* q1 = q0 + 8 * HD;
        a[0] = g < G ? pack2(q0[0], q0[1]) : 0u;
        a[1] = g + 8 < G ? pack2(q1[0], q1[1]) : 0u;
        a[2] = g < G ? pack2(q0[8], q0[9]) : 0u;
        a[3] = g + 8 < G ? pack2(q1[8], q1[9]) : 0u;
        ldmatrix_x4(b, ks + staged_slot(kr, 2 * k + kv));
        mma_16816(s[0], a, b[0], b[1]);
        mma_16816(s[1], a, b[2], b[3]);
      }
      float tm[2] = {NEG_INF, NEG_INF};
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool live = p0 + 8 * h + 2 * t + (e & 1) < n;
          s[h][e] = live ? rnd(rnd(s[h][e]) * AMK_ATTN_SCALE) : NEG_INF;
          tm[e >> 1] = fmaxf(tm[e >> 1], s[h][e]);
        }
      float p[2][4];
#pragma unroll
      for (int r = 0; r < 2; ++r) {  // a tile holds a live position, so the new maximum is finite
        tm[r] = fmaxf(tm[r], __shfl_xor_sync(0xffffffffu, tm[r], 1));
        tm[r] = fmaxf(tm[r], __shfl_xor_sync(0xffffffffu, tm[r], 2));
        const float mx = fmaxf(m[r], tm[r]), sc = m[r] == NEG_INF ? 0.f : expf(m[r] - mx);
        m[r] = mx;
        l[r] *= sc;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          o[nt][2 * r] *= sc;
          o[nt][2 * r + 1] *= sc;
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[h][e] = expf(s[h][e] - m[e >> 1]);  // 0 past n
          l[e >> 1] += p[h][e];
        }
      unsigned hi[4], lo[4];  // A fragments: heads g, g + 8 by positions p0 + 2t (+1), p0 + 8 + 2t (+1)
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const float a = p[f >> 1][2 * (f & 1)], b = p[f >> 1][2 * (f & 1) + 1];
        const bool used = (f & 1) == 0 || G > 8;
        hi[f] = used ? pack2(a, b) : 0u;
        lo[f] = used ? pack2(a - rnd(a), b - rnd(b)) : 0u;
      }
      const int vr = min(p0 + (lane & 15), n - 1), vv = lane >> 4;
#pragma unroll
      for (int nt = 0; nt < NT; nt += 2) {
        unsigned b[4];
        ldmatrix_x4_trans(b, vs + staged_slot(vr, dpart * (HDW / 8) + nt + vv));
        mma_16816(o[nt], hi, b[0], b[1]);
        mma_16816(o[nt], lo, b[0], b[1]);
        mma_16816(o[nt + 1], hi, b[2], b[3]);
        mma_16816(o[nt + 1], lo, b[2], b[3]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
  }
  block_sync();  // every warp has read its K and V rows: the scratch may cover them
  float* sm = scratch;               // [slot][q head][(max, sum)]
  float* so = scratch + 2 * nw * G;  // [slot][q head][head dim]
  if (slot < nw) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int h = g + 8 * r;
      if (h >= G) continue;
      if (t == 0 && dpart == 0) {  // the slot's warps saw the same positions: the same (max, sum)
        sm[2 * (slot * G + h)] = m[r];
        sm[2 * (slot * G + h) + 1] = l[r];
      }
      float* dst = so + (slot * G + h) * HD + dpart * HDW + 2 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        dst[8 * nt] = o[nt][2 * r];
        dst[8 * nt + 1] = o[nt][2 * r + 1];
      }
    }
  }
  block_sync();
  merge_warp_states(sm, so, nw, G, 1, out, stats);
}
#endif
