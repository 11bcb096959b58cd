// ---- weight pipeline: a producer warp streams matvec weights through a ring of shared-memory pages -----
// With pipeline.pages > 0 the block's last warp is a producer. One lane walks the SM's queue ahead of the
// consumer warps and copies the weight tile of every matvec task into the next free page with a bulk copy
// (cp.async.bulk, sm_90+) that completes on the page's `full` mbarrier. Weights never depend on activations,
// so a task's pages load before its dependency wait, and the producer runs on across task and stage
// boundaries, up to AMK_PIPELINE_DEPTH tasks ahead of the consumers, as far as free pages allow, with at most
// AMK_PAGES_INFLIGHT copies in flight (pipeline.inflight_kb). Each consumer warp arrives on a page's `empty`
// mbarrier as soon as it has read it; the producer refills a page once every consumer warp has. There is no
// block-wide barrier per page.
#if AMK_PAGES > 0
#define PAGE_BYTES AMK_PAGE_BYTES
#define PAGE_ELEMS (PAGE_BYTES / (int)sizeof(wtype))
#define UNIT_VECS 128  // 16-byte vectors one (row, chunk) unit aims at: four per lane, loaded together
// With 16-bit weights the consumers take a page's dot on tensor cores, one mma.m16n8k16 a 256-byte run of two
// rows (mma_16816), where a CUDA-core loop spends about 26 instructions a 16-byte vector (two shared loads, 16
// unpacks, 8 FMAs): llama-3.2-1b with 10 pages of 16 KiB, 1179.2 against 1191.3 us a step (verified, two rounds,
// one H100; bench/results/20261205-1310_h100_pages_on_tensor_cores.json). fp32 weights keep the CUDA cores.
#define PAGE_MMA (AMK_DTYPE != DT_F32)

// How a matvec task's weight tile is cut into pages, the same in the producer and the consumers (and in
// schedule/smem.py page_partials). Whole rows of the slice when they fit a page (rpp rows a page), else each row
// cut into cpr pieces of pw columns: page-wide, or on tensor cores half a page wide, so that a page holds two
// rows' pieces over the same columns (a product takes two rows against one run of the input). Inside a page, a
// row's piece is cut into S chunks of `per` vectors; (page, row, chunk) is a unit (on tensor cores a pair of
// rows and a chunk), and the units of a task go round the consumer warps in order, so that pages of few rows
// still use every warp.
struct PageTiling {
  int R;      // computed rows (main rows, then the paired rows)
  int rpp;    // rows a page
  int cpr;    // pages a row
  int pw;     // columns a page
  int pages;  // pages of the task
  int S;      // chunks a (row, page)
  int per;    // vectors a chunk
};

__device__ __forceinline__ PageTiling page_tiling(const MatvecParams& p) {
  PageTiling t;
  t.R = computed_rows(p);
  const int wide = PAGE_MMA ? PAGE_ELEMS / 2 : PAGE_ELEMS;  // the widest rows kept whole
  if (p.klen <= wide) {
    t.rpp = min(t.R, PAGE_ELEMS / p.klen);
    t.pw = p.klen;
  } else {
    t.rpp = min(t.R, PAGE_MMA ? 2 : 1);
    t.pw = wide;
  }
  t.cpr = (p.klen + t.pw - 1) / t.pw;
  t.pages = (t.R + t.rpp - 1) / t.rpp * t.cpr;
  const int nvec = t.pw / VEC;
  t.S = max(1, nvec / UNIT_VECS);
  t.per = (nvec + t.S - 1) / t.S;
  return t;
}

// Page q of a task: computed rows [r0, r0 + nr) x columns [c0, c0 + nc) of the slice, row-major.
struct PagePiece { int r0, nr, col, c0, nc; };

__device__ __forceinline__ PagePiece page_piece(const PageTiling& t, const MatvecParams& p, int q) {
  PagePiece g;
  const int rb = q / t.cpr;
  g.col = q - rb * t.cpr;
  g.r0 = rb * t.rpp;
  g.nr = min(t.rpp, t.R - g.r0);
  g.c0 = g.col * t.pw;
  g.nc = min(t.pw, p.klen - g.c0);
  return g;
}

// Shared state of the pipeline (static shared memory).
struct PipeState {
  unsigned long long full[AMK_PAGES];   // completed by the bytes of the page's copy
  unsigned long long empty[AMK_PAGES];  // completed by one arrival of every consumer warp
  volatile int cur;    // queue index of the task the consumers are on
  volatile int abort;  // the consumers left the step early: the producer stops issuing
};

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// acc + the dot of a 16-byte weight vector with a 16-byte input vector of the same dtype (fp32 pages).
__device__ __forceinline__ float dot_pair(const uint4& w, const uint4& x, float acc) {
  float fw[VEC], fx[VEC];
  unpack(w, fw);
  unpack(x, fx);
#pragma unroll
  for (int e = 0; e < VEC; ++e) acc = fmaf(fw[e], fx[e], acc);
  return acc;
}

