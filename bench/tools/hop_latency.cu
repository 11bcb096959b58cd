// What one stage boundary of the megakernel costs on this GPU, with no task body around it: a row handed from one
// SM to another and back, many times, the way the kernel hands a stage's output to the next stage, idle and while
// every other SM streams weights from DRAM as the matvecs do. Transports (the megakernel's two):
//   counter  512 threads store a row of ROW_FLOATS fp32 values (st.cg, 16 bytes a thread), bar.sync, thread 0
//            red.release.gpu on a counter; the receiver's thread 0 polls it with ld.acquire.gpu, bar.sync, then
//            every thread reads the row (ld.cg): the signal, the poll and the input staging of a polled wait.
//   tagged   every thread stores its values as 64-bit words with the round's tag beside each value
//            (st.relaxed.gpu), no fence and no counter; each receiving thread spins on its words
//            (ld.relaxed.gpu) until they carry the round's tag, then bar.sync: the tagged residual stream.
// A hop is half a round trip: one send and one receive, barriers included. Also timed, each idle and under the
// stream: one dependent L2 hit (a pointer chase through a row of L2-resident lines) and a release fence after a
// row of stores. Three loads: idle, a quarter of the other SMs streaming, and all of them; the stream's rate is
// printed beside, so that each figure reads against how busy the DRAM was.
//     nvcc -arch=sm_90 -O3 -o /tmp/hop_latency bench/tools/hop_latency.cu && /tmp/hop_latency
// Output: one line a (measure, load) pair, then one JSON line with every figure (us, GB/s).
#include <cstdio>
#include <cuda_runtime.h>

#ifndef ROW_FLOATS
#define ROW_FLOATS 2048  // llama-3.2-1b's residual row: what QKV's and gate_up's input staging reads
#endif
#define THREADS 512
#define ROUNDS 2000
#define STREAM_GB 4

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release(unsigned* p) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}
__device__ __forceinline__ void st_tagged2(unsigned long long* p, unsigned tag, float a, float b) {
  const unsigned long long x = ((unsigned long long)tag << 32) | __float_as_uint(a);
  const unsigned long long y = ((unsigned long long)tag << 32) | __float_as_uint(b);
  asm volatile("st.relaxed.gpu.global.v2.u64 [%0], {%1, %2};" ::"l"(p), "l"(x), "l"(y) : "memory");
}
__device__ __forceinline__ ulonglong2 ld_tagged2(const unsigned long long* p) {
  ulonglong2 v;
  asm volatile("ld.relaxed.gpu.global.v2.u64 {%0, %1}, [%2];" : "=l"(v.x), "=l"(v.y) : "l"(p) : "memory");
  return v;
}
// As the megakernel streams a weight vector: no L1 line, and first in line for eviction from L2, so that the
// stream leaves the chase's lines and the rows in L2 as it leaves the kernel's activations there.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  unsigned long long pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(pol));
  return v;
}

enum Measure { HOP_COUNTER = 0, HOP_TAGGED = 1, L2_HIT = 2, FENCE = 3, N_MEASURES = 4 };

struct Scratch {
  float rows[2][ROW_FLOATS];                 // counter transport: block b's row
  unsigned long long words[2][ROW_FLOATS];   // tagged transport: block b's words
  unsigned counters[2];                      // counter transport: sends by block b
  unsigned chase[ROW_FLOATS];                // the pointer chase: index of the next line
  unsigned stop;                             // the timed blocks are done: the stream stops
  unsigned errors;                           // a received value that was not the round's
  unsigned long long t[2];                   // the timed part's start and end (ns)
  unsigned long long streamed;               // bytes the other blocks read
  unsigned long long stream_ns;              // their longest time
};

