// The tensor-core GEMM of the GPU backend: TF32 (float32 operands, "high" matmul precision) and BF16 (bfloat16
// operands), float32 accumulation, for every pass of conv2d and linear.
//
//   C (M, N) = A (M, Kdim) * B (Kdim, N)      [+ bias (N)],   C row-major with leading dimension N
//
// The operands come from the same loaders as the CUDA-core kernel (gemm_loaders.cuh: implicit im2col, the stride-
// aware dy gather, dense reads), instantiated on the element type. Per block tile BM x BN x BK:
//   - STAGES-deep shared-memory ring filled by cp.async (16 bytes of float, 8 of bf16, zero-fill for padding and
//     tails) when the loader is VEC, else by plain loads and stores (odd channel counts);
//   - each operand keeps the orientation its loader delivers: [row][k] for loaders along k (x, dy gathers,
//     conv weights), [k][row] for loaders along the row dimension (dy^T, w as (k, c), im2col columns). TF32 has
//     no transposing ldmatrix (.trans is 16-bit only) and half of the passes read an operand transposed, so the
//     warps read fragments with plain 32-bit shared loads from either orientation instead; rows are padded
//     (+4 floats / +8 bf16) so that the 32 lanes of a fragment read hit 32 different banks in both orientations;
//   - warps of WM x WN outputs (m16n8 fragments), mma.sync m16n8k8 tf32 (operands rounded with cvt.rna) or
//     m16n8k16 bf16;
//   - epilogue: bias added in float32, stored as float (TF32) or rounded to bf16 (BF16); with split-K, float32
//     partial slices summed in a fixed order by a second kernel (deterministic, no atomics).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "gemm_plan.cuh"
#include "mma.cuh"

namespace vgg::VGG_GPU_NS::gemm {

// The element types of the two tensor-core paths.
struct Tf32Op {
  using Elem = float;
  static constexpr int kK = 8;  // mma k per instruction
};
struct Bf16Op {
  using Elem = uint16_t;
  static constexpr int kK = 16;
};

template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct TcTiles {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, STAGES = STAGES_;
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int FM = WM / 16, FN = WN / 8;  // m16n8 fragments per warp
  static_assert(WM % 16 == 0 && WN % 8 == 0 && BK % 16 == 0, "fragments are 16 x 8, k steps 8 or 16");
  static_assert(BM % 32 == 0 && BN % 32 == 0, "row padding keeps fragment reads conflict-free for these widths");
};

// plan_gemm's two tile sizes. 128 x 128 blocks of 8 warps (64 x 32 each), 3 stages: the big-problem tiles
// (108 KiB of shared memory for tf32).
using TcLargeTiles = TcTiles<128, 128, 32, 64, 32, 3>;
// 64 x 64 blocks of 4 warps (32 x 32 each), 3 stages: small maps, thin layers, split-K.
using TcSmallTiles = TcTiles<64, 64, 32, 32, 32, 3>;

// One operand's shared-memory tile: ROWS x BK elements, [row][k] when the loader runs along k, else [k][row].
template <class T, bool AlongK, int ROWS, int BK>
struct TcOperandTile {
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));  // 4 floats or 8 bf16: 16-byte rows stay aligned
  // [row][k]: +16 bytes per row; [k][row]: +8 elements, so 8 lanes reading 8 k rows land 8 banks apart.
  static constexpr int kLd = AlongK ? BK + kPad : ROWS + 8;
  static constexpr int kElems = AlongK ? ROWS * kLd : BK * kLd;
  static constexpr size_t kBytes = static_cast<size_t>(kElems) * sizeof(T);
  __device__ __forceinline__ static int at(int row, int k) { return AlongK ? row * kLd + k : k * kLd + row; }
};

