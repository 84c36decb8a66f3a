// Elementwise CPU kernels: ReLU, inverted dropout, add, scale, fill.
//
// All of them stream memory once, so the only work is keeping the inner loop vectorisable (no branches
// the compiler cannot turn into selects) and splitting large arrays across threads. Small arrays stay on
// the calling thread: waking an OpenMP team costs more than touching a few thousand elements.
#include <cstdint>

#include "../rng.h"
#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {
// Below this many elements a parallel region costs more than it saves (memory-bound loops).
constexpr int64_t kParallelMinElements = int64_t{1} << 16;
}  // namespace

// x (n) -> y (n) = max(x, 0)
template <typename T>
void relu_forward(const T* x, T* y, int64_t n) {
  // `x < 0 ? 0 : x` rather than std::max so that NaN propagates, as torch.relu does.
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}

// x (n) the forward input, dy (n) -> dx (n) = x > 0 ? dy : 0
template <typename T>
void relu_backward(const T* x, const T* dy, T* dx, int64_t n) {
  // The subgradient at 0 is 0, as in PyTorch. dy is loaded unconditionally so the select vectorises
  // (GCC will not speculate a load that sits inside the condition).
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = dy[i];
    dx[i] = x[i] > T(0) ? g : T(0);
  }
}

// x (n) -> y (n) = dropout_keep(seed, offset + i, p) ? x / (1 - p) : 0. Backward is the same call on dy.
template <typename T>
void dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  // The edge cases bypass the generator: p == 0 keeps everything (copy, no rescale rounding) and p == 1
  // drops everything (1 / (1 - p) would be infinite and 0 * inf is NaN).
  if (p <= 0.0) {
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i];
    return;
  }
  if (p >= 1.0) {
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = T(0);
    return;
  }
  // One multiply by the rounded reciprocal, as PyTorch does; the mask itself comes from dropout_keep so
  // every backend draws the same bits. Philox is ~10x the cost of the multiply, so the loop parallelises
  // at a lower size than the pure streaming loops.
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
#pragma omp parallel for if (n >= kParallelMinElements / 8) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    y[i] = dropout_keep(seed, offset + static_cast<uint64_t>(i), p) ? x[i] * keep_scale : T(0);
}

// a (n), b (n) -> y (n) = a + b   (y may alias a or b: each element is read before it is written)
template <typename T>
void add(const T* a, const T* b, T* y, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

// x (n) -> y (n) = alpha * x      (y may alias x)
template <typename T>
void scale(const T* x, T* y, double alpha, int64_t n) {
  // alpha is rounded to T once so the float loop stays in float lanes (same as the GPU kernel).
  const T a = static_cast<T>(alpha);
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
}

// y (n) = value
template <typename T>
void fill(T* y, double value, int64_t n) {
  const T v = static_cast<T>(value);
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = v;
}

#define VGG_INSTANTIATE(T)                                                    \
  template void relu_forward<T>(const T*, T*, int64_t);                       \
  template void relu_backward<T>(const T*, const T*, T*, int64_t);            \
  template void dropout<T>(const T*, T*, int64_t, double, uint64_t, uint64_t);\
  template void add<T>(const T*, const T*, T*, int64_t);                      \
  template void scale<T>(const T*, T*, double, int64_t);                      \
  template void fill<T>(T*, double, int64_t);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
