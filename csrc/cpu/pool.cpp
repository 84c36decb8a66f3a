// Pooling CPU kernels: max and average over R x S windows (no padding, floor mode) and global average.
//
// NHWC puts the C channels of one pixel next to each other, so every kernel walks windows in the outer
// loops and runs the innermost loop over channels, which the compiler vectorises. Backward passes are
// gathers: each input pixel visits the few output windows that contain it and sums their contributions.
// That needs no atomics, is deterministic, and is correct whether windows overlap (kernel 3 stride 2)
// or leave gaps (stride > kernel, or the rows and columns that floor mode drops, whose gradient is 0).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {

// Below this much work (elements touched) the loops stay on the calling thread.
constexpr int64_t kParallelMinWork = int64_t{1} << 15;

// Output rows p (or columns q) whose window [p*stride, p*stride + R) contains input row h:
// p*stride <= h  and  p*stride + R > h, clipped to [0, P). Empty (first > last) when h lies in a gap.
struct WindowRange {
  int64_t first, last;
};
inline WindowRange windows_containing(int64_t h, int64_t R, int64_t stride, int64_t P) {
  const int64_t first = h < R ? 0 : (h - R) / stride + 1;
  const int64_t last = std::min(P - 1, h / stride);
  return {first, last};
}

// The gather of both backward passes: acc (C) = the sum over the windows (p, q) in pr x qr of image n, in (p, q)
// order, of dy (N,P,Q,C) at (n, p, q); with argmax (N,P,Q,C) given (max pooling), only the entries whose argmax is
// self count.
template <typename T>
inline void sum_windows(double* acc, const T* dy, const int32_t* argmax, int32_t self, int64_t n, WindowRange pr,
                        WindowRange qr, int64_t P, int64_t Q, int64_t C) {
  std::fill(acc, acc + C, 0.0);
  for (int64_t p = pr.first; p <= pr.last; ++p) {
    for (int64_t q = qr.first; q <= qr.last; ++q) {
      const int64_t o = ((n * P + p) * Q + q) * C;
      const T* dyo = dy + o;
      if (argmax) {
        const int32_t* ao = argmax + o;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double g = static_cast<double>(dyo[c]);  // loaded unconditionally so the select vectorises
          acc[c] += ao[c] == self ? g : 0.0;
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<double>(dyo[c]);
      }
    }
  }
}

}  // namespace

// x (N,H,W,C) -> y (N,P,Q,C), argmax (N,P,Q,C) = h*W + w of the winner inside its image plane.
template <typename T>
void max_pool2d_forward(const T* x, T* y, int32_t* argmax, const Pool2dShape& s) {
  const int64_t H = s.H, W = s.W, C = s.C, P = s.P, Q = s.Q;
  const int64_t rows = s.N * P;  // one (n, p) output row per iteration
#pragma omp parallel for if (rows * Q * s.R * s.S * C >= kParallelMinWork) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / P, p = row % P;
    const T* xn = x + n * H * W * C;
    for (int64_t q = 0; q < Q; ++q) {
      T* yo = y + ((row * Q) + q) * C;
      int32_t* ao = argmax + ((row * Q) + q) * C;
      const int64_t h0 = p * s.stride, w0 = q * s.stride;
      // Seed with the window's first element so that strict '>' keeps the first maximum (PyTorch's tie rule)
      // and a window of -inf still reports a valid index.
      {
        const T* xi = xn + (h0 * W + w0) * C;
        const int32_t idx = static_cast<int32_t>(h0 * W + w0);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          yo[c] = xi[c];
          ao[c] = idx;
        }
      }
      for (int64_t r = 0; r < s.R; ++r) {
        for (int64_t t = (r == 0 ? 1 : 0); t < s.S; ++t) {
          const int64_t h = h0 + r, w = w0 + t;
          const T* xi = xn + (h * W + w) * C;
          const int32_t idx = static_cast<int32_t>(h * W + w);
          // Take v when it is larger, or when it is the first NaN: NaN then wins over every number and
          // later elements (NaN or not) never replace it, since comparisons with NaN are false.
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T v = xi[c], best = yo[c];
            // Bitwise operators, not && / ||, so the condition is one mask and the loop has no branches.
            const bool take = (v > best) | ((v != v) & (best == best));
            yo[c] = take ? v : best;
            ao[c] = take ? idx : ao[c];
          }
        }
      }
    }
  }
}

// dy (N,P,Q,C), argmax (N,P,Q,C) -> dx (N,H,W,C): dx[h,w,c] = sum of dy over the windows containing (h,w)
// whose argmax is (h,w).
template <typename T>
void max_pool2d_backward(const T* dy, const int32_t* argmax, T* dx, const Pool2dShape& s) {
  const int64_t H = s.H, W = s.W, C = s.C, P = s.P, Q = s.Q;
  const int64_t rows = s.N * H;  // one (n, h) input row per iteration
  // Windows per input element: at most ceil(R/stride) * ceil(S/stride).
  const int64_t overlap = ((s.R + s.stride - 1) / s.stride) * ((s.S + s.stride - 1) / s.stride);
#pragma omp parallel if (rows * W * C * overlap >= kParallelMinWork)
  {
    // Sums run in double: cheap here (a handful of terms), and the float result is then correctly rounded.
    std::vector<double> acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t n = row / H, h = row % H;
      const WindowRange pr = windows_containing(h, s.R, s.stride, P);
      for (int64_t w = 0; w < W; ++w) {
        const WindowRange qr = windows_containing(w, s.S, s.stride, Q);
        const int32_t self = static_cast<int32_t>(h * W + w);
        T* dxi = dx + (row * W + w) * C;
        const int64_t windows = std::max<int64_t>(0, pr.last - pr.first + 1) * std::max<int64_t>(0, qr.last - qr.first + 1);
        if (windows <= 1) {
          // The common case (stride >= kernel, e.g. VGG's 2x2/2): zero or one window, nothing to sum, so
          // write dx in one pass instead of going through the double accumulator.
          if (windows == 0) {
            std::fill(dxi, dxi + C, T(0));
          } else {
            const int64_t o = ((n * P + pr.first) * Q + qr.first) * C;
            const T* dyo = dy + o;
            const int32_t* ao = argmax + o;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const T g = dyo[c];
              dxi[c] = ao[c] == self ? g : T(0);
            }
          }
          continue;
        }
        sum_windows(acc.data(), dy, argmax, self, n, pr, qr, P, Q, C);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxi[c] = static_cast<T>(acc[c]);
      }
    }
  }
}

