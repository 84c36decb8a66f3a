// What every kernel file in csrc/cuda/ includes first. It hides the one difference between the two builds of
// the same source: nvcc for the GPU (namespace vgg::cuda) and g++ against the SIMT emulator (namespace vgg::sim).
//
//   VGG_LAUNCH(grid, block, shared_bytes, kernel<Tmpl, Args>)(arg0, arg1, ...);   // never <<<>>> in kernel files
//   VGG_CHECK_LAUNCH("op name");             // after each launch: a bad launch becomes a C++ exception
//   VGG_DYNAMIC_SHARED(float, tile);         // inside a kernel: float* tile -> the launch's dynamic shared memory
//   VGG_SHARED(float, tile, [16][17]);       // inside a kernel: __shared__ float tile[16][17] (poisoned on sim)
//   vgg::VGG_GPU_NS::Workspace ws(bytes);    // scratch device memory, released at scope exit
//   __global__ void VGG_LAUNCH_BOUNDS(256) k(...);   // __launch_bounds__: a launch with more threads is an error
//   vgg_opt_in_dynamic_shared(k<T>, bytes);  // before launching k with more than 48 KiB of dynamic shared memory
//
// The kernel goes last in VGG_LAUNCH so that template arguments with commas need no extra parentheses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#include <cuda_runtime.h>

namespace vgg::cuda {
cudaStream_t current_stream();  // the current device's stream (csrc/cuda/runtime.cu)
// With VGG_CUDA_SYNC_LAUNCHES=1 (a debug switch, like CUDA_LAUNCH_BLOCKING): synchronises the stream after the
// launch and throws if the kernel faulted, so the error names the launch that caused it. Otherwise nothing.
void after_launch(const std::string& op);
}  // namespace vgg::cuda

#define VGG_LAUNCH(grid, block, shared_bytes, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), ::vgg::cuda::current_stream()>>>
#define VGG_CHECK_LAUNCH(op)                                                                          \
  do {                                                                                                \
    const cudaError_t vgg_launch_status_ = cudaGetLastError();                                       \
    if (vgg_launch_status_ != cudaSuccess)                                                            \
      throw std::runtime_error(std::string(op) + ": CUDA kernel launch failed: " +                    \
                               cudaGetErrorString(vgg_launch_status_));                              \
    ::vgg::cuda::after_launch(op);                                                                    \
  } while (0)
#define VGG_DYNAMIC_SHARED(type, name)                              \
  extern __shared__ __align__(16) unsigned char vgg_dynamic_smem_[]; \
  type* name = reinterpret_cast<type*>(vgg_dynamic_smem_)
#define VGG_SHARED(type, name, dims) __shared__ type name dims
// Lets `kernel` launch with up to `bytes` of dynamic shared memory (above 48 KiB a GPU requires this opt-in).
template <typename... P>
void vgg_opt_in_dynamic_shared(void (*kernel)(P...), size_t bytes) {
  const cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (status != cudaSuccess)
    throw std::runtime_error("vgg_opt_in_dynamic_shared(" + std::to_string(bytes) +
                             " bytes): cudaFuncSetAttribute failed: " + cudaGetErrorString(status));
}

#else  // the SIMT emulator build (device "sim")
#include "../simt/simt.h"

#define VGG_LAUNCH(grid, block, shared_bytes, ...) \
  ::simt::launcher((grid), (block), (shared_bytes), #__VA_ARGS__, __VA_ARGS__)
#define VGG_CHECK_LAUNCH(op) \
  do {                       \
    (void)(op);              \
  } while (0)
#define VGG_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::simt::dynamic_shared())
// A static local, poisoned (and, with checks on, tracked) per block from the moment a thread reaches it.
#define VGG_SHARED(type, name, dims)                                  \
  static type name dims;                                              \
  static constinit ::simt::detail::SharedSlot vgg_shared_slot_##name; \
  ::simt::detail::reach_shared(vgg_shared_slot_##name, &name, sizeof(name), #name)
// Lets `kernel` launch with up to `bytes` of dynamic shared memory; the emulator refuses more than 48 KiB without.
template <typename... P>
void vgg_opt_in_dynamic_shared(void (*kernel)(P...), size_t bytes) {
  ::simt::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
}
#endif

// Both builds: __launch_bounds__ (recorded and enforced at launch by the emulator).
#define VGG_LAUNCH_BOUNDS(...) __launch_bounds__(__VA_ARGS__)

#ifndef VGG_GPU_NS
#error "VGG_GPU_NS must be defined by the build (cuda or sim)"
#endif

namespace vgg::VGG_GPU_NS {

// Scratch memory on the backend's device (cuda: the caching allocator; sim: host memory). Freed memory is
// only reused by work queued after it on the same stream, so releasing it right after a launch is safe.
void* workspace_alloc(size_t bytes);
void workspace_free(void* ptr) noexcept;

class Workspace {
 public:
  explicit Workspace(size_t bytes) : ptr_(bytes ? workspace_alloc(bytes) : nullptr) {}
  ~Workspace() { workspace_free(ptr_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_;
};

// Ceil division for grid sizes.
constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `work` items, `per_block` items per block: at least 1, at most `max_blocks`
// (a few thousand blocks already fill every SM of an H100 several times over; the loop covers the rest).
inline dim3 grid_stride_blocks(int64_t work, int64_t per_block, int64_t max_blocks) {
  const int64_t blocks = ceil_div(work, per_block);
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks)));
}

// float4 loads and stores need 16-byte aligned addresses.
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// A GPU faults on a vector load or store whose address is not a multiple of its size; x86 does not, so the
// emulator build checks every one (the kernel's name and thread come with the exception, through the launch).
__device__ __forceinline__ void check_vector_aligned(const void* p, uintptr_t bytes) {
#if defined(VGG_SIMT_ACTIVE)
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
    throw std::logic_error("misaligned " + std::to_string(bytes) + "-byte vector access");
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace vgg::VGG_GPU_NS
