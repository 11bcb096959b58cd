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

#ifndef AMK_TRACE
#define AMK_TRACE 0
#endif
#ifndef AMK_TRACE_WORDS
#define AMK_TRACE_WORDS 10  // words a task of the trace buffer: vm/loader.py TRACE_WORDS allocates them
#endif
// Tracing build: thread 0 adds the cycles since the last mark to c.prof[k] (phases of a task).
#if AMK_TRACE
#define PHASE_START() long long phase_t = clock64()
#define PHASE(k) do { if (threadIdx.x == 0) { const long long n_ = clock64(); c.prof[k] += n_ - phase_t; phase_t = n_; } } while (0)
#else
#define PHASE_START() do {} while (0)
#define PHASE(k) do {} while (0)
#endif

#define VEC (16 / (int)sizeof(wtype))  // weights per 16-byte load
#define NWARPS (AMK_THREADS / 32)  // consumer warps: every warp of the block but the weight producer
#define HALF_HD (AMK_HEAD_DIM / 2)
#define HD_VECS (AMK_HEAD_DIM / VEC)
#define NEG_INF (__int_as_float(0xff800000))

// The consumer warps' barrier (named barrier 1 over AMK_THREADS threads). With the weight pipeline on, the
// block's last warp is the producer: it runs ahead on its own and never joins a consumer barrier, so no task
// code may use __syncthreads().
__device__ __forceinline__ void block_sync() { asm volatile("bar.sync 1, %0;" :: "n"(AMK_THREADS) : "memory"); }

struct Ctx {
  const unsigned long long* bufs;
  const int* cols;
  float* smem;
  float* red;  // 64 floats of reduction scratch
  unsigned long long* prof;  // tracing build: thread 0's per-task cycle counts (ring wait, compute, pump)
  unsigned* counters;  // the step's counters: a join's arrival counter is added to inside its tasks
  unsigned epoch;  // counters count on from step to step: this step's n-th signal reaches producers * (epoch - 1) + n
  int pos;
  int* control;
  long long timeout_ns;
};

template <typename T>
__device__ __forceinline__ T* buf(const Ctx& c, int id) { return reinterpret_cast<T*>(c.bufs[id]); }

// This step's RoPE row in fp32: cos at [0, head_dim), sin at [head_dim, 2 head_dim), at the step's position. Each
// block stages it beside its first instruction's words (a round trip the block waits for anyway), so that a
// rotation reads shared memory: read from the tables in each QKV epilogue, it put an L2 round trip between the dot
// and the task's done signal (one H100: llama-3.2-1b 0.9964, tinyllama-1.1b shape 0.9921 of the step;
// bench/results/20261206-0005_h100_epilogue_latency_probes.json). schedule/smem.py counts its bytes.
__shared__ float s_rope[2 * AMK_HEAD_DIM];
__device__ __forceinline__ float rope_cos(int i) { return s_rope[i]; }
__device__ __forceinline__ float rope_sin(int i) { return s_rope[AMK_HEAD_DIM + i]; }
__device__ __forceinline__ void stage_rope_row(const Ctx& c, int tid) {
  const long long row = (long long)c.pos * AMK_HEAD_DIM;
  for (int k = tid; k < AMK_HEAD_DIM; k += AMK_BLOCK_THREADS) {
    s_rope[k] = to_f(buf<wtype>(c, AMK_ROPE_COS)[row + k]);
    s_rope[AMK_HEAD_DIM + k] = to_f(buf<wtype>(c, AMK_ROPE_SIN)[row + k]);
  }
}

// Activations and the KV cache are written by other SMs during the step: read them at L2 (coherent).
__device__ __forceinline__ float ldcg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ void stcg(float* p, float v) { __stcg(p, v); }

