// conv2d, linear and the bias gradient: validation and backend dispatch (kernels in cpu/ and cuda/).
// bfloat16 conv2d and linear (sim, cuda) run the *_bf16 entry points: bfloat16 in and out, float32 accumulation.
#include "../ops.h"
#include "dispatch.h"

namespace vgg::detail {

Conv2dShape conv_geometry(const char* op, const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                          int64_t stride, int64_t pad) {
  VGG_CHECK(x_shape.size() == 4, ValueError, op, ": input must be 4-D NHWC (N, H, W, C), got shape ",
            shape_str(x_shape));
  VGG_CHECK(w_shape.size() == 4, ValueError, op, ": weight must be 4-D (K, R, S, C) = (out, kh, kw, in), got shape ",
            shape_str(w_shape));
  VGG_CHECK(stride >= 1, ValueError, op, ": stride must be >= 1, got ", stride);
  VGG_CHECK(pad >= 0, ValueError, op, ": padding must be >= 0, got ", pad);
  Conv2dShape s{};
  s.N = x_shape[0], s.H = x_shape[1], s.W = x_shape[2], s.C = x_shape[3];
  s.K = w_shape[0], s.R = w_shape[1], s.S = w_shape[2];
  s.stride_h = s.stride_w = stride;
  s.pad_h = s.pad_w = pad;
  VGG_CHECK(w_shape[3] == s.C, ValueError, op, ": input has ", s.C, " channels but weight expects ", w_shape[3],
            " (input ", shape_str(x_shape), " NHWC, weight ", shape_str(w_shape), " KRSC)");
  VGG_CHECK(s.N >= 1 && s.H >= 1 && s.W >= 1 && s.C >= 1, ValueError, op, ": input shape ", shape_str(x_shape),
            " has an empty dimension");
  VGG_CHECK(s.K >= 1 && s.R >= 1 && s.S >= 1, ValueError, op, ": weight shape ", shape_str(w_shape),
            " has an empty dimension");
  // Bounds first, so the arithmetic below cannot overflow.
  constexpr int64_t kMaxExtent = int64_t{1} << 30;
  VGG_CHECK(pad <= (int64_t{1} << 20) && s.H <= kMaxExtent && s.W <= kMaxExtent && s.R <= kMaxExtent &&
                s.S <= kMaxExtent,
            ValueError, op, ": padding ", pad, ", input ", shape_str(x_shape), " or weight ", shape_str(w_shape),
            " is too large");
  VGG_CHECK(s.R <= s.H + 2 * pad && s.S <= s.W + 2 * pad, ValueError, op, ": kernel ", s.R, "x", s.S,
            " is larger than the padded input ", s.H + 2 * pad, "x", s.W + 2 * pad, " (input ", shape_str(x_shape),
            ", padding ", pad, ")");
  s.P = (s.H + 2 * pad - s.R) / stride + 1;
  s.Q = (s.W + 2 * pad - s.S) / stride + 1;
  return s;
}

}  // namespace vgg::detail