template <class Tiles, class Op, class ALoader, class BLoader>
struct TcLayout {
  using T = typename Op::Elem;
  using ATile = TcOperandTile<T, ALoader::kAlongK, Tiles::BM, Tiles::BK>;
  using BTile = TcOperandTile<T, BLoader::kAlongK, Tiles::BN, Tiles::BK>;
  static constexpr size_t kStageBytes = ATile::kBytes + BTile::kBytes;
  static constexpr size_t kSharedBytes = Tiles::STAGES * kStageBytes;
  // Vectors of 4 elements per thread per k tile.
  static constexpr int kVecA = Tiles::BM * Tiles::BK / 4 / Tiles::kThreads;
  static constexpr int kVecB = Tiles::BN * Tiles::BK / 4 / Tiles::kThreads;
  static_assert(kVecA * 4 * Tiles::kThreads == Tiles::BM * Tiles::BK, "A tile splits evenly into 4-vectors");
  static_assert(kVecB * 4 * Tiles::kThreads == Tiles::BN * Tiles::BK, "B tile splits evenly into 4-vectors");
  static_assert(kStageBytes % 16 == 0, "stages stay 16-byte aligned");
};

// Where 4-vector v of a loader's tile sits: (row, k) of its first element.
template <bool AlongK, int ROWS, int BK>
__device__ __forceinline__ void tc_vector_position(int v, int& row, int& k) {
  if (AlongK) {
    row = v / (BK / 4);
    k = (v % (BK / 4)) * 4;
  } else {
    row = (v % (ROWS / 4)) * 4;
    k = v / (ROWS / 4);
  }
}

// One 4-vector into shared memory: cp.async from global (VEC) or a register load and shared stores.
template <class Loader, class Tile>
__device__ __forceinline__ void tc_fill_vector(const Loader& ld, typename Loader::Elem* tile, int row, int k,
                                               const void* any_global) {
  using T = typename Loader::Elem;
  if constexpr (Loader::kVec) {
    const T* src = ld.vec_src();
    // With src-size 0 nothing is read; the address only has to be a valid global one.
    mma::cp_async<4 * sizeof(T)>(tile + Tile::at(row, k), src ? static_cast<const void*>(src) : any_global,
                                 src ? static_cast<int>(4 * sizeof(T)) : 0);
  } else {
    T v[4];
    ld.load(v);
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) tile[Loader::kAlongK ? Tile::at(row, k + j) : Tile::at(row + j, k)] = v[j];
  }
}

__device__ __forceinline__ uint32_t tc_pair(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// A fragment (16 rows from r0, k from kk) and B fragment (8 columns from c0) in the layouts of mma.cuh.
template <class Op, class ATile>
__device__ __forceinline__ void tc_load_a(uint32_t (&a)[4], const typename Op::Elem* As, int r0, int kk, int g, int t) {
  if constexpr (sizeof(typename Op::Elem) == 4) {
    a[0] = mma::to_tf32(As[ATile::at(r0 + g, kk + t)]);
    a[1] = mma::to_tf32(As[ATile::at(r0 + g + 8, kk + t)]);
    a[2] = mma::to_tf32(As[ATile::at(r0 + g, kk + t + 4)]);
    a[3] = mma::to_tf32(As[ATile::at(r0 + g + 8, kk + t + 4)]);
  } else {
    VGG_GEMM_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int r = r0 + g + ((i & 1) ? 8 : 0), k = kk + 2 * t + ((i & 2) ? 8 : 0);
      a[i] = tc_pair(As[ATile::at(r, k)], As[ATile::at(r, k + 1)]);
    }
  }
}

template <class Op, class BTile>
__device__ __forceinline__ void tc_load_b(uint32_t (&b)[2], const typename Op::Elem* Bs, int c0, int kk, int g, int t) {
  if constexpr (sizeof(typename Op::Elem) == 4) {
    b[0] = mma::to_tf32(Bs[BTile::at(c0 + g, kk + t)]);
    b[1] = mma::to_tf32(Bs[BTile::at(c0 + g, kk + t + 4)]);
  } else {
    VGG_GEMM_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int k = kk + 2 * t + (i ? 8 : 0);
      b[i] = tc_pair(Bs[BTile::at(c0 + g, k)], Bs[BTile::at(c0 + g, k + 1)]);
    }
  }
}

template <class Op>
__device__ __forceinline__ void tc_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (sizeof(typename Op::Elem) == 4) mma::mma_tf32(d, a, b, d);
  else mma::mma_bf16(d, a, b, d);
}

