// The host side of the GPU GEMMs: which tiles and how many k splits (plan_gemm), and the launch of the CUDA-core
// kernel (gemm_kernel.cuh) with its split-K reduction. tc_gemm.cuh plans its tensor-core launches here too.
//
// Split-K fills the GPU when M x N is small (weight gradients, FC layers at small batch). The plan depends on the
// shapes, the SM count and the kernel's occupancy, and makes launches whole waves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "../core/precision.h"
#include "common.cuh"
#include "gemm_kernel.cuh"

namespace vgg::VGG_GPU_NS::gemm {

// ---- host side: planning and launching --------------------------------------------------------------------------

// Which tiles, and how many k splits. Depends on the shapes and the device only, so results are reproducible
// run to run on one GPU model.
struct GemmPlan {
  bool large;  // the 128 x 128 tiles, else the 64 x 64 ones (both the CUDA-core and the tensor-core kernels)
  int splits;  // 1 = no split-K
};

// How many blocks of one kernel run at once: SMs x resident blocks per SM.
struct KernelSlots {
  int sms;
  int per_sm;
};

// A split must keep at least this much of Kdim, or the extra partial sums cost more than they gain.
constexpr int64_t kMinKPerSplit = 256;
constexpr int kMaxSplits = 128;
constexpr int64_t kMaxSplitWorkspaceBytes = int64_t{256} << 20;
// The emulator plans for the GPU the benchmarks run on: an H100/H200 (132 SMs, 228 KiB shared memory per SM).
constexpr int kModelSms = 132;
constexpr size_t kModelSharedPerSm = 228 * 1024;

// Resident blocks per SM of `kernel` with `threads` threads and `smem` bytes of dynamic shared memory: the CUDA
// occupancy calculator on a GPU (registers, shared memory, threads); in the emulator a model of the same limits
// with `model_per_sm` standing for the register limit the kernel's __launch_bounds__ asks for.
template <class Kernel>
KernelSlots kernel_slots(Kernel kernel, int threads, size_t smem, int model_per_sm) {
#if defined(__CUDACC__)
  int device = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess) {
    cudaGetLastError();  // a failed query is not a launch error: fall back to the model below
    return KernelSlots{kModelSms, model_per_sm};
  }
  return KernelSlots{sms > 0 ? sms : 1, per_sm > 0 ? per_sm : 1};
#else
  (void)kernel;
  int per_sm = model_per_sm;
  const int by_threads = 2048 / threads;
  const int by_smem = static_cast<int>(kModelSharedPerSm / (smem + 1024));  // 1 KiB reserved per block
  if (by_threads < per_sm) per_sm = by_threads;
  if (by_smem < per_sm) per_sm = by_smem;
  return KernelSlots{kModelSms, per_sm > 0 ? per_sm : 1};
#endif
}

// The test-only override (vgg::set_gpu_gemm_plan, bound as _C._set_gpu_gemm_plan) forces the tiles and the
// number of k splits: the emulator's test shapes are far too small for the automatic plan to pick large tiles or
// split-K, yet those are what a GPU runs at VGG sizes.
inline GemmPlan forced_plan(GemmPlan plan) {
  const GemmPlanOverride forced = gpu_gemm_plan_override();
  if (!forced.forced) return plan;
  plan.large = forced.large;
  plan.splits = forced.splits;
  return plan;
}

// A launch should be whole waves: for each tile size, the split count s minimising
//   waves(s) x (work of one block) x (blocks per SM)          [the SM-time of the launch, in MACs per SM]
//   + macs_per_byte x (split-K workspace traffic) / SMs       [the deterministic reduction, memory bound]
// with waves(s) = ceil(tiles x s / slots); then the tile size with the lower cost, the 64 x 64 tiles charged
// 25% more per MAC (half the operand reuse of the 128 x 128 ones). macs_per_byte is the device's compute to
// memory ratio (about 10 for float32 CUDA cores, 60 for tensor cores on an H100). E.g. VGG's conv4 weight
// gradient (M = 512, N = 4608: 144 large tiles) on 132 SMs x 2 slots takes 11 splits: 1584 blocks, 6 waves.
inline GemmPlan plan_gemm(int64_t M, int64_t N, int64_t kdim, KernelSlots large, KernelSlots small,
                          double macs_per_byte) {
  struct Choice {
    int splits;
    double cost;
  };
  auto choose = [&](int64_t bm, int64_t bn, KernelSlots slots) {
    const int64_t tiles = ceil_div(M, bm) * ceil_div(N, bn);
    const int64_t nslots = static_cast<int64_t>(slots.sms) * slots.per_sm;
    int64_t max_splits = kdim / kMinKPerSplit;
    if (max_splits > kMaxSplits) max_splits = kMaxSplits;
    const int64_t bytes_per_split = M * N * static_cast<int64_t>(sizeof(float));
    if (bytes_per_split > 0 && max_splits * bytes_per_split > kMaxSplitWorkspaceBytes)
      max_splits = kMaxSplitWorkspaceBytes / bytes_per_split;
    if (max_splits < 1) max_splits = 1;
    Choice best{1, 0.0};
    for (int64_t s = 1; s <= max_splits; ++s) {
      const double waves = static_cast<double>(ceil_div(tiles * s, nslots));
      double cost = waves * static_cast<double>(bm * bn) * static_cast<double>(ceil_div(kdim, s)) * slots.per_sm;
      if (s > 1) cost += macs_per_byte * 4.0 * static_cast<double>(s + 1) * static_cast<double>(M * N) / slots.sms;
      if (s == 1 || cost < best.cost) best = Choice{static_cast<int>(s), cost};
    }
    return best;
  };
  const Choice l = choose(128, 128, large), sm = choose(64, 64, small);
  GemmPlan plan;
  plan.large = l.cost <= 1.25 * sm.cost;
  plan.splits = plan.large ? l.splits : sm.splits;
  return forced_plan(plan);
}

