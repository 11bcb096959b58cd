// ---- matvec ------------------------------------------------------------------------------------
#ifndef AMK_ROWS_IN_FLIGHT
#define AMK_ROWS_IN_FLIGHT 1
#endif
// The thread that polls a task's dependency counters: lane 0 of the last consumer warp, the warp with the fewest
// units of a task whose units do not split evenly. Its warp streams no weight rows or KV rows before the wait: a
// poll queued behind its own warp's reads from DRAM sees a counter late (llama-3.2-1b 913.0 against 923.2-924.0
// us a step with thread 0 polling, bench/results/20261201-1600_h200_polling_warp_streams_after_wait.json).
#define POLL_THREAD (AMK_THREADS - 32)

// acc + the dot of one 16-byte weight vector with VEC staged input floats (16-byte aligned in shared memory).
__device__ __forceinline__ float dot_vec(const uint4& raw, const float* x, float acc) {
  float f[VEC];
  unpack(raw, f);
  const float4* x4 = reinterpret_cast<const float4*>(x);
#pragma unroll
  for (int e = 0; e < VEC / 4; ++e) {
    const float4 q = x4[e];
    acc = fmaf(f[4 * e], q.x, acc);
    acc = fmaf(f[4 * e + 1], q.y, acc);
    acc = fmaf(f[4 * e + 2], q.z, acc);
    acc = fmaf(f[4 * e + 3], q.w, acc);
  }
  return acc;
}

// Split each row into S chunks (S divides the row's vectors, chunks at least a warp wide) so that there
// are enough units to keep every warp streaming ROWS_IN_FLIGHT units at once.
__device__ __forceinline__ int row_chunks(int R, int nvec) {
  int S = 1;
  while (R * S < NWARPS * AMK_ROWS_IN_FLIGHT && (nvec % (2 * S)) == 0 && nvec / (2 * S) >= 32) S *= 2;
  return S;
}

// Copy n floats from L2 (written by other SMs this step) into shared memory; returns this thread's sum of
// squares. Four 16-byte loads per thread are in flight before any is used: one L2 round trip per four
// turns instead of one per turn. src and dst are 16-byte aligned.
__device__ __forceinline__ float stage_floats(float* dst, const float* src, int n) {
  const int n4 = n >> 2;
  const float4* s4 = reinterpret_cast<const float4*>(src);
  float4* d4 = reinterpret_cast<float4*>(dst);
  float ss = 0.f;
  int i = threadIdx.x;
  for (; i + 3 * AMK_THREADS < n4; i += 4 * AMK_THREADS) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = __ldcg(s4 + i + u * AMK_THREADS);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      d4[i + u * AMK_THREADS] = v[u];
      // left to the compiler (in the builds read, it fused as sum_sq4 does): pinned with sum_sq4 here, ptxas
      // spilled on two shapes of tests/test_kernel_compiles.py. An x of more than 12 values a thread (6144 at 512
      // threads, 3072 at 256) is normed through here
      ss += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
    }
  }
  for (; i < n4; i += AMK_THREADS) {
    const float4 v = __ldcg(s4 + i);
    d4[i] = v;
    ss += sum_sq4(v);
  }
  for (int k = 4 * n4 + threadIdx.x; k < n; k += AMK_THREADS) {
    const float v = ldcg(src + k);
    dst[k] = v;
    ss += v * v;
  }
  return ss;
}

// What a matvec task reads besides its weights, found before its dependency wait: where its input lies (the
// buffer table is a global load, a round trip on the path from the wait to the dot when it is looked up after),
// and the fused RMSNorm's weights of the first NORM_PRELOAD of this thread's elements of the slice, kept in the
// weights' dtype so that no thread, the polling one included, waits for them before it polls: converted as
// loaded, they were 4% of a step's warp stall samples (llama-3.2-1b; with the pointer, 898.2 against 907.1 us,
// qwen2.5-0.5b shape 758.3 against 776.0, bench/results/20261202-1500_h200_matvec_inputs_before_wait.json).
#define NORM_PRELOAD 4
struct TaskInputs {
  const void* src;        // the input row (p.inp), or the attention partitions from the slice's first column
  wtype w[NORM_PRELOAD];  // the norm's weights k0 + tid + u * AMK_THREADS (zero past the slice or unfused)
};

