// 2-D convolution of the GPU backend (NHWC activations, KRSC weights), all three passes as implicit GEMMs on
// the shared tile kernel of gemm_tiles.cuh. Outputs are overwritten.
//
//   forward          y  (N*P*Q, K)   = im2col(x) (N*P*Q, R*S*C)  * w^T (R*S*C, K)        + bias
//   backward data    dx (N*H*W, C)   = gather(dy) (N*H*W, R*S*K) * w' ((r,s,k), C)
//   backward weight  dw (K, R*S*C)   = dy^T (K, N*P*Q)           * im2col(x) (N*P*Q, R*S*C), split-K over N*P*Q
//
// Backward data gathers dy at p = (h + pad - r) / stride only where the division is exact, so any stride works;
// for stride > 1 most taps are skipped zeros (VGG uses stride 1 throughout). A 1x1, stride-1, unpadded
// convolution is exactly a linear layer over N*H*W rows and runs on the dense loaders of linear.cu.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "gemm_tiles.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace conv2d_detail {

inline gemm::ConvGeometry conv_geometry(const float* p, int64_t rows, const Conv2dShape& s) {
  return gemm::ConvGeometry{p,
                            rows,
                            static_cast<int>(s.N),
                            static_cast<int>(s.H),
                            static_cast<int>(s.W),
                            static_cast<int>(s.C),
                            static_cast<int>(s.K),
                            static_cast<int>(s.R),
                            static_cast<int>(s.S),
                            static_cast<int>(s.P),
                            static_cast<int>(s.Q),
                            static_cast<int>(s.stride),
                            static_cast<int>(s.pad)};
}

// The loaders index within one image (H*W*C, P*Q*K) and one filter bank (K*R*S*C) with int.
inline void check_limits(const char* op, const Conv2dShape& s) {
  constexpr int64_t kLimit = (int64_t{1} << 31) - 1;
  if (s.H * s.W * s.C > kLimit || s.P * s.Q * s.K > kLimit || s.K * s.R * s.S * s.C > kLimit)
    throw std::runtime_error(std::string(op) + ": one image or filter bank exceeds 2^31 elements");
}

inline bool is_pointwise(const Conv2dShape& s) { return s.R == 1 && s.S == 1 && s.stride == 1 && s.pad == 0; }

// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K). GEMM M = N*P*Q, N = K, Kdim = R*S*C.
inline void forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s,
                    const gemm::GemmPlan& plan) {
  const int64_t M = s.N * s.P * s.Q, RSC = s.R * s.S * s.C;
  const bool vec = s.C % 4 == 0 && aligned16(x) && aligned16(w);
  gemm::run_gemm<gemm::Im2colAlongK, gemm::DenseAlongK>("conv2d_forward", conv_geometry(x, M, s),
                                                        gemm::DenseParams{w, RSC, s.K, RSC}, vec, M, s.K, RSC, y,
                                                        bias, plan);
}

// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C). GEMM M = N*H*W, N = C, Kdim = R*S*K (k fastest).
inline void backward_data(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                          const gemm::GemmPlan& plan) {
  const int64_t M = s.N * s.H * s.W, RSK = s.R * s.S * s.K;
  const bool vec = s.K % 4 == 0 && s.C % 4 == 0 && aligned16(dy) && aligned16(w);
  gemm::run_gemm<gemm::DyGatherAlongK, gemm::FilterTapsAlongRows>("conv2d_backward_data", conv_geometry(dy, M, s),
                                                                  conv_geometry(w, s.C, s), vec, M, s.C, RSK, dx,
                                                                  nullptr, plan);
}

// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C). GEMM M = K, N = R*S*C, Kdim = N*P*Q (split-K).
inline void backward_weight(const float* x, const float* dy, float* dw, const Conv2dShape& s,
                            const gemm::GemmPlan& plan) {
  const int64_t NPQ = s.N * s.P * s.Q, RSC = s.R * s.S * s.C;
  const bool vec = s.K % 4 == 0 && s.C % 4 == 0 && aligned16(x) && aligned16(dy);
  gemm::run_gemm<gemm::DenseAlongRows, gemm::Im2colAlongRows>("conv2d_backward_weight",
                                                              gemm::DenseParams{dy, s.K, s.K, NPQ},
                                                              conv_geometry(x, RSC, s), vec, s.K, RSC, NPQ, dw,
                                                              nullptr, plan);
}

}  // namespace conv2d_detail

void conv2d_forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& s) {
  conv2d_detail::check_limits("conv2d_forward", s);
  if (conv2d_detail::is_pointwise(s)) return linear_forward(x, w, bias, y, s.N * s.H * s.W, s.K, s.C);
  conv2d_detail::forward(x, w, bias, y, s, gemm::plan_gemm(s.N * s.P * s.Q, s.K, s.R * s.S * s.C));
}

void conv2d_backward_data(const float* dy, const float* w, float* dx, const Conv2dShape& s) {
  conv2d_detail::check_limits("conv2d_backward_data", s);
  if (conv2d_detail::is_pointwise(s)) return linear_backward_data(dy, w, dx, s.N * s.H * s.W, s.K, s.C);
  conv2d_detail::backward_data(dy, w, dx, s, gemm::plan_gemm(s.N * s.H * s.W, s.C, s.R * s.S * s.K));
}

void conv2d_backward_weight(const float* x, const float* dy, float* dw, const Conv2dShape& s) {
  conv2d_detail::check_limits("conv2d_backward_weight", s);
  if (conv2d_detail::is_pointwise(s)) return linear_backward_weight(x, dy, dw, s.N * s.H * s.W, s.K, s.C);
  conv2d_detail::backward_weight(x, dy, dw, s, gemm::plan_gemm(s.K, s.R * s.S * s.C, s.N * s.P * s.Q));
}

}  // namespace vgg::VGG_GPU_NS