// One 16-byte vector of a page. Explicit: through a reference, the compiler unpacks a page vector with eight
// 2-byte shared loads, each with a 4-way bank conflict.
__device__ __forceinline__ uint4 lds128(const uint4* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(smem_u32(p)));
  return v;
}

#if PAGE_MMA
__device__ __forceinline__ uint2 lds64(const void* p) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(smem_u32(p)));
  return v;
}

// d += A B for one m16n8k16 product with fp32 accumulators. The k order inside a product is free as long as A
// and B agree, so A is a 16-byte row vector a lane as loaded: lane l holds vector (l & 15) of row l >> 4 of the
// step's 16 vectors, elements 0, 1, 4, 5 as A row g = l >> 2 and 2, 3, 6, 7 as row g + 8. B column n = l >> 2
// holds those elements of input vector 4 (n >> 1) + (l & 3) (the first four for even n, the others for odd): the
// 8-byte half n & 1 of that vector where the input is stored with each vector's elements in the order 0 1 4 5
// 2 3 6 7 (page_mma_slot). So D[g][2b] + D[g + 8][2b + 1] with b = g & 3 is row g >> 2's dot over vectors
// 4b .. 4b + 3, held by the lane with l & 3 == b (page_mma_sum). Fragment layouts: PTX ISA, "Matrix Fragments
// for mma.m16n8k16 with floating point type".
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint4& a, const uint2& b) {
#if AMK_DTYPE == DT_BF16
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y));
#endif
}

// Where input element k is stored for mma_16816's B halves: bits 1 and 2 of k swapped.
__device__ __forceinline__ int page_mma_slot(int k) { return (k & ~6) | ((k & 2) << 1) | ((k & 4) >> 1); }

// The dot of the unit's row (lane >> 4) from the accumulators of mma_16816: in lanes 0 and 16.
__device__ __forceinline__ float page_mma_sum(const float (&d)[4]) {
  const int lane = threadIdx.x & 31;
  float s = (lane & 3) == ((lane >> 2) & 3) ? d[0] + d[3] : 0.f;
#pragma unroll
  for (int o = 1; o < 16; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}
#endif

__device__ __forceinline__ bool mbar_test(unsigned bar, unsigned parity) {
  unsigned ok;
  asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
  return ok != 0;
}

__device__ void pipe_init(PipeState& ps, int begin) {
  for (int s = 0; s < AMK_PAGES; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_u32(&ps.full[s])) : "memory");
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_u32(&ps.empty[s])), "n"(NWARPS) : "memory");
  }
  ps.cur = begin;
  ps.abort = 0;
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// A bounded wait for the phase of `bar` with `parity` to complete. False on a time-out (recorded as the
// task's error) or when another block has already failed; the caller carries on so that the warps of the
// block stay in step, and the next dependency wait stops the step.
__device__ bool page_wait(unsigned bar, unsigned parity, int* control, int task, long long timeout_ns) {
  if (mbar_test(bar, parity)) return true;
  unsigned long long start = 0;
  for (unsigned spins = 1;; ++spins) {
    if (mbar_test(bar, parity)) return true;
    if ((spins & 255u) == 0 && !keep_spinning(control, start, timeout_ns, task, -1)) return false;
  }
}

__device__ __forceinline__ void bulk_copy(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
#if AMK_WEIGHT_EVICT_FIRST
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar), "l"(weight_policy()) : "memory");
#else
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}

// Producer, one lane: the copies of page q of a task into `dst`, completing on `bar`. Whole rows of the full
// width are two runs at most (the main rows, then the paired rows); anything else is a copy a row.
__device__ __forceinline__ void issue_page(const MatvecParams& p, const PageTiling& t, const wtype* W, long long K,
                                           int q, unsigned dst, unsigned bar) {
  const PagePiece g = page_piece(t, p, q);
  const unsigned row_bytes = g.nc * (unsigned)sizeof(wtype);
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(g.nr * row_bytes) : "memory");
  const wtype* base = W + p.k0 + g.c0;
  if (g.nc == K) {
    const int rows = p.rows;
    const int n1 = max(0, min(g.nr, rows - g.r0));  // main rows in this page
    if (n1 > 0) bulk_copy(dst, base + ((long long)p.row0 + g.r0) * K, n1 * row_bytes, bar);
    if (g.nr > n1) {
      const long long first = (long long)p.epi.pair_offset + p.row0 + (g.r0 + n1 - rows);
      bulk_copy(dst + n1 * row_bytes, base + first * K, (g.nr - n1) * row_bytes, bar);
    }
    return;
  }
  for (int k = 0; k < g.nr; ++k) {
    const int lr = g.r0 + k;
    const long long row = lr < p.rows ? (long long)p.row0 + lr : (long long)p.epi.pair_offset + p.row0 + (lr - p.rows);
    bulk_copy(dst + k * row_bytes, base + row * K, row_bytes, bar);
  }
}

