// Test-only bindings of the tensor-core paths (vggcore._C): the float32 matmul precision switch, the GPU GEMM
// plan override, and `_bf16_matmul`, which runs one bf16 conv2d/linear pass on sim or cuda from float32 tensors
// (inputs rounded to bf16 to nearest even, result widened back to float32) until bfloat16 tensors reach dispatch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../core/precision.h"
#include "dispatch.h"

namespace py = pybind11;

namespace vgg::detail {
namespace {

uint16_t round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// bf16 bits of a float32 tensor, in a device buffer (an int32 tensor of half the length holds the bytes).
struct Bf16Buffer {
  Tensor storage;
  int64_t n = 0;
  uint16_t* ptr() const { return n ? static_cast<uint16_t*>(storage.raw()) : nullptr; }
};

Bf16Buffer to_bf16(const char* op, const char* name, const Tensor& t, Device device) {
  check_float(op, name, t);
  VGG_CHECK(t.dtype() == DType::Float32, TypeError, op, ": ", name, " must be float32");
  std::vector<float> host(static_cast<size_t>(t.numel()));
  t.copy_to_host(host.data());
  std::vector<uint16_t> bits(static_cast<size_t>(t.numel() + 1) & ~size_t{1}, 0);
  for (size_t i = 0; i < host.size(); ++i) bits[i] = round_bf16(host[i]);
  return Bf16Buffer{Tensor::from_host(bits.data(), {static_cast<int64_t>(bits.size() / 2)}, DType::Int32, device),
                    t.numel()};
}

Bf16Buffer empty_bf16(int64_t n, Device device) {
  return Bf16Buffer{Tensor::empty({(n + 1) / 2}, DType::Int32, device), n};
}

Tensor widen(const Bf16Buffer& b, const std::vector<int64_t>& shape, Device device) {
  std::vector<uint16_t> bits(static_cast<size_t>(b.storage.numel()) * 2);
  b.storage.copy_to_host(bits.data());
  std::vector<float> out(static_cast<size_t>(b.n));
  for (size_t i = 0; i < out.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(&out[i], &u, 4);
  }
  return Tensor::from_host(out.data(), shape, DType::Float32, device);
}

template <class Fn>
void on_backend(const char* op, Device device, Fn&& fn) {
#ifdef VGG_WITH_SIM
  if (device.type == DeviceType::Sim) {
    fn(std::integral_constant<int, 0>{});
    return;
  }
#endif
#ifdef VGG_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    fn(std::integral_constant<int, 1>{});
    return;
  }
#endif
  throw ValueError(cat(op, ": bf16 tensor-core kernels run on sim or cuda, not ", device.str()));
}

Tensor bf16_matmul(const std::string& op_name, const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias,
                   const std::vector<int64_t>& out_shape, int64_t stride, int64_t pad) {
  const char* op = op_name.c_str();
  const Device device = a.device();
  const bool conv = op_name.rfind("conv2d_", 0) == 0;
  const bool linear = op_name.rfind("linear_", 0) == 0;
  VGG_CHECK(conv || linear, ValueError, "_bf16_matmul: unknown op '", op_name, "'");
  const Bf16Buffer A = to_bf16(op, "a", a, device), B = to_bf16(op, "b", b, device);
  Bf16Buffer Bias;
  if (bias) Bias = to_bf16(op, "bias", *bias, device);
  if (conv) {
    // The forward geometry: forward (x, w), backward data (dy, w, out_shape = x shape), weight (x, dy, w shape).
    const bool fwd = op_name == "conv2d_forward", bwd_data = op_name == "conv2d_backward_data";
    VGG_CHECK(fwd || bwd_data || op_name == "conv2d_backward_weight", ValueError, "_bf16_matmul: unknown op '",
              op_name, "'");
    const std::vector<int64_t>& xs = bwd_data ? out_shape : a.shape();
    const std::vector<int64_t>& ws = fwd || bwd_data ? b.shape() : out_shape;
    VGG_CHECK(xs.size() == 4 && ws.size() == 4, ValueError, op, ": x and w shapes must be 4-D");
    Conv2dShape s{xs[0], xs[1], xs[2], xs[3], ws[0], ws[1], ws[2], stride, pad, 0, 0};
    s.P = (s.H + 2 * pad - s.R) / stride + 1;
    s.Q = (s.W + 2 * pad - s.S) / stride + 1;
    const std::vector<int64_t> ys{s.N, s.P, s.Q, s.K};
    const std::vector<int64_t> result = fwd ? ys : bwd_data ? xs : ws;
    int64_t n = 1;
    for (int64_t d : result) n *= d;
    Bf16Buffer Y = empty_bf16(n, device);
    on_backend(op, device, [&](auto backend) {
      py::gil_scoped_release release;
      if constexpr (decltype(backend)::value == 0) {
#ifdef VGG_WITH_SIM
        if (fwd) sim::conv2d_forward_bf16(A.ptr(), B.ptr(), Bias.ptr(), Y.ptr(), s);
        else if (bwd_data) sim::conv2d_backward_data_bf16(A.ptr(), B.ptr(), Y.ptr(), s);
        else sim::conv2d_backward_weight_bf16(A.ptr(), B.ptr(), Y.ptr(), s);
#endif
      } else {
#ifdef VGG_WITH_CUDA
        if (fwd) cuda::conv2d_forward_bf16(A.ptr(), B.ptr(), Bias.ptr(), Y.ptr(), s);
        else if (bwd_data) cuda::conv2d_backward_data_bf16(A.ptr(), B.ptr(), Y.ptr(), s);
        else cuda::conv2d_backward_weight_bf16(A.ptr(), B.ptr(), Y.ptr(), s);
#endif
      }
    });
    return widen(Y, result, device);
  }
  VGG_CHECK(a.dim() == 2 && b.dim() == 2, ValueError, op, ": a and b must be 2-D");
  const bool fwd = op_name == "linear_forward", bwd_data = op_name == "linear_backward_data";
  VGG_CHECK(fwd || bwd_data || op_name == "linear_backward_weight", ValueError, "_bf16_matmul: unknown op '", op_name,
            "'");
  // forward (x (M, IN), w (OUT, IN)), backward data (dy (M, OUT), w (OUT, IN)), weight (x (M, IN), dy (M, OUT)).
  const int64_t M = a.shape()[0];
  const int64_t OUT = fwd || bwd_data ? b.shape()[0] : b.shape()[1];
  const int64_t IN = fwd || bwd_data ? b.shape()[1] : a.shape()[1];
  const std::vector<int64_t> result = fwd ? std::vector<int64_t>{M, OUT} : bwd_data ? std::vector<int64_t>{M, IN} : std::vector<int64_t>{OUT, IN};
  Bf16Buffer Y = empty_bf16(result[0] * result[1], device);
  on_backend(op, device, [&](auto backend) {
    py::gil_scoped_release release;
    if constexpr (decltype(backend)::value == 0) {
#ifdef VGG_WITH_SIM
      if (fwd) sim::linear_forward_bf16(A.ptr(), B.ptr(), Bias.ptr(), Y.ptr(), M, OUT, IN);
      else if (bwd_data) sim::linear_backward_data_bf16(A.ptr(), B.ptr(), Y.ptr(), M, OUT, IN);
      else sim::linear_backward_weight_bf16(A.ptr(), B.ptr(), Y.ptr(), M, OUT, IN);
#endif
    } else {
#ifdef VGG_WITH_CUDA
      if (fwd) cuda::linear_forward_bf16(A.ptr(), B.ptr(), Bias.ptr(), Y.ptr(), M, OUT, IN);
      else if (bwd_data) cuda::linear_backward_data_bf16(A.ptr(), B.ptr(), Y.ptr(), M, OUT, IN);
      else cuda::linear_backward_weight_bf16(A.ptr(), B.ptr(), Y.ptr(), M, OUT, IN);
#endif
    }
  });
  return widen(Y, result, device);
}

}  // namespace
}  // namespace vgg::detail

void bind_tc_testing(py::module_& m) {
  m.def("set_float32_matmul_precision", &vgg::set_float32_matmul_precision, py::arg("precision"),
        "'highest' (default: float32 conv2d/linear on CUDA cores) or 'high' (TF32 tensor cores on sim and cuda)");
  m.def("get_float32_matmul_precision", &vgg::get_float32_matmul_precision);
  m.def("_set_gpu_gemm_plan", &vgg::set_gpu_gemm_plan, py::arg("plan"),
        "Test-only: force the GPU GEMM plan ('auto', 'small', 'large', 'small:SPLITS', 'large:SPLITS')");
  m.def("_get_gpu_gemm_plan", &vgg::get_gpu_gemm_plan);
  m.def("_bf16_matmul", &vgg::detail::bf16_matmul, py::arg("op"), py::arg("a"), py::arg("b"),
        py::arg("bias") = std::nullopt, py::arg("out_shape") = std::vector<int64_t>{}, py::arg("stride") = 1,
        py::arg("pad") = 0,
        "Test-only: one bf16 conv2d_*/linear_* pass on sim/cuda from float32 tensors (rounded to bf16 first); "
        "conv2d_backward_data takes out_shape = x shape, conv2d_backward_weight out_shape = w shape");
}
