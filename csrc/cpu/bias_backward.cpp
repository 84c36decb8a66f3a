// The bias gradient of conv2d and linear on the CPU, T = float or double: the sum of dy over every axis but the
// last (the GPU twin is csrc/cuda/bias_backward.cu).
#include <algorithm>

#include "cpu_kernels.h"
#include "gemm.h"

namespace vgg::cpu {

using detail::ceil_div;

// dy (rows, cols) -> db (cols). Partial sums per fixed 1024-row chunk, accumulated in double (a float sum over
// N*P*Q ~ 10^5..10^6 rows would lose ~1e-5 relative) and added in chunk order: the same bits for any thread count.
template <typename T> void bias_backward(const T* dy, T* db, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  constexpr int64_t chunk = 1024;
  const int64_t chunks = std::max<int64_t>(1, ceil_div(rows, chunk));
  double* partial = thread_workspace<double>(Slot::partials, size_t(chunks * cols));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < chunks; ++b) {
    double* acc = partial + b * cols;
    std::fill(acc, acc + cols, 0.0);
    for (int64_t r = b * chunk; r < std::min(rows, (b + 1) * chunk); ++r) {
      const T* row = dy + r * cols;
      for (int64_t c = 0; c < cols; ++c) acc[c] += row[c];
    }
  }
  for (int64_t c = 0; c < cols; ++c) {
    double sum = 0.0;
    for (int64_t b = 0; b < chunks; ++b) sum += partial[b * cols + c];
    db[c] = static_cast<T>(sum);
  }
}

template void bias_backward<float>(const float*, float*, int64_t, int64_t);
template void bias_backward<double>(const double*, double*, int64_t, int64_t);

}  // namespace vgg::cpu
