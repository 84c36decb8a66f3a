// The one tiled SGEMM of the GPU backend, shared by convolution (implicit GEMM) and the fully connected layer.
//
//   C (M, N) = A (M, Kdim) * B (Kdim, N)      [+ bias (N)],   C row-major with leading dimension N
//
// A and B are never materialised: each is an "operand loader" that gathers the elements of one k tile straight
// from the tensors (an implicit im2col for convolution, plain strided reads for linear layers), with 0 for
// anything outside the operand (conv padding, tails of M, N and Kdim). One kernel template serves every pass:
//
//   pass                  M          N        Kdim       A (M x Kdim)                  B (Kdim x N)
//   conv forward          N*P*Q      K        R*S*C      im2col(x), c fastest          w (K, RSC) read as w^T
//   conv backward data    N*H*W      C        R*S*K      dy gathered (stride aware)    w as ((r,s,k), c)
//   conv backward weight  K          R*S*C    N*P*Q      dy^T                          im2col(x)
//   linear forward        M          OUT      IN         x                             w^T
//   linear backward data  M          IN       OUT        dy                            w
//   linear backward wgt   OUT        IN       M          dy^T                          x
//
// Block tile BM x BN x BK, each thread a TM x TN register tile (Cfg below); double-buffered shared memory with
// one barrier per k tile. Per k tile every thread loads exactly one 4-vector of A and one of B: as one float4
// when the operand allows it (VEC: channel counts % 4 == 0 and 16-byte aligned pointers), else as four
// bounds-checked scalars. A loader's 4 elements run either along k (kAlongK: e.g. the channels of one pixel) or
// along its row dimension (e.g. 4 consecutive output channels of dy); shared memory always holds A as
// As[k][m] and B as Bs[k][n], so the inner product reads both with float4 broadcasts.
//
// Split-K: blockIdx.z takes a contiguous range of Kdim (a multiple of BK) and writes its partial C tile into a
// workspace slice; a second kernel sums the slices in a fixed order (and adds the bias), so results are
// identical from run to run and no float atomics are used. This fills the GPU when M x N is small (weight
// gradients, FC layers at small batch). The plan (plan_gemm) depends on the shapes, the SM count and the
// kernel's occupancy, and makes launches whole waves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "../core/precision.h"
#include "common.cuh"

#if defined(__CUDACC__)
#define VGG_GEMM_UNROLL _Pragma("unroll")
#else
#define VGG_GEMM_UNROLL _Pragma("GCC unroll 16")
#endif

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

// ---- helpers -----------------------------------------------------------------------------------------------------

// A mixed-radix counter (hi, mid, lo), lo fastest: walks k = ((hi * mid_n) + mid) * lo_n + lo without dividing.
struct Digits {
  int hi, mid, lo;
  __host__ __device__ void set(int64_t k, int mid_n, int lo_n) {
    lo = static_cast<int>(k % lo_n);
    const int64_t rest = k / lo_n;
    mid = static_cast<int>(rest % mid_n);
    hi = static_cast<int>(rest / mid_n);
  }
  __device__ __forceinline__ void step(int delta, int mid_n, int lo_n) {
    lo += delta;
    while (lo >= lo_n) {
      lo -= lo_n;
      if (++mid == mid_n) {
        mid = 0;
        ++hi;
      }
    }
  }
};

// A GPU faults on a misaligned float4 access; x86 does not, so the emulator build checks every one.
__device__ __forceinline__ void check_aligned16(const void* p) {
#if defined(VGG_SIMT_ACTIVE)
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) throw std::logic_error("gemm_tiles: misaligned float4 access");
#else
  (void)p;
#endif
}

template <class T>
__device__ __forceinline__ void set_zero(T (&v)[4]) { v[0] = v[1] = v[2] = v[3] = T{}; }

__device__ __forceinline__ void load4(float (&v)[4], const float* p) {
  check_aligned16(p);
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}

