// stream_time_ms (stream_timing.h): CUDA events on the backend's stream, or the wall clock on the emulator.
#include <chrono>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "stream_timing.h"

namespace vgg::VGG_GPU_NS {

double stream_time_ms(const std::function<void()>& launch, int iters) {
  if (iters < 1) throw std::invalid_argument("stream_time_ms: iters must be >= 1");
#if defined(__CUDACC__)
  cudaEvent_t start, stop;
  auto check = [](cudaError_t status, const char* what) {
    if (status != cudaSuccess)
      throw std::runtime_error(std::string("stream_time_ms: ") + what + ": " + cudaGetErrorString(status));
  };
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  float ms = 0.0f;
  try {
    check(cudaEventRecord(start, current_stream()), "cudaEventRecord");
    for (int i = 0; i < iters; ++i) launch();
    check(cudaEventRecord(stop, current_stream()), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return static_cast<double>(ms) / iters;
#else
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) launch();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::milli>(t1 - t0).count() / iters;
#endif
}

}  // namespace vgg::VGG_GPU_NS
