// THE list of vggcore's ops: one declaration per op and pass, on whole tensors.
//
// Each function validates its arguments (shapes, dtypes, devices, settings) and throws ValueError/TypeError with
// a message naming the op, the argument and the shapes; then it allocates the outputs on the inputs' device and
// runs the backend picked by that device (csrc/cpu, or csrc/cuda built for "cuda" or "sim").
// Layouts: activations NHWC, conv weights (K, R, S, C), linear weights (OUT, IN). Backward passes return fresh
// gradients; accumulation into .grad happens in Python autograd.
#pragma once

#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "shapes.h"

namespace vgg::ops {

using Shape = std::vector<int64_t>;

// ---- convolution ----------------------------------------------------------------------------------------
// x (N,H,W,C), w (K,R,S,C), bias (K) -> y (N,P,Q,K);  P = (H + 2 pad - R) / stride + 1, likewise Q
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, int64_t stride, int64_t pad);
// The same, with the geometry it validated: the backward passes take that one instead of checking it again.
std::pair<Tensor, Conv2dShape> conv2d_forward_with_shape(const Tensor& x, const Tensor& w,
                                                         const std::optional<Tensor>& bias, int64_t stride,
                                                         int64_t pad);
// dy (N,P,Q,K), w (K,R,S,C) -> dx with x_shape (N,H,W,C)
Tensor conv2d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, int64_t stride, int64_t pad);
// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C), s the forward's geometry (dy's and w's shapes must be its own)
Tensor conv2d_backward_data(const Tensor& dy, const Tensor& w, const Conv2dShape& s);
// x (N,H,W,C), dy (N,P,Q,K) -> dw with w_shape (K,R,S,C)
Tensor conv2d_backward_weight(const Tensor& x, const Tensor& dy, const Shape& w_shape, int64_t stride, int64_t pad);
// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C), s the forward's geometry (x's and dy's shapes must be its own)
Tensor conv2d_backward_weight(const Tensor& x, const Tensor& dy, const Conv2dShape& s);
// dy (..., K) -> db (K): the sum over every axis but the last (bias gradient of conv2d and linear)
Tensor bias_backward(const Tensor& dy);

// ---- fully connected ----------------------------------------------------------------------------------------
// x (..., IN), w (OUT, IN), bias (OUT) -> y (..., OUT) = x w^T + bias
Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias);
// dy (..., OUT), w (OUT, IN) -> dx (..., IN)
Tensor linear_backward_data(const Tensor& dy, const Tensor& w);
// x (..., IN), dy (..., OUT) -> dw (OUT, IN)
Tensor linear_backward_weight(const Tensor& x, const Tensor& dy);

// ---- elementwise ---------------------------------------------------------------------------------------------
Tensor relu_forward(const Tensor& x);                    // any shape
Tensor relu_backward(const Tensor& x, const Tensor& dy); // x is the forward input
// Inverted dropout; the mask is a pure function of (seed, offset + element index) on every device (csrc/rng.h).
// The backward pass is the same call on dy with the same seed and offset. A data-parallel rank holding rows
// [r0, r0 + N) of a global batch passes offset = r0 * (elements per row) to draw the single-process mask.
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset = 0);
// The same with the seed read by the kernel from `device_seed` (one int64 holding the seed's bits, on x's sim or
// cuda device): a captured graph's replay then uses the seed the host wrote there before it (vggcore.Graph).
Tensor dropout_device_seed(const Tensor& x, double p, const Tensor& device_seed, uint64_t offset = 0);
Tensor add(const Tensor& a, const Tensor& b);            // same shape, dtype and device
Tensor scale(const Tensor& x, double alpha);
Tensor full(const Shape& shape, double value, DType dtype, const Device& device);
// x -> the same values in `dtype` (float32, float64 on the cpu, bfloat16), rounded to nearest even when narrowing;
// x itself when it already has that dtype. Autograd's cast is this call in both directions.
Tensor cast(const Tensor& x, DType dtype);

// ---- pooling (floor mode, no padding) ------------------------------------------------------------------------
// x (N,H,W,C) -> (y (N,P,Q,C), argmax (N,P,Q,C) int32 = h*W + w)
std::tuple<Tensor, Tensor> max_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride);
// dy (N,P,Q,C), argmax (N,P,Q,C) -> dx with x_shape
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, int64_t kernel, int64_t stride);
Tensor avg_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride);
Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, int64_t kernel, int64_t stride);
// x (N,H,W,C) -> y (N,C): the mean over H and W (dense evaluation's class-score averaging)
Tensor global_avg_pool_forward(const Tensor& x);
Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape);

// ---- local response normalisation across channels (formula in shapes.h) -------------------------------------------
// x (..., C) -> (y, scale) of the same shape; scale is kept for backward
std::tuple<Tensor, Tensor> lrn_forward(const Tensor& x, int64_t size, double alpha, double beta, double k);
Tensor lrn_backward(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& dy, int64_t size,
                    double alpha, double beta, double k);

// ---- softmax family over the last axis ----------------------------------------------------------------------------
Tensor softmax_forward(const Tensor& x);
Tensor softmax_backward(const Tensor& y, const Tensor& dy);
Tensor log_softmax_forward(const Tensor& x);
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);
// logits (N, classes), target (N) int64 labels in [0, classes) on any device
//   -> (loss (), logp (N, classes), labels (N) int64: the target, range-checked, on the logits' device)
std::tuple<Tensor, Tensor, Tensor> cross_entropy_forward(const Tensor& logits, const Tensor& target);
// logp (N, classes), labels (N) as cross_entropy_forward returned them, dloss () -> dlogits (N, classes).
// The labels' range was checked by the forward; this checks their dtype, shape and device only (no host copy).
Tensor cross_entropy_backward(const Tensor& logp, const Tensor& labels, const Tensor& dloss);

// ---- optimiser ----------------------------------------------------------------------------------------------------
// In place on param and momentum_buf (rule in sgd_config.h); momentum_buf must be given iff momentum > 0.
// device_hyper (sim and cuda): 3 int64 holding the bits of lr, momentum and weight_decay as doubles, on param's
// device, read by the kernel instead of the three numbers (a captured graph's replay; vggcore.Graph).
void sgd_update(Tensor& param, const Tensor& grad, const std::optional<Tensor>& momentum_buf, double lr,
                double momentum, double weight_decay, bool nesterov, bool first_step,
                const std::optional<Tensor>& device_hyper = std::nullopt);

// ---- augmentation of decoded images (maths in augment.h) -------------------------------------------------------
// images (bytes) uint8: decoded RGB images of any sizes packed in one buffer, each (height, width, 3) row-major;
// plans (N, 11) float64 on the cpu, one row per image: offset (bytes), height, width, x0, y0, x1, y1 (the source
// region in that image's pixels), flip (0 or 1), shift_r, shift_g, shift_b
//   -> (N, crop, crop, 3) in dtype (float32; bfloat16 on sim and cuda) on the images' device:
//      out[n, y, x, c] = (resample(image_n, region_n)[y, flip ? crop-1-x : x, c] - shift_n[c]) * input_scale
Tensor augment_crops(const Tensor& images, const Tensor& plans, int64_t crop, double input_scale, DType dtype);
// The same on the cpu, on the caller's host memory (numpy arrays): images (image_bytes), plans (N, 11) as above,
// out (N, crop, crop, 3) float32 overwritten.
void augment_crops_host(const uint8_t* images, int64_t image_bytes, const double* plans, int64_t N, int64_t crop,
                        double input_scale, float* out);

}  // namespace vgg::ops
