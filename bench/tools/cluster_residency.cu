// Can a persistent grid of one block an SM run as thread-block clusters? For cluster sizes 1, 2, 4 and 8 it prints
// cudaOccupancyMaxActiveClusters for a block of the megakernel's shape (512 threads, SMEM_KB of dynamic shared
// memory), then launches one cluster-shaped grid of as many blocks as SMs (rounded down to whole clusters) whose
// blocks all meet at a grid-wide counter: "co-resident" when every block arrived within the time-out, else the
// grid could not be resident at once (a persistent kernel of that shape would deadlock).
//     nvcc -arch=sm_90 -o /tmp/cluster_residency bench/tools/cluster_residency.cu && /tmp/cluster_residency
#include <cstdio>
#include <cuda_runtime.h>

#ifndef SMEM_KB
#define SMEM_KB 96
#endif

__global__ void meet(unsigned* arrived, unsigned* late, long long timeout_cycles) {
  extern __shared__ char smem[];
  if (threadIdx.x == 0) {
    smem[0] = 1;
    atomicAdd(arrived, 1u);
    const long long t0 = clock64();
    while (atomicAdd(arrived, 0u) < gridDim.x * gridDim.y) {
      if (clock64() - t0 > timeout_cycles) { atomicAdd(late, 1u); break; }
    }
  }
}

int main() {
  int dev = 0, sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, dev);
  const int smem = SMEM_KB * 1024;
  cudaFuncSetAttribute(meet, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaFuncSetAttribute(meet, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  unsigned *arrived, *late;
  cudaMalloc(&arrived, 4);
  cudaMalloc(&late, 4);
  printf("%s, %d SMs, %d KiB dynamic shared memory a block, 512 threads\n", prop.name, sms, SMEM_KB);
  printf("cluster  max_active_clusters  blocks_resident  grid  arrived  late  co-resident\n");
  for (int cs = 1; cs <= 16; cs *= 2) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cs;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cfg.blockDim = dim3(512);
    cfg.dynamicSmemBytes = smem;
    const int grid = sms / cs * cs;
    cfg.gridDim = dim3(grid);
    int clusters = -1;
    cudaError_t e = cudaOccupancyMaxActiveClusters(&clusters, meet, &cfg);
    if (e != cudaSuccess) {
      printf("%7d  %s\n", cs, cudaGetErrorString(e));
      cudaGetLastError();
      continue;
    }
    cudaMemset(arrived, 0, 4);
    cudaMemset(late, 0, 4);
    e = cudaLaunchKernelEx(&cfg, meet, arrived, late, 2000000000ll);
    cudaError_t s = cudaDeviceSynchronize();
    unsigned a = 0, l = 0;
    cudaMemcpy(&a, arrived, 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&l, late, 4, cudaMemcpyDeviceToHost);
    printf("%7d  %19d  %15d  %4d  %7u  %4u  %s\n", cs, clusters, clusters * cs, grid, a, l,
           e != cudaSuccess ? cudaGetErrorString(e) : s != cudaSuccess ? cudaGetErrorString(s) : (l == 0 ? "yes" : "no"));
  }
  return 0;
}
