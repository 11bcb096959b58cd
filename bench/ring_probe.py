"""Streaming probe for the weight ring: how fast one persistent block per SM pulls weights into shared memory
through bulk copies (thread 0 producing, every thread consuming, one barrier per slot), against plain
16-byte register loads. Isolates the copy pipeline from the megakernel's tasks and synchronisation.

    python bench/ring_probe.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cupy as cp
import torch

SRC = r"""
#include <cuda_bf16.h>
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ bool try_wait(unsigned bar, unsigned parity) {
  unsigned ok;
#if WAIT_TEST
  asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
#else
  asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
               : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
#endif
  return ok;
}
extern "C" __global__ void __launch_bounds__(512, 1) ring(const __nv_bfloat16* w, long long per_block, float* out,
                                                          unsigned* flag, unsigned long long* issue_cycles) {
  extern __shared__ __align__(128) unsigned char sm_base[];
  unsigned char* sm = sm_base + RING_OFF;
  __shared__ __align__(8) unsigned long long full[SLOTS];
  __shared__ __align__(16) float xs[2048];
  __shared__ float part[32];
  for (int k = threadIdx.x; k < 2048; k += 512) xs[k] = 1.f;
  const char* src = reinterpret_cast<const char*>(w) + per_block * blockIdx.x;
  const int pieces = (int)(per_block / SLOT);
  if (threadIdx.x == 0) {
    for (int s = 0; s < SLOTS; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_u32(full + s)));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  int head = 0;
  long long spent = 0;
  auto issue = [&]() {
    const long long c0 = clock64();
    const int s = head % SLOTS;
    const unsigned bar = smem_u32(full + s);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(SLOT) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_u32(sm + s * SLOT)), "l"(src + (long long)head * SLOT), "r"(SLOT), "r"(bar) : "memory");
    ++head;
    spent += clock64() - c0;
  };
  if (threadIdx.x == 0) while (head < pieces && head < SLOTS) issue();
  float acc = 0.f;
  for (int t = 0; t < pieces; ++t) {
    const int s = t % SLOTS;
    while (!try_wait(smem_u32(full + s), (t / SLOTS) & 1)) {}
#if COMPUTE == 2
    {  // the megakernel's unit split of a 4-row piece: 16 units of 64 vectors, a warp-reduced dot each, a fold
      const uint4* v = reinterpret_cast<const uint4*>(sm + s * SLOT);
      const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, rows = SLOT / 4096, S = 16 / rows;
      const int per = 256 / S, lr = warp / S, ch = warp % S;
      float d = 0.f;
      for (int k = lane; k < per; k += 32) {
        const uint4 q = v[lr * 256 + ch * per + k];
        const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&q);
        const float4* x4 = reinterpret_cast<const float4*>(xs + (ch * per + k) * 8);
        const float4 a = x4[0], b = x4[1];
        d += __bfloat162float(h[0]) * a.x + __bfloat162float(h[1]) * a.y + __bfloat162float(h[2]) * a.z +
             __bfloat162float(h[3]) * a.w + __bfloat162float(h[4]) * b.x + __bfloat162float(h[5]) * b.y +
             __bfloat162float(h[6]) * b.z + __bfloat162float(h[7]) * b.w;
      }
      for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      if (lane == 0) part[(t & 1) * 16 + warp] = d;
    }
#elif COMPUTE
    const uint4* v = reinterpret_cast<const uint4*>(sm + s * SLOT);
    for (int k = threadIdx.x; k < SLOT / 16; k += 512) {
      const uint4 q = v[k];
      const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&q);
      for (int e = 0; e < 8; ++e) acc += __bfloat162float(h[e]);
    }
#endif
    __syncthreads();
