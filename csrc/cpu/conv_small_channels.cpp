// Convolution gradients for few input channels (C <= 4), direct AVX-512 kernels vectorised along K.
//
//   backward-weight  dw (K, R, S, C) = sum over output pixels of dy[pixel, k] * x[tap (r, s, c) of the pixel]
//     For one output row and one filter row r, the S*C taps of pixel q are S*C contiguous floats of the
//     (zero-padded) input row, starting at q*stride*C. A register tile of up to 12 taps x 32 output channels
//     (24 zmm) sums a whole output row: per pixel two loads of dy and 12 broadcasts of x feed 24 FMAs.
//     Output rows are split into fixed chunks (from the shape alone), each with its own partial dw (R*S*C, K)
//     summed in chunk order at the end: dw is the same for any thread count.
//   backward-data    dx[n, h, w, c] = sum over (r, s, k) of dy[n, h + pad - r, w + pad - s, k] * w[k, r, s, c]
//     (stride 1). A few pixels x C channels of dx are each one zmm accumulator of 16 partial sums along K; the
//     filters are first transposed to (R, S, C, K) so every load is contiguous. Taps in the padding read a
//     zero row. Each dx element is summed by one thread in a fixed order.
// The implicit GEMM spends most of its time here packing: backward-weight re-packs an im2col row of 27 values
// for every pixel into 32-wide panels, backward-data computes 32 columns of which 3 are kept.
#include "conv_small_channels.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VGG_X86 1
#endif

namespace vgg::cpu {

#ifdef VGG_X86
namespace {

using detail::ceil_div;
using detail::round_up;

constexpr int kMaxTaps = 12;  // taps per backward-weight register tile: 12 x 2 accumulators + 2 dy vectors

bool applies(const Conv2dShape& s) {
  return s.C >= 1 && s.C <= 4 && s.K >= 1 && s.N >= 1 && s.P >= 1 && s.Q >= 1 && s.R >= 1 && s.S >= 1 &&
         std::strcmp(micro_kernel<float>().name, "avx512") == 0;
}

// acc (JT taps, ld) [k0, k0 + 32) += sum over q < Q of dy[q * ldy + (0..31)] * xrow[q * xstep + t], t < JT.
// m0, m1 mask the two 16-channel halves at the end of K.
template <int JT>
__attribute__((target("avx512f"))) void weight_row_tile(int64_t Q, const float* dy, int64_t ldy, __mmask16 m0,
                                                        __mmask16 m1, const float* xrow, int64_t xstep, float* acc,
                                                        int64_t ld) {
  __m512 a0[JT], a1[JT];
#pragma GCC unroll 16
  for (int t = 0; t < JT; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
  for (int64_t q = 0; q < Q; ++q) {
    const __m512 d0 = _mm512_maskz_loadu_ps(m0, dy + q * ldy);
    const __m512 d1 = _mm512_maskz_loadu_ps(m1, dy + q * ldy + 16);
    const float* xp = xrow + q * xstep;
#pragma GCC unroll 16
    for (int t = 0; t < JT; ++t) {
      const __m512 b = _mm512_set1_ps(xp[t]);
      a0[t] = _mm512_fmadd_ps(d0, b, a0[t]);
      a1[t] = _mm512_fmadd_ps(d1, b, a1[t]);
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < JT; ++t) {
    float* p = acc + t * ld;
    _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), a0[t]));
    _mm512_storeu_ps(p + 16, _mm512_add_ps(_mm512_loadu_ps(p + 16), a1[t]));
  }
}

using WeightRowTileFn = void (*)(int64_t, const float*, int64_t, __mmask16, __mmask16, const float*, int64_t, float*,
                                 int64_t);
constexpr WeightRowTileFn weight_row_tiles[kMaxTaps + 1] = {
    nullptr,             weight_row_tile<1>, weight_row_tile<2>,  weight_row_tile<3>,  weight_row_tile<4>,
    weight_row_tile<5>,  weight_row_tile<6>, weight_row_tile<7>,  weight_row_tile<8>,  weight_row_tile<9>,
    weight_row_tile<10>, weight_row_tile<11>, weight_row_tile<12>};

__mmask16 lanes_below(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

// out (PIX, C) = sum over the listed taps of dy rows dyp[t * PIX + p] (K, zero-padded reads past K) times the
// transposed filters wt (R*S, C, Kp) at tap taps[t].
template <int C, int PIX>
__attribute__((target("avx512f"))) void data_pixels(int64_t ntaps, const int32_t* taps, const float* const* dyp,
                                                    const float* wt, int64_t K, int64_t Kp, float* out) {
  __m512 acc[PIX][C];
#pragma GCC unroll 32
  for (int p = 0; p < PIX; ++p)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[p][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < ntaps; ++t) {
    const float* wtap = wt + taps[t] * C * Kp;
    const float* const* d = dyp + t * PIX;
    for (int64_t kb = 0; kb < Kp; kb += 16) {
      const __mmask16 m = lanes_below(K - kb);
      __m512 wv[C];
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_ps(wtap + c * Kp + kb);
#pragma GCC unroll 32
      for (int p = 0; p < PIX; ++p) {
        const __m512 dv = _mm512_maskz_loadu_ps(m, d[p] + kb);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) acc[p][c] = _mm512_fmadd_ps(dv, wv[c], acc[p][c]);
      }
    }
  }
#pragma GCC unroll 32
  for (int p = 0; p < PIX; ++p)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) out[p * C + c] = _mm512_reduce_add_ps(acc[p][c]);
}