// Four bfloat16 (raw bits) in one 8-byte load.
__device__ __forceinline__ void load4(uint16_t (&v)[4], const uint16_t* p) {
#if defined(VGG_SIMT_ACTIVE)
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) throw std::logic_error("gemm_tiles: misaligned 8-byte access");
#endif
  const uint2 t = *reinterpret_cast<const uint2*>(p);
  v[0] = static_cast<uint16_t>(t.x & 0xFFFFu);
  v[1] = static_cast<uint16_t>(t.x >> 16);
  v[2] = static_cast<uint16_t>(t.y & 0xFFFFu);
  v[3] = static_cast<uint16_t>(t.y >> 16);
}

// ---- operand loaders ---------------------------------------------------------------------------------------------
// Each loader: kAlongK; begin(row, k) with this thread's first element; load(v) fetches the 4 elements
// (row, k..k+3) if kAlongK else (row..row+3, k) of the current tile, 0 outside; advance(bk) moves to the next tile.
// Parameters (member prm) are plain structs filled on the host; VEC selects the float4 path (the host checks
// that it is legal: channel counts % 4 == 0 and 16-byte aligned pointers). T is the element type: float, or
// uint16_t holding bfloat16 bits for the tensor-core kernels. With VEC, vec_src() is the address of the 4
// contiguous elements of the current tile, or nullptr where they are all 0 (what cp.async's zero-fill copies).

// Dense, contiguous along k: element (row, k) = p[row * ld + k]. x or dy of a linear layer, conv weights (K, RSC).
template <class T>
struct DenseParamsOf {
  const T* p;
  int64_t ld, rows, kdim;
};
using DenseParams = DenseParamsOf<float>;
template <bool VEC, class T = float>
struct DenseAlongK {
  static constexpr bool kAlongK = true;
  static constexpr bool kVec = VEC;
  using Elem = T;
  DenseParamsOf<T> prm;
  const T* row_ptr;
  int64_t k;
  bool row_ok;
  __device__ __forceinline__ void begin(int64_t row, int64_t k0) {
    row_ok = row < prm.rows;
    row_ptr = prm.p + (row_ok ? row * prm.ld : 0);
    k = k0;
  }
  // kdim % 4 == 0: the 4 elements are all inside or all outside.
  __device__ __forceinline__ const T* vec_src() const { return row_ok && k < prm.kdim ? row_ptr + k : nullptr; }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
    } else {
      VGG_GEMM_UNROLL
      for (int j = 0; j < 4; ++j) v[j] = (row_ok && k + j < prm.kdim) ? row_ptr[k + j] : T{};
    }
  }
  __device__ __forceinline__ void advance(int bk) { k += bk; }
};

// Dense, contiguous along the row dimension: element (row, k) = p[k * ld + row]. dy^T, w and x of linear passes.
template <bool VEC, class T = float>
struct DenseAlongRows {
  static constexpr bool kAlongK = false;
  static constexpr bool kVec = VEC;
  using Elem = T;
  DenseParamsOf<T> prm;
  int64_t row, k;
  __device__ __forceinline__ void begin(int64_t row0, int64_t k0) {
    row = row0;
    k = k0;
  }
  // rows % 4 == 0
  __device__ __forceinline__ const T* vec_src() const {
    return k < prm.kdim && row < prm.rows ? prm.p + k * prm.ld + row : nullptr;
  }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
      return;
    }
    if (k >= prm.kdim) {
      set_zero(v);
      return;
    }
    const T* p = prm.p + k * prm.ld + row;
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = (row + j < prm.rows) ? p[j] : T{};
  }
  __device__ __forceinline__ void advance(int bk) { k += bk; }
};

// Convolution geometry shared by the implicit-GEMM loaders (int: one image, one filter fit in 2^31).
template <class T>
struct ConvGeometryOf {
  const T* p;                    // x (N,H,W,C), dy (N,P,Q,K) or w (K,R,S,C), depending on the loader
  int64_t rows;                  // row count of the GEMM operand (M of A, N of B)
  int N, H, W, C, K, R, S, P, Q; // sizes as in Conv2dShape
  int stride, pad;
};
using ConvGeometry = ConvGeometryOf<float>;