struct TcArgs {
  int64_t M, N, kdim;
  int64_t k_per_split;  // Kdim range of one blockIdx.z, a multiple of BK
  void* out;            // C (M, N) of OutT, or the float split-K workspace (splits, M, N)
  int64_t split_stride; // M*N when splitting, else 0
  const void* bias;     // (N) of the operand type, or nullptr; only without split-K
  const void* any_global;  // a valid global address for zero-fill copies
};

__device__ __forceinline__ float tc_bias_value(const float* b, int64_t n) { return b[n]; }
__device__ __forceinline__ float tc_bias_value(const uint16_t* b, int64_t n) { return mma::bf16_to_float(b[n]); }
__device__ __forceinline__ void tc_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void tc_store(uint16_t* p, float v) { *p = mma::to_bf16(v); }

// C (M, N) [split z] = A * B [+ bias]. grid (ceil(M/BM), ceil(N/BN), splits), block Tiles::kThreads, dynamic
// shared memory TcLayout::kSharedBytes (opted in with vgg_opt_in_dynamic_shared: above 48 KiB a GPU requires it).
// OutT: float (tf32, or any split-K partial) or uint16_t (bf16 output).
template <class Tiles, class Op, class ALoader, class BLoader, class OutT>
__global__ void VGG_LAUNCH_BOUNDS(Tiles::kThreads) tc_gemm_kernel(ALoader a0, BLoader b0, TcArgs args) {
  using T = typename Op::Elem;
  using L = TcLayout<Tiles, Op, ALoader, BLoader>;
  using ATile = typename L::ATile;
  using BTile = typename L::BTile;
  constexpr int BM = Tiles::BM, BN = Tiles::BN, BK = Tiles::BK, STAGES = Tiles::STAGES;
  VGG_DYNAMIC_SHARED(unsigned char, smem);  // [STAGES][A tile | B tile]

  const int tid = static_cast<int>(threadIdx.x);
  const auto [m0, n0, k_begin, num_tiles] = gemm_block_range<BM, BN, BK>(args.kdim, args.k_per_split);

  // This thread's 4-vectors of each k tile, one loader each.
  ALoader a[L::kVecA];
  BLoader b[L::kVecB];
  int a_row[L::kVecA], a_k[L::kVecA], b_row[L::kVecB], b_k[L::kVecB];
  VGG_GEMM_UNROLL
  for (int i = 0; i < L::kVecA; ++i) {
    tc_vector_position<ALoader::kAlongK, BM, BK>(tid + i * Tiles::kThreads, a_row[i], a_k[i]);
    a[i] = a0;
    a[i].begin(m0 + a_row[i], k_begin + a_k[i]);
  }
  VGG_GEMM_UNROLL
  for (int i = 0; i < L::kVecB; ++i) {
    tc_vector_position<BLoader::kAlongK, BN, BK>(tid + i * Tiles::kThreads, b_row[i], b_k[i]);
    b[i] = b0;
    b[i].begin(n0 + b_row[i], k_begin + b_k[i]);
  }

  // Issues the copies of the next k tile into `stage` and moves the loaders on.
  auto fill_stage = [&](int stage) {
    T* As = reinterpret_cast<T*>(smem + stage * L::kStageBytes);
    T* Bs = reinterpret_cast<T*>(smem + stage * L::kStageBytes + ATile::kBytes);
    VGG_GEMM_UNROLL
    for (int i = 0; i < L::kVecA; ++i) {
      tc_fill_vector<ALoader, ATile>(a[i], As, a_row[i], a_k[i], args.any_global);
      a[i].advance(BK);
    }
    VGG_GEMM_UNROLL
    for (int i = 0; i < L::kVecB; ++i) {
      tc_fill_vector<BLoader, BTile>(b[i], Bs, b_row[i], b_k[i], args.any_global);
      b[i].advance(BK);
    }
  };

  const int warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int wm0 = (warp / Tiles::kWarpsN) * Tiles::WM, wn0 = (warp % Tiles::kWarpsN) * Tiles::WN;

  float acc[Tiles::FM][Tiles::FN][4];
  VGG_GEMM_UNROLL
  for (int i = 0; i < Tiles::FM; ++i) {
    VGG_GEMM_UNROLL
    for (int j = 0; j < Tiles::FN; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
  }

  // Prologue: STAGES-1 tiles in flight (a group per tile, empty past the end, so the wait count stays fixed).
  VGG_GEMM_UNROLL
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < num_tiles) fill_stage(s);
    mma::cp_async_commit();
  }

  for (int kt = 0; kt < num_tiles; ++kt) {
    // This thread's copies of tile kt have landed; the barrier makes everyone's visible, and guarantees every
    // warp finished tile kt-1, whose stage the prefetch below overwrites.
    mma::cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < num_tiles) fill_stage(next % STAGES);
    mma::cp_async_commit();

    const T* As = reinterpret_cast<const T*>(smem + (kt % STAGES) * L::kStageBytes);
    const T* Bs = reinterpret_cast<const T*>(smem + (kt % STAGES) * L::kStageBytes + ATile::kBytes);
    VGG_GEMM_UNROLL
    for (int kk = 0; kk < BK; kk += Op::kK) {
      uint32_t fa[Tiles::FM][4], fb[Tiles::FN][2];
      VGG_GEMM_UNROLL
      for (int i = 0; i < Tiles::FM; ++i) tc_load_a<Op, ATile>(fa[i], As, wm0 + 16 * i, kk, g, t);
      VGG_GEMM_UNROLL
      for (int j = 0; j < Tiles::FN; ++j) tc_load_b<Op, BTile>(fb[j], Bs, wn0 + 8 * j, kk, g, t);
      VGG_GEMM_UNROLL
      for (int i = 0; i < Tiles::FM; ++i) {
        VGG_GEMM_UNROLL
        for (int j = 0; j < Tiles::FN; ++j) tc_mma<Op>(acc[i][j], fa[i], fb[j]);
      }
    }
  }
  // Nothing may stay in flight into the next block's use of this shared memory.
  mma::cp_async_wait<0>();

  // Epilogue: c0, c1 at (g, 2t..2t+1), c2, c3 at (g+8, 2t..2t+1) of each fragment.
  OutT* out = static_cast<OutT*>(args.out) + static_cast<int64_t>(blockIdx.z) * args.split_stride;
  const T* bias = static_cast<const T*>(args.bias);
  VGG_GEMM_UNROLL
  for (int i = 0; i < Tiles::FM; ++i) {
    VGG_GEMM_UNROLL
    for (int j = 0; j < Tiles::FN; ++j) {
      VGG_GEMM_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm0 + 16 * i + g + (e >= 2 ? 8 : 0);
        const int64_t n = n0 + wn0 + 8 * j + 2 * t + (e & 1);
        if (m < args.M && n < args.N) {
          float v = acc[i][j][e];
          if (bias != nullptr) v += tc_bias_value(bias, n);
          tc_store(out + m * args.N + n, v);
        }
      }
    }
  }
}