// The producer lane's whole step: every matvec task of the queue [begin, end), in order. Before it reuses a
// page it waits for the page's release; before it starts a task it waits until the consumers are no more than
// AMK_PIPELINE_DEPTH tasks behind. On the consumers' early exit it stops issuing; either way it leaves only
// once every copy it issued has landed (no copy may write into the shared memory of a block that has left).
__device__ void produce(const Ctx& c, const int* __restrict__ instrs, int begin, int end, PipeState& ps,
                        char* ring, int* control, long long timeout_ns) {
  int seq = 0;
  for (int i = begin; i < end && !ps.abort; ++i) {
    const int* ins = instrs + (long long)i * AMK_INSTR_WORDS;
    if (__ldg(ins) != OP_MATVEC) continue;
    while (i - ps.cur > AMK_PIPELINE_DEPTH && !ps.abort) __nanosleep(64);
    MatvecParams p;
    int* pw = reinterpret_cast<int*>(&p);
#pragma unroll
    for (int k = 0; k < (int)(sizeof(MatvecParams) / sizeof(int)); ++k) pw[k] = __ldg(ins + AMK_PARAM_BASE + k);
    const PageTiling t = page_tiling(p);
    const wtype* W = buf<wtype>(c, p.weight);
    const long long K = __ldg(c.cols + p.weight);
    for (int q = 0; q < t.pages; ++q, ++seq) {
      const int slot = seq % AMK_PAGES;
      if (seq >= AMK_PAGES) {  // the consumers' release of the page's previous use
        const unsigned bar = smem_u32(&ps.empty[slot]), parity = ((seq / AMK_PAGES) - 1) & 1;
        // a back-off between polls: a tight loop of barrier tests and flag loads takes shared-memory issue
        // slots from the consumers, whose page reads bound this pipeline
        while (!mbar_test(bar, parity)) {
          if (ps.abort) goto drain;
          __nanosleep(32);
        }
      }
#if AMK_PAGES_INFLIGHT < AMK_PAGES
      // at most AMK_PAGES_INFLIGHT copies in flight: a deeper queue of this SM's weight reads sits ahead of the
      // latency-bound loads of the stage boundaries (an input's staging, O's combine). llama-3.2-1b, 10 pages of
      // 16 KiB, one H100: 1083.4 us with two copies in flight, 1161.1 with all ten; one copy 1.157x two
      // (bench/results/20261206-0815_h100_pages_copies_in_flight.json)
      if (seq >= AMK_PAGES_INFLIGHT) {
        const int s = seq - AMK_PAGES_INFLIGHT;
        const unsigned bar = smem_u32(&ps.full[s % AMK_PAGES]), parity = (s / AMK_PAGES) & 1;
        while (!mbar_test(bar, parity)) {
          if (ps.abort) goto drain;
          __nanosleep(32);
        }
      }
#endif
      issue_page(p, t, W, K, q, smem_u32(ring + (long long)slot * PAGE_BYTES), smem_u32(&ps.full[slot]));
    }
  }
drain:
  for (int s = max(0, seq - AMK_PAGES); s < seq; ++s)
    page_wait(smem_u32(&ps.full[s % AMK_PAGES]), (s / AMK_PAGES) & 1, control, -1, timeout_ns);
}