// Conv forward A: im2col(x) without the buffer. Row m = (n, p, q), k = (r, s, c):
// element = x[n, p*stride - pad + r, q*stride - pad + s, c], 0 in the padding.
template <bool VEC, class T = float>
struct Im2colAlongK {
  static constexpr bool kAlongK = true;
  static constexpr bool kVec = VEC;
  using Elem = T;
  ConvGeometryOf<T> prm;
  const T* image;      // x + n*H*W*C
  int ih0, iw0;
  bool row_ok;
  Digits rsc;          // (r, s, c) of this thread's first k
  __device__ __forceinline__ void begin(int64_t m, int64_t k0) {
    row_ok = m < prm.rows;
    const int64_t mm = row_ok ? m : 0;
    const int64_t pq = static_cast<int64_t>(prm.P) * prm.Q;
    const int64_t n = mm / pq;
    const int rem = static_cast<int>(mm - n * pq);
    ih0 = (rem / prm.Q) * prm.stride - prm.pad;
    iw0 = (rem % prm.Q) * prm.stride - prm.pad;
    image = prm.p + n * prm.H * prm.W * prm.C;
    rsc.set(k0, prm.S, prm.C);
  }
  __device__ __forceinline__ T at(int r, int s, int c) const {
    const int ih = ih0 + r, iw = iw0 + s;
    const bool ok = row_ok && r < prm.R && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
    return ok ? image[(ih * prm.W + iw) * prm.C + c] : T{};
  }
  // C % 4 == 0: the 4 channels share (r, s).
  __device__ __forceinline__ const T* vec_src() const {
    const int ih = ih0 + rsc.hi, iw = iw0 + rsc.mid;
    const bool ok = row_ok && rsc.hi < prm.R && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
    return ok ? image + (ih * prm.W + iw) * prm.C + rsc.lo : nullptr;
  }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
    } else {
      Digits e = rsc;
      VGG_GEMM_UNROLL
      for (int j = 0; j < 4; ++j) {
        v[j] = at(e.hi, e.mid, e.lo);
        e.step(1, prm.S, prm.C);
      }
    }
  }
  __device__ __forceinline__ void advance(int bk) { rsc.step(bk, prm.S, prm.C); }
};

// Conv backward-data A: row m = (n, h, w) of dx, k = (r, s, kout):
// element = dy[n, p, q, kout] where h + pad = p*stride + r and w + pad = q*stride + s (exact division), else 0.
template <bool VEC, class T = float>
struct DyGatherAlongK {
  static constexpr bool kAlongK = true;
  static constexpr bool kVec = VEC;
  using Elem = T;
  ConvGeometryOf<T> prm;
  const T* image;      // dy + n*P*Q*K
  int hp, wp;          // h + pad, w + pad
  bool row_ok;
  Digits rsk;
  __device__ __forceinline__ void begin(int64_t m, int64_t k0) {
    row_ok = m < prm.rows;
    const int64_t mm = row_ok ? m : 0;
    const int64_t hw = static_cast<int64_t>(prm.H) * prm.W;
    const int64_t n = mm / hw;
    const int rem = static_cast<int>(mm - n * hw);
    hp = rem / prm.W + prm.pad;
    wp = rem % prm.W + prm.pad;
    image = prm.p + n * prm.P * prm.Q * prm.K;
    rsk.set(k0, prm.S, prm.K);
  }
  // Offset of dy[n, p, q, 0] for filter tap (r, s), or -1 when no output pixel reads (h, w) through that tap.
  __device__ __forceinline__ int tap_offset(int r, int s) const {
    const int th = hp - r, tw = wp - s;
    if (!row_ok || r >= prm.R || th < 0 || tw < 0) return -1;
    int p = th, q = tw;
    if (prm.stride != 1) {  // stride 1 (all of VGG) is a block-uniform branch past the two divisions
      p = th / prm.stride;
      q = tw / prm.stride;
      if (p * prm.stride != th || q * prm.stride != tw) return -1;
    }
    if (p >= prm.P || q >= prm.Q) return -1;
    return (p * prm.Q + q) * prm.K;
  }
  // K % 4 == 0: the 4 output channels share (r, s).
  __device__ __forceinline__ const T* vec_src() const {
    const int off = tap_offset(rsk.hi, rsk.mid);
    return off >= 0 ? image + off + rsk.lo : nullptr;
  }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
    } else {
      Digits e = rsk;
      VGG_GEMM_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int off = tap_offset(e.hi, e.mid);
        v[j] = off >= 0 ? image[off + e.lo] : T{};
        e.step(1, prm.S, prm.K);
      }
    }
  }
  __device__ __forceinline__ void advance(int bk) { rsk.step(bk, prm.S, prm.K); }
};