__device__ __forceinline__ void load_task_inputs(const Ctx& c, const MatvecParams& p, TaskInputs& in) {
  in.src = p.inp_parts > 0 ? static_cast<const void*>(part_ptr(c, p.inp, p.inp_off) + p.k0)
                           : static_cast<const void*>(buf<float>(c, p.inp) + p.inp_off);
  const wtype* norm = p.norm_weight >= 0 ? buf<wtype>(c, p.norm_weight) : nullptr;
#pragma unroll
  for (int u = 0; u < NORM_PRELOAD; ++u) {
    const int k = threadIdx.x + u * AMK_THREADS;
    in.w[u] = (norm && k < p.klen) ? __ldg(norm + p.k0 + k) : wtype(0.f);
  }
}

// The O projection's input still in attention partitions: x[i] = rnd(sum_k w_k part_k[i] / sum_k w_k) with
// w_k = l_k exp(m_k - M) over the partitions of i's q head (M the largest m_k), or w_k = 1 when the partitions
// shared one softmax. The partials sit in L2 (fp32, or the model's dtype: attention.partials_dtype), P of them an
// element: an O task of llama-3.2-1b at 16 fp32 partitions reads 128 KiB, so the bytes in flight bound the
// staging, not the arithmetic. Loaded into registers four partitions at a time, one L2 round trip after
// another, it took 4.0 us of such a task (5.2 on the qwen3-1.7b shape; bench/trace.py); eight at a time held
// local memory. So each thread copies its PVEC elements (16 bytes, one q head) of each partition into its own
// 16-byte slots with cp.async, which holds no register in flight: p.inp_slots slots a copying thread
// (schedule/smem.py combine_slots): every partition in one batch where they fit, else two batches of half of
// the slots, one summed while the other lands (or one slot at a time). A thread reads only the slots it
// copied, so no barrier; the (max, sum) of the slice's heads are loaded once by the block while the first
// batches fly, behind one barrier.
__device__ __forceinline__ void combine_issue(uint4* slot, int stride, const ptype* part, int K, int k, int P, int B,
                                              int ring, int b) {
  const int q0 = b * B;
  for (int e = 0; e < B && q0 + e < P; ++e)
    cp_async16(&slot[((b % ring) * B + e) * stride + threadIdx.x], part + (q0 + e) * K + k);
  cp_async_commit();  // an empty group past the last batch keeps the count the waits below assume
}

