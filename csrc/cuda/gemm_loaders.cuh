// The operand loaders of the GPU GEMMs (gemm_kernel.cuh on CUDA cores, tc_gemm.cuh on tensor cores).
//
//   C (M, N) = A (M, Kdim) * B (Kdim, N)      [+ bias (N)]
//
// A and B are never materialised: each is an "operand loader" that gathers the elements of one k tile straight
// from the tensors (an implicit im2col for convolution, plain strided reads for linear layers), with 0 for
// anything outside the operand (conv padding, tails of M, N and Kdim). Every pass picks two of them:
//
//   pass                  M          N        Kdim       A (M x Kdim)                  B (Kdim x N)
//   conv forward          N*P*Q      K        R*S*C      Im2colAlongK (x, c fastest)   DenseAlongK (w (K, RSC))
//   conv backward data    N*H*W      C        R*S*K      DyGatherAlongK (dy)           FilterTapsAlongRows (w)
//   conv backward weight  K          R*S*C    N*P*Q      DenseAlongRows (dy^T)         Im2colAlongRows (x)
//   linear forward        M          OUT      IN         DenseAlongK (x)               DenseAlongK (w, as w^T)
//   linear backward data  M          IN       OUT        DenseAlongK (dy)              DenseAlongRows (w)
//   linear backward wgt   OUT        IN       M          DenseAlongRows (dy^T)         DenseAlongRows (x)
//
// A loader's 4 elements run either along k (kAlongK: e.g. the channels of one pixel) or along its row dimension
// (e.g. 4 consecutive output channels of dy). The CPU's packers (csrc/cpu/conv2d.cpp, gemm.h) mirror these and
// carry the same names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "common.cuh"

#if defined(__CUDACC__)
#define VGG_GEMM_UNROLL _Pragma("unroll")
#else
#define VGG_GEMM_UNROLL _Pragma("GCC unroll 16")
#endif

namespace vgg::VGG_GPU_NS::gemm {

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

__device__ __forceinline__ void check_aligned16(const void* p) { check_vector_aligned(p, 16); }

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
  check_vector_aligned(p, 8);
  const uint2 t = *reinterpret_cast<const uint2*>(p);
  v[0] = static_cast<uint16_t>(t.x & 0xFFFFu);
  v[1] = static_cast<uint16_t>(t.x >> 16);
  v[2] = static_cast<uint16_t>(t.y & 0xFFFFu);
  v[3] = static_cast<uint16_t>(t.y >> 16);
}

// The VEC path of every loader: the 4 contiguous elements at src, or 0 where src is nullptr (all outside).
template <class T>
__device__ __forceinline__ void load4_or_zero(T (&v)[4], const T* src) {
  if (src) load4(v, src); else set_zero(v);
}

// ---- operand loaders ---------------------------------------------------------------------------------------------
// Each loader: kAlongK; begin(row, k) with this thread's first element; load(v) fetches the 4 elements
// (row, k..k+3) if kAlongK else (row..row+3, k) of the current tile, 0 outside; advance(bk) moves to the next tile.
// Parameters (member prm) are plain structs filled on the host; VEC selects the float4 path (the host checks
// that it is legal: channel counts % 4 == 0 and 16-byte aligned pointers). T is the element type: float, or
// uint16_t holding bfloat16 bits for the tensor-core kernels. With VEC, vec_src() is the address of the 4
// contiguous elements of the current tile, or nullptr where they are all 0 (what cp.async's zero-fill copies).

// What every loader shares: its traits and load(), which copies vec_src() on the VEC path and calls the loader's
// load_scalar() otherwise. The base is a CRTP one, so both resolve at compile time: the tile loop gets no branch.
template <class Loader, bool ALONG_K, bool VEC, class T>
struct LoaderBase {
  static constexpr bool kAlongK = ALONG_K;
  static constexpr bool kVec = VEC;
  using Elem = T;
  __device__ __forceinline__ void load(T (&v)[4]) const {
    const Loader& self = static_cast<const Loader&>(*this);
    if constexpr (VEC) load4_or_zero(v, self.vec_src());
    else self.load_scalar(v);
  }
};