// Blocks 0 and 1 hand a row back and forth ROUNDS times (half-round h is sent by block h & 1); block 0 times it.
__device__ void hops(Scratch* s, bool tagged) {
  const int b = blockIdx.x, tid = threadIdx.x;
  if (b == 0 && tid == 0) s->t[0] = now_ns();
  for (int h = 0; h < 2 * ROUNDS; ++h) {
    if ((h & 1) == b) {  // send half-round h: its values are h
      for (int k = 4 * tid; k < ROW_FLOATS; k += 4 * THREADS) {
        const float v = (float)h;
        if (tagged) {
          st_tagged2(&s->words[b][k], (unsigned)h + 1u, v, v);
          st_tagged2(&s->words[b][k + 2], (unsigned)h + 1u, v, v);
        } else {
          __stcg(reinterpret_cast<float4*>(&s->rows[b][k]), make_float4(v, v, v, v));
        }
      }
      if (!tagged) {
        __syncthreads();
        if (tid == 0) red_release(&s->counters[b]);
      }
    } else {  // receive the other block's half-round h
      const int o = 1 - b;
      if (tagged) {
        for (int k = 4 * tid; k < ROW_FLOATS; k += 4 * THREADS) {
          ulonglong2 x, y;
          do {
            x = ld_tagged2(&s->words[o][k]);
            y = ld_tagged2(&s->words[o][k + 2]);
          } while ((unsigned)(x.x >> 32) != (unsigned)h + 1u || (unsigned)(x.y >> 32) != (unsigned)h + 1u ||
                   (unsigned)(y.x >> 32) != (unsigned)h + 1u || (unsigned)(y.y >> 32) != (unsigned)h + 1u);
          const float v = __uint_as_float((unsigned)x.x);
          if (v != (float)h) atomicAdd(&s->errors, 1u);
        }
      } else {
        if (tid == 0) while (ld_acquire(&s->counters[o]) < (unsigned)(h >> 1) + 1u) {}
        __syncthreads();
        for (int k = 4 * tid; k < ROW_FLOATS; k += 4 * THREADS) {
          const float4 v = __ldcg(reinterpret_cast<const float4*>(&s->rows[o][k]));
          if (v.x != (float)h || v.w != (float)h) atomicAdd(&s->errors, 1u);
        }
      }
      __syncthreads();  // the receiver's input is whole before it computes (and sends)
    }
  }
  if (b == 0 && tid == 0) s->t[1] = now_ns();
}

// One thread chases ROUNDS dependent loads through L2-resident lines (ld.cg: L1 not used).
__device__ void chase(Scratch* s) {
  if (threadIdx.x != 0) return;
  unsigned i = 0;
  for (int w = 0; w < 64; ++w) i = __ldcg(&s->chase[i]);  // the lines into L2
  const unsigned long long t0 = now_ns();
  for (int r = 0; r < ROUNDS; ++r) i = __ldcg(&s->chase[i]);
  s->t[0] = t0;
  s->t[1] = now_ns() + (i == 0xffffffffu);  // i kept live
}

// ROUNDS times: 512 threads store a row, bar.sync, thread 0 fences at gpu scope as a release does; the fences' time.
__device__ void fences(Scratch* s) {
  const int tid = threadIdx.x;
  unsigned long long spent = 0;
  for (int r = 0; r < ROUNDS; ++r) {
    for (int k = 4 * tid; k < ROW_FLOATS; k += 4 * THREADS)
      __stcg(reinterpret_cast<float4*>(&s->rows[0][k]), make_float4((float)r, 0.f, 0.f, 0.f));
    __syncthreads();
    if (tid == 0) {
      const unsigned long long t0 = now_ns();
      asm volatile("fence.acq_rel.gpu;" ::: "memory");  // the fence a red.release carries
      spent += now_ns() - t0;
    }
    __syncthreads();
  }
  if (tid == 0) {
    s->t[0] = 0;
    s->t[1] = spent;
  }
}

// `streamers` blocks past the timed ones: the weight stream, four 16-byte loads in flight a thread, until stop.
// n16 (the buffer's 16-byte vectors) is a power of two.
__device__ void stream(Scratch* s, const uint4* w, unsigned long long n16, int streamers) {
  const unsigned long long t0 = now_ns();
  const unsigned long long first = (unsigned long long)(blockIdx.x - 2) * THREADS + threadIdx.x;
  const unsigned long long step = (unsigned long long)streamers * THREADS;
  unsigned x = 0;
  unsigned long long loads = 0;
  for (unsigned long long i = first;; i += 4 * step) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = ld_stream(w + ((i + u * step) & (n16 - 1)));
#pragma unroll
    for (int u = 0; u < 4; ++u) x ^= v[u].x ^ v[u].w;
    loads += 4;
    if ((loads & 63) == 0 && *(volatile unsigned*)&s->stop) break;
  }
  atomicAdd(&s->streamed, loads * 16ull + (x == 0x12345678u));
  atomicMax(&s->stream_ns, now_ns() - t0);
}

