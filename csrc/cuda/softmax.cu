// The softmax family over the last axis of a (rows, cols) matrix: softmax, log_softmax and cross-entropy fused
// with log_softmax, forward and backward. Semantics are those of csrc/cpu/cpu_kernels.h.
//
// One warp per row, lanes striding over the columns (coalesced), row statistics combined with __shfl_xor_sync
// butterflies, which leave the same bits in every lane and do not depend on scheduling. Forward passes are
// numerically stable: the row maximum is subtracted before exponentiating. A row is read up to three times
// (max, sum, write); for VGG's class counts (up to a few thousand) the rereads hit L1/L2.
//
// cross_entropy_forward writes the mean loss deterministically: the row kernel stores each row's loss in a
// workspace and a single block adds them in a fixed order (no float atomics).
//
// The forward passes read float or bfloat16 input (T, element_types.cuh) and always write float32: losses and
// probabilities stay float32 under mixed precision. The backward passes are float32 only.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kSoftmaxWarpsPerBlock = 8;
constexpr int64_t kSoftmaxMaxBlocks = 8192;  // rows beyond 8192 * 8 are grid-strided

dim3 softmax_grid(int64_t rows) { return grid_stride_blocks(rows, kSoftmaxWarpsPerBlock, kSoftmaxMaxBlocks); }
dim3 softmax_block() { return dim3(32, kSoftmaxWarpsPerBlock); }

// The whole warp must call these (every lane of a row's warp runs the same number of row iterations).
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// Row statistics of x[0 .. cols): the maximum and sum(exp(x - max)), identical in every lane.
struct RowStats {
  float max, sum_exp;
};
template <typename T>
__device__ __forceinline__ RowStats row_stats(const T* xr, int64_t cols, int lane) {
  float m = -INFINITY;
  for (int64_t c = lane; c < cols; c += 32) m = fmaxf(m, load_element(xr, c));
  m = warp_max(m);
  float s = 0.0f;
  for (int64_t c = lane; c < cols; c += 32) s += expf(load_element(xr, c) - m);
  return RowStats{m, warp_sum(s)};
}

// Warp w of block b starts at row b*8 + w and strides by the grid's warp count; uniform within a warp.
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * kSoftmaxWarpsPerBlock + threadIdx.y;
}
__device__ __forceinline__ int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * kSoftmaxWarpsPerBlock; }

// x (rows, cols) -> y (rows, cols) = exp(x - max) / sum(exp(x - max)). Block (32, 8).
template <typename T>
__global__ void softmax_forward_kernel(const T* x, float* y, int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const T* xr = x + row * cols;
    const RowStats st = row_stats(xr, cols, lane);
    for (int64_t c = lane; c < cols; c += 32) y[row * cols + c] = expf(load_element(xr, c) - st.max) / st.sum_exp;
  }
}

// x (rows, cols) -> y (rows, cols) = (x - max) - log(sum(exp(x - max))). Block (32, 8).
template <typename T>
__global__ void log_softmax_forward_kernel(const T* x, float* y, int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const T* xr = x + row * cols;
    const RowStats st = row_stats(xr, cols, lane);
    const float log_sum = logf(st.sum_exp);
    for (int64_t c = lane; c < cols; c += 32) y[row * cols + c] = (load_element(xr, c) - st.max) - log_sum;
  }
}

// y the forward output, dy (rows, cols) -> dx = y * (dy - sum(dy * y)). Block (32, 8).
__global__ void softmax_backward_kernel(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t base = row * cols;
    float dot = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) dot += dy[base + c] * y[base + c];
    dot = warp_sum(dot);
    for (int64_t c = lane; c < cols; c += 32) dx[base + c] = y[base + c] * (dy[base + c] - dot);
  }
}

// y the forward output (log-probabilities), dy (rows, cols) -> dx = dy - exp(y) * sum(dy). Block (32, 8).
__global__ void log_softmax_backward_kernel(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t base = row * cols;
    float total = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) total += dy[base + c];
    total = warp_sum(total);
    for (int64_t c = lane; c < cols; c += 32) dx[base + c] = dy[base + c] - expf(y[base + c]) * total;
  }
}

// logits (rows, cols), target (rows) -> logp (rows, cols) = log_softmax(logits), row_loss (rows) = -logp[target].
// Block (32, 8). Lane 0 recomputes logp at the target with the same expression, so row_loss matches logp exactly.
// A target outside [0, cols) gives a NaN row loss rather than a read outside the row: the host checks the labels
// of every eager call, but a graph replay reads whatever its label tensor holds.
template <typename T>
__global__ void cross_entropy_rows_kernel(const T* logits, const int64_t* target, float* logp, float* row_loss,
                                          int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const T* xr = logits + row * cols;
    const RowStats st = row_stats(xr, cols, lane);
    const float log_sum = logf(st.sum_exp);
    for (int64_t c = lane; c < cols; c += 32) logp[row * cols + c] = (load_element(xr, c) - st.max) - log_sum;
    if (lane == 0) {
      const int64_t t = target[row];
      row_loss[row] = t >= 0 && t < cols ? -((load_element(xr, t) - st.max) - log_sum) : __int_as_float(0x7fc00000);
    }
  }
}