// Conv backward-data B: k = (r, s, kout), column c: element = w[kout, r, s, c]. p = w.
template <bool VEC, class T = float>
struct FilterTapsAlongRows {
  static constexpr bool kAlongK = false;
  static constexpr bool kVec = VEC;
  using Elem = T;
  ConvGeometryOf<T> prm;
  int c;
  Digits rsk;
  __device__ __forceinline__ void begin(int64_t col, int64_t k0) {
    c = static_cast<int>(col);
    rsk.set(k0, prm.S, prm.K);
  }
  __device__ __forceinline__ const T* tap_ptr() const {
    const int64_t rsc_n = static_cast<int64_t>(prm.R) * prm.S * prm.C;
    return prm.p + rsk.lo * rsc_n + (rsk.hi * prm.S + rsk.mid) * prm.C + c;
  }
  // C % 4 == 0; rsk.hi >= R means k >= R*S*K.
  __device__ __forceinline__ const T* vec_src() const { return rsk.hi < prm.R && c < prm.C ? tap_ptr() : nullptr; }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
      return;
    }
    if (rsk.hi >= prm.R) {
      set_zero(v);
      return;
    }
    const T* p = tap_ptr();
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = (c + j < prm.C) ? p[j] : T{};
  }
  __device__ __forceinline__ void advance(int bk) { rsk.step(bk, prm.S, prm.K); }
};

// Conv backward-weight B: k = (n, p, q), column = (r, s, c): element = x[n, p*stride - pad + r, q*stride - pad + s, c].
// prm.rows = R*S*C (the columns), kdim = N*P*Q.
template <bool VEC, class T = float>
struct Im2colAlongRows {
  static constexpr bool kAlongK = false;
  static constexpr bool kVec = VEC;
  using Elem = T;
  ConvGeometryOf<T> prm;
  int r[4], s[4], c[4];  // the 4 columns' taps (VEC: only [0] is used, the 4 channels are consecutive)
  bool col_ok[4];
  Digits npq;
  __device__ __forceinline__ void begin(int64_t col, int64_t k0) {
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int64_t cj = col + j;
      col_ok[j] = cj < prm.rows;
      const int cc = col_ok[j] ? static_cast<int>(cj) : 0;
      c[j] = cc % prm.C;
      s[j] = (cc / prm.C) % prm.S;
      r[j] = cc / (prm.C * prm.S);
    }
    npq.set(k0, prm.P, prm.Q);
  }
  // C % 4 == 0: the 4 columns are 4 consecutive channels of one tap. npq.hi >= N means k >= N*P*Q.
  __device__ __forceinline__ const T* vec_src() const {
    if (npq.hi >= prm.N) return nullptr;
    const int ih = npq.mid * prm.stride - prm.pad + r[0], iw = npq.lo * prm.stride - prm.pad + s[0];
    const bool ok = col_ok[0] && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
    return ok ? prm.p + static_cast<int64_t>(npq.hi) * prm.H * prm.W * prm.C + (ih * prm.W + iw) * prm.C + c[0]
              : nullptr;
  }
  __device__ __forceinline__ void load(T (&v)[4]) const {
    if (VEC) {
      const T* src = vec_src();
      if (src) load4(v, src); else set_zero(v);
      return;
    }
    if (npq.hi >= prm.N) {
      set_zero(v);
      return;
    }
    const T* image = prm.p + static_cast<int64_t>(npq.hi) * prm.H * prm.W * prm.C;
    const int ih0 = npq.mid * prm.stride - prm.pad, iw0 = npq.lo * prm.stride - prm.pad;
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int ih = ih0 + r[j], iw = iw0 + s[j];
      const bool ok = col_ok[j] && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
      v[j] = ok ? image[(ih * prm.W + iw) * prm.C + c[j]] : T{};
    }
  }
  __device__ __forceinline__ void advance(int bk) { npq.step(bk, prm.P, prm.Q); }
};

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

