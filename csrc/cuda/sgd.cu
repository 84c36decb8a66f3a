// SGD update of the GPU backend, PyTorch's rule (sgd_config.h, torch.optim.SGD with dampening 0):
//   d = grad + weight_decay * param
//   momentum != 0: buf = first_step ? d : momentum * buf + d;  d = nesterov ? d + momentum * buf : buf
//   param -= lr * d
// In place on param (n) and momentum_buf (n, nullptr when momentum == 0); grad (n) is read only.
//
// Memory bound: a grid-stride loop with a 4-wide body when the pointers are 16-byte aligned, scalars for the rest.
// Templated on the storage of param, grad and buffer (float, or bfloat16 bits rounded once per store).
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kSgdThreads = 256;
constexpr int64_t kSgdMaxBlocks = 4096;  // grid-stride beyond this

// The hyper-parameters of one step, kept in double: the step's arithmetic runs in double and each stored value is
// rounded to float once, as in the CPU twin (csrc/cpu/sgd.cpp), so both backends agree to the last bit or so.
// Double costs nothing here even on GPUs with slow FP64: ~6 flops per 20 bytes of memory traffic.
struct SgdParams {
  double lr, momentum, weight_decay;
  bool use_momentum, nesterov, first_step;
  const double* hyper;  // lr, momentum, weight_decay in device memory (a graph's replay), or nullptr
};

// Rounds to the storage of T: float, or float then bfloat16 (the value a store then a load gives back).
template <typename T> __device__ __forceinline__ float stored_as(double v);
template <> __device__ __forceinline__ float stored_as<float>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float stored_as<uint16_t>(double v) {
  return bf16_to_float(float_to_bf16(static_cast<float>(v)));
}

// One element: updates p and, with momentum, b. b is not read on the first step (the buffer is uninitialised).
template <typename T>
__device__ __forceinline__ void sgd_element(float& p, float g, float& b, const SgdParams& c) {
  const double pd = static_cast<double>(p);
  const double d = static_cast<double>(g) + c.weight_decay * pd;
  if (c.use_momentum) {
    const double buf = c.first_step ? d : c.momentum * static_cast<double>(b) + d;
    b = stored_as<T>(buf);
    // The step reads the buffer as stored (rounded to T), as PyTorch's update reads it back.
    const double stored = static_cast<double>(b);
    p = stored_as<T>(pd - c.lr * (c.nesterov ? d + c.momentum * stored : stored));
  } else {
    p = stored_as<T>(pd - c.lr * d);
  }
}

// param (n), grad (n), buf (n) or nullptr -> param, buf updated in place. Float4 groups [0, n4), then [4*n4, n).
template <typename T>
__global__ void sgd_update_kernel(T* param, const T* grad, T* buf, int64_t n4, int64_t n, SgdParams c) {
  if (c.hyper != nullptr) {
    c.lr = c.hyper[0];
    c.momentum = c.hyper[1];
    c.weight_decay = c.hyper[2];
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = start; i < n4; i += stride) {
    float4 p = load4(param, i);
    const float4 g = load4(grad, i);
    // Skip the load on the first step: the buffer holds garbage (and compute-sanitizer's initcheck would object).
    float4 b = c.use_momentum && !c.first_step ? load4(buf, i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    sgd_element<T>(p.x, g.x, b.x, c);
    sgd_element<T>(p.y, g.y, b.y, c);
    sgd_element<T>(p.z, g.z, b.z, c);
    sgd_element<T>(p.w, g.w, b.w, c);
    store4(param, i, p);
    if (c.use_momentum) store4(buf, i, b);
  }
  for (int64_t i = 4 * n4 + start; i < n; i += stride) {
    float p = load_element(param, i);
    float b = c.use_momentum && !c.first_step ? load_element(buf, i) : 0.0f;
    sgd_element<T>(p, load_element(grad, i), b, c);
    store_element(param, i, p);
    if (c.use_momentum) store_element(buf, i, b);
  }
}

template <typename T>
void launch_sgd_update(T* param, const T* grad, T* momentum_buf, int64_t n, const SgdConfig& cfg) {
  if (n <= 0) return;
  SgdParams c;
  c.lr = cfg.lr;
  c.momentum = cfg.momentum;
  c.weight_decay = cfg.weight_decay;
  c.use_momentum = cfg.momentum != 0.0;
  c.nesterov = cfg.nesterov;
  c.first_step = cfg.first_step;
  c.hyper = cfg.device_hyper;
  const bool aligned =
      aligned16(param) && aligned16(grad) && (!c.use_momentum || aligned16(momentum_buf));
  const int64_t n4 = aligned ? n / 4 : 0;
  const dim3 grid = grid_stride_blocks(n4 + (n - 4 * n4), kSgdThreads, kSgdMaxBlocks);
  VGG_LAUNCH(grid, dim3(kSgdThreads), 0, sgd_update_kernel<T>)(param, grad, momentum_buf, n4, n, c);
  VGG_CHECK_LAUNCH("sgd_update");
}

}  // namespace

void sgd_update(float* param, const float* grad, float* momentum_buf, int64_t n, const SgdConfig& cfg) {
  launch_sgd_update(param, grad, momentum_buf, n, cfg);
}
void sgd_update(uint16_t* param, const uint16_t* grad, uint16_t* momentum_buf, int64_t n, const SgdConfig& cfg) {
  launch_sgd_update(param, grad, momentum_buf, n, cfg);
}

}  // namespace vgg::VGG_GPU_NS
