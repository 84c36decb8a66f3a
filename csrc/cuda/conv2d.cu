// 2-D convolution of the GPU backend (NHWC activations, KRSC weights), all three passes as implicit GEMMs on
// the shared tile kernel of gemm_kernel.cuh. Outputs are overwritten.
//
//   forward          y  (N*P*Q, K)   = im2col(x) (N*P*Q, R*S*C)  * w^T (R*S*C, K)        + bias
//   backward data    dx (N*H*W, C)   = gather(dy) (N*H*W, R*S*K) * w' ((r,s,k), C)
//   backward weight  dw (K, R*S*C)   = dy^T (K, N*P*Q)           * im2col(x) (N*P*Q, R*S*C), split-K over N*P*Q
//
// With float32 matmul precision "high" the float32 passes run on the TF32 tensor-core kernel (tc_gemm.cuh); the
// bfloat16 entry points always do (BF16 tensor cores, float32 accumulation, outputs rounded to nearest even).
//
// Backward data gathers dy at p = (h + pad - r) / stride only where the division is exact, so any stride works;
// for stride > 1 most taps are skipped zeros (VGG uses stride 1 throughout). A 1x1, stride-1, unpadded
// convolution is exactly a linear layer over N*H*W rows and runs on the dense loaders of linear.cu.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../core/precision.h"
#include "common.cuh"
#include "gemm_pass.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace conv2d_detail {

using gemm::run_pass;
using gemm::vec_aligned;

// The loaders' int32 view of s with operand p (rows: the GEMM operand's row count); dispatch has checked that one
// image and one filter bank fit in int (check_limits below repeats it for callers that bypass dispatch).
template <class T>
inline gemm::ConvViewOf<T> conv_view(const T* p, int64_t rows, const Conv2dShape& s) {
  auto i32 = [](int64_t v) { return static_cast<int>(v); };
  return gemm::ConvViewOf<T>{p,           rows,          i32(s.N),      i32(s.H),      i32(s.W),
                             i32(s.C),    i32(s.K),      i32(s.R),      i32(s.S),      i32(s.P),
                             i32(s.Q),    i32(s.stride_h), i32(s.stride_w), i32(s.pad_h), i32(s.pad_w)};
}

// The loaders index within one image (H*W*C, P*Q*K) and one filter bank (K*R*S*C) with int.
inline void check_limits(const char* op, const Conv2dShape& s) {
  constexpr int64_t kLimit = (int64_t{1} << 31) - 1;
  if (s.H * s.W * s.C > kLimit || s.P * s.Q * s.K > kLimit || s.K * s.R * s.S * s.C > kLimit)
    throw std::runtime_error(std::string(op) + ": one image or filter bank exceeds 2^31 elements");
}

inline bool is_pointwise(const Conv2dShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K). GEMM M = N*P*Q, N = K, Kdim = R*S*C.
template <class Op, class T>
inline void forward(const char* op, const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s) {
  const int64_t M = s.N * s.P * s.Q, RSC = s.R * s.S * s.C;
  const bool vec = s.C % 4 == 0 && vec_aligned(x) && vec_aligned(w);
  run_pass<Op, gemm::Im2colAlongK, gemm::DenseAlongK>(op, conv_view(x, M, s),
                                                      gemm::DenseParamsOf<T>{w, RSC, s.K, RSC}, vec, M, s.K, RSC,
                                                      y, bias);
}

// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C). GEMM M = N*H*W, N = C, Kdim = R*S*K (k fastest).
template <class Op, class T>
inline void backward_data(const char* op, const T* dy, const T* w, T* dx, const Conv2dShape& s) {
  const int64_t M = s.N * s.H * s.W, RSK = s.R * s.S * s.K;
  const bool vec = s.K % 4 == 0 && s.C % 4 == 0 && vec_aligned(dy) && vec_aligned(w);
  run_pass<Op, gemm::DyGatherAlongK, gemm::FilterTapsAlongRows>(op, conv_view(dy, M, s), conv_view(w, s.C, s),
                                                                vec, M, s.C, RSK, dx, static_cast<const T*>(nullptr));
}

// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C). GEMM M = K, N = R*S*C, Kdim = N*P*Q (split-K).
template <class Op, class T>
inline void backward_weight(const char* op, const T* x, const T* dy, T* dw, const Conv2dShape& s) {
  const int64_t NPQ = s.N * s.P * s.Q, RSC = s.R * s.S * s.C;
  const bool vec = s.K % 4 == 0 && s.C % 4 == 0 && vec_aligned(x) && vec_aligned(dy);
  run_pass<Op, gemm::DenseAlongRows, gemm::Im2colAlongRows>(op, gemm::DenseParamsOf<T>{dy, s.K, s.K, NPQ},
                                                            conv_view(x, RSC, s), vec, s.K, RSC, NPQ, dw,
                                                            static_cast<const T*>(nullptr));
}

inline bool tf32() { return float32_matmul_precision() == MatmulPrecision::High; }

}  // namespace conv2d_detail

void conv2d_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_forward", s);
  if (is_pointwise(s)) return linear_forward(x, w, bias, y, s.N * s.H * s.W, s.K, s.C);
  if (tf32()) forward<gemm::Tf32Op>("conv2d_forward", x, w, bias, y, s);
  else forward<void>("conv2d_forward", x, w, bias, y, s);
}

void conv2d_backward_data(const float* dy, const float* w, float* dx, const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_backward_data", s);
  if (is_pointwise(s)) return linear_backward_data(dy, w, dx, s.N * s.H * s.W, s.K, s.C);
  if (tf32()) backward_data<gemm::Tf32Op>("conv2d_backward_data", dy, w, dx, s);
  else backward_data<void>("conv2d_backward_data", dy, w, dx, s);
}

void conv2d_backward_weight(const float* x, const float* dy, float* dw, const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_backward_weight", s);
  if (is_pointwise(s)) return linear_backward_weight(x, dy, dw, s.N * s.H * s.W, s.K, s.C);
  if (tf32()) backward_weight<gemm::Tf32Op>("conv2d_backward_weight", x, dy, dw, s);
  else backward_weight<void>("conv2d_backward_weight", x, dy, dw, s);
}

void conv2d_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y,
                         const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_forward", s);
  if (is_pointwise(s)) return linear_forward_bf16(x, w, bias, y, s.N * s.H * s.W, s.K, s.C);
  forward<gemm::Bf16Op>("conv2d_forward", x, w, bias, y, s);
}

void conv2d_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_backward_data", s);
  if (is_pointwise(s)) return linear_backward_data_bf16(dy, w, dx, s.N * s.H * s.W, s.K, s.C);
  backward_data<gemm::Bf16Op>("conv2d_backward_data", dy, w, dx, s);
}

void conv2d_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, const Conv2dShape& s) {
  using namespace conv2d_detail;
  check_limits("conv2d_backward_weight", s);
  if (is_pointwise(s)) return linear_backward_weight_bf16(x, dy, dw, s.N * s.H * s.W, s.K, s.C);
  backward_weight<gemm::Bf16Op>("conv2d_backward_weight", x, dy, dw, s);
}

}  // namespace vgg::VGG_GPU_NS
