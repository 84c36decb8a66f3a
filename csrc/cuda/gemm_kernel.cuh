// The one tiled SGEMM of the GPU backend, shared by convolution (implicit GEMM) and the fully connected layer.
//
//   C (M, N) = A (M, Kdim) * B (Kdim, N)      [+ bias (N)],   C row-major with leading dimension N
//
// A and B come from operand loaders (gemm_loaders.cuh), one kernel template serves every pass of conv2d and
// linear. Block tile BM x BN x BK, each thread a TM x TN register tile (Cfg below); double-buffered shared memory
// with one barrier per k tile. Per k tile every thread loads exactly one 4-vector of A and one of B: as one float4
// when the operand allows it (VEC: channel counts % 4 == 0 and 16-byte aligned pointers), else as four
// bounds-checked scalars. Shared memory always holds A as As[k][m] and B as Bs[k][n], so the inner product reads
// both with float4 broadcasts.
//
// Split-K: blockIdx.z takes a contiguous range of Kdim (a multiple of BK) and writes its partial C tile into a
// workspace slice; a second kernel (splitk_reduce_kernel) sums the slices in a fixed order (and adds the bias), so
// results are identical from run to run and no float atomics are used. The host side (tiles, split count,
// launch) is gemm_plan.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "gemm_loaders.cuh"

namespace vgg::VGG_GPU_NS::gemm {

// ---- tile configurations ---------------------------------------------------------------------------------------

template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kMinBlocksPerSM = MIN_BLOCKS_;  // __launch_bounds__: caps registers at 64K / (threads * this)
  static constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN;
  static constexpr int kThreads = kThreadsM * kThreadsN;
  // A thread's TM rows are TM/4 groups of 4, the groups kRowGroupStride apart (likewise columns), so that the
  // threads of a warp read consecutive float4s of Bs: no bank conflicts in the inner loop.
  static constexpr int kRowGroupStride = kThreadsM * 4, kColGroupStride = kThreadsN * 4;
  // Rows of As/Bs are padded by 4 floats: keeps float4 alignment and spreads the transposing stores of
  // kAlongK loaders (4 k rows apart) over different banks.
  static constexpr int kLdA = BM + 4, kLdB = BN + 4;
  static constexpr int kStageFloats = BK * (kLdA + kLdB);
  static constexpr size_t kSharedBytes = 2 * kStageFloats * sizeof(float);  // two stages (double buffering)
  static_assert(TM % 4 == 0 && TN % 4 == 0, "register tiles are made of 4-wide groups");
  static_assert(BM * BK == 4 * kThreads && BN * BK == 4 * kThreads,
                "each thread loads exactly one 4-vector of A and one of B per k tile");
  static_assert(kSharedBytes <= 48 * 1024, "48 KiB: the most dynamic shared memory a launch gets without opting in");
  static_assert((BM == 128 && BN == 128) || (BM == 64 && BN == 64), "plan_gemm knows 128 x 128 and 64 x 64 tiles");
};

// 256 threads, 8x8 outputs each: the big-problem workhorse (64 FMAs per 4 shared float4 reads). Two blocks per
// SM (16 warps) need at most 128 registers per thread: ptxas fits the float4 loaders in that without spilling.
// The scalar loaders (odd channel counts, rare with these tiles) keep more state and get one block per SM.
using LargeTiles = TileConfig<128, 128, 8, 8, 8, 2>;
// 256 threads, 4x4 outputs each, at most 64 registers (4 blocks per SM): 4x more blocks for small maps
// (14x14, 7x7), small batches and thin K or C.
using SmallTiles = TileConfig<64, 64, 16, 4, 4, 4>;

// ---- the kernel --------------------------------------------------------------------------------------------------

struct GemmArgs {
  int64_t M, N, kdim;
  int64_t k_per_split;   // Kdim range of one blockIdx.z, a multiple of BK
  float* out;            // C (M, N) row-major, or the split-K workspace (splits, M, N)
  int64_t split_stride;  // M*N when splitting, else 0
  const float* bias;     // (N) or nullptr; only without split-K (the reduction adds it otherwise)
  bool vec_store;        // N % 4 == 0 and out 16-byte aligned
};