// out (M*N) of OutT = sum over z of partial (splits, M*N) in order z = 0, 1, ... [+ bias (N)]; grid-stride.
template <class BiasT, class OutT>
__global__ void tc_splitk_reduce_kernel(const float* partial, int splits, int64_t mn, int64_t n_cols,
                                        const BiasT* bias, OutT* out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < mn; i += step) {
    float sum = 0.0f;
    for (int z = 0; z < splits; ++z) sum += partial[z * mn + i];
    if (bias != nullptr) sum += tc_bias_value(bias, i % n_cols);
    tc_store(out + i, sum);
  }
}

// The plan of plan_gemm for the tensor-core kernels: occupancy of the kernel that will run (the float partials'
// variant when it splits; the two differ only in the epilogue's stores).
template <class Op, class A, class B, class OutT>
GemmPlan plan_tc_gemm(int64_t M, int64_t N, int64_t kdim) {
  using LL = TcLayout<TcLargeTiles, Op, A, B>;
  using LS = TcLayout<TcSmallTiles, Op, A, B>;
  vgg_opt_in_dynamic_shared(tc_gemm_kernel<TcLargeTiles, Op, A, B, OutT>, LL::kSharedBytes);
  vgg_opt_in_dynamic_shared(tc_gemm_kernel<TcSmallTiles, Op, A, B, OutT>, LS::kSharedBytes);
  // The model's register limit: 8 warps of up to 128 registers (large), 4 warps (small).
  const KernelSlots large =
      kernel_slots(tc_gemm_kernel<TcLargeTiles, Op, A, B, OutT>, TcLargeTiles::kThreads, LL::kSharedBytes, 2);
  const KernelSlots small =
      kernel_slots(tc_gemm_kernel<TcSmallTiles, Op, A, B, OutT>, TcSmallTiles::kThreads, LS::kSharedBytes, 4);
  return plan_gemm(M, N, kdim, large, small, 60.0);
}

