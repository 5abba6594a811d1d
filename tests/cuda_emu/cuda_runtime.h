// A host stand-in for the few CUDA runtime pieces adamgen's CUDA templates use, so that the
// rendered CUDA source (chunk table, launch splitting, 16-byte vector path, scalar tails, block
// reduction) runs on a CPU in tests/test_cuda_emulated.py. Each block's threads are std::threads
// that meet at a std::barrier for __syncthreads(); blocks run one after another, launches one at
// a time, so a __shared__ array (a function-local static here) belongs to one block at a time.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

// A kernel built with hw_half includes the CUDA half headers (their host forms convert in
// software, to the same bits): the test defines ADAMGEN_EMU_CUDA_HEADERS and puts them on the
// include path. They come first, bringing CUDA's own dim3; their location macros are then
// replaced by this file's.
#ifdef ADAMGEN_EMU_CUDA_HEADERS
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#undef __host__
#undef __device__
#undef __global__
#undef __forceinline__
#undef __launch_bounds__
#undef __grid_constant__
#undef __shared__
#endif
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static

#ifndef ADAMGEN_EMU_CUDA_HEADERS
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
#endif
inline thread_local dim3 threadIdx, blockIdx, gridDim, blockDim;
inline thread_local std::barrier<>* adamgen_emu_barrier = nullptr;

inline void __syncthreads() { adamgen_emu_barrier->arrive_and_wait(); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
using std::max;
using std::min;


// Chunks that took the 16-byte vector path (counted by thread 0 of a block; the test's rewrite
// puts adamgen_emu_count_vector() into the kernel's alignment test).
inline std::atomic<long> adamgen_emu_vector_chunks{0};
inline bool adamgen_emu_count_vector() {
  if (threadIdx.x == 0) adamgen_emu_vector_chunks.fetch_add(1);
  return true;
}
extern "C" __attribute__((visibility("default"))) long adamgen_emu_vector_count() {
  return adamgen_emu_vector_chunks.load();
}

// Iterations of the update kernel's unrolled vector loop (the test's rewrite counts them), and
// the largest grid a launch asked for since the last reset. (g++ makes inline variables unique
// process-wide, so every emulated kernel library shares these counters.)
inline std::atomic<long> adamgen_emu_unrolled_steps{0};
inline void adamgen_emu_count_unrolled() { adamgen_emu_unrolled_steps.fetch_add(1); }
extern "C" __attribute__((visibility("default"))) long adamgen_emu_unrolled_count() {
  return adamgen_emu_unrolled_steps.load();
}
inline std::atomic<int> adamgen_emu_grid{0};
extern "C" __attribute__((visibility("default"))) int adamgen_emu_max_grid() { return adamgen_emu_grid.load(); }
extern "C" __attribute__((visibility("default"))) void adamgen_emu_reset_grid() { adamgen_emu_grid.store(0); }

// Device-wide ordering and the finished-blocks counter of the reduction's last-block combine.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
inline std::mutex adamgen_emu_atomic_mutex;
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  std::lock_guard<std::mutex> hold(adamgen_emu_atomic_mutex);
  const unsigned int old = *p;
  *p = old + v;
  return old;
}

#ifndef ADAMGEN_EMU_CUDA_HEADERS  // else CUDA's own (driver_types.h, through the half headers)
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
#endif
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
// The device: kEmuMultiprocessors "SMs" (what a kernel's blocks_per_sm grid cap multiplies).
inline constexpr int kEmuMultiprocessors = 2;
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? kEmuMultiprocessors : 0;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int value, std::size_t n, cudaStream_t) {
  std::memset(p, value, n);
  return cudaSuccess;
}

// The handler's stream parameter is dropped by the test's rewrite; this stands in for it.
namespace adamgen_kernel {
inline constexpr cudaStream_t stream = nullptr;
}

// kernel<<<grid, threads, shared, stream>>>(args...), one launch at a time (XLA may run two
// custom calls at once; their blocks must not share the static __shared__ arrays).
inline std::mutex adamgen_emu_launch_mutex;
template <typename Kernel, typename... Args>
void adamgen_emu_launch(Kernel kernel, int grid, int threads, std::size_t, cudaStream_t, const Args&... args) {
  std::lock_guard<std::mutex> hold(adamgen_emu_launch_mutex);
  adamgen_emu_grid.store(std::max(adamgen_emu_grid.load(), grid));
  for (int b = 0; b < grid; ++b) {
    std::barrier<> sync(threads);
    std::vector<std::thread> team;
    team.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      team.emplace_back([&, t] {
        threadIdx.x = static_cast<unsigned>(t);
        blockIdx.x = static_cast<unsigned>(b);
        gridDim.x = static_cast<unsigned>(grid);
        blockDim.x = static_cast<unsigned>(threads);
        adamgen_emu_barrier = &sync;
        kernel(args...);
      });
    }
    for (std::thread& th : team) th.join();
  }
}