constexpr int kMeanThreads = 256;

// row_loss (rows) -> loss (1) = mean. One block of 256 threads: each thread adds every 256th row in order, then
// a fixed shuffle tree per warp and warp 0 adds the 8 warp sums in order, so the result is reproducible.
__global__ void mean_loss_kernel(const float* row_loss, float* loss, int64_t rows) {
  VGG_SHARED(float, warp_totals, [kMeanThreads / 32]);
  float sum = 0.0f;
  for (int64_t r = threadIdx.x; r < rows; r += kMeanThreads) sum += row_loss[r];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = sum;
  // Every warp's total must be in shared memory before thread 0 adds them.
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kMeanThreads / 32; ++w) total += warp_totals[w];
    loss[0] = total / static_cast<float>(rows);
  }
}

// logp (rows, cols), target (rows), dloss (1) -> dx = (exp(logp) - onehot(target)) * dloss / rows. Block (32, 8).
// dloss stays in device memory so the backward pass never waits for the host.
__global__ void cross_entropy_backward_kernel(const float* logp, const int64_t* target, const float* dloss, float* dx,
                                              int64_t rows, int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x);
  const float g = dloss[0] / static_cast<float>(rows);
  for (int64_t row = first_row(); row < rows; row += row_stride()) {
    const int64_t base = row * cols;
    const int64_t t = target[row];
    for (int64_t c = lane; c < cols; c += 32) {
      const float p = expf(logp[base + c]);
      dx[base + c] = (c == t ? p - 1.0f : p) * g;
    }
  }
}

template <typename T>
void launch_softmax_forward(const T* x, float* y, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, softmax_forward_kernel<T>)(x, y, rows, cols);
  VGG_CHECK_LAUNCH("softmax_forward");
}

template <typename T>
void launch_log_softmax_forward(const T* x, float* y, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, log_softmax_forward_kernel<T>)(x, y, rows, cols);
  VGG_CHECK_LAUNCH("log_softmax_forward");
}

template <typename T>
void launch_cross_entropy_forward(const T* logits, const int64_t* target, float* logp, float* loss, int64_t rows,
                                  int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  Workspace row_loss(static_cast<size_t>(rows) * sizeof(float));
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, cross_entropy_rows_kernel<T>)(logits, target, logp,
                                                                                 row_loss.as<float>(), rows, cols);
  VGG_CHECK_LAUNCH("cross_entropy_forward");
  VGG_LAUNCH(dim3(1), dim3(kMeanThreads), 0, mean_loss_kernel)(row_loss.as<float>(), loss, rows);
  VGG_CHECK_LAUNCH("cross_entropy_forward (mean)");
}

}  // namespace

void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols) { launch_softmax_forward(x, y, rows, cols); }
void softmax_forward(const uint16_t* x, float* y, int64_t rows, int64_t cols) {
  launch_softmax_forward(x, y, rows, cols);
}

void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, softmax_backward_kernel)(y, dy, dx, rows, cols);
  VGG_CHECK_LAUNCH("softmax_backward");
}

void log_softmax_forward(const float* x, float* y, int64_t rows, int64_t cols) {
  launch_log_softmax_forward(x, y, rows, cols);
}
void log_softmax_forward(const uint16_t* x, float* y, int64_t rows, int64_t cols) {
  launch_log_softmax_forward(x, y, rows, cols);
}

void log_softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, log_softmax_backward_kernel)(y, dy, dx, rows, cols);
  VGG_CHECK_LAUNCH("log_softmax_backward");
}

void cross_entropy_forward(const float* logits, const int64_t* target, float* logp, float* loss, int64_t rows,
                           int64_t cols) {
  launch_cross_entropy_forward(logits, target, logp, loss, rows, cols);
}
void cross_entropy_forward(const uint16_t* logits, const int64_t* target, float* logp, float* loss, int64_t rows,
                           int64_t cols) {
  launch_cross_entropy_forward(logits, target, logp, loss, rows, cols);
}

void cross_entropy_backward(const float* logp, const int64_t* target, const float* dloss, float* dx, int64_t rows,
                            int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  VGG_LAUNCH(softmax_grid(rows), softmax_block(), 0, cross_entropy_backward_kernel)(logp, target, dloss, dx, rows,
                                                                                  cols);
  VGG_CHECK_LAUNCH("cross_entropy_backward");
}

}  // namespace vgg::VGG_GPU_NS
