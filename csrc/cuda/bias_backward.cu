// The bias gradient of conv2d and linear on the GPU (the CPU twin is csrc/cpu/bias_backward.cpp): column sums of a
// (rows, cols) matrix, rows = N*P*Q (conv) or M (linear), cols = K or OUT. rows reaches millions (12.8 M for VGG's
// first layers at batch 256), cols is 64..4096.
//
// Deterministic two-pass reduction, no atomics:
//   pass 1: grid (ceil(cols/32), splits). A block owns 32 columns (one coalesced 128-byte segment per row and
//           warp) of a contiguous range of rows; its 8 warps take every 8th row of the range, each thread adding
//           its column in order, then warp 0 adds the 8 partial sums in order -> partial[split][col].
//   pass 2: one thread per column adds the splits' partials in split order -> db[col].
// The partition depends only on (rows, cols), never on the GPU, so the bits are the same on every device and run.
// Accumulation is in double: it costs nothing in a kernel bound by memory bandwidth (one add per 4-byte load)
// and keeps the sum of millions of terms accurate; the result is rounded to float (or bfloat16) once. The kernels
// are templated on the storage of dy and db (float or bfloat16 bits, element_types.cuh).
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kBiasTileCols = 32;   // columns per block (threadIdx.x)
constexpr int kBiasSlices = 8;      // warps per block, interleaved over rows (threadIdx.y)
// Enough blocks to fill a large GPU several times over (an H100 holds 8 of these blocks on each of 132 SMs).
constexpr int64_t kBiasTargetBlocks = 1024;
// Below this many rows per split the partials cost more than the parallelism gains.
constexpr int64_t kBiasMinRowsPerSplit = 256;
constexpr int kBiasFinishThreads = 256;

// dy (rows, cols) -> partial (splits, cols) in double, or db (cols) directly when there is one split.
// Block (32, 8); blockIdx.x = column tile, blockIdx.y = split of rows_per_split consecutive rows.
template <typename T>
__global__ void bias_partial_kernel(const T* dy, double* partial, T* db, int64_t rows, int64_t cols,
                                    int64_t rows_per_split) {
  VGG_SHARED(double, slice_sums, [kBiasSlices][kBiasTileCols]);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kBiasTileCols + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t end = begin + rows_per_split < rows ? begin + rows_per_split : rows;
  double sum = 0.0;
  if (col < cols) {
    const T* column = dy + col;
    int64_t r = begin + threadIdx.y;
    // Four independent loads in flight per thread before their in-order adds: a lone load per iteration leaves
    // too little memory traffic outstanding per SM to reach full bandwidth.
    for (; r + 3 * kBiasSlices < end; r += 4 * kBiasSlices) {
      const float a = load_element(column, r * cols);
      const float b = load_element(column, (r + kBiasSlices) * cols);
      const float c = load_element(column, (r + 2 * kBiasSlices) * cols);
      const float d = load_element(column, (r + 3 * kBiasSlices) * cols);
      sum += a;
      sum += b;
      sum += c;
      sum += d;
    }
    for (; r < end; r += kBiasSlices) sum += load_element(column, r * cols);
  }
  slice_sums[threadIdx.y][threadIdx.x] = sum;
  // All 8 slices' sums must be in shared memory before warp 0 combines them.
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    double total = 0.0;
    for (int k = 0; k < kBiasSlices; ++k) total += slice_sums[k][threadIdx.x];
    if (gridDim.y == 1)
      store_element(db, col, static_cast<float>(total));
    else
      partial[static_cast<int64_t>(blockIdx.y) * cols + col] = total;
  }
}

// partial (splits, cols) -> db (cols) = sum over splits in order. One thread per column (coalesced rows).
template <typename T>
__global__ void bias_finish_kernel(const double* partial, T* db, int64_t splits, int64_t cols) {
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < cols;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double total = 0.0;
    for (int64_t s = 0; s < splits; ++s) total += partial[s * cols + col];
    store_element(db, col, static_cast<float>(total));
  }
}

template <typename T>
void launch_bias_backward(const T* dy, T* db, int64_t rows, int64_t cols) {
  if (cols <= 0) return;
  if (rows <= 0) {
    fill(db, 0.0, cols);  // an empty sum
    return;
  }
  const int64_t col_tiles = ceil_div(cols, kBiasTileCols);
  int64_t splits = ceil_div(kBiasTargetBlocks, col_tiles);
  const int64_t max_splits = ceil_div(rows, kBiasMinRowsPerSplit);
  if (splits > max_splits) splits = max_splits;
  const int64_t rows_per_split = ceil_div(rows, splits);
  splits = ceil_div(rows, rows_per_split);  // no empty trailing split

  Workspace partial(splits > 1 ? static_cast<size_t>(splits * cols) * sizeof(double) : 0);
  VGG_LAUNCH(dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(splits)), dim3(kBiasTileCols, kBiasSlices),
             0, bias_partial_kernel<T>)(dy, partial.as<double>(), db, rows, cols, rows_per_split);
  VGG_CHECK_LAUNCH("bias_backward");
  if (splits > 1) {
    const int64_t blocks = ceil_div(cols, kBiasFinishThreads);
    VGG_LAUNCH(dim3(static_cast<unsigned>(blocks > 4096 ? 4096 : blocks)), dim3(kBiasFinishThreads), 0,
               bias_finish_kernel<T>)(partial.as<double>(), db, splits, cols);
    VGG_CHECK_LAUNCH("bias_backward (finish)");
  }
}

}  // namespace

void bias_backward(const float* dy, float* db, int64_t rows, int64_t cols) { launch_bias_backward(dy, db, rows, cols); }
void bias_backward(const uint16_t* dy, uint16_t* db, int64_t rows, int64_t cols) {
  launch_bias_backward(dy, db, rows, cols);
}

}  // namespace vgg::VGG_GPU_NS