// Consumers: one matvec task from the pages. `tail` counts the pages consumed this step (every consumer thread
// keeps the same count). Every warp waits for every page of the task, even one where it has no unit: a warp
// may release a page only after the page's copy has landed, or its release could count towards the page's
// previous use. Partial sums go to one slot per unit and are summed in a fixed order at the end.
template <class WaitDeps>
__device__ bool op_matvec_paged(const Ctx& c, const MatvecParams& p, WaitDeps&& wait_deps, PipeState& ps,
                                const char* ring, int& tail, int* control, int task, long long timeout_ns) {
  TaskInputs in;
  load_task_inputs(c, p, in);
  if (!wait_deps()) return false;
  PHASE_START();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const PageTiling t = page_tiling(p);
  float* xs = stage_input(c, p, __ldg(c.cols + p.weight), in);
  float* acc = xs + p.klen + ((4 - (p.klen & 3)) & 3);
  float* part = acc + ((t.R + 3) & ~3);
#if PAGE_MMA
  // The input again in the weights' dtype, where every matvec input is exact (the staged values are rounded
  // to it), as the products' B operand takes it (page_mma_slot)
  wtype* xw = reinterpret_cast<wtype*>(part + ((t.R * t.cpr * t.S + 3) & ~3));
  block_sync();
  for (int k = tid; k < p.klen; k += AMK_THREADS) xw[page_mma_slot(k)] = from_f(xs[k]);
  const uint4* xv = reinterpret_cast<const uint4*>(xw);
#else
  const uint4* xv = reinterpret_cast<const uint4*>(xs);
#endif
  block_sync();
  PHASE(0);
#if PAGE_MMA
  const int upp = ((t.rpp + 1) >> 1) * t.S;  // unit slots a page: a unit is a chunk of a pair of rows
#else
  const int upp = t.rpp * t.S;  // unit slots a page
#endif
  int u = warp;                 // this warp's next unit, counted over the task
  for (int q = 0; q < t.pages; ++q, ++tail) {
    const int slot = tail % AMK_PAGES;
    const PagePiece g = page_piece(t, p, q);
#if AMK_TRACE
    const long long w0 = clock64();
#endif
    page_wait(smem_u32(&ps.full[slot]), (tail / AMK_PAGES) & 1, control, task, timeout_ns);
#if AMK_TRACE
    if (tid == 0) c.prof[3] += clock64() - w0;
#endif
    const uint4* page = reinterpret_cast<const uint4*>(ring + (long long)slot * PAGE_BYTES);
#if PAGE_MMA
    const int nv = g.nc / VEC, lim = q * upp + ((g.nr + 1) >> 1) * t.S;
    for (; u < lim; u += NWARPS) {
      const int pr = (u - q * upp) / t.S, ch = (u - q * upp) - pr * t.S;
      const int v1 = min(nv, (ch + 1) * t.per), lr = 2 * pr + (lane >> 4);
      const bool row_ok = lr < g.nr;
      const uint4* row = page + (row_ok ? lr : 2 * pr) * nv;
      const uint4* x = xv + g.c0 / VEC;
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      const uint4* ap = row + ch * t.per + (lane & 15);
      const uint2* bp = reinterpret_cast<const uint2*>(x + ch * t.per + 4 * (lane >> 3) + (lane & 3)) + ((lane >> 2) & 1);
      const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
      int v0 = ch * t.per;
#pragma unroll 2
      for (; v0 + 16 <= v1; v0 += 16, ap += 16, bp += 32) mma_16816(d, row_ok ? lds128(ap) : zero, lds64(bp));
      if (v0 < v1) {  // a ragged last step: past the chunk both stay zero (the staged input may hold NaN poison)
        const bool in = v0 + (lane & 15) < v1 && row_ok, in_b = v0 + 4 * (lane >> 3) + (lane & 3) < v1;
        mma_16816(d, in ? lds128(ap) : zero, in_b ? lds64(bp) : make_uint2(0u, 0u));
      }
      const float a = page_mma_sum(d);
      if ((lane & 15) == 0 && row_ok) part[((g.r0 + lr) * t.cpr + g.col) * t.S + ch] = a;
    }
#else
    const int nv = g.nc / VEC, lim = q * upp + g.nr * t.S;
    for (; u < lim; u += NWARPS) {
      const int lr = (u - q * upp) / t.S, ch = (u - q * upp) - lr * t.S;
      const int v1 = min(nv, (ch + 1) * t.per);
      const uint4* row = page + lr * nv;
      const uint4* x = xv + g.c0 / VEC;
      float a = 0.f;
#pragma unroll 4
      for (int v = ch * t.per + lane; v < v1; v += 32) a = dot_pair(lds128(row + v), lds128(x + v), a);
      a = warp_sum(a);
      if (lane == 0) part[((g.r0 + lr) * t.cpr + g.col) * t.S + ch] = a;
    }
#endif
    __syncwarp();
    if (lane == 0) asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(smem_u32(&ps.empty[slot])) : "memory");
  }
  block_sync();
  PHASE(1);
  const int n = t.cpr * t.S;
  for (int r = tid; r < t.R; r += AMK_THREADS) {
    float s = 0.f;
    for (int k = 0; k < n; ++k) s += part[r * n + k];
    acc[r] = s;
  }
  block_sync();
  if (p.join.splits > 0 && !split_join(c, p, acc)) {
    PHASE(2);
    return true;
  }
  epilogue(c, p.epi, p.row0, p.rows, acc);
  PHASE(2);
  return true;
}
#endif
