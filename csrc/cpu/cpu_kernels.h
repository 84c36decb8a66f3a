// The CPU backend: one function per op and pass, T = float or double (explicitly instantiated for both).
//
// Conventions shared with the GPU backend (csrc/cuda/gpu_kernels.h has the same list with T = float):
//  - arguments go inputs, then outputs, then sizes and settings;
//  - every output is overwritten, never accumulated into (Python autograd does the accumulating);
//  - pointers are contiguous, 64-byte aligned at the start of a tensor, and never alias unless stated;
//  - arguments were validated by dispatch; kernels do not re-check them.
#pragma once

#include <cstdint>

#include "../augment.h"
#include "../sgd_config.h"
#include "../shapes.h"

namespace vgg::cpu {

// ---- convolution (implicit/explicit GEMM; see conv2d.cpp) -----------------------------------------
// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K)
template <typename T> void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s);
// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C)
template <typename T> void conv2d_backward_data(const T* dy, const T* w, T* dx, const Conv2dShape& s);
// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C)
template <typename T> void conv2d_backward_weight(const T* x, const T* dy, T* dw, const Conv2dShape& s);
// dy (rows, cols) -> db (cols) = sum over rows. Bias gradient of conv (rows = N*P*Q) and linear (rows = M).
template <typename T> void bias_backward(const T* dy, T* db, int64_t rows, int64_t cols);

// ---- fully connected: y = x w^T + b, as in PyTorch ------------------------------------------------
// x (M, IN), w (OUT, IN), bias (OUT) or nullptr -> y (M, OUT)
template <typename T> void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t OUT, int64_t IN);
// dy (M, OUT), w (OUT, IN) -> dx (M, IN) = dy w
template <typename T> void linear_backward_data(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN);
// x (M, IN), dy (M, OUT) -> dw (OUT, IN) = dy^T x
template <typename T> void linear_backward_weight(const T* x, const T* dy, T* dw, int64_t M, int64_t OUT, int64_t IN);

// ---- elementwise --------------------------------------------------------------------------------------
// x (n) -> y (n) = max(x, 0)
template <typename T> void relu_forward(const T* x, T* y, int64_t n);
// x (n) the forward input, dy (n) -> dx (n) = x > 0 ? dy : 0
template <typename T> void relu_backward(const T* x, const T* dy, T* dx, int64_t n);
// Inverted dropout with a counter-based mask (same mask on every device, see dropout_keep in rng.h):
// x (n) -> y (n) = keep(seed, offset + i) ? x / (1 - p) : 0. Backward is the same call on dy.
template <typename T> void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset);
// a (n), b (n) -> y (n) = a + b   (y may alias a or b)
template <typename T> void add(const T* a, const T* b, T* y, int64_t n);
// x (n) -> y (n) = alpha * x      (y may alias x)
template <typename T> void scale(const T* x, T* y, double alpha, int64_t n);
// y (n) = value
template <typename T> void fill(T* y, double value, int64_t n);

// ---- pooling --------------------------------------------------------------------------------------
// x (N,H,W,C) -> y (N,P,Q,C), argmax (N,P,Q,C): h*W + w of the winning input inside its image plane
// (first maximum in row-major window order wins, as in PyTorch; NaN wins over numbers).
template <typename T> void max_pool2d_forward(const T* x, T* y, int32_t* argmax, const Pool2dShape& s);
// dy (N,P,Q,C), argmax (N,P,Q,C) -> dx (N,H,W,C); gathers (each input sums the windows that chose it).
template <typename T> void max_pool2d_backward(const T* dy, const int32_t* argmax, T* dx, const Pool2dShape& s);
// x (N,H,W,C) -> y (N,P,Q,C) = window mean (divisor R*S)
template <typename T> void avg_pool2d_forward(const T* x, T* y, const Pool2dShape& s);
// dy (N,P,Q,C) -> dx (N,H,W,C)
template <typename T> void avg_pool2d_backward(const T* dy, T* dx, const Pool2dShape& s);
// x (N, HW, C) -> y (N, C) = mean over HW
template <typename T> void global_avg_pool_forward(const T* x, T* y, int64_t N, int64_t HW, int64_t C);
// dy (N, C) -> dx (N, HW, C) = dy / HW
template <typename T> void global_avg_pool_backward(const T* dy, T* dx, int64_t N, int64_t HW, int64_t C);

// ---- local response normalisation (formula in shapes.h) -----------------------------------------------
// x (rows, C) -> y (rows, C), scale (rows, C) kept for backward
template <typename T> void lrn_forward(const T* x, T* y, T* scale, const LrnShape& s);
// x, y, scale, dy (rows, C) -> dx (rows, C)
template <typename T> void lrn_backward(const T* x, const T* y, const T* scale, const T* dy, T* dx, const LrnShape& s);

// ---- softmax family, over the last axis, numerically stable (max subtracted) --------------------------
// x (rows, cols) -> y (rows, cols)
template <typename T> void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols);
// y the forward output, dy (rows, cols) -> dx = y * (dy - sum(dy * y))
template <typename T> void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols);
// x (rows, cols) -> y (rows, cols) = x - max - log(sum(exp(x - max)))
template <typename T> void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols);
// y the forward output, dy (rows, cols) -> dx = dy - exp(y) * sum(dy)
template <typename T> void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols);
// Cross-entropy fused with log-softmax. logits (rows, cols), target (rows) in [0, cols)
//   -> logp (rows, cols) kept for backward, loss (1) = mean over rows of -logp[r, target[r]]
template <typename T> void cross_entropy_forward(const T* logits, const int64_t* target, T* logp, T* loss, int64_t rows, int64_t cols);
// logp (rows, cols), target (rows), dloss (1) -> dx (rows, cols) = (exp(logp) - onehot(target)) * dloss / rows
template <typename T> void cross_entropy_backward(const T* logp, const int64_t* target, const T* dloss, T* dx, int64_t rows, int64_t cols);

// ---- optimiser --------------------------------------------------------------------------------------------
// In place: param (n), grad (n), momentum_buf (n) or nullptr when cfg.momentum == 0. Rule in sgd_config.h.
template <typename T> void sgd_update(T* param, const T* grad, T* momentum_buf, int64_t n, const SgdConfig& cfg);

// ---- augmentation (maths in augment.h) ------------------------------------------------------------------------
// images: packed uint8 RGB pixels, plans (N) -> out (N, crop, crop, 3) float32 (float32 only: the decoded pixels are
// uint8 and the result feeds float32 or bfloat16 training)
void augment_crops(const uint8_t* images, const AugmentImage* plans, float* out, int64_t N, int64_t crop,
                   float input_scale);

}  // namespace vgg::cpu
