// Local response normalisation across channels: validation and backend dispatch.
#include <cmath>

#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

namespace {

LrnShape lrn_geometry(const char* op, const Tensor& x, int64_t size, double alpha, double beta, double k) {
  check_float(op, "input", x);
  VGG_CHECK(x.dim() >= 2, ValueError, op, ": input must have a channel axis last (N, H, W, C), got shape ",
            shape_str(x.shape()));
  check_positive(op, "size", size);
  VGG_CHECK(std::isfinite(alpha) && std::isfinite(beta) && std::isfinite(k), ValueError, op,
            ": alpha, beta and k must be finite, got alpha=", alpha, " beta=", beta, " k=", k);
  VGG_CHECK(k > 0 && alpha >= 0, ValueError, op, ": need k > 0 and alpha >= 0 so the scale stays positive, got k=", k,
            " alpha=", alpha);
  LrnShape s{};
  s.C = x.size(-1);
  s.rows = s.C == 0 ? 0 : x.numel() / s.C;
  s.size = size, s.alpha = alpha, s.beta = beta, s.k = k;
  return s;
}

// The dtype of the saved scale: that of x, except float32 for bfloat16 x (backward divides by it).
DType scale_dtype(const Tensor& x) { return x.dtype() == DType::BFloat16 ? DType::Float32 : x.dtype(); }

}  // namespace

std::tuple<Tensor, Tensor> lrn_forward(const Tensor& x, int64_t size, double alpha, double beta, double k) {
  const LrnShape s = lrn_geometry("local_response_norm", x, size, alpha, beta, k);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor scale = Tensor::empty(x.shape(), scale_dtype(x), x.device());
  if (x.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), lrn_forward, x.data<uint16_t>(), y.data<uint16_t>(), scale.data<float>(), s);
  } else {
    VGG_RUN_KERNEL_NO_BF16(x.device(), x.dtype(), lrn_forward, x.data<T>(), y.data<T>(), scale.data<T>(), s);
  }
  return {y, scale};
}

Tensor lrn_backward(const Tensor& x, const Tensor& y, const Tensor& scale, const Tensor& dy, int64_t size,
                    double alpha, double beta, double k) {
  const char* op = "local_response_norm_backward";
  const LrnShape s = lrn_geometry(op, x, size, alpha, beta, k);
  for (auto [name, t] : {std::pair{"output", &y}, std::pair{"grad_output", &dy}}) {
    check_same(op, "input", x, name, *t);
    check_shape(op, name, *t, x.shape());
  }
  check_float(op, "scale", scale);
  VGG_CHECK(scale.dtype() == scale_dtype(x), TypeError, op, ": scale must be ", dtype_name(scale_dtype(x)),
            " for ", dtype_name(x.dtype()), " input (the scale local_response_norm returned), got ",
            dtype_name(scale.dtype()));
  VGG_CHECK(scale.device() == x.device(), ValueError, op, ": scale is on ", scale.device().str(), " but input is on ",
            x.device().str());
  check_shape(op, "scale", scale, x.shape());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), lrn_backward, x.data<uint16_t>(), y.data<uint16_t>(), scale.data<float>(),
                dy.data<uint16_t>(), dx.data<uint16_t>(), s);
  } else {
    VGG_RUN_KERNEL_NO_BF16(x.device(), x.dtype(), lrn_backward, x.data<T>(), y.data<T>(), scale.data<T>(),
                           dy.data<T>(), dx.data<T>(), s);
  }
  return dx;
}

}  // namespace vgg::ops