// C (M, N) [split z] = A (M, Kdim range z) * B (Kdim range z, N) [+ bias].
// grid (ceil(M/BM), ceil(N/BN), splits), block Cfg::kThreads, dynamic shared memory Cfg::kSharedBytes.
template <class Cfg, class ALoader, class BLoader>
__global__ void __launch_bounds__(Cfg::kThreads, ALoader::kVec&& BLoader::kVec ? Cfg::kMinBlocksPerSM : 1)
    gemm_tile_kernel(ALoader a, BLoader b, GemmArgs args) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  VGG_DYNAMIC_SHARED(float, smem);  // [2 stages][As: BK x kLdA | Bs: BK x kLdB]

  const int tid = static_cast<int>(threadIdx.x);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.z) * args.k_per_split;
  const int64_t k_end = k_begin + args.k_per_split < args.kdim ? k_begin + args.k_per_split : args.kdim;
  const int num_tiles = k_end > k_begin ? static_cast<int>((k_end - k_begin + BK - 1) / BK) : 0;

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
      VGG_GEMM_UNROLL
      for (int g = 0; g < TM / 4; ++g) {
        const float* src = As + kk * Cfg::kLdA + g * Cfg::kRowGroupStride + ty * 4;
        check_aligned16(src);
        const float4 t4 = *reinterpret_cast<const float4*>(src);
        fa[4 * g] = t4.x;
        fa[4 * g + 1] = t4.y;
        fa[4 * g + 2] = t4.z;
        fa[4 * g + 3] = t4.w;
      }
      VGG_GEMM_UNROLL
      for (int g = 0; g < TN / 4; ++g) {
        const float* src = Bs + kk * Cfg::kLdB + g * Cfg::kColGroupStride + tx * 4;
        check_aligned16(src);
        const float4 t4 = *reinterpret_cast<const float4*>(src);
        fb[4 * g] = t4.x;
        fb[4 * g + 1] = t4.y;
        fb[4 * g + 2] = t4.z;
        fb[4 * g + 3] = t4.w;
      }
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

// Runs C = A * B [+ bias] with the planned tiles and the VEC path. ALoader/BLoader are loader templates over
// VEC and the element type; ap/bp their parameter structs.
template <template <bool, class> class ALoader, template <bool, class> class BLoader, class AParams, class BParams>
void run_gemm(const char* op, const AParams& ap, const BParams& bp, bool vec, int64_t M, int64_t N, int64_t kdim,
              float* out, const float* bias) {
  if (M <= 0 || N <= 0) return;
  check_gemm_limits(op, M, N, kdim);
  auto go = [&](auto a, auto b) {
    using A = decltype(a);
    using B = decltype(b);
    a.prm = ap;
    b.prm = bp;
    constexpr bool kVec = A::kVec && B::kVec;  // the scalar loaders get one block per SM (__launch_bounds__)
    const KernelSlots large = kernel_slots(gemm_tile_kernel<LargeTiles, A, B>, LargeTiles::kThreads,
                                           LargeTiles::kSharedBytes, kVec ? LargeTiles::kMinBlocksPerSM : 1);
    const KernelSlots small = kernel_slots(gemm_tile_kernel<SmallTiles, A, B>, SmallTiles::kThreads,
                                           SmallTiles::kSharedBytes, kVec ? SmallTiles::kMinBlocksPerSM : 1);
    const GemmPlan plan = plan_gemm(M, N, kdim, large, small, 10.0);
    if (plan.large) launch_gemm_tiles<LargeTiles>(op, a, b, M, N, kdim, out, bias, plan.splits);
    else launch_gemm_tiles<SmallTiles>(op, a, b, M, N, kdim, out, bias, plan.splits);
  };
  if (vec) go(ALoader<true, float>{}, BLoader<true, float>{});
  else go(ALoader<false, float>{}, BLoader<false, float>{});
}

}  // namespace vgg::VGG_GPU_NS::gemm
