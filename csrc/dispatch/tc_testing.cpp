// Test-only bindings of the tensor-core paths (vggcore._C): the float32 matmul precision switch, the GPU GEMM
// plan override, and `_bf16_matmul`, which runs one bf16 conv2d/linear pass on sim or cuda from float32 tensors
// (inputs rounded to bf16 to nearest even, result widened back to float32) until bfloat16 tensors reach dispatch,
// the same on device-resident bf16 buffers for the benchmark, and event timing on vggcore's stream.
#include <pybind11/pybind11.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "../core/precision.h"
#include "dispatch.h"  // the GPU entry points, with stream_time_ms, tc_probe and describe_gemm_plan

namespace py = pybind11;

namespace vgg::detail {
namespace {

uint16_t round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// A bf16 buffer: the bits of n bfloat16 values in an int32 tensor of ceil(n/2) elements on the device.
int64_t bf16_count(const Tensor& buf) { return buf.numel() * 2; }
uint16_t* bf16_ptr(const Tensor& buf) { return static_cast<uint16_t*>(buf.raw()); }

int64_t count_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor bf16_from_float(const Tensor& t) {
  check_float("_bf16_from_float", "t", t);
  VGG_CHECK(t.dtype() == DType::Float32, TypeError, "_bf16_from_float: t must be float32");
  std::vector<float> host(static_cast<size_t>(t.numel()));
  t.copy_to_host(host.data());
  std::vector<uint16_t> bits(static_cast<size_t>(t.numel() + 1) & ~size_t{1}, 0);
  for (size_t i = 0; i < host.size(); ++i) bits[i] = round_bf16(host[i]);
  return Tensor::from_host(bits.data(), {static_cast<int64_t>(bits.size() / 2)}, DType::Int32, t.device());
}

Tensor bf16_to_float(const Tensor& buf, const std::vector<int64_t>& shape) {
  const int64_t n = count_of(shape);
  VGG_CHECK(buf.dtype() == DType::Int32 && (n + 1) / 2 == buf.numel(), ValueError,
            "_bf16_to_float: buffer of ", buf.numel(), " int32 does not hold shape ", shape_str(shape));
  std::vector<uint16_t> bits(static_cast<size_t>(buf.numel()) * 2);
  buf.copy_to_host(bits.data());
  std::vector<float> out(static_cast<size_t>(n));
  for (size_t i = 0; i < out.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>(bits[i]) << 16;
    std::memcpy(&out[i], &u, 4);
  }
  return Tensor::from_host(out.data(), shape, DType::Float32, buf.device());
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
    vgg::cuda::set_device(device.index);
    fn(std::integral_constant<int, 1>{});
    return;
  }
#endif
  throw ValueError(cat(op, ": bf16 tensor-core kernels run on sim or cuda, not ", device.str()));
}

// Runs one bf16 pass on bf16 buffers (asynchronous on cuda); returns the output buffer and its shape.
//   conv2d_forward (x, w [, bias]), conv2d_backward_data (dy, w; out_shape = x shape),
//   conv2d_backward_weight (x, dy; out_shape = w shape), linear_forward (x (M, IN), w (OUT, IN) [, bias]),
//   linear_backward_data (dy (M, OUT), w), linear_backward_weight (x, dy (M, OUT)).
std::pair<Tensor, std::vector<int64_t>> bf16_run(const std::string& op_name, const Tensor& a,
                                                 const std::vector<int64_t>& a_shape, const Tensor& b,
                                                 const std::vector<int64_t>& b_shape,
                                                 const std::optional<Tensor>& bias, std::vector<int64_t> out_shape,
                                                 int64_t stride, int64_t pad) {
  const char* op = op_name.c_str();
  const Device device = a.device();
  VGG_CHECK(b.device() == device && (!bias || bias->device() == device), ValueError, op,
            ": operands on different devices");
  for (const Tensor* t : {&a, &b, bias ? &*bias : nullptr})
    VGG_CHECK(t == nullptr || t->dtype() == DType::Int32, TypeError, op, ": operands must be bf16 buffers");
  VGG_CHECK(bf16_count(a) >= count_of(a_shape) && bf16_count(b) >= count_of(b_shape), ValueError, op,
            ": a buffer is smaller than its shape");
  const uint16_t* A = bf16_ptr(a);
  const uint16_t* B = bf16_ptr(b);
  const uint16_t* Bias = bias ? bf16_ptr(*bias) : nullptr;
  const bool conv = op_name.rfind("conv2d_", 0) == 0;
  const bool fwd = op_name == "conv2d_forward" || op_name == "linear_forward";
  const bool bwd_data = op_name == "conv2d_backward_data" || op_name == "linear_backward_data";
  const bool bwd_weight = op_name == "conv2d_backward_weight" || op_name == "linear_backward_weight";
  VGG_CHECK(fwd || bwd_data || bwd_weight, ValueError, "_bf16_matmul: unknown op '", op_name, "'");
  Conv2dShape s{};
  int64_t M = 0, OUT = 0, IN = 0;
  if (conv) {
    const std::vector<int64_t>& xs = bwd_data ? out_shape : a_shape;
    const std::vector<int64_t>& ws = bwd_weight ? out_shape : b_shape;
    s = conv_geometry(op, xs, ws, stride, pad);
    out_shape = fwd ? std::vector<int64_t>{s.N, s.P, s.Q, s.K} : bwd_data ? xs : ws;
  } else {
    VGG_CHECK(a_shape.size() == 2 && b_shape.size() == 2, ValueError, op, ": a and b must be 2-D");
    M = a_shape[0];
    OUT = bwd_weight ? b_shape[1] : b_shape[0];
    IN = bwd_weight ? a_shape[1] : b_shape[1];
    out_shape = fwd ? std::vector<int64_t>{M, OUT} : bwd_data ? std::vector<int64_t>{M, IN}
                                                   : std::vector<int64_t>{OUT, IN};
  }
  Tensor y = Tensor::empty({(count_of(out_shape) + 1) / 2}, DType::Int32, device);
  uint16_t* Y = bf16_ptr(y);
  on_backend(op, device, [&](auto backend) {
    py::gil_scoped_release release;
    if constexpr (decltype(backend)::value == 0) {
#ifdef VGG_WITH_SIM
      if (conv && fwd) sim::conv2d_forward_bf16(A, B, Bias, Y, s);
      else if (conv && bwd_data) sim::conv2d_backward_data_bf16(A, B, Y, s);
      else if (conv) sim::conv2d_backward_weight_bf16(A, B, Y, s);
      else if (fwd) sim::linear_forward_bf16(A, B, Bias, Y, M, OUT, IN);
      else if (bwd_data) sim::linear_backward_data_bf16(A, B, Y, M, OUT, IN);
      else sim::linear_backward_weight_bf16(A, B, Y, M, OUT, IN);
#endif
    } else {
#ifdef VGG_WITH_CUDA
      if (conv && fwd) cuda::conv2d_forward_bf16(A, B, Bias, Y, s);
      else if (conv && bwd_data) cuda::conv2d_backward_data_bf16(A, B, Y, s);
      else if (conv) cuda::conv2d_backward_weight_bf16(A, B, Y, s);
      else if (fwd) cuda::linear_forward_bf16(A, B, Bias, Y, M, OUT, IN);
      else if (bwd_data) cuda::linear_backward_data_bf16(A, B, Y, M, OUT, IN);
      else cuda::linear_backward_weight_bf16(A, B, Y, M, OUT, IN);
#endif
    }
  });
  return {y, out_shape};
}

Tensor bf16_matmul(const std::string& op_name, const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias,
                   const std::vector<int64_t>& out_shape, int64_t stride, int64_t pad) {
  VGG_CHECK(a.device().type != DeviceType::CPU, ValueError, op_name,
            ": bf16 tensor-core kernels run on sim or cuda, not ", a.device().str());
  std::optional<Tensor> bias_bits;
  if (bias) bias_bits = bf16_from_float(*bias);
  auto [y, shape] = bf16_run(op_name, bf16_from_float(a), a.shape(), bf16_from_float(b), b.shape(), bias_bits,
                             out_shape, stride, pad);
  return bf16_to_float(y, shape);
}

double stream_time_ms(const std::string& device_name, const py::function& fn, int iters) {
  const Device device = Device::parse(device_name);
  std::function<void()> call = [&fn] { fn(); };
#ifdef VGG_WITH_SIM
  if (device.type == DeviceType::Sim) return sim::stream_time_ms(call, iters);
#endif
#ifdef VGG_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    vgg::cuda::set_device(device.index);
    return cuda::stream_time_ms(call, iters);
  }
#endif
  throw ValueError("_stream_time_ms: device must be sim or cuda, got " + device.str());
}