__global__ void __launch_bounds__(THREADS, 1) run(Scratch* s, int measure, int streamers, const uint4* w,
                                                  unsigned long long n16) {
  if (blockIdx.x >= 2) {
    if ((int)blockIdx.x - 2 < streamers) stream(s, w, n16, streamers);
    return;
  }
  if (streamers) __nanosleep(20000);  // the stream at its rate first
  if (measure == HOP_COUNTER || measure == HOP_TAGGED) hops(s, measure == HOP_TAGGED);
  else if (blockIdx.x == 0 && measure == L2_HIT) chase(s);
  else if (blockIdx.x == 0 && measure == FENCE) fences(s);
  __syncthreads();
  if (threadIdx.x == 0 && blockIdx.x == 0) atomicExch(&s->stop, 1u);
}

#define CHECK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
  fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const unsigned long long bytes = (unsigned long long)STREAM_GB << 30;
  uint4* w;
  Scratch* s;
  CHECK(cudaMalloc(&w, bytes));
  CHECK(cudaMemset(w, 1, bytes));
  CHECK(cudaMalloc(&s, sizeof(Scratch)));
  unsigned chase[ROW_FLOATS];
  for (int i = 0; i < ROW_FLOATS; ++i) chase[i] = (unsigned)((i + 32 * 37) % ROW_FLOATS);  // 128-byte strides
  const char* names[N_MEASURES] = {"hop_counter", "hop_tagged", "l2_hit", "fence"};
  const char* loads[3] = {"idle", "quarter", "all"};
  const int streamers[3] = {0, (sms - 2) / 4, sms - 2};
  double us[N_MEASURES][3], gbs[N_MEASURES][3];
  unsigned errors = 0;
  printf("%s, %d SMs, a row of %d fp32 values, %d rounds\n", prop.name, sms, ROW_FLOATS, ROUNDS);
  printf("%-12s %-8s %10s %14s\n", "measure", "load", "us", "stream GB/s");
  for (int m = 0; m < N_MEASURES; ++m)
    for (int load = 0; load < 3; ++load) {
      double best = 1e30, rate = 0;
      for (int rep = 0; rep < 3; ++rep) {
        CHECK(cudaMemset(s, 0, sizeof(Scratch)));
        CHECK(cudaMemcpy(s->chase, chase, sizeof(chase), cudaMemcpyHostToDevice));
        run<<<sms, THREADS>>>(s, m, streamers[load], w, bytes / 16);
        CHECK(cudaGetLastError());
        CHECK(cudaDeviceSynchronize());
        Scratch h;
        CHECK(cudaMemcpy(&h, s, sizeof(Scratch), cudaMemcpyDeviceToHost));
        errors += h.errors;
        const double per = m == HOP_COUNTER || m == HOP_TAGGED ? 2.0 * ROUNDS : ROUNDS;
        const double t = (double)(h.t[1] - h.t[0]) / per / 1000.0;
        if (t < best) {
          best = t;
          rate = h.stream_ns ? (double)h.streamed / (double)h.stream_ns : 0.0;
        }
      }
      us[m][load] = best;
      gbs[m][load] = rate;
      printf("%-12s %-8s %10.3f %14.0f\n", names[m], loads[load], best, rate);
    }
  printf("{\"device\": \"%s\", \"sms\": %d, \"row_floats\": %d, \"rounds\": %d, \"errors\": %u", prop.name, sms,
         ROW_FLOATS, ROUNDS, errors);
  for (int m = 0; m < N_MEASURES; ++m)
    printf(", \"%s_us\": {\"idle\": %.4f, \"quarter\": %.4f, \"all\": %.4f}, \"%s_stream_gbs\": {\"quarter\": %.1f, "
           "\"all\": %.1f}", names[m], us[m][0], us[m][1], us[m][2], names[m], gbs[m][1], gbs[m][2]);
  printf("}\n");
  return errors ? 2 : 0;
}