// pixels per backward-data tile: about 12-16 accumulators
constexpr int data_tile_pixels(int C) { return C == 1 ? 12 : C == 2 ? 8 : 4; }

using DataPixelsFn = void (*)(int64_t, const int32_t*, const float* const*, const float*, int64_t, int64_t, float*);
constexpr DataPixelsFn data_pixel_tiles[5] = {nullptr, data_pixels<1, data_tile_pixels(1)>,
                                              data_pixels<2, data_tile_pixels(2)>, data_pixels<3, data_tile_pixels(3)>,
                                              data_pixels<4, data_tile_pixels(4)>};

}  // namespace

// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C)
bool conv2d_backward_weight_small_channels(const float* x, const float* dy, float* dw, const Conv2dShape& s) {
  if (!applies(s)) return false;
  const int64_t C = s.C, K = s.K, SC = s.S * C, RSC = s.R * SC, Kp = round_up(K, 32);
  const int64_t rows = s.N * s.P;
  // the padded input row covers the columns every output pixel reads: q*stride_w - pad_w + (0..S-1)
  const int64_t Wp = (s.Q - 1) * s.stride_w + s.S;
  // fixed chunks of output rows, each with a partial dw laid out (R*S*C, Kp); capped at 16 MiB of partials
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>({rows, 64, (int64_t(1) << 22) / (RSC * Kp)}));
  float* partial = thread_workspace<float>(Slot::partials, size_t(splits * RSC * Kp));
