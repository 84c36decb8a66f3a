// Local response normalisation across channels (formula and window in shapes.h, PyTorch's convention):
//   scale[i] = k + alpha/size * sum_{j in window(i)} x[j]^2,   y[i] = x[i] * scale[i]^-beta,
//   window(c) = channels c - size/2 .. c + (size-1)/2 clipped to [0, C).
// Backward, with y[j] = x[j] * scale[j]^-beta:
//   dx[i] = dy[i] * scale[i]^-beta - 2*alpha*beta/size * x[i] * sum_{j : i in window(j)} dy[j] * y[j] / scale[j],
//   and i in window(j) <=> j in [i - (size-1)/2, i + size/2] (the window mirrored; differs for even sizes).
//
// Tensors are (rows, C) with rows = N*H*W (NHWC). One warp per row, lanes striding over the channels, so each
// warp touches one contiguous row; the few neighbours of a channel's window are re-read from global memory and
// hit L1 (size is small: 5 in VGG's A-LRN). No reductions across lanes are needed, so there are no shuffles.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kLrnWarpsPerBlock = 8;
constexpr int64_t kLrnMaxBlocks = 8192;  // rows beyond 8192 * 8 are grid-strided

// The float constants of one call, derived once on the host.
struct LrnParams {
  int64_t rows, C;
  int64_t before, after;   // window(c) = [c - before, c + after], reach clipped to C
  float alpha_over_size;   // alpha / size
  float beta;
  float k;
  float grad_coeff;        // 2 * alpha * beta / size
};

LrnParams lrn_params(const LrnShape& s) {
  LrnParams p;
  p.rows = s.rows;
  p.C = s.C;
  // The window is clipped to the C channels, so a reach beyond C changes nothing; clipping it here keeps the
  // loops bounded by the data and the value exact for any size (the same rule as the CPU kernel).
  p.before = s.size / 2 < s.C ? s.size / 2 : s.C;
  p.after = (s.size - 1) / 2 < s.C ? (s.size - 1) / 2 : s.C;
  p.alpha_over_size = static_cast<float>(s.alpha / static_cast<double>(s.size));
  p.beta = static_cast<float>(s.beta);
  p.k = static_cast<float>(s.k);
  p.grad_coeff = static_cast<float>(2.0 * s.alpha * s.beta / static_cast<double>(s.size));
  return p;
}

dim3 lrn_grid(int64_t rows) { return grid_stride_blocks(rows, kLrnWarpsPerBlock, kLrnMaxBlocks); }

// x (rows, C) -> y (rows, C), scale (rows, C). Block (32, 8): warp threadIdx.y handles one row at a time.
__global__ void lrn_forward_kernel(const float* x, float* y, float* scale, LrnParams p) {
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kLrnWarpsPerBlock + threadIdx.y;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kLrnWarpsPerBlock;
  for (int64_t row = first_row; row < p.rows; row += row_stride) {
    const float* xr = x + row * p.C;
    for (int64_t c = threadIdx.x; c < p.C; c += 32) {
      const int64_t lo = c - p.before < 0 ? 0 : c - p.before;
      const int64_t hi = c + p.after >= p.C ? p.C - 1 : c + p.after;
      float sum_sq = 0.0f;
      for (int64_t j = lo; j <= hi; ++j) sum_sq += xr[j] * xr[j];
      const float sc = p.k + p.alpha_over_size * sum_sq;
      scale[row * p.C + c] = sc;
      y[row * p.C + c] = xr[c] * powf(sc, -p.beta);
    }
  }
}

// x, y, scale, dy (rows, C) -> dx (rows, C). Same layout as the forward kernel.
__global__ void lrn_backward_kernel(const float* x, const float* y, const float* scale, const float* dy, float* dx,
                                    LrnParams p) {
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kLrnWarpsPerBlock + threadIdx.y;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kLrnWarpsPerBlock;
  for (int64_t row = first_row; row < p.rows; row += row_stride) {
    const int64_t base = row * p.C;
    for (int64_t c = threadIdx.x; c < p.C; c += 32) {
      // Channels j whose window contains c: the window mirrored, [c - after, c + before].
      const int64_t lo = c - p.after < 0 ? 0 : c - p.after;
      const int64_t hi = c + p.before >= p.C ? p.C - 1 : c + p.before;
      float acc = 0.0f;
      for (int64_t j = lo; j <= hi; ++j) acc += dy[base + j] * y[base + j] / scale[base + j];
      dx[base + c] = dy[base + c] * powf(scale[base + c], -p.beta) - p.grad_coeff * x[base + c] * acc;
    }
  }
}

}  // namespace

void lrn_forward(const float* x, float* y, float* scale, const LrnShape& s) {
  if (s.rows <= 0 || s.C <= 0) return;
  VGG_LAUNCH(lrn_grid(s.rows), dim3(32, kLrnWarpsPerBlock), 0, lrn_forward_kernel)(x, y, scale, lrn_params(s));
  VGG_CHECK_LAUNCH("lrn_forward");
}

void lrn_backward(const float* x, const float* y, const float* scale, const float* dy, float* dx, const LrnShape& s) {
  if (s.rows <= 0 || s.C <= 0) return;
  VGG_LAUNCH(lrn_grid(s.rows), dim3(32, kLrnWarpsPerBlock), 0, lrn_backward_kernel)(x, y, scale, dy, dx,
                                                                                    lrn_params(s));
  VGG_CHECK_LAUNCH("lrn_backward");
}

}  // namespace vgg::VGG_GPU_NS