// One 4-vector of a loader into shared memory, laid out [k][row] with leading dimension LD.
template <bool AlongK, int LD>
__device__ __forceinline__ void store_vector(float* tile, const float (&v)[4], int row, int k) {
  if (AlongK) {
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) tile[(k + j) * LD + row] = v[j];
  } else {
    check_aligned16(tile + k * LD + row);
    *reinterpret_cast<float4*>(tile + k * LD + row) = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// A thread's N values of one k row of a shared tile: N/4 float4 broadcasts, the groups group_stride floats apart.
template <int N>
__device__ __forceinline__ void load_fragment(float (&f)[N], const float* row, int group_stride) {
  VGG_GEMM_UNROLL
  for (int g = 0; g < N / 4; ++g) {
    const float* src = row + g * group_stride;
    check_aligned16(src);
    const float4 t4 = *reinterpret_cast<const float4*>(src);
    f[4 * g] = t4.x;
    f[4 * g + 1] = t4.y;
    f[4 * g + 2] = t4.z;
    f[4 * g + 3] = t4.w;
  }
}

// Where one block of a GEMM kernel works: C from row m0 and column n0, and the k tiles (BK wide, num_tiles of them,
// 0 for a split past the end) of split blockIdx.z's Kdim range, from k_begin. Block-uniform. Both kernels
// (gemm_tile_kernel, tc_gemm_kernel) start here.
struct GemmBlockRange {
  int64_t m0, n0, k_begin;
  int num_tiles;
};
template <int BM, int BN, int BK>
__device__ __forceinline__ GemmBlockRange gemm_block_range(int64_t kdim, int64_t k_per_split) {
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * k_per_split;
  const int64_t k_end = k_begin + k_per_split < kdim ? k_begin + k_per_split : kdim;
  return {static_cast<int64_t>(blockIdx.x) * BM, static_cast<int64_t>(blockIdx.y) * BN, k_begin,
          k_end > k_begin ? static_cast<int>((k_end - k_begin + BK - 1) / BK) : 0};
}

// C (M, N) [split z] = A (M, Kdim range z) * B (Kdim range z, N) [+ bias].
// grid (ceil(M/BM), ceil(N/BN), splits), block Cfg::kThreads, dynamic shared memory Cfg::kSharedBytes.
template <class Cfg, class ALoader, class BLoader>
__global__ void __launch_bounds__(Cfg::kThreads, ALoader::kVec&& BLoader::kVec ? Cfg::kMinBlocksPerSM : 1)
    gemm_tile_kernel(ALoader a, BLoader b, GemmArgs args) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  VGG_DYNAMIC_SHARED(float, smem);  // [2 stages][As: BK x kLdA | Bs: BK x kLdB]

  const int tid = static_cast<int>(threadIdx.x);
  const auto [m0, n0, k_begin, num_tiles] = gemm_block_range<BM, BN, BK>(args.kdim, args.k_per_split);

  // Where this thread's 4-vector sits inside the A and B tiles.
  const int a_row = ALoader::kAlongK ? tid / (BK / 4) : (tid % (BM / 4)) * 4;
  const int a_k = ALoader::kAlongK ? (tid % (BK / 4)) * 4 : tid / (BM / 4);
  const int b_row = BLoader::kAlongK ? tid / (BK / 4) : (tid % (BN / 4)) * 4;
  const int b_k = BLoader::kAlongK ? (tid % (BK / 4)) * 4 : tid / (BN / 4);
  a.begin(m0 + a_row, k_begin + a_k);
  b.begin(n0 + b_row, k_begin + b_k);

  // Where this thread's TM x TN outputs sit inside the block tile.
  const int tx = tid % Cfg::kThreadsN, ty = tid / Cfg::kThreadsN;

  float acc[TM][TN];
  VGG_GEMM_UNROLL
  for (int i = 0; i < TM; ++i) {
    VGG_GEMM_UNROLL
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  }

  float va[4], vb[4];
  a.load(va);
  b.load(vb);
  store_vector<ALoader::kAlongK, Cfg::kLdA>(smem, va, a_row, a_k);
  store_vector<BLoader::kAlongK, Cfg::kLdB>(smem + BK * Cfg::kLdA, vb, b_row, b_k);
  // Sync so the first tile is complete in shared memory before anyone multiplies it.
  __syncthreads();

  for (int t = 0; t < num_tiles; ++t) {
    const float* As = smem + (t & 1) * Cfg::kStageFloats;
    const float* Bs = As + BK * Cfg::kLdA;
    const bool more = t + 1 < num_tiles;  // uniform across the block
    if (more) {  // issue the next tile's global loads now; they land in registers while we compute
      a.advance(BK);
      b.advance(BK);
      a.load(va);
      b.load(vb);
    }
    VGG_GEMM_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float fa[TM], fb[TN];
      load_fragment(fa, As + kk * Cfg::kLdA + ty * 4, Cfg::kRowGroupStride);
      load_fragment(fb, Bs + kk * Cfg::kLdB + tx * 4, Cfg::kColGroupStride);
      VGG_GEMM_UNROLL
      for (int i = 0; i < TM; ++i) {
        VGG_GEMM_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] += fa[i] * fb[j];
      }
    }
    if (more) {
      // The other stage was last read in iteration t-1, and every thread has passed the barrier that ended
      // it, so it can be overwritten now without disturbing anyone.
      float* next = smem + ((t + 1) & 1) * Cfg::kStageFloats;
      store_vector<ALoader::kAlongK, Cfg::kLdA>(next, va, a_row, a_k);
      store_vector<BLoader::kAlongK, Cfg::kLdB>(next + BK * Cfg::kLdA, vb, b_row, b_k);
    }
    // Sync so the next tile is complete before it is read, and so fast threads don't overwrite this stage
    // (in iteration t+1) while slow threads still read it.
    __syncthreads();
  }

  // Epilogue: C tile (+ bias) straight from registers; float4 stores when the row length allows.
  float* out = args.out + static_cast<int64_t>(blockIdx.z) * args.split_stride;
  VGG_GEMM_UNROLL
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + (i / 4) * Cfg::kRowGroupStride + ty * 4 + (i % 4);
    if (m >= args.M) continue;
    float* row = out + m * args.N;
    VGG_GEMM_UNROLL
    for (int g = 0; g < TN / 4; ++g) {
      const int64_t n = n0 + g * Cfg::kColGroupStride + tx * 4;
      float v[4];
      VGG_GEMM_UNROLL
      for (int j = 0; j < 4; ++j) {
        v[j] = acc[i][4 * g + j];
        if (args.bias != nullptr && n + j < args.N) v[j] += args.bias[n + j];
      }
      if (args.vec_store && n < args.N) {
        check_aligned16(row + n);
        *reinterpret_cast<float4*>(row + n) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        VGG_GEMM_UNROLL
        for (int j = 0; j < 4; ++j)
          if (n + j < args.N) row[n + j] = v[j];
      }
    }
  }
}

// out (M*N) = sum over z of partial (splits, M*N), in order z = 0, 1, ... [+ bias (N) broadcast over rows].
// grid-stride over M*N; any grid.
template <bool HasBias>
__global__ void splitk_reduce_kernel(const float* partial, int splits, int64_t mn, int64_t n_cols, const float* bias,
                                     float* out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < mn; i += step) {
    float sum = 0.0f;
    for (int z = 0; z < splits; ++z) sum += partial[z * mn + i];
    if (HasBias) sum += bias[i % n_cols];
    out[i] = sum;
  }
}

}  // namespace vgg::VGG_GPU_NS::gemm
