// Softmax family over the last axis: softmax, log-softmax, and cross-entropy fused with log-softmax.
//
// Rows are independent, so large inputs split rows across threads. Every row subtracts its maximum before
// exponentiating, so exp never overflows (logits of magnitude 1000 are fine) and the largest term is
// exactly 1, which keeps the denominator >= 1 and its log finite. Denominators and dot products are summed
// in double: one conversion per element, and float errors stay at the level of the final rounding however
// long the row is.
#include <cmath>
#include <cstdint>

#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {

constexpr int64_t kParallelMinElements = int64_t{1} << 14;

// max over a row; NaN need not survive here, because exp(NaN - m) is NaN and poisons the sum anyway.
template <typename T>
inline double row_max(const T* x, int64_t cols) {
  T m = x[0];
  for (int64_t c = 1; c < cols; ++c) m = x[c] > m ? x[c] : m;
  return static_cast<double>(m);
}

// The two parts of a row's logsumexp, kept apart: max and log(sum exp(x - max)). Callers form (x - max) - log_sum;
// folding them into max + log_sum first would lose log_sum once |max| is around 1e16 (log_sum <= log cols is
// then below half an ulp of max), giving loss 0 for logits [-1e30, -1e30] instead of log 2.
struct RowLse {
  double max, log_sum;
};
template <typename T>
inline RowLse row_logsumexp(const T* x, int64_t cols) {
  const double m = row_max(x, cols);
  double sum = 0.0;
  for (int64_t c = 0; c < cols; ++c) sum += std::exp(static_cast<double>(x[c]) - m);
  return {m, std::log(sum)};
}

}  // namespace

// x (rows, cols) -> y (rows, cols) = exp(x - max) / sum(exp(x - max))
template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMinElements) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const double m = row_max(xr, cols);
    double sum = 0.0;
    // Exponentials are stored in y on the way, so each is computed once.
    for (int64_t c = 0; c < cols; ++c) {
      const double e = std::exp(static_cast<double>(xr[c]) - m);
      yr[c] = static_cast<T>(e);
      sum += e;
    }
    const double inv = 1.0 / sum;
    for (int64_t c = 0; c < cols; ++c) yr[c] = static_cast<T>(static_cast<double>(yr[c]) * inv);
  }
}

// y the forward output, dy (rows, cols) -> dx = y * (dy - sum(dy * y))
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMinElements) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    double dot = 0.0;
    for (int64_t c = 0; c < cols; ++c) dot += static_cast<double>(dy[o + c]) * static_cast<double>(y[o + c]);
    for (int64_t c = 0; c < cols; ++c)
      dx[o + c] = static_cast<T>(static_cast<double>(y[o + c]) * (static_cast<double>(dy[o + c]) - dot));
  }
}

// x (rows, cols) -> y (rows, cols) = (x - max) - log(sum(exp(x - max)))
template <typename T>
void log_softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMinElements) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const RowLse lse = row_logsumexp(xr, cols);
    for (int64_t c = 0; c < cols; ++c) yr[c] = static_cast<T>((static_cast<double>(xr[c]) - lse.max) - lse.log_sum);
  }
}

// y the forward output, dy (rows, cols) -> dx = dy - exp(y) * sum(dy)
template <typename T>
void log_softmax_backward(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
#pragma omp parallel for if (rows * cols >= kParallelMinElements) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(dy[o + c]);
    for (int64_t c = 0; c < cols; ++c)
      dx[o + c] = static_cast<T>(static_cast<double>(dy[o + c]) - std::exp(static_cast<double>(y[o + c])) * sum);
  }
}

// logits (rows, cols), target (rows) in [0, cols) -> logp (rows, cols), loss (1) = mean_r -logp[r, target[r]]
template <typename T>
void cross_entropy_forward(const T* logits, const int64_t* target, T* logp, T* loss, int64_t rows, int64_t cols) {
  log_softmax_forward(logits, logp, rows, cols);
  // The mean is summed serially in a fixed order so the loss is bitwise reproducible for any thread count
  // (an OpenMP reduction combines partial sums in an unspecified order); it is one load per row.
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total -= static_cast<double>(logp[r * cols + target[r]]);
  loss[0] = static_cast<T>(total / static_cast<double>(rows));
}

// logp (rows, cols), target (rows), dloss (1) -> dx (rows, cols) = (exp(logp) - onehot(target)) * dloss / rows
template <typename T>
void cross_entropy_backward(const T* logp, const int64_t* target, const T* dloss, T* dx, int64_t rows, int64_t cols) {
  const double g = static_cast<double>(dloss[0]) / static_cast<double>(rows);
#pragma omp parallel for if (rows * cols >= kParallelMinElements) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    for (int64_t c = 0; c < cols; ++c) dx[o + c] = static_cast<T>(std::exp(static_cast<double>(logp[o + c])) * g);
    // Subtracting the one-hot afterwards keeps the loop over c branch-free.
    dx[o + target[r]] = static_cast<T>((std::exp(static_cast<double>(logp[o + target[r]])) - 1.0) * g);
  }
}

#define VGG_INSTANTIATE(T)                                                                              \
  template void softmax_forward<T>(const T*, T*, int64_t, int64_t);                                     \
  template void softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t);                          \
  template void log_softmax_forward<T>(const T*, T*, int64_t, int64_t);                                 \
  template void log_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t);                      \
  template void cross_entropy_forward<T>(const T*, const int64_t*, T*, T*, int64_t, int64_t);           \
  template void cross_entropy_backward<T>(const T*, const int64_t*, const T*, T*, int64_t, int64_t);
VGG_INSTANTIATE(float)
VGG_INSTANTIATE(double)
#undef VGG_INSTANTIATE

}  // namespace vgg::cpu