std::vector<uint32_t> tc_probe(const std::string& device_name, int kind) {
  const Device device = Device::parse(device_name);
#ifdef VGG_WITH_SIM
  if (device.type == DeviceType::Sim) return sim::tc_probe(kind);
#endif
#ifdef VGG_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    vgg::cuda::set_device(device.index);
    return cuda::tc_probe(kind);
  }
#endif
  throw ValueError("_tc_probe: device must be sim or cuda, got " + device.str());
}

std::vector<int64_t> gemm_plan(const std::string& device_name, const std::string& precision, int64_t M, int64_t N,
                               int64_t K) {
  const Device device = Device::parse(device_name);
  const int kind = precision == "fp32" ? 0 : precision == "tf32" ? 1 : precision == "bf16" ? 2 : -1;
  VGG_CHECK(kind >= 0, ValueError, "_gpu_gemm_plan: precision must be fp32, tf32 or bf16, got '", precision, "'");
#ifdef VGG_WITH_SIM
  if (device.type == DeviceType::Sim) return sim::describe_gemm_plan(kind, M, N, K);
#endif
#ifdef VGG_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    vgg::cuda::set_device(device.index);
    return cuda::describe_gemm_plan(kind, M, N, K);
  }
#endif
  throw ValueError("_gpu_gemm_plan: device must be sim or cuda, got " + device.str());
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
  m.def("_bf16_from_float", &vgg::detail::bf16_from_float, py::arg("t"),
        "Test/bench-only: a float32 tensor rounded to bf16 bits, in an int32 buffer on the same device");
  m.def("_bf16_to_float", &vgg::detail::bf16_to_float, py::arg("buffer"), py::arg("shape"));
  m.def("_bf16_run", &vgg::detail::bf16_run, py::arg("op"), py::arg("a"), py::arg("a_shape"), py::arg("b"),
        py::arg("b_shape"), py::arg("bias") = std::nullopt, py::arg("out_shape") = std::vector<int64_t>{},
        py::arg("stride") = 1, py::arg("pad") = 0,
        "Test/bench-only: one bf16 pass on bf16 buffers, asynchronous; returns (buffer, shape)");
  m.def("_tc_probe", &vgg::detail::tc_probe, py::arg("device"), py::arg("kind"),
        "Fragment-layout probe (csrc/cuda/tc_probe.h): 32 lanes x 4 words of what mma/ldmatrix put in each lane");
  m.def("_gpu_gemm_plan", &vgg::detail::gemm_plan, py::arg("device"), py::arg("precision"), py::arg("M"),
        py::arg("N"), py::arg("K"),
        "The planner's choice for a dense GEMM: [large tiles, splits, SMs, blocks/SM large, blocks/SM small]");
  m.def("_stream_time_ms", &vgg::detail::stream_time_ms, py::arg("device"), py::arg("fn"), py::arg("iters"),
        "Milliseconds per call of fn() (called iters times): CUDA events on vggcore's stream (cuda), wall clock (sim)");
}
