// Device time of a sequence of launches, for the benchmarks (bench/conv.py through vggcore._C._stream_time_ms).
// No include guard on purpose, as gpu_kernels.h: included once per backend with VGG_GPU_NS set to cuda or sim.
#include <functional>

#ifndef VGG_GPU_NS
#error "define VGG_GPU_NS (cuda or sim) before including stream_timing.h"
#endif

namespace vgg::VGG_GPU_NS {

// Milliseconds per call of `launch` (called `iters` times): cuda records CUDA events on the backend's stream
// around the calls (device time, the host's queuing overlapped); sim, which runs synchronously, the wall clock.
double stream_time_ms(const std::function<void()>& launch, int iters);

}  // namespace vgg::VGG_GPU_NS