__device__ void stage_combined(const Ctx& c, const MatvecParams& p, const TaskInputs& in) {
  const int P = p.inp_parts, K = AMK_HEADS * AMK_HEAD_DIM, tid = threadIdx.x;
  const int S = p.inp_slots, ring = S >= P || S < 2 ? 1 : 2, B = S >= P ? P : S / ring, nb = (P + B - 1) / B;
  const int stride = min(AMK_THREADS, p.klen / PVEC);  // the copying threads: slot j of thread t is slot[j * stride + t]
  const int h0 = p.k0 / AMK_HEAD_DIM, nh = (p.k0 + p.klen - 1) / AMK_HEAD_DIM - h0 + 1;
  const bool weighted = p.inp_stats >= 0;
  const int xs_floats = (p.klen + 3) & ~3;
  float2* stats = reinterpret_cast<float2*>(c.smem + xs_floats);
  uint4* slot = reinterpret_cast<uint4*>(c.smem + xs_floats + (weighted ? (2 * P * nh + 3) & ~3 : 0));
  const ptype* part = static_cast<const ptype*>(in.src);
  if (PVEC * tid < p.klen) {
    for (int b = 0; b < ring; ++b) combine_issue(slot, stride, part, K, PVEC * tid, P, B, ring, b);
  }
#if AMK_TRACE
  const long long t_stats = clock64();
#endif
  if (weighted) {
    const float2* st = reinterpret_cast<const float2*>(buf<float>(c, p.inp_stats) + p.inp_stats_off);
    for (int i = tid; i < P * nh; i += AMK_THREADS) stats[i] = __ldcg(st + (i / nh) * AMK_HEADS + h0 + i % nh);
    block_sync();
  }
#if AMK_TRACE
  if (tid == 0) c.prof[3] += clock64() - t_stats;  // a combining task's phase 3: its (max, sum) round trip
#endif
  // klen, k0 and head_dim are multiples of 8 (amk.models and the O tiling refuse any other head_dim): a
  // thread's PVEC elements belong to one q head
  for (int k = PVEC * tid; k < p.klen; k += PVEC * AMK_THREADS) {
    if (k != PVEC * tid) {
      for (int b = 0; b < ring; ++b) combine_issue(slot, stride, part, K, k, P, B, ring, b);
    }
    const float2* ml = stats + ((p.k0 + k) / AMK_HEAD_DIM - h0);
    float M = NEG_INF;
    if (weighted) {
      for (int q = 0; q < P; ++q) M = fmaxf(M, ml[q * nh].x);
    }
    float acc[PVEC];
#pragma unroll
    for (int e = 0; e < PVEC; ++e) acc[e] = 0.f;
    float T = 0.f;
    for (int b = 0; b < nb; ++b) {
      if (ring == 2) cp_async_wait<1>(); else cp_async_wait<0>();
      for (int e = 0; e < B && b * B + e < P; ++e) {
        const int q = b * B + e;
        float v[PVEC];
        unpack_part(slot[((b % ring) * B + e) * stride + tid], v);
        const float2 s = weighted ? ml[q * nh] : make_float2(0.f, 1.f);
        const float w = weighted ? (s.x == NEG_INF ? 0.f : s.y * expf(s.x - M)) : 1.f;
#pragma unroll
        for (int x = 0; x < PVEC; ++x) acc[x] = fmaf(w, v[x], acc[x]);
        T += w;
      }
      combine_issue(slot, stride, part, K, k, b + ring < nb ? P : 0, B, ring, b + ring);
    }
    const float inv = weighted ? 1.f / T : 1.f;
#pragma unroll
    for (int x = 0; x < PVEC; ++x) c.smem[k + x] = rnd(acc[x] * inv);
  }
  cp_async_wait<0>();
}

#ifndef HIDDEN_GROUPS  // 8192 values a round trip either way; four at 1024 threads add to that build's spills
#define HIDDEN_GROUPS (AMK_THREADS >= 1024 ? 2 : 4)
#endif

// The input slice [k0, k0 + klen) in shared memory, RMS-normalised first when the norm is fused (one pass
// over x: stage all of it, reduce from shared memory, normalise the slice in place). No barrier at the end.
__device__ float* stage_input(const Ctx& c, const MatvecParams& p, int K, const TaskInputs& in) {
#ifdef AMK_BOUND_NO_STAGING
  // a bound (bench/variants.py --bound): every matvec's input taken as already in shared memory, unnormalised;
  // beside AMK_BOUND_NO_WAIT, what the task bodies cost without their latency-bound input reads
  return c.smem;
#endif
  const int tid = threadIdx.x;
  if (p.inp_parts > 0) {
    stage_combined(c, p, in);
    return c.smem;
  }
  if (p.norm_weight >= 0) {
#if AMK_X_TAGS >= 0
    const float ss = block_sum(p.inp_tag >= 0 ? stage_tagged<1>(c, c.smem, x_words(c), K, x_tag(c, p.inp_tag),
                                                             TAGS_DETAIL_X)
                                              : stage_floats(c.smem, static_cast<const float*>(in.src), K), c.red);
#else
    const float ss = block_sum(stage_floats(c.smem, static_cast<const float*>(in.src), K), c.red);
#endif
    const float r = 1.0f / sqrtf(ss / (float)K + AMK_EPS);
    const wtype* w = buf<wtype>(c, p.norm_weight);
    float* xs = c.smem + p.k0;
#pragma unroll
    for (int u = 0; u < NORM_PRELOAD; ++u) {
      const int k = tid + u * AMK_THREADS;
      if (k < p.klen) xs[k] = rnd(to_f(in.w[u]) * rnd(xs[k] * r));
    }
    for (int k = tid + NORM_PRELOAD * AMK_THREADS; k < p.klen; k += AMK_THREADS)
      xs[k] = rnd(to_f(w[p.k0 + k]) * rnd(xs[k] * r));
    return xs;
  }
#if AMK_H_TAGS >= 0
  // the hidden row's slice from its tagged words (k0 and klen multiples of 4: validate), HIDDEN_GROUPS groups of
  // four values in flight a thread: a slice of up to 8192 values (llama-3.2-1b's row) is one L2 round trip at 512
  // threads, as stage_floats' four 16-byte loads make it untagged
  if (p.inp_tag >= 0) {
    stage_tagged<HIDDEN_GROUPS>(c, c.smem, h_words(c) + p.k0, p.klen, h_tag(c, p.inp_tag), TAGS_DETAIL_H);
    return c.smem;
  }
#endif
#ifdef AMK_BOUND_NO_PLAIN_STAGING
  // a bound (bench/variants.py --bound): a plain input (down's hidden row) taken as already in shared memory; with
  // its wait skipped too (AMK_BOUND_SKIP_WAITS=1), the most a down projection fused into gate_up could save
  return c.smem;
#endif
  stage_floats(c.smem, static_cast<const float*>(in.src) + p.k0, p.klen);
  return c.smem;
}

