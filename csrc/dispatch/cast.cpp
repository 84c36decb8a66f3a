// Conversions between the floating dtypes: float32 <-> bfloat16 on every device (GPU kernels on sim and cuda, a
// host loop on the cpu), and float64 <-> float32 / bfloat16 on the cpu (float64 lives there only).
#include <cmath>
#include <cstring>

#include "../core/bfloat16.h"
#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

namespace {

// float64 -> bfloat16 rounded once to nearest even: round to float32 with round-to-odd (truncate, then set the
// lowest bit when anything was dropped), then to bfloat16. float32 keeps 16 more bits than bfloat16, so the odd
// bit stands in for everything dropped and the second rounding is exact; rounding to float32 to nearest first
// would round twice (a value just above a bfloat16 tie could land on the tie and go to even).
uint16_t double_to_bf16(double value) {
  if (std::isnan(value)) return float_to_bf16(static_cast<float>(value));
  float f = static_cast<float>(value);
  if (static_cast<double>(f) != value) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(value)) f = std::nextafter(f, 0.0f);  // toward zero
    uint32_t bits = float_to_bits(f);
    bits |= 1u;
    f = bits_to_float(bits);
  }
  return float_to_bf16(f);
}

template <typename In, typename Out, typename Convert>
void host_convert(const Tensor& x, Tensor& y, Convert convert) {
  const In* src = x.data<In>();
  Out* dst = y.data<Out>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] = convert(src[i]);
}

void cast_on_host(const Tensor& x, Tensor& y) {
  const DType from = x.dtype(), to = y.dtype();
  if (from == DType::Float32 && to == DType::BFloat16)
    host_convert<float, uint16_t>(x, y, [](float v) { return float_to_bf16(v); });
  else if (from == DType::BFloat16 && to == DType::Float32)
    host_convert<uint16_t, float>(x, y, [](uint16_t v) { return bf16_to_float(v); });
  else if (from == DType::Float64 && to == DType::Float32)
    host_convert<double, float>(x, y, [](double v) { return static_cast<float>(v); });
  else if (from == DType::Float32 && to == DType::Float64)
    host_convert<float, double>(x, y, [](float v) { return static_cast<double>(v); });
  else if (from == DType::Float64 && to == DType::BFloat16)
    host_convert<double, uint16_t>(x, y, [](double v) { return double_to_bf16(v); });
  else if (from == DType::BFloat16 && to == DType::Float64)
    host_convert<uint16_t, double>(x, y, [](uint16_t v) { return static_cast<double>(bf16_to_float(v)); });
}

}  // namespace

Tensor cast(const Tensor& x, DType dtype) {
  const char* op = "cast";
  VGG_CHECK(x.defined(), TypeError, op, ": input is not a tensor");
  const auto is_float = [](DType d) { return d == DType::Float32 || d == DType::Float64 || d == DType::BFloat16; };
  VGG_CHECK(is_float(x.dtype()), TypeError, op, ": input must be float32, float64 or bfloat16, got ",
            dtype_name(x.dtype()));
  VGG_CHECK(is_float(dtype), TypeError, op, ": dtype must be float32, float64 or bfloat16, got ", dtype_name(dtype));
  if (dtype == x.dtype()) return x;
  VGG_CHECK(dtype != DType::Float64 || x.device().type == DeviceType::CPU, TypeError, op, ": cannot convert to ",
            "float64 on ", x.device().str(), ", which holds float32 and bfloat16 only (float64 is for the cpu)");
  Tensor y = Tensor::empty(x.shape(), dtype, x.device());
  if (x.numel() == 0) return y;
  if (x.device().type == DeviceType::CPU) {
    cast_on_host(x, y);
  } else if (dtype == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), cast, x.data<float>(), y.data<uint16_t>(), x.numel());
  } else {
    VGG_RUN_GPU(x.device(), cast, x.data<uint16_t>(), y.data<float>(), x.numel());
  }
  return y;
}

}  // namespace vgg::ops
