// Fully connected layer of the GPU backend: three dense GEMMs on the shared tile kernels. Weights are (OUT, IN)
// as in PyTorch; outputs are overwritten. Also serves 1x1 stride-1 convolutions (conv2d.cu).
//
//   forward          y  (M, OUT)  = x (M, IN)    * w^T (IN, OUT) + bias
//   backward data    dx (M, IN)   = dy (M, OUT)  * w (OUT, IN)
//   backward weight  dw (OUT, IN) = dy^T (OUT, M) * x (M, IN)      (split-K over M at small OUT x IN)
//
// float32 runs on the CUDA-core kernel (gemm_kernel.cuh), or on TF32 tensor cores with float32 matmul precision
// "high"; the bfloat16 entry points run on BF16 tensor cores (tc_gemm.cuh), float32 accumulation.
// At small batch every pass has a short side (M), so the plan picks the small tiles and splits K to fill the GPU.
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../core/precision.h"
#include "common.cuh"
#include "gemm_pass.cuh"
#include "gpu_kernels.h"
#include "tc_probe.h"

namespace vgg::VGG_GPU_NS {
namespace linear_detail {

using gemm::run_pass;
using gemm::vec_aligned;

// x (M, IN), w (OUT, IN), bias (OUT) or nullptr -> y (M, OUT). GEMM M = M, N = OUT, Kdim = IN.
template <class Op, class T>
inline void forward(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t OUT, int64_t IN) {
  const bool vec = IN % 4 == 0 && vec_aligned(x) && vec_aligned(w);
  run_pass<Op, gemm::DenseAlongK, gemm::DenseAlongK>("linear_forward", gemm::DenseParamsOf<T>{x, IN, M, IN},
                                                     gemm::DenseParamsOf<T>{w, IN, OUT, IN}, vec, M, OUT, IN, y,
                                                     bias);
}

// dy (M, OUT), w (OUT, IN) -> dx (M, IN). GEMM M = M, N = IN, Kdim = OUT.
template <class Op, class T>
inline void backward_data(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN) {
  const bool vec = OUT % 4 == 0 && IN % 4 == 0 && vec_aligned(dy) && vec_aligned(w);
  run_pass<Op, gemm::DenseAlongK, gemm::DenseAlongRows>("linear_backward_data",
                                                        gemm::DenseParamsOf<T>{dy, OUT, M, OUT},
                                                        gemm::DenseParamsOf<T>{w, IN, IN, OUT}, vec, M, IN, OUT, dx,
                                                        static_cast<const T*>(nullptr));
}

// x (M, IN), dy (M, OUT) -> dw (OUT, IN). GEMM M = OUT, N = IN, Kdim = M.
template <class Op, class T>
inline void backward_weight(const T* x, const T* dy, T* dw, int64_t M, int64_t OUT, int64_t IN) {
  const bool vec = OUT % 4 == 0 && IN % 4 == 0 && vec_aligned(x) && vec_aligned(dy);
  run_pass<Op, gemm::DenseAlongRows, gemm::DenseAlongRows>("linear_backward_weight",
                                                           gemm::DenseParamsOf<T>{dy, OUT, OUT, M},
                                                           gemm::DenseParamsOf<T>{x, IN, IN, M}, vec, OUT, IN, M, dw,
                                                           static_cast<const T*>(nullptr));
}

inline bool tf32() { return float32_matmul_precision() == MatmulPrecision::High; }

}  // namespace linear_detail

void linear_forward(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t OUT, int64_t IN) {
  using namespace linear_detail;
  if (tf32()) forward<gemm::Tf32Op>(x, w, bias, y, M, OUT, IN);
  else forward<void>(x, w, bias, y, M, OUT, IN);
}

void linear_backward_data(const float* dy, const float* w, float* dx, int64_t M, int64_t OUT, int64_t IN) {
  using namespace linear_detail;
  if (tf32()) backward_data<gemm::Tf32Op>(dy, w, dx, M, OUT, IN);
  else backward_data<void>(dy, w, dx, M, OUT, IN);
}

void linear_backward_weight(const float* x, const float* dy, float* dw, int64_t M, int64_t OUT, int64_t IN) {
  using namespace linear_detail;
  if (tf32()) backward_weight<gemm::Tf32Op>(x, dy, dw, M, OUT, IN);
  else backward_weight<void>(x, dy, dw, M, OUT, IN);
}

void linear_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
                         int64_t OUT, int64_t IN) {
  linear_detail::forward<gemm::Bf16Op>(x, w, bias, y, M, OUT, IN);
}

void linear_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, int64_t M, int64_t OUT,
                               int64_t IN) {
  linear_detail::backward_data<gemm::Bf16Op>(dy, w, dx, M, OUT, IN);
}

void linear_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, int64_t M, int64_t OUT,
                                 int64_t IN) {
  linear_detail::backward_weight<gemm::Bf16Op>(x, dy, dw, M, OUT, IN);
}

// Here, beside the linear layer's kernels, because it instantiates the same dense-loader kernels: a kernel
// template instantiated in two translation units breaks the emulator's __launch_bounds__ record at link time.
std::vector<int64_t> describe_gemm_plan(int kind, int64_t M, int64_t N, int64_t K) {
  using namespace gemm;
  auto info = [](const GemmPlan& plan, KernelSlots large, KernelSlots small) {
    return std::vector<int64_t>{plan.large ? 1 : 0, plan.splits, large.sms, large.per_sm, small.per_sm};
  };
  if (kind == 0) {
    using A = DenseAlongK<true, float>;
    const KernelSlots large = kernel_slots(gemm_tile_kernel<LargeTiles, A, A>, LargeTiles::kThreads,
                                           LargeTiles::kSharedBytes, LargeTiles::kMinBlocksPerSM);
    const KernelSlots small = kernel_slots(gemm_tile_kernel<SmallTiles, A, A>, SmallTiles::kThreads,
                                           SmallTiles::kSharedBytes, SmallTiles::kMinBlocksPerSM);
    return info(plan_gemm(M, N, K, large, small, 10.0), large, small);
  }
  auto tc = [&](auto op, auto out) {
    using Op = decltype(op);
    using A = DenseAlongK<true, typename Op::Elem>;
    using O = decltype(out);
    using LL = TcLayout<TcLargeTiles, Op, A, A>;
    using LS = TcLayout<TcSmallTiles, Op, A, A>;
    const GemmPlan plan = plan_tc_gemm<Op, A, A, O>(M, N, K);
    return info(plan,
                kernel_slots(tc_gemm_kernel<TcLargeTiles, Op, A, A, O>, TcLargeTiles::kThreads, LL::kSharedBytes, 2),
                kernel_slots(tc_gemm_kernel<TcSmallTiles, Op, A, A, O>, TcSmallTiles::kThreads, LS::kSharedBytes, 4));
  };
  if (kind == 1) return tc(Tf32Op{}, float{});
  if (kind == 2) return tc(Bf16Op{}, uint16_t{});
  throw std::invalid_argument("describe_gemm_plan: kind must be 0 (fp32), 1 (tf32) or 2 (bf16)");
}

}  // namespace vgg::VGG_GPU_NS
