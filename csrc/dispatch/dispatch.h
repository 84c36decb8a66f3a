// Shared by the op implementations in csrc/dispatch/: argument checks that throw clear errors, and the macro
// that runs a kernel on the backend of a tensor's device.
#pragma once

#include <string>

#include "../core/errors.h"
#include "../core/tensor.h"
#include "../cpu/cpu_kernels.h"

#ifdef VGG_WITH_SIM
#define VGG_GPU_NS sim
#include "../cuda/gpu_kernels.h"
#undef VGG_GPU_NS
#endif
#ifdef VGG_WITH_CUDA
#define VGG_GPU_NS cuda
#include "../cuda/gpu_kernels.h"
#undef VGG_GPU_NS
#include "../cuda/runtime.h"
#endif

namespace vgg::detail {

// conv2d's geometry, validated once: the forward tensors' shapes x (N, H, W, C) and w (K, R, S, C), stride and
// padding checked (ValueError naming `op`) and the output size derived. Defined in conv.cpp.
Conv2dShape conv_geometry(const char* op, const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                          int64_t stride, int64_t pad);

inline std::string describe(const Tensor& t) {
  return cat(shape_str(t.shape()), " ", dtype_name(t.dtype()), " on ", t.device().str());
}

// A defined float tensor whose dtype the device's backend supports: the cpu computes float32 and float64, sim and
// cuda float32 and bfloat16 (a bfloat16 tensor on the cpu is storage only: convert it, or move it to sim/cuda).
inline void check_float(const char* op, const char* name, const Tensor& t) {
  VGG_CHECK(t.defined(), TypeError, op, ": ", name, " is not a tensor");
  VGG_CHECK(t.dtype() == DType::Float32 || t.dtype() == DType::Float64 || t.dtype() == DType::BFloat16, TypeError,
            op, ": ", name, " must be float32, float64 or bfloat16, got ", dtype_name(t.dtype()));
  VGG_CHECK(t.dtype() != DType::Float64 || t.device().type == DeviceType::CPU, TypeError, op, ": ", name,
            " is float64 on device ", t.device().str(),
            ", which runs float32 and bfloat16 only (use float32, or the cpu)");
  VGG_CHECK(t.dtype() != DType::BFloat16 || t.device().type != DeviceType::CPU, TypeError, op, ": ", name,
            " is bfloat16 on the cpu, whose kernels run float32 and float64 only: convert it with "
            ".to(dtype=\"float32\"), or run on sim/cuda (shape ", shape_str(t.shape()), ")");
}

inline void check_rank(const char* op, const char* name, const Tensor& t, int64_t rank, const char* layout) {
  VGG_CHECK(t.dim() == rank, ValueError, op, ": ", name, " must be ", rank, "-D ", layout, ", got shape ",
            shape_str(t.shape()));
}

// `other` has the dtype and device of `ref`.
inline void check_same(const char* op, const char* ref_name, const Tensor& ref, const char* name, const Tensor& other) {
  check_float(op, name, other);
  VGG_CHECK(ref.dtype() == other.dtype(), TypeError, op, ": ", name, " is ", dtype_name(other.dtype()), " but ",
            ref_name, " is ", dtype_name(ref.dtype()), " (", name, " ", describe(other), ", ", ref_name, " ",
            describe(ref), ")");
  VGG_CHECK(ref.device() == other.device(), ValueError, op, ": ", name, " is on ", other.device().str(), " but ",
            ref_name, " is on ", ref.device().str(), "; move them to one device with .to()");
}

inline void check_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& expected) {
  VGG_CHECK(t.shape() == expected, ValueError, op, ": ", name, " must have shape ", shape_str(expected), ", got ",
            shape_str(t.shape()));
}

inline void check_positive(const char* op, const char* name, int64_t value) {
  VGG_CHECK(value >= 1, ValueError, op, ": ", name, " must be >= 1, got ", value);
}

}  // namespace vgg::detail

// Runs `fn` of the backend that owns `device`, with `T` naming the element type inside the argument list:
//   VGG_RUN_KERNEL(x.device(), x.dtype(), relu_forward, x.data<T>(), y.data<T>(), n);
// cpu: vgg::cpu::fn<float|double>; sim: vgg::sim::fn and cuda: vgg::cuda::fn (on that GPU), with T = float, or
// T = uint16_t (bfloat16 bits) for a bfloat16 dtype. VGG_RUN_KERNEL_BF16 names a different function for bfloat16
// (conv2d and linear: conv2d_forward_bf16, ...). check_float has already refused bfloat16 on the cpu.
#define VGG_RUN_CPU(dtype, fn, ...)                      \
  if ((dtype) == ::vgg::DType::Float64) {                \
    using T = double;                                    \
    ::vgg::cpu::fn<T>(__VA_ARGS__);                      \
  } else {                                               \
    using T = float;                                     \
    ::vgg::cpu::fn<T>(__VA_ARGS__);                      \
  }