namespace vgg::ops {

using namespace vgg::detail;

namespace {

// The GPU kernels (devices sim and cuda) index one image, one filter bank and a GEMM's rows and reduction with
// 32-bit ints, and put a GEMM's column tiles on grid.y (at most 65535 blocks of the small tiles' 64 columns).
// Checked here, before any allocation, so that a problem too large for them is a ValueError naming the op; the
// kernels in csrc/cuda keep their own checks for callers that bypass dispatch (bench/labs).
constexpr int64_t kGpuIndexLimit = (int64_t{1} << 31) - 1;
constexpr int64_t kGpuMaxGemmColumns = int64_t{65535} * 64;

void check_gpu_gemm(const char* op, const Device& device, int64_t M, int64_t N, int64_t kdim) {
  if (device.type == DeviceType::CPU) return;
  VGG_CHECK(M <= kGpuIndexLimit && kdim <= kGpuIndexLimit && N <= kGpuMaxGemmColumns, ValueError, op, ": on ",
            device.str(), " the GEMM of this problem (M = ", M, ", N = ", N, ", K = ", kdim,
            ") exceeds the GPU kernels' limits (M and K below 2^31, N at most ", kGpuMaxGemmColumns, ")");
}

// One pass's limits on devices sim and cuda: the image and filter bank of s, and the pass's GEMM (M, N, kdim).
void check_gpu_pass(const char* op, const Device& device, const Conv2dShape& s, int64_t M, int64_t N, int64_t kdim) {
  if (device.type == DeviceType::CPU) return;
  VGG_CHECK(s.H * s.W * s.C <= kGpuIndexLimit && s.P * s.Q * s.K <= kGpuIndexLimit &&
                s.K * s.R * s.S * s.C <= kGpuIndexLimit,
            ValueError, op, ": on ", device.str(), " one image (", s.H, "x", s.W, "x", s.C, " in, ", s.P, "x", s.Q,
            "x", s.K, " out) or the filter bank (", s.K, "x", s.R, "x", s.S, "x", s.C,
            ") exceeds the GPU kernels' 2^31-element limit");
  check_gpu_gemm(op, device, M, N, kdim);
}

// The two tensors of a backward pass against the forward's geometry: a float dtype the device computes, one
// device and dtype for both, and the shapes the geometry gives them.
void check_pass_tensors(const char* op, const char* a_name, const Tensor& a, const Shape& a_shape,
                        const char* b_name, const Tensor& b, const Shape& b_shape) {
  check_float(op, a_name, a);
  check_same(op, a_name, a, b_name, b);
  check_shape(op, a_name, a, a_shape);
  check_shape(op, b_name, b, b_shape);
}

// (rows, cols) view of a tensor whose last axis is `cols`.
int64_t rows_of(const Tensor& t) { return t.dim() == 0 || t.size(-1) == 0 ? 0 : t.numel() / t.size(-1); }

}  // namespace

std::pair<Tensor, Conv2dShape> conv2d_forward_with_shape(const Tensor& x, const Tensor& w,
                                                         const std::optional<Tensor>& bias, int64_t stride,
                                                         int64_t pad) {
  const char* op = "conv2d";
  check_float(op, "input", x);
  check_same(op, "input", x, "weight", w);
  const Conv2dShape s = conv_geometry(op, x.shape(), w.shape(), stride, pad);
  if (bias) {
    check_same(op, "input", x, "bias", *bias);
    VGG_CHECK(bias->shape() == Shape{s.K}, ValueError, op, ": bias must have shape (", s.K, ",) for weight ",
              shape_str(w.shape()), ", got ", shape_str(bias->shape()));
  }
  check_gpu_pass(op, x.device(), s, s.N * s.P * s.Q, s.K, s.R * s.S * s.C);
  Tensor y = Tensor::empty({s.N, s.P, s.Q, s.K}, x.dtype(), x.device());
  VGG_RUN_KERNEL_BF16(x.device(), x.dtype(), conv2d_forward, conv2d_forward_bf16,
                      x.data<T>(), w.data<T>(), bias ? bias->data<T>() : nullptr, y.data<T>(), s);
  return {std::move(y), s};
}

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, int64_t stride, int64_t pad) {
  return conv2d_forward_with_shape(x, w, bias, stride, pad).first;
}

// The backward passes with the forward's geometry: s was validated there, so only the tensors are checked
// against it (dtype, device, and that their shapes are the ones s describes), plus the pass's own GPU limits.
Tensor conv2d_backward_data(const Tensor& dy, const Tensor& w, const Conv2dShape& s) {
  const char* op = "conv2d_backward_data";
  check_pass_tensors(op, "grad_output", dy, {s.N, s.P, s.Q, s.K}, "weight", w, {s.K, s.R, s.S, s.C});
  check_gpu_pass(op, dy.device(), s, s.N * s.H * s.W, s.C, s.R * s.S * s.K);
  Tensor dx = Tensor::empty({s.N, s.H, s.W, s.C}, dy.dtype(), dy.device());
  VGG_RUN_KERNEL_BF16(dy.device(), dy.dtype(), conv2d_backward_data, conv2d_backward_data_bf16,
                      dy.data<T>(), w.data<T>(), dx.data<T>(), s);
  return dx;
}

// The bindings' entry points without a forward's geometry: derive it, then the one path above.
Tensor conv2d_backward_data(const Tensor& dy, const Tensor& w, const Shape& x_shape, int64_t stride, int64_t pad) {
  return conv2d_backward_data(dy, w, conv_geometry("conv2d_backward_data", x_shape, w.shape(), stride, pad));
}

Tensor conv2d_backward_weight(const Tensor& x, const Tensor& dy, const Conv2dShape& s) {
  const char* op = "conv2d_backward_weight";
  check_pass_tensors(op, "input", x, {s.N, s.H, s.W, s.C}, "grad_output", dy, {s.N, s.P, s.Q, s.K});
  check_gpu_pass(op, x.device(), s, s.K, s.R * s.S * s.C, s.N * s.P * s.Q);
  Tensor dw = Tensor::empty({s.K, s.R, s.S, s.C}, x.dtype(), x.device());
  VGG_RUN_KERNEL_BF16(x.device(), x.dtype(), conv2d_backward_weight, conv2d_backward_weight_bf16,
                      x.data<T>(), dy.data<T>(), dw.data<T>(), s);
  return dw;
}