__device__ __forceinline__ int computed_rows(const MatvecParams& p) { return p.rows * (p.epi.pair_offset ? 2 : 1); }

// A k-split task of a join (matvec.<role>.reduce last_task), after its R computed rows' sums are in `acc` (shared
// memory, behind a barrier): store them as split p.join.split's partial sums, add 1 to the row block's arrival
// counter, and tell whether this task arrived last. The last one then holds in `acc` every split's sums added in
// split order from zero, as a reduce stage's EPILOGUE task would, and runs the epilogue; the others are done.
// The partial sums go through L2 only (st.cg / ld.cg): other SMs wrote them this step.
__device__ bool split_join(const Ctx& c, const MatvecParams& p, float* acc) {
#if AMK_USES_SPLIT_JOIN
  const SplitJoin& j = p.join;
  float* part = buf<float>(c, j.part) + j.part_off;
  store_split(part + (long long)j.split * j.stride + p.row0, acc, p.rows, p.epi.pair_offset);
  __shared__ int s_last;
  block_sync();
  if (threadIdx.x == 0) {
    __threadfence();  // every thread's sums, seen through the barrier, before the arrival (cumulativity)
    const unsigned before = atomicAdd(c.counters + j.arrivals, 1u);
    s_last = before + 1u == (unsigned)j.splits * c.epoch;
    if (s_last) __threadfence();
  }
  block_sync();
  if (!s_last) return false;
  sum_splits(part, j.splits, j.stride, p.row0, p.rows, p.epi.pair_offset, acc);
  block_sync();
#endif
  return true;
}

// One warp's share of a register-path matvec task as a flat stream of steps. The warp owns units
// u = warp + j * NWARPS (j < mine); unit u is chunk u % S of computed row u / S. NR units form a group; a
// group takes `iters` steps of AMK_LOADS_IN_FLIGHT vectors per unit per lane. Flat, so that the loads of the
// next step (of this group or the next) are in flight while this step computes, and the first step's
// loads can be issued before the task's dependencies are met.
struct MatvecWalk {
  const uint4* W;  // the weights from the task's first column on, as 16-byte vectors
  long long kvec;  // vectors per weight row
  int row0, rows, pair, sbits, per, mine, iters, steps;
  bool tail;  // a unit's last step runs past its end (per is not a multiple of a step's vectors)
  // Short rows (lpr > 0): a row's vectors take lpr <= AMK_LOADS_IN_FLIGHT / 2 loads a lane, so that a unit of one
  // row would leave most of a step's loads empty (an O task split over KV heads: 256 bf16 weights a row, one
  // load a lane of four). Where each warp has two rows or more, a unit is then rpu (2 <= rpu <=
  // AMK_LOADS_IN_FLIGHT / lpr) consecutive computed rows in one step: load k of a lane reads row k / lpr of the
  // unit at vector (k % lpr) * 32 + lane.
  int lpr, rpu, R;
};