template <class Tiles, class Op, class ALoader, class BLoader, class OutT>
void launch_tc_gemm(const char* op, const ALoader& a, const BLoader& b, int64_t M, int64_t N, int64_t kdim, OutT* out,
                    const typename Op::Elem* bias, int splits) {
  using L = TcLayout<Tiles, Op, ALoader, BLoader>;
  int64_t k_per_split = kdim;
  if (splits > 1) {
    k_per_split = ceil_div(ceil_div(kdim, splits), Tiles::BK) * Tiles::BK;
    splits = static_cast<int>(ceil_div(kdim, k_per_split));
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(M, Tiles::BM)), static_cast<unsigned>(ceil_div(N, Tiles::BN)),
                  static_cast<unsigned>(splits > 1 ? splits : 1));
  const dim3 block(Tiles::kThreads);
  const void* any_global = a.prm.p;
  if (splits <= 1) {
    const TcArgs args{M, N, kdim, kdim > 0 ? kdim : 1, out, 0, bias, any_global};
    vgg_opt_in_dynamic_shared(tc_gemm_kernel<Tiles, Op, ALoader, BLoader, OutT>, L::kSharedBytes);
    VGG_LAUNCH(grid, block, L::kSharedBytes, tc_gemm_kernel<Tiles, Op, ALoader, BLoader, OutT>)(a, b, args);
    VGG_CHECK_LAUNCH(op);
    return;
  }
  const int64_t mn = M * N;
  Workspace partial(static_cast<size_t>(splits) * static_cast<size_t>(mn) * sizeof(float));
  const TcArgs args{M, N, kdim, k_per_split, partial.as<float>(), mn, nullptr, any_global};
  vgg_opt_in_dynamic_shared(tc_gemm_kernel<Tiles, Op, ALoader, BLoader, float>, L::kSharedBytes);
  VGG_LAUNCH(grid, block, L::kSharedBytes, tc_gemm_kernel<Tiles, Op, ALoader, BLoader, float>)(a, b, args);
  VGG_CHECK_LAUNCH(op);
  constexpr int kReduceThreads = 256;
  int64_t blocks = ceil_div(mn, kReduceThreads);
  if (blocks > 4096) blocks = 4096;
  using BiasT = typename Op::Elem;
  VGG_LAUNCH(dim3(static_cast<unsigned>(blocks)), dim3(kReduceThreads), 0, tc_splitk_reduce_kernel<BiasT, OutT>)(
      partial.as<float>(), splits, mn, N, bias, out);
  VGG_CHECK_LAUNCH(op);
}

// Runs C = A * B [+ bias] on tensor cores with the planned tiles; Op is Tf32Op or Bf16Op, OutT its output type.
template <class Op, template <bool, class> class ALoader, template <bool, class> class BLoader, class AParams,
          class BParams, class OutT>
void run_tc_gemm(const char* op, const AParams& ap, const BParams& bp, bool vec, int64_t M, int64_t N, int64_t kdim,
                 OutT* out, const typename Op::Elem* bias) {
  with_loaders<ALoader, BLoader, typename Op::Elem>(op, ap, bp, vec, M, N, kdim, [&](auto a, auto b) {
    const GemmPlan plan = plan_tc_gemm<Op, decltype(a), decltype(b), OutT>(M, N, kdim);
    if (plan.large) launch_tc_gemm<TcLargeTiles, Op>(op, a, b, M, N, kdim, out, bias, plan.splits);
    else launch_tc_gemm<TcSmallTiles, Op>(op, a, b, M, N, kdim, out, bias, plan.splits);
  });
}

}  // namespace vgg::VGG_GPU_NS::gemm