// The dimensions the kernel indexes with 32-bit block coordinates and per-image int offsets.
inline void check_gemm_limits(const char* op, int64_t M, int64_t N, int64_t kdim) {
  constexpr int64_t kLimit = (int64_t{1} << 31) - 1;
  if (M > kLimit || N > int64_t{65535} * SmallTiles::BN || kdim > kLimit)
    throw std::runtime_error(std::string(op) + ": GEMM dimensions too large for the GPU kernels (M=" +
                             std::to_string(M) + ", N=" + std::to_string(N) + ", K=" + std::to_string(kdim) + ")");
}

template <class Cfg, class ALoader, class BLoader>
void launch_gemm_tiles(const char* op, const ALoader& a, const BLoader& b, int64_t M, int64_t N, int64_t kdim,
                       float* out, const float* bias, int splits) {
  // k_per_split is a multiple of BK, so no k tile straddles two splits; recount splits so none is empty.
  int64_t k_per_split = kdim;
  if (splits > 1) {
    k_per_split = ceil_div(ceil_div(kdim, splits), Cfg::BK) * Cfg::BK;
    splits = static_cast<int>(ceil_div(kdim, k_per_split));
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(M, Cfg::BM)), static_cast<unsigned>(ceil_div(N, Cfg::BN)),
                  static_cast<unsigned>(splits));
  const dim3 block(Cfg::kThreads);
  if (splits <= 1) {
    const GemmArgs args{M, N, kdim, kdim > 0 ? kdim : 1, out, 0, bias, N % 4 == 0 && aligned16(out)};
    VGG_LAUNCH(grid, block, Cfg::kSharedBytes, gemm_tile_kernel<Cfg, ALoader, BLoader>)(a, b, args);
    VGG_CHECK_LAUNCH(op);
    return;
  }
  const int64_t mn = M * N;
  Workspace partial(static_cast<size_t>(splits) * static_cast<size_t>(mn) * sizeof(float));
  const GemmArgs args{M, N, kdim, k_per_split, partial.as<float>(), mn, nullptr, N % 4 == 0};
  VGG_LAUNCH(grid, block, Cfg::kSharedBytes, gemm_tile_kernel<Cfg, ALoader, BLoader>)(a, b, args);
  VGG_CHECK_LAUNCH(op);
  constexpr int kReduceThreads = 256;
  int64_t blocks = ceil_div(mn, kReduceThreads);
  if (blocks > 4096) blocks = 4096;
  const dim3 rgrid(static_cast<unsigned>(blocks));
  if (bias != nullptr) {
    VGG_LAUNCH(rgrid, dim3(kReduceThreads), 0, splitk_reduce_kernel<true>)(partial.as<float>(), splits, mn, N, bias,
                                                                             out);
  } else {
    VGG_LAUNCH(rgrid, dim3(kReduceThreads), 0, splitk_reduce_kernel<false>)(partial.as<float>(), splits, mn, N, bias,
                                                                              out);
  }
  VGG_CHECK_LAUNCH(op);
}

// Calls go(a, b) with loaders ALoader<vec, T> and BLoader<vec, T> holding ap and bp, after checking the kernels'
// index limits; nothing when C is empty. ALoader/BLoader are loader templates over VEC and the element type, ap/bp
// their parameter structs. run_gemm below and run_tc_gemm (tc_gemm.cuh) start here.
template <template <bool, class> class ALoader, template <bool, class> class BLoader, class T, class AParams,
          class BParams, class Go>
void with_loaders(const char* op, const AParams& ap, const BParams& bp, bool vec, int64_t M, int64_t N, int64_t kdim,
                  Go&& go) {
  if (M <= 0 || N <= 0) return;
  check_gemm_limits(op, M, N, kdim);
  auto bind = [&](auto a, auto b) {
    a.prm = ap;
    b.prm = bp;
    go(a, b);
  };
  if (vec) bind(ALoader<true, T>{}, BLoader<true, T>{});
  else bind(ALoader<false, T>{}, BLoader<false, T>{});
}

// Runs C = A * B [+ bias] on the CUDA cores with the planned tiles and the VEC path.
template <template <bool, class> class ALoader, template <bool, class> class BLoader, class AParams, class BParams>
void run_gemm(const char* op, const AParams& ap, const BParams& bp, bool vec, int64_t M, int64_t N, int64_t kdim,
              float* out, const float* bias) {
  with_loaders<ALoader, BLoader, float>(op, ap, bp, vec, M, N, kdim, [&](auto a, auto b) {
    using A = decltype(a);
    using B = decltype(b);
    constexpr bool kVec = A::kVec && B::kVec;  // the scalar loaders get one block per SM (__launch_bounds__)
    const KernelSlots large = kernel_slots(gemm_tile_kernel<LargeTiles, A, B>, LargeTiles::kThreads,
                                           LargeTiles::kSharedBytes, kVec ? LargeTiles::kMinBlocksPerSM : 1);
    const KernelSlots small = kernel_slots(gemm_tile_kernel<SmallTiles, A, B>, SmallTiles::kThreads,
                                           SmallTiles::kSharedBytes, kVec ? SmallTiles::kMinBlocksPerSM : 1);
    const GemmPlan plan = plan_gemm(M, N, kdim, large, small, 10.0);
    if (plan.large) launch_gemm_tiles<LargeTiles>(op, a, b, M, N, kdim, out, bias, plan.splits);
    else launch_gemm_tiles<SmallTiles>(op, a, b, M, N, kdim, out, bias, plan.splits);
  });
}

}  // namespace vgg::VGG_GPU_NS::gemm