// Attention partition outputs as their combines read them (attention.partials_dtype): fp32, or rounded to the
// model's dtype, which halves what every combine reads from L2 on a bf16 or fp16 model. They are addressed
// from the start of their fp32 scratch region (part_ptr), so the program's regions stay in fp32 elements.
#ifndef AMK_PARTIALS_MODEL_DTYPE
#define AMK_PARTIALS_MODEL_DTYPE 0
#endif
#if AMK_PARTIALS_MODEL_DTYPE
typedef wtype ptype;
__device__ __forceinline__ void stpart(ptype* p, float v) { __stcg(p, from_f(v)); }
__device__ __forceinline__ float ldpart(const ptype* p) { return to_f(__ldcg(p)); }
#else
typedef float ptype;
__device__ __forceinline__ void stpart(ptype* p, float v) { __stcg(p, v); }
__device__ __forceinline__ float ldpart(const ptype* p) { return __ldcg(p); }
#endif
#define PVEC (16 / (int)sizeof(ptype))  // partition output elements a 16-byte copy holds

__device__ __forceinline__ ptype* part_ptr(const Ctx& c, int id, int off) {
  return reinterpret_cast<ptype*>(buf<float>(c, id) + off);
}

__device__ __forceinline__ void unpack(const uint4& raw, float* out) {
#if AMK_DTYPE == DT_F32
  out[0] = __uint_as_float(raw.x); out[1] = __uint_as_float(raw.y);
  out[2] = __uint_as_float(raw.z); out[3] = __uint_as_float(raw.w);
#elif AMK_DTYPE == DT_BF16
  // a bf16 is the top half of its float: one shift or one mask a value (the conversion takes two for the
  // upper half of a word)
  const unsigned u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    out[2 * e] = __uint_as_float(u[e] << 16);
    out[2 * e + 1] = __uint_as_float(u[e] & 0xffff0000u);
  }
#else
  const wtype* h = reinterpret_cast<const wtype*>(&raw);
#pragma unroll
  for (int e = 0; e < VEC; ++e) out[e] = to_f(h[e]);
#endif
}

// PVEC partition outputs from one 16-byte copy of them.
__device__ __forceinline__ void unpack_part(const uint4& raw, float* out) {
#if AMK_PARTIALS_MODEL_DTYPE
  unpack(raw, out);
#else
  out[0] = __uint_as_float(raw.x); out[1] = __uint_as_float(raw.y);
  out[2] = __uint_as_float(raw.z); out[3] = __uint_as_float(raw.w);
#endif
}

// A weight vector, read once a step: no L1 line is allocated for it, so the stream does not evict what L1
// holds for the rest of the kernel (spilled registers, instructions' parameters), which would otherwise come
// back from L2 at microseconds a round trip under the stream's load.
//
// The weights also enter L2 first in line for eviction (sm_80+): a step streams tens of times L2's size in
// weights, which would otherwise push out what the step reads again (activations, counters, the KV cache,
// instruction words). On llama-3.2-1b/H200 that left the register path as it was (1069.2 against 1071.2 us)
// and made the paged pipeline 1.4% faster (1112.8 against 1128.3 us), in one run
// (bench/results/20261130-112436_h200_llama-3.2-1b_bf16_evict_first.json).
#if __CUDA_ARCH__ >= 800
#define AMK_WEIGHT_EVICT_FIRST 1
// Not volatile: the compiler may compute the policy once and keep it in a register.
__device__ __forceinline__ unsigned long long weight_policy() {
  unsigned long long pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}
#else
#define AMK_WEIGHT_EVICT_FIRST 0
#endif
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
#if AMK_WEIGHT_EVICT_FIRST
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(weight_policy()));
#else
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
#endif
  return v;
}

// cp.async (sm_80+): a 16-byte copy from global to shared memory that holds no register while in flight.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
#if __CUDA_ARCH__ >= 800
  const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(d), "l"(src) : "memory");
#else
  *reinterpret_cast<uint4*>(dst) = __ldcg(reinterpret_cast<const uint4*>(src));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
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

