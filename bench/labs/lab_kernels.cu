// The production sources every kernel lab times, compiled once into lab_kernels.o and linked into each lab (one
// instantiation of every conv2d and linear kernel instead of one per lab): the GPU conv2d and linear entry points
// (namespace vgg::cuda), the plan and precision setters, and the CPU reference convolution. The runtime services
// they need are provided here: the stream (the legacy default stream, which the labs' events bracket), scratch
// memory (stream-ordered cudaMallocAsync, as the production allocator is stream-ordered too) and the after-launch
// hook (a no-op: the production one synchronises only under VGG_CUDA_SYNC_LAUNCHES, which would distort the
// timings; launch errors are still checked by each launcher).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/precision.cpp"
#include "cpu/conv_reference.cpp"
#include "cuda/conv2d.cu"
#include "cuda/linear.cu"

namespace vgg::cuda {
cudaStream_t current_stream() { return 0; }
void* workspace_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMallocAsync(&p, bytes, 0);
  if (status != cudaSuccess) {
    std::fprintf(stderr, "workspace_alloc(%zu bytes): %s\n", bytes, cudaGetErrorString(status));
    std::exit(2);
  }
  return p;
}
void workspace_free(void* ptr) noexcept {
  if (ptr) cudaFreeAsync(ptr, 0);
}
void after_launch(const std::string&) {}
}  // namespace vgg::cuda
