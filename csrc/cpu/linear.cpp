// CPU fully connected layer: y = x w^T + b (PyTorch's convention), T = float or double.
//
// Large batches go through the blocked GEMM (gemm.h). A small batch (M < 16 rows, e.g. evaluation or the
// batch-4 benchmarks) makes the layer a stream over the weight matrix (fc6 is 4096 x 25088): packing that
// matrix for the GEMM would cost more than the arithmetic, so forward and backward-data read w once, in place,
// with vector loops compiled for AVX-512 / AVX2 / baseline and picked at run time like the GEMM kernel.
#include <algorithm>
#include <cstring>
#include <string_view>

#include "cpu_kernels.h"
#include "gemm.h"

#if defined(__x86_64__) || defined(__i386__)
#define VGG_X86 1
#endif

namespace vgg::cpu {
namespace {

constexpr int64_t kSmallBatch = 16;

// y (M, j1-j0 of OUT) = x (M, IN) . w rows [j0, j1): each weight row is read once for all M inputs.
// 16 independent partial sums per dot product (fixed order) let the compiler vectorise without reassociating.
template <typename T>
__attribute__((always_inline)) inline void dot_rows(const T* x, const T* w, const T* bias, T* y, int64_t M,
                                                    int64_t OUT, int64_t IN, int64_t j0, int64_t j1) {
  constexpr int L = 16;
  for (int64_t j = j0; j < j1; ++j) {
    const T* wj = w + j * IN;
    for (int64_t m = 0; m < M; ++m) {
      const T* xm = x + m * IN;
      T acc[L] = {};
      int64_t i = 0;
      for (; i + L <= IN; i += L)
        for (int l = 0; l < L; ++l) acc[l] += xm[i + l] * wj[i + l];
      T sum = T(0);
      for (int l = 0; l < L; ++l) sum += acc[l];
      for (; i < IN; ++i) sum += xm[i] * wj[i];
      y[m * OUT + j] = bias ? sum + bias[j] : sum;
    }
  }
}

// dx (M, columns [i0, i1) of IN) = dy (M, OUT) w (OUT, IN): axpy of each weight row, rows in order.
template <typename T>
__attribute__((always_inline)) inline void axpy_rows(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT,
                                                     int64_t IN, int64_t i0, int64_t i1) {
  for (int64_t m = 0; m < M; ++m) std::fill(dx + m * IN + i0, dx + m * IN + i1, T(0));
  for (int64_t j = 0; j < OUT; ++j) {
    const T* wj = w + j * IN;
    for (int64_t m = 0; m < M; ++m) {
      const T a = dy[m * OUT + j];
      T* out = dx + m * IN;
      for (int64_t i = i0; i < i1; ++i) out[i] += a * wj[i];
    }
  }
}

template <typename T>
void dot_rows_base(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t OUT, int64_t IN, int64_t j0, int64_t j1) {
  dot_rows(x, w, b, y, M, OUT, IN, j0, j1);
}
template <typename T>
void axpy_rows_base(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN, int64_t i0, int64_t i1) {
  axpy_rows(dy, w, dx, M, OUT, IN, i0, i1);
}
#ifdef VGG_X86
// The same loops compiled for wider vectors; no FMA contraction differences matter here beyond rounding.
template <typename T> __attribute__((target("avx512f")))
void dot_rows_avx512(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t OUT, int64_t IN, int64_t j0, int64_t j1) {
  dot_rows(x, w, b, y, M, OUT, IN, j0, j1);
}
template <typename T> __attribute__((target("avx2,fma")))
void dot_rows_avx2(const T* x, const T* w, const T* b, T* y, int64_t M, int64_t OUT, int64_t IN, int64_t j0, int64_t j1) {
  dot_rows(x, w, b, y, M, OUT, IN, j0, j1);
}
template <typename T> __attribute__((target("avx512f")))
void axpy_rows_avx512(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN, int64_t i0, int64_t i1) {
  axpy_rows(dy, w, dx, M, OUT, IN, i0, i1);
}
template <typename T> __attribute__((target("avx2,fma")))
void axpy_rows_avx2(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN, int64_t i0, int64_t i1) {
  axpy_rows(dy, w, dx, M, OUT, IN, i0, i1);
}
#endif

template <typename T> auto pick_dot() {
#ifdef VGG_X86
  const std::string_view isa = micro_kernel<T>().name;  // follow the GEMM's choice (and its VGG_CPU_ISA cap)
  if (isa == "avx512") return &dot_rows_avx512<T>;
  if (isa == "avx2") return &dot_rows_avx2<T>;
#endif
  return &dot_rows_base<T>;
}
template <typename T> auto pick_axpy() {
#ifdef VGG_X86
  const std::string_view isa = micro_kernel<T>().name;
  if (isa == "avx512") return &axpy_rows_avx512<T>;
  if (isa == "avx2") return &axpy_rows_avx2<T>;
#endif
  return &axpy_rows_base<T>;
}

}  // namespace

// x (M, IN), w (OUT, IN), bias (OUT) or nullptr -> y (M, OUT) = x w^T + bias
template <typename T> void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t M, int64_t OUT, int64_t IN) {
  if (M < kSmallBatch) {
    static const auto kernel = pick_dot<T>();
    constexpr int64_t chunk = 16;  // weight rows per task
    const int64_t tasks = detail::ceil_div(OUT, chunk);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the region
      kernel(x, w, bias, y, M, OUT, IN, t * chunk, std::min(OUT, (t + 1) * chunk));
    }
    throw_if_interrupted();
    return;
  }
  // A = x (M, IN) row-major, B(p, j) = w[j, p]
  gemm(M, OUT, IN, x, IN, int64_t(1), w, int64_t(1), IN, y, OUT, false, bias);
}

// dy (M, OUT), w (OUT, IN) -> dx (M, IN) = dy w
template <typename T> void linear_backward_data(const T* dy, const T* w, T* dx, int64_t M, int64_t OUT, int64_t IN) {
  if (M < kSmallBatch) {
    static const auto kernel = pick_axpy<T>();
    constexpr int64_t chunk = 1024;  // columns of dx per task: M x 1024 accumulators stay in L1/L2
    const int64_t tasks = detail::ceil_div(IN, chunk);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the region
      kernel(dy, w, dx, M, OUT, IN, t * chunk, std::min(IN, (t + 1) * chunk));
    }
    throw_if_interrupted();
    return;
  }
  // A = dy (M, OUT) row-major, B = w (OUT, IN) row-major
  gemm(M, IN, OUT, dy, OUT, int64_t(1), w, IN, int64_t(1), dx, IN, false);
}

// x (M, IN), dy (M, OUT) -> dw (OUT, IN) = dy^T x
template <typename T> void linear_backward_weight(const T* x, const T* dy, T* dw, int64_t M, int64_t OUT, int64_t IN) {
  // A(o, m) = dy[m, o], B = x (M, IN) row-major. With a small batch the reduction is short and the GEMM is
  // bound by writing dw once, which it does.
  gemm(OUT, IN, M, dy, int64_t(1), OUT, x, IN, int64_t(1), dw, IN, false);
}

#define VGG_INSTANTIATE(T)                                                                        \
  template void linear_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t);   \
  template void linear_backward_data<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);       \
  template void linear_backward_weight<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