__device__ __forceinline__ MatvecWalk matvec_walk(const Ctx& c, const MatvecParams& p) {
  MatvecWalk w;
  const int K = __ldg(c.cols + p.weight);
  w.W = reinterpret_cast<const uint4*>(buf<wtype>(c, p.weight) + p.k0);
  w.kvec = K / VEC;
  w.row0 = p.row0;
  w.rows = p.rows;
  w.pair = p.epi.pair_offset;
  const int R = computed_rows(p), nvec = p.klen / VEC, warp = threadIdx.x >> 5;
  w.R = R;
  // short rows where a warp would walk more than one of them a unit: rpu rows a unit, as many as a step's loads
  // hold and no more than the warps' share of the rows. Compiled in only where the program has such a task and
  // no global-softmax attention (AMK_USES_SHORT_ROWS, vm/abi.py): with the scores and values passes beside it, the
  // loop's registers made ptxas spill on a G=7 shape, and on every kernel it costs registers for nothing
  w.lpr = 0;
#if AMK_USES_SHORT_ROWS
  w.lpr = (nvec + 31) / 32;
  w.rpu = min(AMK_LOADS_IN_FLIGHT / w.lpr, (R + NWARPS * AMK_ROWS_IN_FLIGHT - 1) / (NWARPS * AMK_ROWS_IN_FLIGHT));
  if (w.rpu < 2) w.lpr = 0;
#endif
  if (w.lpr > 0) {
    w.sbits = 0;
    w.per = nvec;
    const int units = (R + w.rpu - 1) / w.rpu;
    w.mine = (units - warp + NWARPS - 1) / NWARPS;
    w.iters = 1;
    w.steps = (w.mine + AMK_ROWS_IN_FLIGHT - 1) / AMK_ROWS_IN_FLIGHT;
    w.tail = true;
    return w;
  }
  w.rpu = 1;
  const int S = row_chunks(R, nvec);
  w.sbits = __ffs(S) - 1;
  w.per = nvec >> w.sbits;
  const int units = R << w.sbits;
  w.mine = (units - warp + NWARPS - 1) / NWARPS;
  w.iters = (w.per + AMK_LOADS_IN_FLIGHT * 32 - 1) / (AMK_LOADS_IN_FLIGHT * 32);
  w.steps = ((w.mine + AMK_ROWS_IN_FLIGHT - 1) / AMK_ROWS_IN_FLIGHT) * w.iters;
  w.tail = w.per % (AMK_LOADS_IN_FLIGHT * 32) != 0;
  return w;
}

// A group's units as this lane sees them: where its weight vectors start, where the matching staged input
// starts (in floats), and whether the warp owns the unit. Computed once a group, so that a step's loads are
// a pointer plus a constant.
struct WalkGroup {
  const uint4* w[AMK_ROWS_IN_FLIGHT];
  int x[AMK_ROWS_IN_FLIGHT];
  bool live[AMK_ROWS_IN_FLIGHT];
};

__device__ __forceinline__ WalkGroup walk_group(const MatvecWalk& w, int g) {
  WalkGroup q;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) {
    const int j = g * AMK_ROWS_IN_FLIGHT + r, u = warp + j * NWARPS;
    if (w.lpr > 0) {  // short rows: x holds the unit's first computed row
      q.live[r] = j < w.mine;
      q.w[r] = w.W;
      q.x[r] = u * w.rpu;
      continue;
    }
    const int cr = u >> w.sbits, ch = u & ((1 << w.sbits) - 1);
    const int row = cr < w.rows ? w.row0 + cr : w.pair + w.row0 + (cr - w.rows);
    q.live[r] = j < w.mine;
    q.w[r] = w.W + row * w.kvec + ch * w.per + lane;
    q.x[r] = (ch * w.per + lane) * VEC;
  }
  return q;
}

// Does this lane's load k of step `it` exist? Only a unit's last step can run past its end.
__device__ __forceinline__ bool walk_in_unit(const MatvecWalk& w, int it, int k) {
  return (it * AMK_LOADS_IN_FLIGHT + k) * 32 + (int)(threadIdx.x & 31) < w.per;
}