#ifdef VGG_WITH_SIM
#define VGG_RUN_SIM(dtype, fn, bf16_fn, ...)             \
  if ((dtype) == ::vgg::DType::BFloat16) {               \
    using T = uint16_t;                                  \
    ::vgg::sim::bf16_fn(__VA_ARGS__);                    \
  } else {                                               \
    using T = float;                                     \
    ::vgg::sim::fn(__VA_ARGS__);                         \
  }
#else
#define VGG_RUN_SIM(dtype, fn, bf16_fn, ...) throw ::vgg::ValueError("device sim is not available in this build");
#endif

#ifdef VGG_WITH_CUDA
#define VGG_RUN_CUDA(device, dtype, fn, bf16_fn, ...)    \
  {                                                      \
    ::vgg::cuda::set_device((device).index);             \
    if ((dtype) == ::vgg::DType::BFloat16) {             \
      using T = uint16_t;                                \
      ::vgg::cuda::bf16_fn(__VA_ARGS__);                 \
    } else {                                             \
      using T = float;                                   \
      ::vgg::cuda::fn(__VA_ARGS__);                      \
    }                                                    \
  }
#else
#define VGG_RUN_CUDA(device, dtype, fn, bf16_fn, ...) \
  throw ::vgg::ValueError("device cuda is not available in this build");
#endif

#define VGG_RUN_KERNEL_BF16(device, dtype, fn, bf16_fn, ...)          \
  do {                                                                \
    switch ((device).type) {                                          \
      case ::vgg::DeviceType::CPU:                                    \
        VGG_RUN_CPU(dtype, fn, __VA_ARGS__) break;                    \
      case ::vgg::DeviceType::Sim:                                    \
        VGG_RUN_SIM(dtype, fn, bf16_fn, __VA_ARGS__) break;           \
      case ::vgg::DeviceType::CUDA:                                   \
        VGG_RUN_CUDA(device, dtype, fn, bf16_fn, __VA_ARGS__) break;  \
    }                                                                 \
  } while (0)

#define VGG_RUN_KERNEL(device, dtype, fn, ...) VGG_RUN_KERNEL_BF16(device, dtype, fn, fn, __VA_ARGS__)

// Runs `fn` of the GPU backend owning `device` (sim or cuda) with explicitly typed arguments: the bfloat16 paths
// whose pointers are not all of one element type (lrn's float32 scale, softmax's float32 output, casts).
#ifdef VGG_WITH_SIM
#define VGG_RUN_GPU_SIM(fn, ...) ::vgg::sim::fn(__VA_ARGS__);
#else
#define VGG_RUN_GPU_SIM(fn, ...) throw ::vgg::ValueError("device sim is not available in this build");
#endif
#ifdef VGG_WITH_CUDA
#define VGG_RUN_GPU_CUDA(device, fn, ...)      \
  {                                            \
    ::vgg::cuda::set_device((device).index);   \
    ::vgg::cuda::fn(__VA_ARGS__);              \
  }
#else
#define VGG_RUN_GPU_CUDA(device, fn, ...) throw ::vgg::ValueError("device cuda is not available in this build");
#endif
#define VGG_RUN_GPU(device, fn, ...)                                        \
  do {                                                                      \
    switch ((device).type) {                                                \
      case ::vgg::DeviceType::CPU:                                          \
        throw ::vgg::TypeError(#fn ": this bfloat16 path runs on sim and cuda only"); \
      case ::vgg::DeviceType::Sim:                                          \
        VGG_RUN_GPU_SIM(fn, __VA_ARGS__) break;                             \
      case ::vgg::DeviceType::CUDA:                                         \
        VGG_RUN_GPU_CUDA(device, fn, __VA_ARGS__) break;                    \
    }                                                                       \
  } while (0)

// VGG_RUN_KERNEL for the ops with float32 kernels only on sim and cuda (the backward passes of the loss ops, whose
// forward passes return float32 even for bfloat16 input, and LRN's float32 scale): the caller has routed bfloat16
// elsewhere (VGG_RUN_GPU) or refused it (check_no_bf16).
#define VGG_RUN_KERNEL_NO_BF16(device, dtype, fn, ...)                        \
  do {                                                                        \
    if ((device).type == ::vgg::DeviceType::CPU) {                            \
      VGG_RUN_CPU(dtype, fn, __VA_ARGS__)                                     \
    } else {                                                                  \
      using T = float;                                                        \
      VGG_RUN_GPU(device, fn, __VA_ARGS__);                                   \
    }                                                                         \
  } while (0)

namespace vgg::detail {

// The loss ops' backward passes take the float32 tensors their forward passes returned.
inline void check_no_bf16(const char* op, const char* name, const Tensor& t, const char* why) {
  VGG_CHECK(t.dtype() != DType::BFloat16, TypeError, op, ": ", name, " must be float32 (", why, "), got bfloat16 ",
            describe(t));
}

}  // namespace vgg::detail
