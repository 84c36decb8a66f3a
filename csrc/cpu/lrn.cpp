// Local response normalisation across channels (PyTorch's convention, formula in shapes.h).
//
// With NHWC every pixel's C channels form one contiguous row, so both passes work row by row. Window sums
// are formed as `size` shifted vector adds over the whole row (outer loop over the shift, inner loop over
// channels) instead of a short scalar loop per channel, which lets the inner loop vectorise; the sums run
// in double, which costs little next to pow() and keeps float results correctly rounded.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/interrupt.h"
#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {

constexpr int64_t kParallelMinWork = int64_t{1} << 14;  // elements times window size

// acc[c] = sum_{j = c - before .. c + after, clipped to [0, C)} v[j]
inline void window_sum(const double* v, double* acc, int64_t C, int64_t before, int64_t after) {
  std::fill(acc, acc + C, 0.0);
  for (int64_t d = -before; d <= after; ++d) {
    const int64_t lo = std::max<int64_t>(0, -d), hi = std::min<int64_t>(C, C - d);  // keep c + d in [0, C)
#pragma omp simd
    for (int64_t c = lo; c < hi; ++c) acc[c] += v[c + d];
  }
}

}  // namespace

// x (rows, C) -> y (rows, C) = x * scale^-beta, scale (rows, C) = k + alpha/size * window sum of x^2
template <typename T>
void lrn_forward(const T* x, T* y, T* scale, const LrnShape& s) {
  const int64_t C = s.C;
  // window(c) = c - size/2 .. c + (size-1)/2; asymmetric for even sizes, exactly as PyTorch pads. The window is
  // clipped to the C channels anyway, so clipping its reach to C bounds the work by the data, whatever size is.
  const int64_t before = std::min(s.size / 2, C), after = std::min((s.size - 1) / 2, C);
  const double alpha_over_size = s.alpha / static_cast<double>(s.size);
#pragma omp parallel if (s.rows * C * s.size >= kParallelMinWork)
  {
    std::vector<double> sq(static_cast<size_t>(C)), acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < s.rows; ++row) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining rows (no exception inside the region)
      const T* xr = x + row * C;
      T* yr = y + row * C;
      T* sr = scale + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) sq[c] = static_cast<double>(xr[c]) * static_cast<double>(xr[c]);
      window_sum(sq.data(), acc.data(), C, before, after);
      for (int64_t c = 0; c < C; ++c) {
        const double sc = s.k + alpha_over_size * acc[c];
        sr[c] = static_cast<T>(sc);
        yr[c] = static_cast<T>(static_cast<double>(xr[c]) * std::pow(sc, -s.beta));
      }
    }
  }
  throw_if_interrupted();
}

// x, y, scale, dy (rows, C) -> dx (rows, C):
//   dx[i] = dy[i] * scale[i]^-beta - (2 alpha beta / size) * x[i] * sum_{j : i in window(j)} dy[j] y[j] / scale[j]
// i lies in window(j) exactly when j = i - (size-1)/2 .. i + size/2: the mirror image of the forward window
// (the same window for odd sizes, shifted by one for even ones).
template <typename T>
void lrn_backward(const T* x, const T* y, const T* scale, const T* dy, T* dx, const LrnShape& s) {
  const int64_t C = s.C;
  const int64_t before = std::min((s.size - 1) / 2, C), after = std::min(s.size / 2, C);  // clipped as forward
  const double coeff = 2.0 * s.alpha * s.beta / static_cast<double>(s.size);
#pragma omp parallel if (s.rows * C * s.size >= kParallelMinWork)
  {
    std::vector<double> ratio(static_cast<size_t>(C)), acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < s.rows; ++row) {
      if (interrupt_pending()) continue;
      const int64_t o = row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        ratio[c] = static_cast<double>(dy[o + c]) * static_cast<double>(y[o + c]) / static_cast<double>(scale[o + c]);
      window_sum(ratio.data(), acc.data(), C, before, after);
      for (int64_t c = 0; c < C; ++c) {
        const double sc = static_cast<double>(scale[o + c]);
        dx[o + c] = static_cast<T>(static_cast<double>(dy[o + c]) * std::pow(sc, -s.beta) -
                                   coeff * static_cast<double>(x[o + c]) * acc[c]);
      }
    }
  }
  throw_if_interrupted();
}

#define VGG_INSTANTIATE(T)                                                                      \
  template void lrn_forward<T>(const T*, T*, T*, const LrnShape&);                              \
  template void lrn_backward<T>(const T*, const T*, const T*, const T*, T*, const LrnShape&);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