// Dense, contiguous along k: element (row, k) = p[row * ld + k]. x or dy of a linear layer, conv weights (K, RSC).
template <class T>
struct DenseParamsOf {
  const T* p;
  int64_t ld, rows, kdim;
};
using DenseParams = DenseParamsOf<float>;
template <bool VEC, class T = float>
struct DenseAlongK : LoaderBase<DenseAlongK<VEC, T>, true, VEC, T> {
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
  __device__ __forceinline__ void load_scalar(T (&v)[4]) const {
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) v[j] = (row_ok && k + j < prm.kdim) ? row_ptr[k + j] : T{};
  }
  __device__ __forceinline__ void advance(int bk) { k += bk; }
};

// Dense, contiguous along the row dimension: element (row, k) = p[k * ld + row]. dy^T, w and x of linear passes.
template <bool VEC, class T = float>
struct DenseAlongRows : LoaderBase<DenseAlongRows<VEC, T>, false, VEC, T> {
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
  __device__ __forceinline__ void load_scalar(T (&v)[4]) const {
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

// The implicit-GEMM loaders' int32 view of Conv2dShape (csrc/shapes.h), made from it in one place
// (conv2d_detail::conv_view in conv2d.cu): int indexes one image and one filter bank, which dispatch has checked
// fit in 2^31 elements.
template <class T>
struct ConvViewOf {
  const T* p;                    // x (N,H,W,C), dy (N,P,Q,K) or w (K,R,S,C), depending on the loader
  int64_t rows;                  // row count of the GEMM operand (M of A, N of B)
  int N, H, W, C, K, R, S, P, Q; // sizes as in Conv2dShape
  int stride_h, stride_w, pad_h, pad_w;
};

// Row m of an image-major GEMM operand is pixel (y, x) of image n, over planes of h x w pixels. Returns n.
__device__ __forceinline__ int64_t split_pixel_row(int64_t m, int h, int w, int& y, int& x) {
  const int64_t hw = static_cast<int64_t>(h) * w;
  const int64_t n = m / hw;
  const int rem = static_cast<int>(m - n * hw);
  y = rem / w;
  x = rem % w;
  return n;
}

// The two kAlongK conv loaders, k = (r, s, lo) with lo a channel of one pixel (c of x, or kout of dy):
//   Im2colAlongK (DY false), conv forward A: im2col(x) without the buffer. Row m = (n, p, q):
//     element = x[n, p*stride_h - pad_h + r, q*stride_w - pad_w + s, c], 0 in the padding.
//   DyGatherAlongK (DY true), conv backward-data A: row m = (n, h, w) of dx:
//     element = dy[n, p, q, kout] where h + pad_h = p*stride_h + r and w + pad_w = q*stride_w + s (exact
//     division), else 0.
// They differ only in where a row starts (begin) and which pixel a filter tap reads (tap): DY is a template
// parameter, so each compiles to its own code with no branch on it.
template <bool DY, bool VEC, class T>
struct TapGatherAlongK : LoaderBase<TapGatherAlongK<DY, VEC, T>, true, VEC, T> {
  ConvViewOf<T> prm;
  const T* image;      // x + n*H*W*C, or dy + n*P*Q*K
  int oh, ow;          // x: (p*stride_h - pad_h, q*stride_w - pad_w), the row's first input pixel;
                       // dy: (h + pad_h, w + pad_w)
  bool row_ok;
  Digits taps;         // (r, s, lo) of this thread's current k
  __device__ __forceinline__ int lo_n() const { return DY ? prm.K : prm.C; }
  __device__ __forceinline__ void begin(int64_t m, int64_t k0) {
    row_ok = m < prm.rows;
    const int64_t mm = row_ok ? m : 0;
    int y, x;
    if constexpr (DY) {
      image = prm.p + split_pixel_row(mm, prm.H, prm.W, y, x) * prm.P * prm.Q * prm.K;
      oh = y + prm.pad_h;
      ow = x + prm.pad_w;
    } else {
      image = prm.p + split_pixel_row(mm, prm.P, prm.Q, y, x) * prm.H * prm.W * prm.C;
      oh = y * prm.stride_h - prm.pad_h;
      ow = x * prm.stride_w - prm.pad_w;
    }
    taps.set(k0, prm.S, lo_n());
  }
  // dy: the offset of dy[n, p, q, 0] for filter tap (r, s), or -1 when no output pixel reads (h, w) through it.
  __device__ __forceinline__ int dy_offset(int r, int s) const {
    const int th = oh - r, tw = ow - s;
    if (!row_ok || r >= prm.R || th < 0 || tw < 0) return -1;
    int p = th, q = tw;
    if (prm.stride_h != 1 || prm.stride_w != 1) {  // stride 1 (all of VGG): a block-uniform branch past the divisions
      p = th / prm.stride_h;
      q = tw / prm.stride_w;
      if (p * prm.stride_h != th || q * prm.stride_w != tw) return -1;
    }
    if (p >= prm.P || q >= prm.Q) return -1;
    return (p * prm.Q + q) * prm.K;
  }
  // Whether filter tap (r, s) reads a pixel for this row, and its offset in image (channel 0) when it does; the
  // element is 0 where it does not: padding, tails, and for dy the taps through which no output pixel reads (h, w).
  __device__ __forceinline__ bool tap(int r, int s, int& off) const {
    if constexpr (DY) {
      off = dy_offset(r, s);
      return off >= 0;
    } else {
      const int ih = oh + r, iw = ow + s;
      const bool ok = row_ok && r < prm.R && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
      off = (ih * prm.W + iw) * prm.C;
      return ok;
    }
  }
  // lo_n % 4 == 0: the 4 channels share (r, s).
  __device__ __forceinline__ const T* vec_src() const {
    int off;
    return tap(taps.hi, taps.mid, off) ? image + off + taps.lo : nullptr;
  }
  __device__ __forceinline__ void load_scalar(T (&v)[4]) const {
    Digits e = taps;
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) {
      int off;
      v[j] = tap(e.hi, e.mid, off) ? image[off + e.lo] : T{};
      e.step(1, prm.S, lo_n());
    }
  }
  __device__ __forceinline__ void advance(int bk) { taps.step(bk, prm.S, lo_n()); }
};
template <bool VEC, class T = float>
using Im2colAlongK = TapGatherAlongK<false, VEC, T>;
template <bool VEC, class T = float>
using DyGatherAlongK = TapGatherAlongK<true, VEC, T>;

// Conv backward-data B: k = (r, s, kout), column c: element = w[kout, r, s, c]. p = w.
template <bool VEC, class T = float>
struct FilterTapsAlongRows : LoaderBase<FilterTapsAlongRows<VEC, T>, false, VEC, T> {
  ConvViewOf<T> prm;
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
  __device__ __forceinline__ void load_scalar(T (&v)[4]) const {
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

// Conv backward-weight B: k = (n, p, q), column = (r, s, c):
// element = x[n, p*stride_h - pad_h + r, q*stride_w - pad_w + s, c]. prm.rows = R*S*C (the columns), kdim = N*P*Q.
template <bool VEC, class T = float>
struct Im2colAlongRows : LoaderBase<Im2colAlongRows<VEC, T>, false, VEC, T> {
  ConvViewOf<T> prm;
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
    const int ih = npq.mid * prm.stride_h - prm.pad_h + r[0], iw = npq.lo * prm.stride_w - prm.pad_w + s[0];
    const bool ok = col_ok[0] && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
    return ok ? prm.p + static_cast<int64_t>(npq.hi) * prm.H * prm.W * prm.C + (ih * prm.W + iw) * prm.C + c[0]
              : nullptr;
  }
  __device__ __forceinline__ void load_scalar(T (&v)[4]) const {
    if (npq.hi >= prm.N) {
      set_zero(v);
      return;
    }
    const T* image = prm.p + static_cast<int64_t>(npq.hi) * prm.H * prm.W * prm.C;
    const int ih0 = npq.mid * prm.stride_h - prm.pad_h, iw0 = npq.lo * prm.stride_w - prm.pad_w;
    VGG_GEMM_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int ih = ih0 + r[j], iw = iw0 + s[j];
      const bool ok = col_ok[j] && ih >= 0 && ih < prm.H && iw >= 0 && iw < prm.W;
      v[j] = ok ? image[(ih * prm.W + iw) * prm.C + c[j]] : T{};
    }
  }
  __device__ __forceinline__ void advance(int bk) { npq.step(bk, prm.P, prm.Q); }
};


}  // namespace vgg::VGG_GPU_NS::gemm
