// The reference convolution (see conv_reference.h): the three passes written as the sums that define them.
//
// Each pass gathers: a thread owns whole output rows and computes every element of them from its inputs, so there
// is no scatter, no atomics and no dependence on the thread count. The channel loop is innermost because channels
// are contiguous in NHWC and KRSC; the sums run in double so that float32 results are the correctly rounded
// value of a sum of float products wherever that sum fits in double's 53 bits (small-integer inputs: exact).
#include "conv_reference.h"

#include <algorithm>
#include <vector>

namespace vgg::cpu {

namespace {

// The channels of the input pixel x[n, h, v, :] that output (n, p, q) reads through filter tap (r, t), with
// h = p*stride_h - pad_h + r and v = q*stride_w - pad_w + t; nullptr where that pixel is zero padding.
template <typename T>
const T* input_pixel(const T* x, const Conv2dShape& s, int64_t n, int64_t p, int64_t q, int64_t r, int64_t t) {
  const int64_t h = p * s.stride_h - s.pad_h + r, v = q * s.stride_w - s.pad_w + t;
  return h < 0 || h >= s.H || v < 0 || v >= s.W ? nullptr : x + ((n * s.H + h) * s.W + v) * s.C;
}

// The output index that reads input index i through tap offset j along an axis (i = o*stride - pad + j), or -1
// where none does.
int64_t output_index(int64_t i, int64_t pad, int64_t j, int64_t stride, int64_t outputs) {
  const int64_t o = i + pad - j;
  return o < 0 || o % stride != 0 || o / stride >= outputs ? -1 : o / stride;
}

}  // namespace

template <typename T> void conv2d_forward_direct(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s) {
#pragma omp parallel
  {
    std::vector<double> acc(s.K);
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          for (int64_t k = 0; k < s.K; ++k) acc[k] = bias ? double(bias[k]) : 0.0;
          for (int64_t r = 0; r < s.R; ++r)
            for (int64_t t = 0; t < s.S; ++t) {
              const T* xp = input_pixel(x, s, n, p, q, r, t);
              if (!xp) continue;  // zero padding
              for (int64_t k = 0; k < s.K; ++k) {
                const T* wp = w + ((k * s.R + r) * s.S + t) * s.C;
                double sum = 0.0;
                for (int64_t c = 0; c < s.C; ++c) sum += double(xp[c]) * double(wp[c]);
                acc[k] += sum;
              }
            }
          T* yp = y + ((n * s.P + p) * s.Q + q) * s.K;
          for (int64_t k = 0; k < s.K; ++k) yp[k] = static_cast<T>(acc[k]);
        }
  }
}

template <typename T> void conv2d_backward_data_direct(const T* dy, const T* w, T* dx, const Conv2dShape& s) {
#pragma omp parallel
  {
    std::vector<double> acc(s.C);
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t v = 0; v < s.W; ++v) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t r = 0; r < s.R; ++r) {
            // the output row p that reads input row h through filter row r: h = p*stride - pad + r
            const int64_t p = output_index(h, s.pad_h, r, s.stride_h, s.P);
            if (p < 0) continue;
            for (int64_t t = 0; t < s.S; ++t) {
              const int64_t q = output_index(v, s.pad_w, t, s.stride_w, s.Q);
              if (q < 0) continue;
              const T* dyp = dy + ((n * s.P + p) * s.Q + q) * s.K;
              for (int64_t k = 0; k < s.K; ++k) {
                const double d = double(dyp[k]);
                const T* wp = w + ((k * s.R + r) * s.S + t) * s.C;
                for (int64_t c = 0; c < s.C; ++c) acc[c] += d * double(wp[c]);
              }
            }
          }
          T* dxp = dx + ((n * s.H + h) * s.W + v) * s.C;
          for (int64_t c = 0; c < s.C; ++c) dxp[c] = static_cast<T>(acc[c]);
        }
  }
}

template <typename T> void conv2d_backward_weight_direct(const T* x, const T* dy, T* dw, const Conv2dShape& s) {
#pragma omp parallel
  {
    std::vector<double> acc(s.C);
#pragma omp for collapse(3) schedule(static)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t t = 0; t < s.S; ++t) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t n = 0; n < s.N; ++n)
            for (int64_t p = 0; p < s.P; ++p)
              for (int64_t q = 0; q < s.Q; ++q) {
                const T* xp = input_pixel(x, s, n, p, q, r, t);
                if (!xp) continue;
                const double d = double(dy[((n * s.P + p) * s.Q + q) * s.K + k]);
                for (int64_t c = 0; c < s.C; ++c) acc[c] += d * double(xp[c]);
              }
          T* dwp = dw + ((k * s.R + r) * s.S + t) * s.C;
          for (int64_t c = 0; c < s.C; ++c) dwp[c] = static_cast<T>(acc[c]);
        }
  }
}

#define VGG_INSTANTIATE(T)                                                                              \
  template void conv2d_forward_direct<T>(const T*, const T*, const T*, T*, const Conv2dShape&);         \
  template void conv2d_backward_data_direct<T>(const T*, const T*, T*, const Conv2dShape&);             \
  template void conv2d_backward_weight_direct<T>(const T*, const T*, T*, const Conv2dShape&);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