// Issue the loads of step `it` of group q; vectors that do not exist read nothing.
__device__ __forceinline__ void walk_load(const MatvecWalk& w, const WalkGroup& q, int it,
                                          uint4 (&raw)[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT]) {
  const bool whole = !w.tail || it + 1 < w.iters;
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) {
    const uint4* src = q.w[r] + it * AMK_LOADS_IN_FLIGHT * 32;
    if (q.live[r] && whole) {  // uniform: the common step loads without a test a vector
#pragma unroll
      for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) raw[r][k] = ld_stream(src + k * 32);
    } else {
#pragma unroll
      for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k)
        raw[r][k] = q.live[r] && walk_in_unit(w, it, k) ? ld_stream(src + k * 32) : make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// Short rows: where load k of this lane reads in group q's unit r (the computed row and the vector in it), and
// whether it exists.
__device__ __forceinline__ bool short_load_at(const MatvecWalk& w, const WalkGroup& q, int r, int k, int& cr, int& v) {
  const int j = k / w.lpr;
  cr = q.x[r] + j;
  v = (k - j * w.lpr) * 32 + (int)(threadIdx.x & 31);
  return q.live[r] && j < w.rpu && cr < w.R && v < w.per;
}

__device__ __forceinline__ void short_load(const MatvecWalk& w, const WalkGroup& q,
                                           uint4 (&raw)[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT]) {
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r)
#pragma unroll
    for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) {
      int cr, v;
      const bool ok = short_load_at(w, q, r, k, cr, v);
      const int row = cr < w.rows ? w.row0 + cr : w.pair + w.row0 + (cr - w.rows);
      raw[r][k] = ok ? ld_stream(w.W + (long long)row * w.kvec + v) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// Short rows: the dots of group q's loads, each unit's rows summed over their loads and lanes into out[row].
__device__ __forceinline__ void short_dot(const MatvecWalk& w, const WalkGroup& q, const float* xs,
                                          const uint4 (&raw)[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT], float* out) {
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) {
    if (!q.live[r]) continue;  // warp-uniform
    float a[AMK_LOADS_IN_FLIGHT];
#pragma unroll
    for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) {
      int cr, v;
      a[k] = short_load_at(w, q, r, k, cr, v) ? dot_vec(raw[r][k], xs + v * VEC, 0.f) : 0.f;
    }
    // a row's loads are k = j * lpr .. j * lpr + lpr - 1: fold each into its first, from the back
#pragma unroll
    for (int k = AMK_LOADS_IN_FLIGHT - 1; k > 0; --k)
      if (k % w.lpr != 0) a[k - 1] += a[k];
#pragma unroll
    for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) {
      const int j = k / w.lpr, cr = q.x[r] + j;
      if (k % w.lpr != 0 || j >= w.rpu || cr >= w.R) continue;  // warp-uniform
      const float sum = warp_sum(a[k]);
      if ((threadIdx.x & 31) == 0) out[cr] = sum;
    }
  }
}

__device__ __forceinline__ void walk_dot(const MatvecWalk& w, const WalkGroup& q, int it, const float* xs,
                                         const uint4 (&raw)[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT],
                                         float (&acc)[AMK_ROWS_IN_FLIGHT]) {
  const bool whole = !w.tail || it + 1 < w.iters;  // uniform: one branch a step, none a vector
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) {
    if (!q.live[r]) continue;  // warp-uniform
    const float* xp = xs + q.x[r] + it * AMK_LOADS_IN_FLIGHT * 32 * VEC;
    if (whole) {
#pragma unroll
      for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) acc[r] = dot_vec(raw[r][k], xp + k * 32 * VEC, acc[r]);
    } else {
#pragma unroll
      for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k)  // the staged input past the slice may hold anything (NaN poison)
        if (walk_in_unit(w, it, k)) acc[r] = dot_vec(raw[r][k], xp + k * 32 * VEC, acc[r]);
    }
  }
}

