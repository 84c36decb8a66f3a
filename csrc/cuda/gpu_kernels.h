// The GPU backend's entry points: the same list as csrc/cpu/cpu_kernels.h with T = float, same argument order,
// with their bfloat16 overloads (T = uint16_t).
//
// The kernels in csrc/cuda/*.cu are compiled twice from one source: by nvcc into namespace vgg::cuda (device
// "cuda") and by g++ against the SIMT emulator into namespace vgg::sim (device "sim"). This file has no include
// guard on purpose: dispatch includes it once per backend with VGG_GPU_NS set to `cuda` or `sim`.
//
// All pointers are device pointers of the backend (host memory for sim). Launches are asynchronous on the
// backend's stream; errors (bad launch, CUDA error, emulator-detected race/deadlock) are thrown as
// std::runtime_error. Every output is overwritten.
#include <cstdint>

#include "../augment.h"
#include "../sgd_config.h"
#include "../shapes.h"
// The entry points of tests and benchmarks: event timing, the tensor-core probe and the GEMM planner's choice.
#include "stream_timing.h"
#include "tc_probe.h"

#ifndef VGG_GPU_NS
#error "define VGG_GPU_NS (cuda or sim) before including gpu_kernels.h"
#endif

namespace vgg::VGG_GPU_NS {

// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K)
void conv2d_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s);
// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C)
void conv2d_backward_data(const float* dy, const float* w, float* dx, const Conv2dShape& s);
// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C)
void conv2d_backward_weight(const float* x, const float* dy, float* dw, const Conv2dShape& s);

// x (M, IN), w (OUT, IN), bias (OUT) or nullptr -> y (M, OUT)
void linear_forward(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t OUT, int64_t IN);
// dy (M, OUT), w (OUT, IN) -> dx (M, IN)
void linear_backward_data(const float* dy, const float* w, float* dx, int64_t M, int64_t OUT, int64_t IN);
// x (M, IN), dy (M, OUT) -> dw (OUT, IN)
void linear_backward_weight(const float* x, const float* dy, float* dw, int64_t M, int64_t OUT, int64_t IN);

// bfloat16 (raw bits in uint16_t) on BF16 tensor cores: the same shapes as the float32 passes above, float32
// accumulation, outputs (and the bias add) rounded to nearest even once at the end.
void conv2d_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, const Conv2dShape& s);
void conv2d_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, const Conv2dShape& s);
void conv2d_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, const Conv2dShape& s);
void linear_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M, int64_t OUT, int64_t IN);
void linear_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, int64_t M, int64_t OUT, int64_t IN);
void linear_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, int64_t M, int64_t OUT, int64_t IN);

// The ops on float32 and on bfloat16 storage alike, T = float or uint16_t (bfloat16 bit patterns,
// core/bfloat16.h): a bfloat16 element is widened to float32, computed in float32 and rounded to nearest even once
// when stored; sums (pool gradients, the bias gradient, LRN windows) accumulate in float32 or wider. dropout draws
// the same mask for both with the same seed. LRN's scale stays float32: backward divides by it and raises it to
// -beta, where 8 bits would cost accuracy. sgd_update: param, grad and momentum buffer all T (mixed precision
// keeps float32 masters and uses the float32 call).
#define VGG_GPU_OPS_OF(T)                                                                                     \
  /* dy (rows, cols) -> db (cols) */                                                                          \
  void bias_backward(const T* dy, T* db, int64_t rows, int64_t cols);                                         \
  void relu_forward(const T* x, T* y, int64_t n);                                                             \
  void relu_backward(const T* x, const T* dy, T* dx, int64_t n);                                              \
  void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset);                        \
  /* the same, reading the seed from device memory (a graph's replay) instead of `seed`; no default */        \
  /* argument: the kernel labs include this header once per kernel file, and C++ allows a default once */     \
  void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset,                         \
               const uint64_t* device_seed);                                                                  \
  void add(const T* a, const T* b, T* y, int64_t n);                                                          \
  void scale(const T* x, T* y, double alpha, int64_t n);                                                      \
  void fill(T* y, double value, int64_t n);                                                                   \
  void max_pool2d_forward(const T* x, T* y, int32_t* argmax, const Pool2dShape& s);                           \
  void max_pool2d_backward(const T* dy, const int32_t* argmax, T* dx, const Pool2dShape& s);                  \
  void avg_pool2d_forward(const T* x, T* y, const Pool2dShape& s);                                            \
  void avg_pool2d_backward(const T* dy, T* dx, const Pool2dShape& s);                                         \
  void global_avg_pool_forward(const T* x, T* y, int64_t N, int64_t HW, int64_t C);                           \
  void global_avg_pool_backward(const T* dy, T* dx, int64_t N, int64_t HW, int64_t C);                        \
  void lrn_forward(const T* x, T* y, float* scale, const LrnShape& s);                                        \
  void lrn_backward(const T* x, const T* y, const float* scale, const T* dy, T* dx, const LrnShape& s);       \
  void sgd_update(T* param, const T* grad, T* momentum_buf, int64_t n, const SgdConfig& cfg);
VGG_GPU_OPS_OF(float)
VGG_GPU_OPS_OF(uint16_t)
#undef VGG_GPU_OPS_OF

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols);
void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);
void log_softmax_forward(const float* x, float* y, int64_t rows, int64_t cols);
void log_softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols);
void cross_entropy_forward(const float* logits, const int64_t* target, float* logp, float* loss, int64_t rows, int64_t cols);
void cross_entropy_backward(const float* logp, const int64_t* target, const float* dloss, float* dx, int64_t rows, int64_t cols);

// images: packed uint8 RGB pixels, plans (N) (augment.h) -> out (N, crop, crop, 3) float32, or bfloat16 rounded once
void augment_crops(const uint8_t* images, const AugmentImage* plans, float* out, int64_t N, int64_t crop,
                   float input_scale);
void augment_crops(const uint8_t* images, const AugmentImage* plans, uint16_t* out, int64_t N, int64_t crop,
                   float input_scale);

// ---- bfloat16 only ----------------------------------------------------------------------------------------------
// x (n) float32 -> y (n) bfloat16, rounded to nearest even (NaN stays NaN); and bfloat16 -> float32 (exact).
void cast(const float* x, uint16_t* y, int64_t n);
void cast(const uint16_t* x, float* y, int64_t n);

// bfloat16 logits -> float32 probabilities / log-probabilities / loss (the loss ops run in float32, as PyTorch's
// autocast does). Their backward passes take and return float32; dispatch rounds the input gradient to bfloat16.
void softmax_forward(const uint16_t* x, float* y, int64_t rows, int64_t cols);
void log_softmax_forward(const uint16_t* x, float* y, int64_t rows, int64_t cols);
void cross_entropy_forward(const uint16_t* logits, const int64_t* target, float* logp, float* loss, int64_t rows,
                           int64_t cols);

}  // namespace vgg::VGG_GPU_NS
