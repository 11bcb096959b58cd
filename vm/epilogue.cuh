// ---- epilogues: acc[0, rows) main rows, acc[rows, 2 rows) the paired rows -------------------------
// QKV rows come a KV head at a time, [AMK_KV_GROUP q heads, k, v] (AMK_GROUP is an attention task's share of them)
__device__ void rope_head(const Ctx& c, const EpilogueParams& e, const float* vals, int u, int lane) {
  const int g = u / (AMK_KV_GROUP + 2), j = u % (AMK_KV_GROUP + 2);
  const int hd = AMK_HEAD_DIM;
  if (j == AMK_KV_GROUP + 1) {  // v: appended as it is
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
    nw = buf<wtype>(c, j < AMK_KV_GROUP ? e.qnorm : e.knorm);
  }
#endif
#if AMK_KV_GROUP > 8
  // builds of more than 8 q heads a KV head sit at ptxas's register cap in the tiled attention: reading the row
  // from shared memory here put 8 more bytes on their stack (nvcc 13.0, 16 q heads of 16 dims), so they read the
  // tables as before
  const wtype* cs = buf<wtype>(c, AMK_ROPE_COS) + (long long)c.pos * hd;
  const wtype* sn = buf<wtype>(c, AMK_ROPE_SIN) + (long long)c.pos * hd;
#define HEAD_COS(i) to_f(cs[i])
#define HEAD_SIN(i) to_f(sn[i])
#else
#define HEAD_COS(i) rope_cos(i)
#define HEAD_SIN(i) rope_sin(i)
#endif
  for (int i = lane; i < HALF_HD; i += 32) {
    float a = vals[i], b = vals[i + HALF_HD];
    if (nw) { a = rnd(to_f(nw[i]) * rnd(a * r)); b = rnd(to_f(nw[i + HALF_HD]) * rnd(b * r)); }
    const float lo = rnd(rnd(a * HEAD_COS(i)) + rnd(-b * HEAD_SIN(i)));
    const float hi = rnd(rnd(b * HEAD_COS(i + HALF_HD)) + rnd(a * HEAD_SIN(i + HALF_HD)));
    if (j < AMK_KV_GROUP) {
      float* q = buf<float>(c, e.out) + e.out_off + (g * AMK_KV_GROUP + j) * hd;
      stcg(q + i, lo); stcg(q + i + HALF_HD, hi);
    } else {
      wtype* dst = buf<wtype>(c, e.kcache) + (((long long)e.layer * AMK_KV_HEADS + g) * AMK_MAX_SEQ + c.pos) * hd;
      dst[i] = from_f(lo); dst[i + HALF_HD] = from_f(hi);
    }
  }
#undef HEAD_COS
#undef HEAD_SIN
}

// Row `row` (below head_dim/2 in its head) of a split QKV task, value a, and its partner half a head on, b.
__device__ void rope_pair(const Ctx& c, const EpilogueParams& e, int row, float a, float b) {
  const int u = row / AMK_HEAD_DIM, d = row % AMK_HEAD_DIM;
  const int g = u / (AMK_KV_GROUP + 2), j = u % (AMK_KV_GROUP + 2);
  if (j <= AMK_KV_GROUP) {
    const float lo = rnd(rnd(a * rope_cos(d)) + rnd(-b * rope_sin(d)));
    const float hi = rnd(rnd(b * rope_cos(d + HALF_HD)) + rnd(a * rope_sin(d + HALF_HD)));
    a = lo;
    b = hi;
  }
  if (j < AMK_KV_GROUP) {
    float* q = buf<float>(c, e.out) + e.out_off + (g * AMK_KV_GROUP + j) * AMK_HEAD_DIM;
    stcg(q + d, a);
    stcg(q + d + HALF_HD, b);
  } else {
    wtype* dst = buf<wtype>(c, j == AMK_KV_GROUP ? e.kcache : e.vcache) +
                 (((long long)e.layer * AMK_KV_HEADS + g) * AMK_MAX_SEQ + c.pos) * AMK_HEAD_DIM;
    dst[d] = from_f(a);
    dst[d + HALF_HD] = from_f(b);
  }
}

// Where computed row i of a task of `rows` rows from row0 lies: rows [row0, row0 + rows), then, with a pair offset
// (SILU_MUL's up rows, ROPE_KV's partner rows), the same rows `pair` on.
__device__ __forceinline__ int computed_row(int i, int row0, int rows, int pair) {
  return i < rows ? row0 + i : pair + row0 + (i - rows);
}

// One k-split's unrounded sums of a task's computed rows, `split` the split's rows from row0 on (its rows at row0
// + split_stride * split of the partial sums), through L2 only: another SM's task sums them this step.
__device__ __forceinline__ void store_split(float* split, const float* acc, int rows, int pair) {
  for (int i = threadIdx.x; i < rows; i += AMK_THREADS) {
    stcg(split + i, acc[i]);
    if (pair) stcg(split + pair + i, acc[rows + i]);
  }
}