// Block-wide sum / max; every thread gets the result. `red` holds NWARPS floats; warps combine in warp order.
template <bool kMax>
__device__ float block_reduce(float v, float* red) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  block_sync();
  if (lane == 0) red[warp] = v;
  block_sync();
  float t = kMax ? NEG_INF : 0.f;
  for (int w = 0; w < NWARPS; ++w) t = kMax ? fmaxf(t, red[w]) : t + red[w];
  return t;
}
__device__ float block_sum(float v, float* red) { return block_reduce<false>(v, red); }

// v.x^2 + v.y^2 + v.z^2 + v.w^2 with its contraction spelled out. Left as that sum, the compiler chose which square
// to fuse into an fma per call site and per build: in one build stage_floats kept y*y and stage_tagged x*x, so a
// tagged RMSNorm's scale was 1 ulp off the polled one's (toy-2L, fp32). The plain product feeds an fma's addend and
// cannot be fused again, so the stagings of x sum their squares alike; y*y first, as the compiler chose in
// stage_floats' loop of four loads in flight in the builds read, a loop that stays unpinned (see there).
__device__ __forceinline__ float sum_sq4(const float4& v) {
  return fmaf(v.w, v.w, fmaf(v.z, v.z, fmaf(v.x, v.x, v.y * v.y)));
}
__device__ float block_max(float v, float* red) { return block_reduce<true>(v, red); }

// (value, index) argmax, first maximum wins; result valid in thread 0.
__device__ void block_argmax(float& v, int& i, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
  }
  block_sync();
  if (lane == 0) { red[warp] = v; reinterpret_cast<int*>(red)[32 + warp] = i; }
  block_sync();
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

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// A spin's periodic check (a weight page's, a tagged read's): false to stop, when another block has failed or
// this spin has lasted past timeout_ns since its first check, which is then recorded as `task`'s time-out on
// `detail` (the loader names it: -1 a weight page, TAGS_DETAIL_X / _H a tagged stream).
__device__ __forceinline__ bool keep_spinning(int* control, unsigned long long& start, long long timeout_ns, int task,
                                              int detail) {
  if (*((volatile int*)(control + CTRL_ERR)) != 0) return false;
  const unsigned long long now = global_ns();
  if (start == 0) start = now;
  else if ((long long)(now - start) > timeout_ns) {
    if (atomicCAS(control + CTRL_ERR, 0, ERR_TIMEOUT) == 0) { control[CTRL_ERR_TASK] = task; control[CTRL_ERR_DETAIL] = detail; }
    return false;
  }
  return true;
}

// ---- tagged streams (build.tagged_residual, build.tagged_hidden; schedule/tags.py) ---------------
// Each value of a tagged stream (x; the MLP's hidden row) is also one 8-byte word: its fp32 bits low, a tag high.
// An 8-byte store lands whole, so a reader that sees the tag it expects holds that write's value, with no counter
// or fence between them.
#ifndef AMK_X_TAGS
#define AMK_X_TAGS -1
#endif
#ifndef AMK_H_TAGS
#define AMK_H_TAGS -1
#endif
#define AMK_TAGGED (AMK_X_TAGS >= 0 || AMK_H_TAGS >= 0)
// what a tagged read's time-out names (the loader's message): -1 is a weight page's
#define TAGS_DETAIL_X -2
#define TAGS_DETAIL_H -3
#if AMK_TAGGED
__shared__ int s_task;  // the running task's id, for an error a tagged read records (in a register it made ptxas spill)

