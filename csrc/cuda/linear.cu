// Fully connected layer of the GPU backend: three dense GEMMs on the shared tile kernel of gemm_tiles.cuh.
// Weights are (OUT, IN) as in PyTorch; outputs are overwritten. Also serves 1x1 stride-1 convolutions (conv2d.cu).
//
//   forward          y  (M, OUT)  = x (M, IN)    * w^T (IN, OUT) + bias
//   backward data    dx (M, IN)   = dy (M, OUT)  * w (OUT, IN)
//   backward weight  dw (OUT, IN) = dy^T (OUT, M) * x (M, IN)      (split-K over M at small OUT x IN)
//
// At small batch every pass has a short side (M), so the plan picks the small tiles and splits K to fill the GPU.
#include <cstdint>

#include "common.cuh"
#include "gemm_tiles.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace linear_detail {

// x (M, IN), w (OUT, IN), bias (OUT) or nullptr -> y (M, OUT). GEMM M = M, N = OUT, Kdim = IN.
inline void forward(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t OUT, int64_t IN,
                    const gemm::GemmPlan& plan) {
  const bool vec = IN % 4 == 0 && aligned16(x) && aligned16(w);
  gemm::run_gemm<gemm::DenseAlongK, gemm::DenseAlongK>("linear_forward", gemm::DenseParams{x, IN, M, IN},
                                                       gemm::DenseParams{w, IN, OUT, IN}, vec, M, OUT, IN, y, bias,
                                                       plan);
}

// dy (M, OUT), w (OUT, IN) -> dx (M, IN). GEMM M = M, N = IN, Kdim = OUT.
inline void backward_data(const float* dy, const float* w, float* dx, int64_t M, int64_t OUT, int64_t IN,
                          const gemm::GemmPlan& plan) {
  const bool vec = OUT % 4 == 0 && IN % 4 == 0 && aligned16(dy) && aligned16(w);
  gemm::run_gemm<gemm::DenseAlongK, gemm::DenseAlongRows>("linear_backward_data", gemm::DenseParams{dy, OUT, M, OUT},
                                                          gemm::DenseParams{w, IN, IN, OUT}, vec, M, IN, OUT, dx,
                                                          nullptr, plan);
}

// x (M, IN), dy (M, OUT) -> dw (OUT, IN). GEMM M = OUT, N = IN, Kdim = M.
inline void backward_weight(const float* x, const float* dy, float* dw, int64_t M, int64_t OUT, int64_t IN,
                            const gemm::GemmPlan& plan) {
  const bool vec = OUT % 4 == 0 && IN % 4 == 0 && aligned16(x) && aligned16(dy);
  gemm::run_gemm<gemm::DenseAlongRows, gemm::DenseAlongRows>("linear_backward_weight",
                                                             gemm::DenseParams{dy, OUT, OUT, M},
                                                             gemm::DenseParams{x, IN, IN, M}, vec, OUT, IN, M, dw,
                                                             nullptr, plan);
}

}  // namespace linear_detail

void linear_forward(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t OUT, int64_t IN) {
  linear_detail::forward(x, w, bias, y, M, OUT, IN, gemm::plan_gemm(M, OUT, IN));
}

void linear_backward_data(const float* dy, const float* w, float* dx, int64_t M, int64_t OUT, int64_t IN) {
  linear_detail::backward_data(dy, w, dx, M, OUT, IN, gemm::plan_gemm(M, IN, OUT));
}

void linear_backward_weight(const float* x, const float* dy, float* dw, int64_t M, int64_t OUT, int64_t IN) {
  linear_detail::backward_weight(x, dy, dw, M, OUT, IN, gemm::plan_gemm(OUT, IN, M));
}

}  // namespace vgg::VGG_GPU_NS