// x (N,H,W,C) -> y (N,P,Q,C) = window mean (divisor R*S)
template <typename T>
void avg_pool2d_forward(const T* x, T* y, const Pool2dShape& s) {
  const int64_t H = s.H, W = s.W, C = s.C, P = s.P, Q = s.Q;
  const int64_t rows = s.N * P;
  const double inv_area = 1.0 / static_cast<double>(s.R * s.S);
#pragma omp parallel if (rows * Q * s.R * s.S * C >= kParallelMinWork)
  {
    std::vector<double> acc(static_cast<size_t>(C));  // double sums keep float means correctly rounded
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t n = row / P, p = row % P;
      const T* xn = x + n * H * W * C;
      for (int64_t q = 0; q < Q; ++q) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t r = 0; r < s.R; ++r) {
          for (int64_t t = 0; t < s.S; ++t) {
            const T* xi = xn + ((p * s.stride + r) * W + (q * s.stride + t)) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<double>(xi[c]);
          }
        }
        T* yo = y + (row * Q + q) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yo[c] = static_cast<T>(acc[c] * inv_area);
      }
    }
  }
}

// dy (N,P,Q,C) -> dx (N,H,W,C): dx[h,w,c] = sum over windows containing (h,w) of dy / (R*S)
template <typename T>
void avg_pool2d_backward(const T* dy, T* dx, const Pool2dShape& s) {
  const int64_t H = s.H, W = s.W, C = s.C, P = s.P, Q = s.Q;
  const int64_t rows = s.N * H;
  const int64_t overlap = ((s.R + s.stride - 1) / s.stride) * ((s.S + s.stride - 1) / s.stride);
  const double inv_area = 1.0 / static_cast<double>(s.R * s.S);
#pragma omp parallel if (rows * W * C * overlap >= kParallelMinWork)
  {
    std::vector<double> acc(static_cast<size_t>(C));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t n = row / H, h = row % H;
      const WindowRange pr = windows_containing(h, s.R, s.stride, P);
      for (int64_t w = 0; w < W; ++w) {
        const WindowRange qr = windows_containing(w, s.S, s.stride, Q);
        sum_windows(acc.data(), dy, nullptr, 0, n, pr, qr, P, Q, C);
        T* dxi = dx + (row * W + w) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxi[c] = static_cast<T>(acc[c] * inv_area);
      }
    }
  }
}

// x (N, HW, C) -> y (N, C) = mean over HW
template <typename T>
void global_avg_pool_forward(const T* x, T* y, int64_t N, int64_t HW, int64_t C) {
  // Parallel over (n, channel block) rather than n alone so that batch 1 still uses every core; a block
  // of 64 channels keeps the double accumulators in registers/L1 while rows of x stream past.
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  const double inv_hw = 1.0 / static_cast<double>(HW);
#pragma omp parallel for if (N * HW * C >= kParallelMinWork) schedule(static)
  for (int64_t job = 0; job < N * blocks; ++job) {
    const int64_t n = job / blocks, c0 = (job % blocks) * kBlock;
    const int64_t width = std::min(kBlock, C - c0);
    double acc[kBlock] = {};
    const T* xn = x + n * HW * C + c0;
    for (int64_t i = 0; i < HW; ++i) {
      const T* xi = xn + i * C;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) acc[c] += static_cast<double>(xi[c]);
    }
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) y[n * C + c0 + c] = static_cast<T>(acc[c] * inv_hw);
  }
}

// dy (N, C) -> dx (N, HW, C) = dy / HW
template <typename T>
void global_avg_pool_backward(const T* dy, T* dx, int64_t N, int64_t HW, int64_t C) {
  const double inv_hw = 1.0 / static_cast<double>(HW);
  const int64_t rows = N * HW;
#pragma omp parallel for if (rows * C >= kParallelMinWork) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const T* dyn = dy + (row / HW) * C;
    T* dxi = dx + row * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dxi[c] = static_cast<T>(static_cast<double>(dyn[c]) * inv_hw);
  }
}

#define VGG_INSTANTIATE(T)                                                                        \
  template void max_pool2d_forward<T>(const T*, T*, int32_t*, const Pool2dShape&);                \
  template void max_pool2d_backward<T>(const T*, const int32_t*, T*, const Pool2dShape&);         \
  template void avg_pool2d_forward<T>(const T*, T*, const Pool2dShape&);                          \
  template void avg_pool2d_backward<T>(const T*, T*, const Pool2dShape&);                         \
  template void global_avg_pool_forward<T>(const T*, T*, int64_t, int64_t, int64_t);              \
  template void global_avg_pool_backward<T>(const T*, T*, int64_t, int64_t, int64_t);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