// acc[i] = the sum of computed row i's partial sums over `splits` splits `stride` elements apart, in split order
// from zero (the ReferenceVM's Semantics.finish_splits): a reduce stage's EPILOGUE task, or a join's last split.
__device__ __forceinline__ void sum_splits(const float* part, int splits, long long stride, int row0, int rows, int pair,
                                           float* acc) {
  for (int i = threadIdx.x; i < rows * (pair ? 2 : 1); i += AMK_THREADS) {
    const float* src = part + computed_row(i, row0, rows, pair);
    float s = 0.f;
#pragma unroll 8
    for (int k = 0; k < splits; ++k) s += ldcg(src + k * stride);  // unrolled: loads in flight
    acc[i] = s;
  }
}

__device__ void epilogue(const Ctx& c, const EpilogueParams& e, int row0, int rows, float* acc) {
  const int tid = threadIdx.x;
  if (e.bias >= 0 && e.kind != EPI_PARTIAL) {
    const wtype* b = buf<wtype>(c, e.bias);
    for (int i = tid; i < rows; i += AMK_THREADS) {
      acc[i] += to_f(b[row0 + i]);
      if (e.pair_offset) acc[rows + i] += to_f(b[e.pair_offset + row0 + i]);
    }
    block_sync();
  }
  float* out = buf<float>(c, e.out);
  const long long lo = (long long)e.out_off + row0;
  switch (e.kind) {
#if AMK_USES_EPI_STORE
    case EPI_STORE:
      for (int i = tid; i < rows; i += AMK_THREADS) {
        stcg(out + lo + i, rnd(acc[i]));
        if (e.pair_offset) stcg(out + lo + e.pair_offset + i, rnd(acc[rows + i]));
      }
      break;
#endif
#if AMK_USES_EPI_PARTIAL
    case EPI_PARTIAL:
      store_split(out + e.out_off + (long long)e.split * e.split_stride + row0, acc, rows, e.pair_offset);
      break;
#endif
#if AMK_USES_EPI_RESIDUAL_ADD
    case EPI_RESIDUAL_ADD:
#if AMK_X_TAGS >= 0
      if (e.x_tag >= 0) {  // x's rows from the last write's tagged words; the new values stored both ways
        const unsigned tag = x_tag(c, e.x_tag);
#pragma unroll 1  // unrolled, it kept enough values live to make ptxas spill on a G=2, head_dim 96 shape
        for (int i = tid; i < rows; i += AMK_THREADS) {
          const float v = rnd(read_ordered(c, row0 + i) + rnd(acc[i]));
          stcg(out + lo + i, v);
          st_tagged(x_words(c) + row0 + i, tag, v);
        }
        break;
      }
#endif
      for (int i = tid; i < rows; i += AMK_THREADS) stcg(out + lo + i, rnd(ldcg(out + lo + i) + rnd(acc[i])));
      break;
#endif
#if AMK_USES_EPI_SILU_MUL
    case EPI_SILU_MUL:
#if AMK_H_TAGS >= 0
      if (e.h_tag >= 0) {  // the hidden row stored both ways: down reads the words
        const unsigned tag = h_tag(c, e.h_tag);
        for (int i = tid; i < rows; i += AMK_THREADS) {
          const float g = rnd(acc[i]), u = rnd(acc[rows + i]), v = rnd(rnd(silu(g)) * u);
          stcg(out + lo + i, v);
          st_tagged(h_words(c) + row0 + i, tag, v);
        }
        break;
      }
#endif
      for (int i = tid; i < rows; i += AMK_THREADS) {
        const float g = rnd(acc[i]), u = rnd(acc[rows + i]);
        stcg(out + lo + i, rnd(rnd(silu(g)) * u));
      }
      break;
#endif
#if AMK_USES_EPI_LOGITS
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
#endif
#if AMK_USES_EPI_ROPE_KV
    case EPI_ROPE_KV: {
      if (e.pair_offset) {  // rows of one head and their RoPE partners
        for (int i = tid; i < rows; i += AMK_THREADS) rope_pair(c, e, row0 + i, rnd(acc[i]), rnd(acc[rows + i]));
        break;
      }
      const int lane = tid & 31, warp = tid >> 5;
      for (int i = tid; i < rows; i += AMK_THREADS) acc[i] = rnd(acc[i]);
      block_sync();
      const int h0 = row0 / AMK_HEAD_DIM, nh = rows / AMK_HEAD_DIM;
      for (int h = warp; h < nh; h += NWARPS) rope_head(c, e, acc + h * AMK_HEAD_DIM, h0 + h, lane);
      break;
    }
#endif
  }
}

// Greedy token from the per-task (max, index) pairs the LOGITS epilogues left.
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