#if REL
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(flag) : "memory");
#endif
#if ACQ
    if (threadIdx.x == 0) { unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory"); if (v == 0xdeadbeef) out[1] = 1.f; }
#endif
    if (threadIdx.x == 0 && head < pieces) issue();
#if COMPUTE == 2
    if (threadIdx.x < SLOT / 4096) {
      float f = 0.f;
      for (int k = 0; k < 16 / (SLOT / 4096); ++k) f += part[(t & 1) * 16 + threadIdx.x * (16 / (SLOT / 4096)) + k];
      acc += f;
    }
#endif
  }
  if (threadIdx.x == 0) atomicAdd(issue_cycles, (unsigned long long)spent);
  if (acc == 12345.f) out[0] = acc;
}
extern "C" __global__ void __launch_bounds__(512, 1) regs(const uint4* w, long long per_block, float* out) {
  const uint4* src = w + per_block / 16 * blockIdx.x;
  const long long n = per_block / 16;
  float acc = 0.f;
  for (long long k = threadIdx.x; k + 7 * 512 < n; k += 8 * 512) {
    uint4 r[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) r[u] = __ldg(src + k + u * 512);
#pragma unroll
    for (int u = 0; u < 8; ++u) acc += __uint_as_float(r[u].x) + __uint_as_float(r[u].w);
  }
  if (acc == 12345.f) out[0] = acc;
}
"""


def time_kernel(fn, args, smem, blocks, reps=20) -> float:
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    fn((blocks,), (512,), args, shared_mem=smem)
    start.record()
    for _ in range(reps):
        fn((blocks,), (512,), args, shared_mem=smem)
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb-per-block", type=int, default=4)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    dev = cp.cuda.Device()
    blocks = dev.attributes["MultiProcessorCount"]
    per_block = args.mb_per_block << 20
    w = cp.random.random(blocks * per_block // 4, dtype=cp.float32)
    out = cp.zeros(1, cp.float32)
    total = blocks * per_block
    rows = []
    flag = cp.zeros(4, cp.uint32)
    cycles = cp.zeros(1, cp.uint64)
    for slot_kb, slots, compute, test, off, rel, acq in [
            (16, 8, 0, 0, 0, 0, 0), (16, 8, 1, 0, 0, 0, 0), (32, 4, 0, 0, 0, 0, 0), (16, 8, 0, 0, 64, 0, 0),
            (16, 8, 0, 0, 73728, 0, 0), (16, 8, 1, 0, 73728, 1, 0), (16, 8, 1, 0, 73728, 0, 1),
            (16, 8, 2, 0, 73728, 0, 0), (32, 4, 2, 0, 73728, 0, 0), (16, 8, 2, 1, 73728, 0, 0)]:
        mod = cp.RawModule(code=SRC, options=("-std=c++17", f"-DSLOT={slot_kb * 1024}", f"-DSLOTS={slots}",
                                              f"-DCOMPUTE={compute}", f"-DWAIT_TEST={test}", f"-DRING_OFF={off}",
                                              f"-DREL={rel}", f"-DACQ={acq}"))
        fn = mod.get_function("ring")
        smem = slot_kb * 1024 * slots + off
        fn.max_dynamic_shared_size_bytes = smem
        cycles.fill(0)
        us = time_kernel(fn, (w, cp.int64(per_block), out, flag, cycles), smem, blocks)
        issues = (per_block // (slot_kb * 1024)) * blocks * 21
        rows.append({"kind": "ring", "slot_kb": slot_kb, "slots": slots, "compute": compute, "test_wait": test,
                     "ring_offset": off, "release_per_piece": rel, "acquire_per_piece": acq,
                     "issue_cycles": int(cycles.get()[0]) / issues,
                     "us": us, "gbs": total / us / 1e3})
    fn = cp.RawModule(code=SRC, options=("-std=c++17", "-DSLOT=16384", "-DSLOTS=1", "-DCOMPUTE=0",
                                         "-DWAIT_TEST=0", "-DRING_OFF=0", "-DREL=0",
                                         "-DACQ=0")).get_function("regs")
    us = time_kernel(fn, (w, cp.int64(per_block), out), 0, blocks)
    rows.append({"kind": "registers x8", "us": us, "gbs": total / us / 1e3})
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "python bench/ring_probe.py", "bytes": total, "rows": rows}
    with open(os.path.join(args.out, "ring_probe.json"), "w") as f:
        json.dump(res, f, indent=1)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