Tensor conv2d_backward_weight(const Tensor& x, const Tensor& dy, const Shape& w_shape, int64_t stride, int64_t pad) {
  return conv2d_backward_weight(x, dy, conv_geometry("conv2d_backward_weight", x.shape(), w_shape, stride, pad));
}

Tensor bias_backward(const Tensor& dy) {
  const char* op = "bias_backward";
  check_float(op, "grad_output", dy);
  VGG_CHECK(dy.dim() >= 1, ValueError, op, ": grad_output must have at least one dimension");
  const int64_t cols = dy.size(-1), rows = rows_of(dy);
  Tensor db = Tensor::empty({cols}, dy.dtype(), dy.device());
  VGG_RUN_KERNEL(dy.device(), dy.dtype(), bias_backward, dy.data<T>(), db.data<T>(), rows, cols);
  return db;
}

namespace {

void check_linear(const char* op, const Tensor& x, const char* x_name, const Tensor& w) {
  check_float(op, x_name, x);
  check_same(op, x_name, x, "weight", w);
  VGG_CHECK(w.dim() == 2, ValueError, op, ": weight must be 2-D (out_features, in_features), got shape ",
            shape_str(w.shape()));
  VGG_CHECK(x.dim() >= 1, ValueError, op, ": ", x_name, " must have at least one dimension");
  VGG_CHECK(w.size(0) >= 1 && w.size(1) >= 1, ValueError, op, ": weight shape ", shape_str(w.shape()),
            " has an empty dimension");
}

Shape with_last(const Shape& shape, int64_t last) {
  Shape out = shape;
  out.back() = last;
  return out;
}

}  // namespace

Tensor linear_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias) {
  const char* op = "linear";
  check_linear(op, x, "input", w);
  const int64_t OUT = w.size(0), IN = w.size(1);
  VGG_CHECK(x.size(-1) == IN, ValueError, op, ": input has ", x.size(-1), " features in its last axis but weight ",
            shape_str(w.shape()), " expects ", IN, " (input shape ", shape_str(x.shape()), ")");
  if (bias) {
    check_same(op, "input", x, "bias", *bias);
    VGG_CHECK(bias->shape() == Shape{OUT}, ValueError, op, ": bias must have shape (", OUT, ",) for weight ",
              shape_str(w.shape()), ", got ", shape_str(bias->shape()));
  }
  const int64_t M = rows_of(x);
  check_gpu_gemm(op, x.device(), M, OUT, IN);
  Tensor y = Tensor::empty(with_last(x.shape(), OUT), x.dtype(), x.device());
  if (M == 0) return y;
  VGG_RUN_KERNEL_BF16(x.device(), x.dtype(), linear_forward, linear_forward_bf16,
                      x.data<T>(), w.data<T>(), bias ? bias->data<T>() : nullptr, y.data<T>(), M, OUT, IN);
  return y;
}

Tensor linear_backward_data(const Tensor& dy, const Tensor& w) {
  const char* op = "linear_backward_data";
  check_linear(op, dy, "grad_output", w);
  const int64_t OUT = w.size(0), IN = w.size(1);
  VGG_CHECK(dy.size(-1) == OUT, ValueError, op, ": grad_output ", shape_str(dy.shape()), " does not match weight ",
            shape_str(w.shape()));
  const int64_t M = rows_of(dy);
  check_gpu_gemm(op, dy.device(), M, IN, OUT);
  Tensor dx = Tensor::empty(with_last(dy.shape(), IN), dy.dtype(), dy.device());
  if (M == 0) return dx;
  VGG_RUN_KERNEL_BF16(dy.device(), dy.dtype(), linear_backward_data, linear_backward_data_bf16,
                      dy.data<T>(), w.data<T>(), dx.data<T>(), M, OUT, IN);
  return dx;
}

Tensor linear_backward_weight(const Tensor& x, const Tensor& dy) {
  const char* op = "linear_backward_weight";
  check_float(op, "input", x);
  check_same(op, "input", x, "grad_output", dy);
  VGG_CHECK(x.dim() >= 1 && dy.dim() == x.dim() && rows_of(x) == rows_of(dy), ValueError, op, ": input ",
            shape_str(x.shape()), " and grad_output ", shape_str(dy.shape()), " disagree on the batch axes");
  const int64_t IN = x.size(-1), OUT = dy.size(-1), M = rows_of(x);
  if (M == 0) return Tensor::zeros({OUT, IN}, x.dtype(), x.device());
  check_gpu_gemm(op, x.device(), OUT, IN, M);
  Tensor dw = Tensor::empty({OUT, IN}, x.dtype(), x.device());
  VGG_RUN_KERNEL_BF16(x.device(), x.dtype(), linear_backward_weight, linear_backward_weight_bf16,
                      x.data<T>(), dy.data<T>(), dw.data<T>(), M, OUT, IN);
  return dw;
}

}  // namespace vgg::ops
