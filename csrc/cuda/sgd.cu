// SGD update of the GPU backend, PyTorch's rule (sgd_config.h, torch.optim.SGD with dampening 0):
//   d = grad + weight_decay * param
//   momentum != 0: buf = first_step ? d : momentum * buf + d;  d = nesterov ? d + momentum * buf : buf
//   param -= lr * d
// In place on param (n) and momentum_buf (n, nullptr when momentum == 0); grad (n) is read only.
//
// Memory bound: a grid-stride loop with a float4 body when the pointers are 16-byte aligned, scalars for the rest.
#include <cstdint>

#include "common.cuh"
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
};

// One element: updates p and, with momentum, b. b is not read on the first step (the buffer is uninitialised).
__device__ __forceinline__ void sgd_element(float& p, float g, float& b, const SgdParams& c) {
  const double pd = static_cast<double>(p);
  const double d = static_cast<double>(g) + c.weight_decay * pd;
  if (c.use_momentum) {
    const double buf = c.first_step ? d : c.momentum * static_cast<double>(b) + d;
    b = static_cast<float>(buf);
    // The step reads the buffer as stored (rounded to float), as PyTorch's update reads it back.
    const double stored = static_cast<double>(b);
    p = static_cast<float>(pd - c.lr * (c.nesterov ? d + c.momentum * stored : stored));
  } else {
    p = static_cast<float>(pd - c.lr * d);
  }
}

// param (n), grad (n), buf (n) or nullptr -> param, buf updated in place. Float4 groups [0, n4), then [4*n4, n).
__global__ void sgd_update_kernel(float* param, const float* grad, float* buf, int64_t n4, int64_t n, SgdParams c) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float4* param4 = reinterpret_cast<float4*>(param);
  const float4* grad4 = reinterpret_cast<const float4*>(grad);
  float4* buf4 = reinterpret_cast<float4*>(buf);
  for (int64_t i = start; i < n4; i += stride) {
    float4 p = param4[i];
    const float4 g = grad4[i];
    // Skip the load on the first step: the buffer holds garbage (and compute-sanitizer's initcheck would object).
    float4 b = c.use_momentum && !c.first_step ? buf4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    sgd_element(p.x, g.x, b.x, c);
    sgd_element(p.y, g.y, b.y, c);
    sgd_element(p.z, g.z, b.z, c);
    sgd_element(p.w, g.w, b.w, c);
    param4[i] = p;
    if (c.use_momentum) buf4[i] = b;
  }
  for (int64_t i = 4 * n4 + start; i < n; i += stride) {
    float p = param[i];
    float b = c.use_momentum && !c.first_step ? buf[i] : 0.0f;
    sgd_element(p, grad[i], b, c);
    param[i] = p;
    if (c.use_momentum) buf[i] = b;
  }
}

}  // namespace

void sgd_update(float* param, const float* grad, float* momentum_buf, int64_t n, const SgdConfig& cfg) {
  if (n <= 0) return;
  SgdParams c;
  c.lr = cfg.lr;
  c.momentum = cfg.momentum;
  c.weight_decay = cfg.weight_decay;
  c.use_momentum = cfg.momentum != 0.0;
  c.nesterov = cfg.nesterov;
  c.first_step = cfg.first_step;
  const bool aligned =
      aligned16(param) && aligned16(grad) && (!c.use_momentum || aligned16(momentum_buf));
  const int64_t n4 = aligned ? n / 4 : 0;
  const dim3 grid = grid_stride_blocks(n4 + (n - 4 * n4), kSgdThreads, kSgdMaxBlocks);
  VGG_LAUNCH(grid, dim3(kSgdThreads), 0, sgd_update_kernel)(param, grad, momentum_buf, n4, n, c);
  VGG_CHECK_LAUNCH("sgd_update");
}

}  // namespace vgg::VGG_GPU_NS