// Register-path matvec. The first step's weight loads are issued before `wait_deps` (weights do not depend
// on activations), so their latency hides behind the dependency wait and the input staging; the polling warp
// issues its own right after the wait, before the staging. After that the next step's loads are always in
// flight while this one computes. Returns false when the step must stop.
template <class WaitDeps>
__device__ bool op_matvec(const Ctx& c, const MatvecParams& p, WaitDeps&& wait_deps) {
  const MatvecWalk w = matvec_walk(c, p);
  uint4 cur[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT], nxt[AMK_ROWS_IN_FLIGHT][AMK_LOADS_IN_FLIGHT];
  WalkGroup qc = walk_group(w, 0), qn = qc;
  const bool poller = (threadIdx.x >> 5) == (POLL_THREAD >> 5);
  auto first_load = [&]() {
#if AMK_USES_SHORT_ROWS
    if (w.lpr > 0) short_load(w, qc, cur);
    else
#endif
      walk_load(w, qc, 0, cur);
  };
  if (w.steps > 0 && !poller) first_load();
  // every warp's, the poller's too: loaded after the wait they queue behind its weight loads, and the staging's
  // normalisation waits for them (qkv's and gate_up's staging 1.1-1.6 us longer a task, llama-3.2-1b)
  TaskInputs in;
  load_task_inputs(c, p, in);
  if (!wait_deps()) return false;
  if (w.steps > 0 && poller) first_load();
  PHASE_START();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int R = computed_rows(p), S = 1 << w.sbits;
  float* xs = stage_input(c, p, (int)(w.kvec * VEC), in);  // the walk's rows are whole 16-byte vectors: K
  float* acc_s = xs + p.klen + ((4 - (p.klen & 3)) & 3);
  float* part = S > 1 ? acc_s + ((R + 3) & ~3) : acc_s;  // per-unit partial sums when rows are split
  block_sync();
  PHASE(0);
#if AMK_USES_SHORT_ROWS
  if (w.lpr > 0) {  // short rows: one step a group, S == 1 (acc_s is part)
    for (int s = 0; s < w.steps; ++s) {
      if (s + 1 < w.steps) {
        qn = walk_group(w, s + 1);
        short_load(w, qn, nxt);
      }
      short_dot(w, qc, xs, cur, acc_s);
#pragma unroll
      for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r)
#pragma unroll
        for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) cur[r][k] = nxt[r][k];
      qc = qn;
    }
  }
#endif
  float acc[AMK_ROWS_IN_FLIGHT];
#pragma unroll
  for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) acc[r] = 0.f;
  int g = 0, it = 0;
  for (int s = 0; s < (w.lpr > 0 ? 0 : w.steps); ++s) {
    const int ng = it + 1 == w.iters ? g + 1 : g, nit = it + 1 == w.iters ? 0 : it + 1;
    if (s + 1 < w.steps) {
      if (nit == 0) qn = walk_group(w, ng);
      walk_load(w, qn, nit, nxt);
    }
    walk_dot(w, qc, it, xs, cur, acc);
    if (nit == 0) {  // the group's units are complete
#pragma unroll
      for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r) {
        const float sum = warp_sum(acc[r]);
        const int j = g * AMK_ROWS_IN_FLIGHT + r;
        if (lane == 0 && j < w.mine) part[warp + j * NWARPS] = sum;
        acc[r] = 0.f;
      }
    }
#pragma unroll
    for (int r = 0; r < AMK_ROWS_IN_FLIGHT; ++r)
#pragma unroll
      for (int k = 0; k < AMK_LOADS_IN_FLIGHT; ++k) cur[r][k] = nxt[r][k];
    qc = qn;
    g = ng;
    it = nit;
  }
  block_sync();
  PHASE(1);
  if (S > 1) {  // chunks of a row summed in a fixed order
    for (int r = tid; r < R; r += AMK_THREADS) {
      float s = 0.f;
      for (int k = 0; k < S; ++k) s += part[r * S + k];
      acc_s[r] = s;
    }
    block_sync();
  }
  if (p.join.splits > 0 && !split_join(c, p, acc_s)) {
    PHASE(2);
    return true;
  }
  epilogue(c, p.epi, p.row0, p.rows, acc_s);
  PHASE(2);
  return true;
}

__device__ void op_epilogue(const Ctx& c, const EpilogueTaskParams& p) {
  float* acc = c.smem;
  sum_splits(buf<float>(c, p.src) + p.src_off, p.splits, p.stride, p.row0, p.rows, p.epi.pair_offset, acc);
  block_sync();
  epilogue(c, p.epi, p.row0, p.rows, acc);
}

