// AMK persistent decode megakernel: synchronisation and the main loop. The loader concatenates base.cuh,
// epilogue.cuh, matvec.cuh, attention.cuh, attention_partitions.cuh, pipeline.cuh and this file after the
// generated ABI header.
// ---- synchronisation ---------------------------------------------------------------------------
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(p) : "memory");
}

// Counters this block has already seen satisfied in this step: a later task with the same wait skips the
// round trip to L2. The polling thread only. It lives in shared memory: in registers it makes the compiler
// spill, and in local memory the weight stream would evict it from L1, so that each wait began with L2 round
// trips.
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

#if defined(AMK_BOUND_SKIP_WAITS) || defined(AMK_BOUND_TAIL)
// The kind of task a bound's mask names: 1 a matvec on a plain input (the residual or the MLP's hidden row), 2 a
// matvec on attention partitions (O), 4 every other task.
__device__ __forceinline__ int bound_kind(const int* ins) {
  if (ins[0] != OP_MATVEC) return 4;
  return reinterpret_cast<const MatvecParams*>(ins + AMK_PARAM_BASE)->inp_parts > 0 ? 2 : 1;
}
#endif

// The polling thread only. Returns false when the step must stop (this wait timed out, or another block failed).
__device__ bool wait_all(const int* ins, const unsigned* counters, const int* producers, unsigned epoch,
                         int* control, long long timeout_ns, SeenCounters& seen) {
#ifdef AMK_BOUND_NO_WAIT
  // a bound, not a schedule (bench/variants.py --bound): every task runs as soon as its block reaches it, so
  // the step's time is what the task bodies alone cost with synchronisation free; the output is wrong
  return true;
#endif
#ifdef AMK_BOUND_SKIP_WAITS
  // a bound (bench/variants.py --bound): the waits of the task kinds of the mask (bound_kind) skipped
  if ((AMK_BOUND_SKIP_WAITS) & bound_kind(ins)) return true;
#endif
  const int n = ins[2];
  for (int w = 0; w < n; ++w) {
    const int cid = ins[AMK_WAIT_BASE + 2 * w];
    int count = ins[AMK_WAIT_BASE + 2 * w + 1];
#ifdef AMK_BOUND_TAIL
    // a bound (bench/variants.py --bound): a wait on many producers (16 or more) of the task kinds of mask
    // AMK_BOUND_TAIL_KIND (bound_kind) met once AMK_BOUND_TAIL percent of them have signalled: what the stage's
    // slowest tasks cost the step
    if (((AMK_BOUND_TAIL_KIND) & bound_kind(ins)) && count >= 16) count = (count * (AMK_BOUND_TAIL) + 99) / 100;
#endif
    const unsigned target = (unsigned)producers[cid] * (epoch - 1u) + (unsigned)count;
    if (seen.covers(cid, target)) continue;
    unsigned long long start = 0;
    unsigned spins = 0;
    unsigned v;
    while ((int)((v = ld_acquire(counters + cid)) - target) < 0) {
      // the stop flag every 8 polls, not after each: its load would halve how often the counter is sampled
      // (tinyllama-1.1b shape 0.5% faster, bench/results/20261203-1326_h200_poll_and_staging_probes.json)
      ++spins;
      if ((spins & 7u) == 0 && *((volatile int*)(control + CTRL_ERR)) != 0) return false;
      if ((spins & 63u) == 0) {
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

#ifndef AMK_L2_PREFETCH_KB
#define AMK_L2_PREFETCH_KB 0
#endif

// Start streaming an instruction's weights into L2 before its dependencies are met (one warp): all of them,
// or the first AMK_L2_PREFETCH_KB KiB in the order the task reads them (its prefetch ranges in order).
__device__ void prefetch_weights(const Ctx& c, const int* ins, int lane) {
  long long budget = AMK_L2_PREFETCH_KB > 0 ? 1024ll * AMK_L2_PREFETCH_KB : (1ll << 62);
  for (int k = 0; k < AMK_MAX_PREFETCH && budget > 0; ++k) {
    const int bid = ins[AMK_PREFETCH_BASE + 3 * k];
    if (bid < 0) continue;
    const char* base = reinterpret_cast<const char*>(c.bufs[bid]) + (long long)ins[AMK_PREFETCH_BASE + 3 * k + 1] * sizeof(wtype);
    const long long bytes = min(budget, (long long)ins[AMK_PREFETCH_BASE + 3 * k + 2] * sizeof(wtype));
    budget -= bytes;
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

extern "C" __global__ void __launch_bounds__(AMK_BLOCK_THREADS, 1)
amk_megakernel(const int* __restrict__ instrs, const int* __restrict__ qstarts, const unsigned long long* __restrict__ bufs,
               const int* __restrict__ cols, unsigned* counters, const int* __restrict__ producers, int* control,
               long long timeout_ns, unsigned long long* trace) {
  extern __shared__ __align__(128) float smem[];  // 128: bulk copies into the pages stream at full rate only into 128-byte aligned pages
  __shared__ int s_ins[2][AMK_INSTR_WORDS];
  __shared__ float s_red[64];
  __shared__ int s_stop;
#if AMK_TRACE
  __shared__ unsigned long long s_ready;  // the time the poll saw the current task's dependencies met
#endif
  __shared__ unsigned long long s_prof[4];
  __shared__ SeenCounters seen;
  const int tid = threadIdx.x;
  Ctx c;
  c.bufs = bufs;
  c.cols = cols;
  c.smem = smem;
  c.red = s_red;
  c.prof = s_prof;
  if (tid < 4) s_prof[tid] = 0;
  c.pos = __ldcg(reinterpret_cast<const int*>(bufs[AMK_POS_BUF]));
  if (c.pos < 0 || c.pos >= AMK_MAX_SEQ) {  // its K/V rows would land outside the cache: run nothing
    if (tid == 0 && atomicCAS(control + CTRL_ERR, 0, ERR_BAD_POSITION) == 0) {
      control[CTRL_ERR_TASK] = -1;
      control[CTRL_ERR_DETAIL] = c.pos;
    }
    return;
  }
  const unsigned epoch = (unsigned)__ldcg(control + CTRL_EPOCH);
  c.counters = counters;
  c.epoch = epoch;
  c.control = control;
  c.timeout_ns = timeout_ns;
  const int begin = qstarts[blockIdx.x], end = qstarts[blockIdx.x + 1];
  if (tid == 0) seen.clear();
#if AMK_PAGES > 0
  __shared__ __align__(8) PipeState ps;
  char* ring = reinterpret_cast<char*>(smem) + AMK_RING_OFFSET;
  if (tid == 0) pipe_init(ps, begin);
  int tail = 0;  // pages consumed this step
#define LEAVE_EARLY() do { if (tid == 0) ps.abort = 1; return; } while (0)
#else
#define LEAVE_EARLY() return
#endif
  if (begin < end)
    for (int k = tid; k < AMK_INSTR_WORDS; k += AMK_BLOCK_THREADS) s_ins[0][k] = instrs[(long long)begin * AMK_INSTR_WORDS + k];
  stage_rope_row(c, tid);
  __syncthreads();  // the last barrier of the whole block: from here the producer warp runs on its own
#if AMK_PAGES > 0
  if (tid >= AMK_THREADS) {
    if (tid == AMK_THREADS) produce(c, instrs, begin, end, ps, ring, control, timeout_ns);
    return;
  }
#endif
  int executed = 0;
#if AMK_PAGES == 0 && AMK_PIPELINE_DEPTH > 0
  int prefetched = begin;  // instructions whose weights the L2 prefetch has already asked for
#endif
  for (int i = begin; i < end; ++i) {
    const int* ins = s_ins[(i - begin) & 1];
#if AMK_TRACE
    unsigned long long t0 = global_ns(), t1 = t0;
    const long long c0 = clock64();  // the cycle count beside the timer: the host converts phase cycles with it
#endif
    // the next instruction's words arrive while this one runs
    const int nxt = (tid < AMK_INSTR_WORDS && i + 1 < end) ? instrs[(long long)(i + 1) * AMK_INSTR_WORDS + tid] : 0;
    const void* prm = ins + AMK_PARAM_BASE;
#if AMK_TAGGED
    if (tid == 0) s_task = ins[1];  // read after the task's first barrier
#endif
#if AMK_PAGES > 0
    if (tid == 0) ps.cur = i;  // the producer may now run AMK_PIPELINE_DEPTH tasks past this one
#elif AMK_PIPELINE_DEPTH > 0
    // weights do not depend on activations: stream the next instructions' weights into L2 before waiting
    if (tid < 32) {
      const int upto = min(end, i + 1 + AMK_PIPELINE_DEPTH);
      for (int k = max(prefetched, i + 1); k < upto; ++k) prefetch_weights(c, instrs + (long long)k * AMK_INSTR_WORDS, tid);
    }
    prefetched = max(prefetched, min(end, i + 1 + AMK_PIPELINE_DEPTH));
#endif
    // The polling thread waits for the task's dependencies; every consumer thread then sees them met (or the
    // stop flag). Its warp reconverges before the barrier: bar.sync is warp-aligned, and a warp whose other lanes
    // reached it while the poll still ran could count as arrived.
    // A task is ready when the poll sees its dependencies met; the polling thread takes that time itself, since
    // a timer read of another thread after the barrier may be scheduled before it.
    auto wait_deps = [&]() -> bool {
      if (tid == POLL_THREAD) {
        s_stop = wait_all(ins, counters, producers, epoch, control, timeout_ns, seen) ? 0 : 1;
#if AMK_TRACE
        s_ready = global_ns();
#endif
      }
      __syncwarp();
      block_sync();
#if AMK_TRACE
      t1 = s_ready;
#endif
      return s_stop == 0;
    };
    // Only the opcodes this program uses are compiled in (AMK_USES_*); any other is a bad instruction.
#if AMK_USES_MATVEC
    if (ins[0] == OP_MATVEC) {  // its weights load before it waits: in registers, or into the pages
#if AMK_PAGES > 0
      if (!op_matvec_paged(c, *reinterpret_cast<const MatvecParams*>(prm), wait_deps, ps, ring, tail, control, ins[1],
                           timeout_ns)) LEAVE_EARLY();
#else
      if (!op_matvec(c, *reinterpret_cast<const MatvecParams*>(prm), wait_deps)) LEAVE_EARLY();
#endif
    } else
#endif
#if AMK_USES_ATTN_SCORES
    if (ins[0] == OP_ATTN_SCORES) {  // K rows of earlier steps load before the wait
      if (!op_attn_scores(c, *reinterpret_cast<const AttnScoresParams*>(prm), wait_deps)) LEAVE_EARLY();
    } else
#endif
#if AMK_USES_ATTN_VALUES
    if (ins[0] == OP_ATTN_VALUES) {  // as do V rows
      const AttnValuesParams& p = *reinterpret_cast<const AttnValuesParams*>(prm);
      if (!op_attn_values(c, p, wait_deps)) LEAVE_EARLY();
      join_combine(c, p.join, p.kv_head, p.out, p.out_off, p.parts, -1, 0);
    } else
#endif
#if AMK_USES_ATTN_PARTIAL
    if (ins[0] == OP_ATTN_PARTIAL) {  // and both
      const AttnPartialParams& p = *reinterpret_cast<const AttnPartialParams*>(prm);
      if (!op_attn_partial(c, p, wait_deps)) LEAVE_EARLY();
      join_combine(c, p.join, p.kv_head, p.out, p.out_off, p.parts, p.stats, p.stats_off);
    } else
#endif
    {
      if (!wait_deps()) LEAVE_EARLY();
      switch (ins[0]) {
#if AMK_USES_EMBED
        case OP_EMBED: op_embed(c, *reinterpret_cast<const EmbedParams*>(prm), control, ins[1]); break;
#endif
#if AMK_USES_RMSNORM
        case OP_RMSNORM: op_rmsnorm(c, *reinterpret_cast<const RmsNormParams*>(prm)); break;
#endif
#if AMK_USES_EPILOGUE
        case OP_EPILOGUE: op_epilogue(c, *reinterpret_cast<const EpilogueTaskParams*>(prm)); break;
#endif
#if AMK_USES_ATTN_DECODE
        case OP_ATTN_DECODE: op_attn_decode(c, *reinterpret_cast<const AttnDecodeParams*>(prm)); break;
#endif
#if AMK_USES_ATTN_COMBINE
        case OP_ATTN_COMBINE: op_attn_combine(c, *reinterpret_cast<const AttnCombineParams*>(prm)); break;
#endif
#if AMK_USES_ARGMAX
        case OP_ARGMAX: op_argmax(c, *reinterpret_cast<const ArgmaxParams*>(prm)); break;
#endif
        default:
          if (tid == 0 && atomicCAS(control + CTRL_ERR, 0, ERR_BAD_OPCODE) == 0) {
            control[CTRL_ERR_TASK] = ins[1];
            control[CTRL_ERR_DETAIL] = ins[0];
          }
          LEAVE_EARLY();
      }
    }
    if (tid < AMK_INSTR_WORDS) s_ins[(i - begin + 1) & 1][tid] = nxt;
    block_sync();
    if (tid == 0) {
      // red.release after the barrier publishes every thread's writes of this task (cumulativity)
      for (int k = 0; k < ins[3]; ++k) red_release(counters + ins[AMK_SIGNAL_BASE + k]);
#if AMK_TRACE
      if (trace) {
        unsigned long long* t = trace + (long long)AMK_TRACE_WORDS * ins[1];
        unsigned smid;
        asm("mov.u32 %0, %%smid;" : "=r"(smid));  // the hardware may place a block on another SM each launch
        t[0] = t0; t[1] = t1; t[2] = global_ns(); t[3] = blockIdx.x | ((unsigned long long)smid << 32);
        for (int k = 0; k < 4; ++k) { t[4 + k] = s_prof[k]; s_prof[k] = 0; }
        t[8] = c0; t[9] = clock64();
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
      // never past the last slot; the host refuses a step beyond it before launching
      if (control[CTRL_ADVANCE] && c.pos + 1 < AMK_MAX_SEQ) __stcg(reinterpret_cast<int*>(bufs[AMK_POS_BUF]), c.pos + 1);
      __threadfence();
    }
  }
}
