// relu, dropout and the arithmetic autograd needs: validation and backend dispatch.
#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

Tensor relu_forward(const Tensor& x) {
  check_float("relu", "input", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), relu_forward, x.data<T>(), y.data<T>(), x.numel());
  return y;
}

Tensor relu_backward(const Tensor& x, const Tensor& dy) {
  const char* op = "relu_backward";
  check_float(op, "input", x);
  check_same(op, "input", x, "grad_output", dy);
  check_shape(op, "grad_output", dy, x.shape());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), relu_backward, x.data<T>(), dy.data<T>(), dx.data<T>(), x.numel());
  return dx;
}

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  check_float("dropout", "input", x);
  VGG_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout: p must be in [0, 1], got ", p);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), dropout, x.data<T>(), y.data<T>(), x.numel(), p, seed, offset);
  return y;
}

Tensor dropout_device_seed(const Tensor& x, double p, const Tensor& device_seed, uint64_t offset) {
  check_float("dropout", "input", x);
  VGG_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout: p must be in [0, 1], got ", p);
  VGG_CHECK(x.device().type != DeviceType::CPU, ValueError,
            "dropout: a device seed is for sim and cuda (graph replay); on the cpu pass the seed");
  VGG_CHECK(device_seed.defined() && device_seed.dtype() == DType::Int64 && device_seed.numel() == 1 &&
                device_seed.device() == x.device(),
            ValueError, "dropout: device_seed must be one int64 on ", x.device().str(), ", got ",
            device_seed.defined() ? describe(device_seed) : std::string("nothing"));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const auto* seed = reinterpret_cast<const uint64_t*>(device_seed.data<int64_t>());
  if (x.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), dropout, x.data<uint16_t>(), y.data<uint16_t>(), x.numel(), p, 0, offset, seed);
  } else {
    VGG_RUN_GPU(x.device(), dropout, x.data<float>(), y.data<float>(), x.numel(), p, 0, offset, seed);
  }
  return y;
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_float("add", "a", a);
  check_same("add", "a", a, "b", b);
  check_shape("add", "b", b, a.shape());
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  VGG_RUN_KERNEL(a.device(), a.dtype(), add, a.data<T>(), b.data<T>(), y.data<T>(), a.numel());
  return y;
}

Tensor scale(const Tensor& x, double alpha) {
  check_float("scale", "input", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), scale, x.data<T>(), y.data<T>(), alpha, x.numel());
  return y;
}

Tensor full(const Shape& shape, double value, DType dtype, const Device& device) {
  Tensor y = Tensor::empty(shape, dtype, device);
  if (dtype == DType::BFloat16 && device.type == DeviceType::CPU) {
    // bfloat16 is storage only on the cpu, but a constant of it is still useful (e.g. backward's seed gradient).
    const Tensor value_f32 = full({1}, value, DType::Float32, device);
    const uint16_t bits = cast(value_f32, DType::BFloat16).data<uint16_t>()[0];
    uint16_t* out = y.data<uint16_t>();
    for (int64_t i = 0, n = y.numel(); i < n; ++i) out[i] = bits;
    return y;
  }
  check_float("full", "output", y);
  VGG_RUN_KERNEL(device, dtype, fill, y.data<T>(), value, y.numel());
  return y;
}

}  // namespace vgg::ops