// Version v of a stream with `versions` writes a step, in this step. Epoch-scaled as the counters are: a word left
// by an earlier step, or by another write of the stream in this one, never carries it (the loader zeroes the
// words when it restarts the epochs).
__device__ __forceinline__ unsigned stream_tag(const Ctx& c, int versions, int version) {
  return c.epoch * (unsigned)versions + (unsigned)version;
}
__device__ __forceinline__ void st_tagged(unsigned long long* p, unsigned tag, float v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;"
               :: "l"(p), "l"(((unsigned long long)tag << 32) | __float_as_uint(v)) : "memory");
}
__device__ __forceinline__ ulonglong2 ld_tagged2(const unsigned long long* p) {
  ulonglong2 v;
  asm volatile("ld.relaxed.gpu.global.v2.u64 {%0, %1}, [%2];" : "=l"(v.x), "=l"(v.y) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ float tagged_value(unsigned long long w) { return __uint_as_float((unsigned)w); }
__device__ __forceinline__ bool has_tag(const ulonglong2& v, unsigned tag) {
  return (unsigned)(v.x >> 32) == tag && (unsigned)(v.y >> 32) == tag;
}

// Reload the words at p (16-byte aligned; two, or four where `b` is given) until each carries `tag`. False when
// this read timed out (recorded as the task's error, `detail` naming the stream) or another block has failed: the
// caller goes on with what it read, as a timed-out page wait does, and the step ends with the error.
__device__ __forceinline__ bool spin_tagged(const Ctx& c, const unsigned long long* p, unsigned tag, int detail,
                                            ulonglong2& a, ulonglong2* b = nullptr) {
  unsigned long long start = 0;
  for (unsigned spins = 1; !has_tag(a, tag) || (b && !has_tag(*b, tag)); ++spins) {
    if ((spins & 63u) == 0 && !keep_spinning(c.control, start, c.timeout_ns, s_task, detail)) return false;
    a = ld_tagged2(p);
    if (b) *b = ld_tagged2(p + 2);
  }
  return true;
}

// The n values of a stream at words src (16-byte aligned global memory; n a multiple of 4) at `tag` into dst
// (16-byte aligned shared memory), each spun on until its word carries the tag; returns this thread's sum of
// squares. A thread takes the elements stage_floats gives it and sums them in the same order, whatever G, so a norm
// of them is the untagged one's. G groups of four values in flight a thread: a row of up to 4 * G * AMK_THREADS
// values is one round trip. x's readers take G = 1 (2048 values at 512 threads): they hold their first weight
// loads through the staging, and two groups put 8 bytes on the stack of a qwen3-1.7b shape.
template <int G>
__device__ float stage_tagged(const Ctx& c, float* dst, const unsigned long long* src, int n, unsigned tag,
                              int detail) {
  const int n4 = n >> 2;
  float4* d4 = reinterpret_cast<float4*>(dst);
  float ss = 0.f;
  for (int j = threadIdx.x; j < n4; j += G * AMK_THREADS) {
    ulonglong2 a[G], b[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {  // a group past the row loads the last one again, and is not used
      const int k = min(j + g * AMK_THREADS, n4 - 1);
      a[g] = ld_tagged2(src + 4 * k);
      b[g] = ld_tagged2(src + 4 * k + 2);
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int k = j + g * AMK_THREADS;
      if (k >= n4) continue;
      spin_tagged(c, src + 4 * k, tag, detail, a[g], &b[g]);
      const float4 f = make_float4(tagged_value(a[g].x), tagged_value(a[g].y), tagged_value(b[g].x),
                                   tagged_value(b[g].y));
      d4[k] = f;
      ss += sum_sq4(f);
    }
  }
  return ss;
}
#endif

#if AMK_X_TAGS >= 0
// Version v of x in this step, and x's words.
__device__ __forceinline__ unsigned x_tag(const Ctx& c, int version) {
  return stream_tag(c, AMK_X_VERSIONS, version);
}
__device__ __forceinline__ unsigned long long* x_words(const Ctx& c) { return buf<unsigned long long>(c, AMK_X_TAGS); }

// Element k of x at `tag`, spun on until its word (and its pair's, in the same 16 bytes) carries it.
__device__ float read_tagged(const Ctx& c, int k, unsigned tag) {
  const unsigned long long* p = x_words(c) + (k & ~1);
  ulonglong2 v = ld_tagged2(p);
  spin_tagged(c, p, tag, TAGS_DETAIL_X, v);
  return tagged_value((k & 1) ? v.y : v.x);
}

// Element k of x where the task's waits order the write it needs before it (a residual add's read of the version
// before its own): the value of its word, unchecked. A reader that waited on a counter, or whose producers'
// readers saw that write's tags, sees at least that write (coherence follows causality); validate's tags check
// holds the versions to it. Read from the word, not the fp32 copy: the copy's store is ordered before the tagged
// one by nothing, so a reader whose chain went through a tagged read could in principle miss it.
__device__ __forceinline__ float read_ordered(const Ctx& c, int k) {
  return __ldcg(reinterpret_cast<const float*>(x_words(c) + k));  // the word's low half: its value
}
#endif

#if AMK_H_TAGS >= 0
// Version v (the layer) of the MLP's hidden row in this step, and its words.
__device__ __forceinline__ unsigned h_tag(const Ctx& c, int version) {
  return stream_tag(c, AMK_H_VERSIONS, version);
}
__device__ __forceinline__ unsigned long long* h_words(const Ctx& c) { return buf<unsigned long long>(c, AMK_H_TAGS); }
#endif

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// ---- RMSNorm: out[k] = rnd(w[k] * rnd(x[k] * r)) ----------------------------------------------
__device__ float rms_scale(const float* x, int n, float* red) {
  float ss = 0.f;
  for (int k = threadIdx.x; k < n; k += AMK_THREADS) { float v = ldcg(x + k); ss += v * v; }
  ss = block_sum(ss, red);
  return 1.0f / sqrtf(ss / (float)n + AMK_EPS);
}

__device__ void op_embed(const Ctx& c, const EmbedParams& p, int* control, int task) {
  int tok = __ldcg(buf<int>(c, p.token));
#ifdef AMK_BOUND_ANY_TOKEN
  // a probe timed by bench/variants.py --bound computes a wrong output, whose argmax may be any word: it is
  // folded into the vocabulary so that the timed steps run on
  tok = (int)((unsigned)tok % (unsigned)AMK_VOCAB);
#endif
  if (tok < 0 || tok >= AMK_VOCAB) {
    if (threadIdx.x == 0 && atomicCAS(control + CTRL_ERR, 0, ERR_BAD_TOKEN) == 0) {
      control[CTRL_ERR_TASK] = task; control[CTRL_ERR_DETAIL] = tok;
    }
    return;
  }
  const wtype* row = buf<wtype>(c, p.table) + (long long)tok * p.dim;
  float* out = buf<float>(c, p.out) + p.out_off;
  for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) {
    const float v = to_f(row[k]);
    stcg(out + k, v);
#if AMK_X_TAGS >= 0
    if (p.tag >= 0) st_tagged(x_words(c) + k, x_tag(c, p.tag), v);
#endif
  }
}

__device__ void op_rmsnorm(const Ctx& c, const RmsNormParams& p) {
  const float* x = buf<float>(c, p.inp) + p.inp_off;
  const wtype* w = buf<wtype>(c, p.weight);
  float* out = buf<float>(c, p.out) + p.out_off;
#if AMK_X_TAGS >= 0
  if (p.inp_tag >= 0) {  // x read once from its tagged words, each thread's in rms_scale's order (the same sum)
    const unsigned tag = x_tag(c, p.inp_tag);
    float ss = 0.f;
    for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) {
      const float v = read_tagged(c, k, tag);
      c.smem[k] = v;
      ss += v * v;
    }
    const float r = 1.0f / sqrtf(block_sum(ss, c.red) / (float)p.dim + AMK_EPS);  // its barriers order the stores
    for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) stcg(out + k, rnd(to_f(w[k]) * rnd(c.smem[k] * r)));
    return;
  }
#endif
  const float r = rms_scale(x, p.dim, c.red);
  for (int k = threadIdx.x; k < p.dim; k += AMK_THREADS) stcg(out + k, rnd(to_f(w[k]) * rnd(ldcg(x + k) * r)));
}

