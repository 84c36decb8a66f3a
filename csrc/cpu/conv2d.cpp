// CPU convolution: forward, backward-data, backward-weight, and the bias gradient, T = float or double.
//
// Everything is a GEMM on the blocked kernel in gemm.h, with the im2col matrix never materialised:
//   forward       y (NPQ, K)   = im2col(x) (NPQ, RSC) * w (K, RSC)^T           A packed straight from x
//   backward-data stride 1: dx = conv(dy, w rotated 180 degrees and transposed to (C, R, S, K)), pad R-1-pad
//                 stride > 1: dcol (band of NPQ, RSC) = dy * w, then each dx element gathers its R*S taps
//   backward-wt   dw (K, RSC)  = dy^T (K, NPQ) * im2col(x) (NPQ, RSC)             B packed straight from x
// NHWC makes a 1x1 stride-1 convolution a plain GEMM on the image rows, which the packers notice.
// 3x3 stride-1 forward and backward-data go to Winograd (winograd.h) where winograd_tile_choice says so, and
// backward-weight where winograd_weight_tile_choice does. Under the automatic choice, float gradients of layers
// with at most 4 input channels (the first layer) go to the direct kernels of conv_small_channels.h instead.
// VGG_CONV_ALGO (conv_algo.h) overrides the choice; VGG_CONV_ALGO=direct runs the plain loops of conv_reference.h.
//
// The packers mirror the GPU's operand loaders (csrc/cuda/gemm_loaders.cuh) and carry their names: Im2colAlongK is
// the forward's A, Im2colAlongRows backward-weight's B; FlippedFilterTapsAlongRows is FilterTapsAlongRows read
// through the 180-degree flip, because the CPU's stride-1 data gradient is a forward convolution of dy while the
// GPU gathers dy (DyGatherAlongK) against the unflipped taps.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/errors.h"
#include "conv_algo.h"
#include "conv_reference.h"
#include "conv_small_channels.h"
#include "cpu_kernels.h"
#include "gemm.h"
#include "winograd.h"

