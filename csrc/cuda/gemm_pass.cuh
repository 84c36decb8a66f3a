// One pass of conv2d or linear as a GEMM: on the CUDA cores (gemm_plan.cuh, float32) or on tensor cores
// (tc_gemm.cuh, TF32 or BF16), with the operand loaders of gemm_loaders.cuh.
#pragma once

#include <cstdint>
#include <type_traits>

#include "gemm_plan.cuh"
#include "tc_gemm.cuh"

namespace vgg::VGG_GPU_NS::gemm {

// C (M, N) = A (M, kdim) * B (kdim, N) [+ bias]: Op = void for the CUDA-core kernel (float only), else Tf32Op or
// Bf16Op. ALoader/BLoader are loader templates over VEC and the element type, ap/bp their parameter structs.
template <class Op, template <bool, class> class ALoader, template <bool, class> class BLoader, class AParams,
          class BParams, class T>
inline void run_pass(const char* op, const AParams& ap, const BParams& bp, bool vec, int64_t M, int64_t N,
                     int64_t kdim, T* out, const T* bias) {
  if constexpr (std::is_void_v<Op>) run_gemm<ALoader, BLoader>(op, ap, bp, vec, M, N, kdim, out, bias);
  else run_tc_gemm<Op, ALoader, BLoader>(op, ap, bp, vec, M, N, kdim, out, bias);
}

// The 4-element vector loads (and cp.async copies) need 4 * sizeof(T)-byte aligned pointers.
template <class T>
inline bool vec_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

}  // namespace vgg::VGG_GPU_NS::gemm