#pragma omp parallel for schedule(static)
  for (int64_t sp = 0; sp < splits; ++sp) {
    float* part = partial + sp * RSC * Kp;
    std::fill(part, part + RSC * Kp, 0.0f);
    float* xrows = thread_workspace<float>(Slot::conv_col, size_t(s.R * Wp * C));
    for (int64_t row = rows * sp / splits; row < rows * (sp + 1) / splits; ++row) {
      if (interrupt_pending()) break;  // Ctrl-C: leave this chunk, throw after the region
      const int64_t n = row / s.P, oh = row % s.P;
      for (int64_t r = 0; r < s.R; ++r) {
        const int64_t ih = oh * s.stride_h - s.pad_h + r;
        if (ih < 0 || ih >= s.H) continue;
        const float* src = x + (n * s.H + ih) * s.W * C;
        float* dst = xrows + r * Wp * C;
        for (int64_t col = 0; col < Wp; ++col) {
          const int64_t iw = col - s.pad_w;
          for (int64_t c = 0; c < C; ++c) dst[col * C + c] = (iw >= 0 && iw < s.W) ? src[iw * C + c] : 0.0f;
        }
      }
      const float* dyrow = dy + row * s.Q * K;
      // K outermost so one 32-channel slice of the dy row stays in L1 across the filter rows
      for (int64_t kb = 0; kb < K; kb += 32) {
        const __mmask16 m0 = lanes_below(K - kb), m1 = lanes_below(K - kb - 16);
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t ih = oh * s.stride_h - s.pad_h + r;
          if (ih < 0 || ih >= s.H) continue;
          for (int64_t j0 = 0; j0 < SC; j0 += kMaxTaps) {
            const int64_t jt = std::min<int64_t>(kMaxTaps, SC - j0);
            weight_row_tiles[jt](s.Q, dyrow + kb, K, m0, m1, xrows + r * Wp * C + j0, s.stride_w * C,
                                 part + (r * SC + j0) * Kp + kb, Kp);
          }
        }
      }
    }
  }
  throw_if_interrupted();  // before the reduction: the partials of a stopped run are incomplete
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < RSC; ++j) {
      float v = partial[j * Kp + k];
      for (int64_t sp = 1; sp < splits; ++sp) v += partial[(sp * RSC + j) * Kp + k];
      dw[k * RSC + j] = v;
    }
  return true;
}

// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C)
bool conv2d_backward_data_small_channels(const float* dy, const float* w, float* dx, const Conv2dShape& s) {
  if (!applies(s) || s.stride_h != 1 || s.stride_w != 1) return false;
  const int64_t C = s.C, K = s.K, RS = s.R * s.S, Kp = round_up(K, 16);
  const int pix = data_tile_pixels(int(C));
  const DataPixelsFn tile = data_pixel_tiles[C];
  // filters transposed to (R, S, C, Kp), zero past K
  std::vector<float> wt(size_t(RS * C * Kp), 0.0f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t rsc = 0; rsc < RS * C; ++rsc) wt[size_t(rsc * Kp + k)] = w[k * RS * C + rsc];
  const std::vector<float> zeros(size_t(Kp), 0.0f);
#pragma omp parallel
  {
    std::vector<int32_t> taps(static_cast<size_t>(RS));
    std::vector<const float*> dyp(static_cast<size_t>(RS * pix));
    float out[16 * 4];
#pragma omp for schedule(static)
    for (int64_t row = 0; row < s.N * s.H; ++row) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining rows, throw after the region
      const int64_t n = row / s.H, h = row % s.H;
      for (int64_t w0 = 0; w0 < s.W; w0 += pix) {
        int64_t ntaps = 0;
        for (int64_t r = 0; r < s.R; ++r) {
          const int64_t oh = h + s.pad_h - r;
          if (oh < 0 || oh >= s.P) continue;
          const float* dyr = dy + (n * s.P + oh) * s.Q * K;
          for (int64_t q = 0; q < s.S; ++q) {
            bool any = false;
            for (int p = 0; p < pix; ++p) {
              const int64_t ow = w0 + p + s.pad_w - q;
              const bool inside = w0 + p < s.W && ow >= 0 && ow < s.Q;
              dyp[size_t(ntaps * pix + p)] = inside ? dyr + ow * K : zeros.data();
              any = any || inside;
            }
            if (any) taps[size_t(ntaps++)] = int32_t(r * s.S + q);
          }
        }
        tile(ntaps, taps.data(), dyp.data(), wt.data(), K, Kp, out);
        const int64_t npix = std::min<int64_t>(pix, s.W - w0);
        std::memcpy(dx + (row * s.W + w0) * C, out, sizeof(float) * size_t(npix * C));
      }
    }
  }
  throw_if_interrupted();
  return true;
}

#else  // not x86: the GEMM path

bool conv2d_backward_weight_small_channels(const float*, const float*, float*, const Conv2dShape&) { return false; }
bool conv2d_backward_data_small_channels(const float*, const float*, float*, const Conv2dShape&) { return false; }

#endif

}  // namespace vgg::cpu