namespace vgg::cpu {

ConvAlgo conv_algo_setting() {
  const char* v = std::getenv("VGG_CONV_ALGO");
  if (!v || !*v) return ConvAlgo::automatic;
  const std::string s(v);
  if (s == "auto") return ConvAlgo::automatic;
  if (s == "gemm") return ConvAlgo::gemm;
  if (s == "winograd4") return ConvAlgo::winograd4;
  if (s == "winograd2") return ConvAlgo::winograd2;
  if (s == "direct") return ConvAlgo::direct;
  throw ValueError(cat("conv2d: environment variable VGG_CONV_ALGO is '", s,
                       "'; allowed values: auto, gemm, winograd4, winograd2, direct (or unset for auto)"));
}

namespace {

using detail::ceil_div;

// im2col(x) as the A operand: A(i, p) with i = (n, oh, ow) an output pixel and p = (r, s, c) a filter tap,
// A(i, p) = x[n, oh*sh - ph + r, ow*sw - pw + s, c], zero outside the image.
// All rows of a panel share the walk over p, which is R*S runs of up to C contiguous channels; for each run
// the panel's mr source pointers (null where the tap falls in the padding) go to the kernel's pack_rows.
// GPU counterpart: gemm::Im2colAlongK (csrc/cuda/gemm_loaders.cuh).
template <typename T> struct Im2colAlongK {
  const T* x;
  Conv2dShape g;
  void operator()(T* dst, int mr, int64_t i0, int64_t mc, int64_t p0, int64_t kc) const {
    const int64_t C = g.C, SC = g.S * g.C;
    const PackRowsFn<T> pack_rows = micro_kernel<T>().pack_rows;
    int64_t ih0[32], iw0[32];
    const T* xn[32];
    const T* src[32];
    for (int64_t ib = 0; ib < mc; ib += mr) {
      T* d = dst + (ib / mr) * kc * mr;
      const int64_t rows = std::min<int64_t>(mr, mc - ib);
      for (int64_t ii = 0; ii < rows; ++ii) {
        const int64_t i = i0 + ib + ii;
        const int64_t ow = i % g.Q, t = i / g.Q, oh = t % g.P, n = t / g.P;
        ih0[ii] = oh * g.stride_h - g.pad_h;
        iw0[ii] = ow * g.stride_w - g.pad_w;
        xn[ii] = x + n * g.H * g.W * C;
      }
      int64_t r = p0 / SC, s = (p0 % SC) / C, c = p0 % C;
      for (int64_t p = 0; p < kc;) {
        const int64_t run = std::min(C - c, kc - p);
        for (int64_t ii = 0; ii < mr; ++ii) {
          const int64_t ih = ii < rows ? ih0[ii] + r : -1, iw = ii < rows ? iw0[ii] + s : -1;
          src[ii] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? xn[ii] + (ih * g.W + iw) * C + c : nullptr;
        }
        pack_rows(d + p * mr, mr, src, run);
        p += run;
        c = 0;
        if (++s == g.S) { s = 0; ++r; }
      }
    }
  }
};

// im2col(x) as the B operand (backward-weight): B(p, j) with p = (n, oh, ow), j = (r, s, c). Each packed row
// of B (fixed p) is a run of columns, contiguous in x within one (r, s).
// GPU counterpart: gemm::Im2colAlongRows.
template <typename T> struct Im2colAlongRows {
  const T* x;
  Conv2dShape g;
  void operator()(T* dst, int nr, int64_t p0, int64_t kc, int64_t j0, int64_t nc) const {
    const int64_t C = g.C, SC = g.S * g.C;
    for (int64_t p = 0; p < kc; ++p) {
      const int64_t i = p0 + p;
      const int64_t ow = i % g.Q, t = i / g.Q, oh = t % g.P, n = t / g.P;
      const int64_t ih0 = oh * g.stride_h - g.pad_h, iw0 = ow * g.stride_w - g.pad_w;
      const T* xn = x + n * g.H * g.W * C;
      int64_t r = j0 / SC, s = (j0 % SC) / C, c = j0 % C;
      for (int64_t jj = 0; jj < nc;) {
        const int64_t run = std::min(C - c, nc - jj);
        const int64_t ih = ih0 + r, iw = iw0 + s;
        const bool inside = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
        const T* src = inside ? xn + (ih * g.W + iw) * C + c : nullptr;
        // copy the run in pieces that stay inside one nr-wide panel
        for (int64_t q = 0; q < run;) {
          const int64_t j = jj + q, off = j % nr, len = std::min<int64_t>(nr - off, run - q);
          T* dp = dst + (j / nr) * kc * nr + p * nr + off;
          if (inside)
            for (int64_t e = 0; e < len; ++e) dp[e] = src[q + e];
          else
            for (int64_t e = 0; e < len; ++e) dp[e] = T(0);
          q += len;
        }
        jj += run;
        c = 0;
        if (++s == g.S) { s = 0; ++r; }
      }
      for (int64_t j = nc; j < ceil_div(nc, nr) * nr; ++j) dst[(j / nr) * kc * nr + p * nr + j % nr] = T(0);
    }
  }
};

// The filters of backward-data as the B operand, read in place from w (K, R, S, C): the stride-1 data
// gradient is a convolution of dy whose filter bank is w flipped in r and s with K and C swapped, so
// B(p, j) with p = (r, s, k) and j = c is w[k, R-1-r, S-1-s, c]. Each packed row is a contiguous run of w.
// GPU counterpart: gemm::FilterTapsAlongRows, without the flip (see the top of this file).
template <typename T> struct FlippedFilterTapsAlongRows {
  const T* w;
  int64_t K, R, S, C;
  void operator()(T* dst, int nr, int64_t p0, int64_t kc, int64_t j0, int64_t nc) const {
    for (int64_t p = 0; p < kc; ++p) {
      const int64_t k = (p0 + p) % K, rs = (p0 + p) / K, r = rs / S, s = rs % S;
      const T* src = w + ((k * R + (R - 1 - r)) * S + (S - 1 - s)) * C + j0;
      for (int64_t jb = 0; jb < nc; jb += nr) {
        T* dp = dst + (jb / nr) * kc * nr + p * nr;
        const int64_t cols = std::min<int64_t>(nr, nc - jb);
        for (int64_t jj = 0; jj < cols; ++jj) dp[jj] = src[jb + jj];
        for (int64_t jj = cols; jj < nr; ++jj) dp[jj] = T(0);
      }
    }
  }
};

// x (N,H,W,C), filters as a B operand (RSC, K), bias (K) or nullptr -> y (N,P,Q,K) for any geometry
// (padding may be negative).
template <typename T, typename PackB>
void conv_forward_geom(const T* x, const PackB& filters, const T* bias, T* y, const Conv2dShape& g) {
  const int64_t M = g.N * g.P * g.Q, RSC = g.R * g.S * g.C;
  if (g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0) {
    // 1x1, stride 1, no padding: im2col(x) is x itself, (NHW, C) row-major
    gemm_packed(M, g.K, RSC, StridedA<T>{x, g.C, 1}, filters, y, g.K, false, bias);
  } else {
    gemm_packed(M, g.K, RSC, Im2colAlongK<T>{x, g}, filters, y, g.K, false, bias);
  }
}

}  // namespace

// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K)
template <typename T> void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s) {
  if (conv_algo_setting() == ConvAlgo::direct) return conv2d_forward_direct(x, w, bias, y, s);
  if (s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1) {
    const Winograd3x3 wg{s.N, s.H, s.W, s.C, s.K, s.pad_h, s.pad_w, s.P, s.Q};
    if (const int m = winograd_tile_choice<T>(wg)) return winograd_conv3x3(x, w, false, bias, y, wg, m);
  }
  const int64_t RSC = s.R * s.S * s.C;
  conv_forward_geom(x, StridedB<T>{w, 1, RSC}, bias, y, s);  // B(p, k) = w[k, p]
}

// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C)
template <typename T> void conv2d_backward_data(const T* dy, const T* w, T* dx, const Conv2dShape& s) {
  if (conv_algo_setting() == ConvAlgo::direct) return conv2d_backward_data_direct(dy, w, dx, s);
  const int64_t RSC = s.R * s.S * s.C;
  if (s.N * s.H * s.W * s.C == 0) return;
  if (s.K == 0 || s.P * s.Q == 0) {
    std::fill(dx, dx + s.N * s.H * s.W * s.C, T(0));
    return;
  }
  if (s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1) {
    // the same stride-1 convolution as below, by Winograd with the filters read rotated
    const Winograd3x3 wg{s.N, s.P, s.Q, s.K, s.C, 2 - s.pad_h, 2 - s.pad_w, s.H, s.W};
    if (const int m = winograd_tile_choice<T>(wg)) return winograd_conv3x3(dy, w, true, static_cast<const T*>(nullptr), dx, wg, m);
  }
  if constexpr (std::is_same_v<T, float>)
    if (conv_algo_setting() == ConvAlgo::automatic && conv2d_backward_data_small_channels(dy, w, dx, s)) return;
  if (s.stride_h == 1 && s.stride_w == 1) {
    // dx[n,h,w,c] = sum_{k,r,s} dy[n, h+ph-r, w+pw-s, k] w[k,r,s,c]: a stride-1 convolution of dy with the
    // filter flipped in r and s and with K and C swapped, padded by R-1-ph (negative = crop). Its output is
    // P + 2(R-1-ph) - R + 1 = H rows.
    const Conv2dShape gb{s.N, s.P, s.Q, s.K, s.C, s.R, s.S, 1, 1, s.R - 1 - s.pad_h, s.S - 1 - s.pad_w, s.H, s.W};
    conv_forward_geom(dy, FlippedFilterTapsAlongRows<T>{w, s.K, s.R, s.S, s.C}, static_cast<const T*>(nullptr), dx, gb);
    return;
  }
  // General stride: gather-style col2im over bands of dx rows. A band [h0, h1) of image n needs the output
  // rows p with p*sh - ph + r in [h0, h1) for some r; their columns dcol (rows x Q, RSC) = dy rows * w are
  // recomputed per band (overlap is R/sh rows), then every dx element sums its own taps in (r, s) order:
  // no scatter, no atomics, each element written once.
  const int64_t band = 8 * s.stride_h;
  const int64_t bands = ceil_div(s.H, band);
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t b = 0; b < bands; ++b) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining bands, throw after the region
      const int64_t h0 = b * band, h1 = std::min(s.H, h0 + band);
      const int64_t plo = std::max<int64_t>(0, ceil_div(std::max<int64_t>(0, h0 + s.pad_h - s.R + 1), s.stride_h));
      const int64_t phi = std::min<int64_t>(s.P - 1, (h1 - 1 + s.pad_h) / s.stride_h);
      T* dxb = dx + (n * s.H + h0) * s.W * s.C;
      if (phi < plo || h1 - 1 + s.pad_h < 0) {
        std::fill(dxb, dxb + (h1 - h0) * s.W * s.C, T(0));
        continue;
      }
      const int64_t rows = (phi - plo + 1) * s.Q;
      T* col = thread_workspace<T>(Slot::conv_col, size_t(rows * RSC));
      // dcol (rows, RSC) = dy (rows, K) * w (K, RSC)
      gemm_packed(rows, RSC, s.K, StridedA<T>{dy + (n * s.P + plo) * s.Q * s.K, s.K, 1}, StridedB<T>{w, RSC, 1},
                  col, RSC, false, static_cast<const T*>(nullptr), false);
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t wc = 0; wc < s.W; ++wc) {
          T* out = dx + ((n * s.H + h) * s.W + wc) * s.C;
          std::fill(out, out + s.C, T(0));
          for (int64_t r = 0; r < s.R; ++r) {
            const int64_t th = h + s.pad_h - r;
            if (th < 0 || th % s.stride_h) continue;
            const int64_t p = th / s.stride_h;
            if (p < plo || p > phi) continue;
            for (int64_t q = 0; q < s.S; ++q) {
              const int64_t tw = wc + s.pad_w - q;
              if (tw < 0 || tw % s.stride_w) continue;
              const int64_t oq = tw / s.stride_w;
              if (oq >= s.Q) continue;
              const T* src = col + ((p - plo) * s.Q + oq) * RSC + (r * s.S + q) * s.C;
              for (int64_t c = 0; c < s.C; ++c) out[c] += src[c];
            }
          }
        }
    }
  throw_if_interrupted();
}

// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C) = dy^T (K, NPQ) * im2col(x) (NPQ, RSC)
template <typename T> void conv2d_backward_weight(const T* x, const T* dy, T* dw, const Conv2dShape& s) {
  if (conv_algo_setting() == ConvAlgo::direct) return conv2d_backward_weight_direct(x, dy, dw, s);
  const int64_t M = s.K, Ncols = s.R * s.S * s.C, Kd = s.N * s.P * s.Q;
  if (M * Ncols == 0) return;
  if (s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1) {
    const Winograd3x3 wg{s.N, s.H, s.W, s.C, s.K, s.pad_h, s.pad_w, s.P, s.Q};
    if (const int m = winograd_weight_tile_choice<T>(wg)) return winograd_conv3x3_backward_weight(x, dy, dw, wg, m);
  }
  if constexpr (std::is_same_v<T, float>)
    if (conv_algo_setting() == ConvAlgo::automatic && conv2d_backward_weight_small_channels(x, dy, dw, s)) return;
  const StridedA<T> dyt{dy, 1, s.K};  // A(k, m) = dy[m, k]
  const Im2colAlongRows<T> col{x, s};
  // The reduction runs over every output pixel. Threads share independent column chunks of dw; when there
  // are too few (narrow filters: first layer, few input channels) the pixels are also split into `splits`
  // fixed chunks with their own partial dw, added in chunk order afterwards. The split depends only on the
  // shape, so dw is bit-identical for any thread count or schedule.
  const int64_t nchunk = std::max<int64_t>(micro_kernel<T>().nr, std::min<int64_t>(Ncols, 256));
  const int64_t ntasks = ceil_div(Ncols, nchunk);
  const int64_t max_splits = std::max<int64_t>(1, std::min(Kd / 2048, (int64_t(1) << 24) / (M * Ncols)));
  const int64_t splits = std::clamp<int64_t>(ceil_div(16, ntasks), 1, max_splits);
  const int64_t kchunk = ceil_div(Kd, splits);
  T* partial = splits == 1 ? dw : thread_workspace<T>(Slot::partials, size_t(splits * M * Ncols));
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
  for (int64_t sp = 0; sp < splits; ++sp)
    for (int64_t t = 0; t < ntasks; ++t) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the region
      const int64_t k0 = sp * kchunk, k1 = std::min(Kd, k0 + kchunk);
      const int64_t j0 = t * nchunk, j1 = std::min(Ncols, j0 + nchunk);
      T* out = partial + sp * M * Ncols + j0;
      // the packers see a sub-problem: shift the reduction (pixels) and the columns
      struct SubA {
        StridedA<T> a; int64_t k0;
        void operator()(T* d, int mr, int64_t i0, int64_t mc, int64_t p0, int64_t kc) const { a(d, mr, i0, mc, k0 + p0, kc); }
      };
      struct SubB {
        Im2colAlongRows<T> b; int64_t k0, j0;
        void operator()(T* d, int nr, int64_t p0, int64_t kc, int64_t jj0, int64_t nc) const { b(d, nr, k0 + p0, kc, j0 + jj0, nc); }
      };
      if (k1 > k0)
        gemm_packed(M, j1 - j0, k1 - k0, SubA{dyt, k0}, SubB{col, k0, j0}, out, Ncols, false, static_cast<const T*>(nullptr), false);
      else
        for (int64_t i = 0; i < M; ++i) std::fill(out + i * Ncols, out + i * Ncols + (j1 - j0), T(0));
    }
  throw_if_interrupted();
  if (splits > 1) {
    const int64_t total = M * Ncols;
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < total; ++e) {
      T v = partial[e];
      for (int64_t sp = 1; sp < splits; ++sp) v += partial[sp * total + e];
      dw[e] = v;
    }
  }
}

#define VGG_INSTANTIATE(T)                                                                       \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const Conv2dShape&);         \
  template void conv2d_backward_data<T>(const T*, const T*, T*, const Conv2dShape&);             \
  template void conv2d_backward_weight<T>(const T*, const T*, T*, const Conv2dShape&);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
