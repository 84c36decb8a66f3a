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
// x, y, dy, dx are float or bfloat16 (T, element_types.cuh); scale is always float32, and the arithmetic too.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
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
template <typename T>
__global__ void lrn_forward_kernel(const T* x, T* y, float* scale, LrnParams p) {
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kLrnWarpsPerBlock + threadIdx.y;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kLrnWarpsPerBlock;
  for (int64_t row = first_row; row < p.rows; row += row_stride) {
    const T* xr = x + row * p.C;
    for (int64_t c = threadIdx.x; c < p.C; c += 32) {
      const int64_t lo = c - p.before < 0 ? 0 : c - p.before;
      const int64_t hi = c + p.after >= p.C ? p.C - 1 : c + p.after;
      float sum_sq = 0.0f;
      for (int64_t j = lo; j <= hi; ++j) {
        const float xj = load_element(xr, j);
        sum_sq += xj * xj;
      }
      const float sc = p.k + p.alpha_over_size * sum_sq;
      scale[row * p.C + c] = sc;
      store_element(y, row * p.C + c, load_element(xr, c) * powf(sc, -p.beta));
    }
  }
}

// x, y, scale, dy (rows, C) -> dx (rows, C). Same layout as the forward kernel.
template <typename T>
__global__ void lrn_backward_kernel(const T* x, const T* y, const float* scale, const T* dy, T* dx, LrnParams p) {
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kLrnWarpsPerBlock + threadIdx.y;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kLrnWarpsPerBlock;
  for (int64_t row = first_row; row < p.rows; row += row_stride) {
    const int64_t base = row * p.C;
    for (int64_t c = threadIdx.x; c < p.C; c += 32) {
      // Channels j whose window contains c: the window mirrored, [c - after, c + before].
      const int64_t lo = c - p.after < 0 ? 0 : c - p.after;
      const int64_t hi = c + p.before >= p.C ? p.C - 1 : c + p.before;
      float acc = 0.0f;
      for (int64_t j = lo; j <= hi; ++j)
        acc += load_element(dy, base + j) * load_element(y, base + j) / scale[base + j];
      store_element(dx, base + c, load_element(dy, base + c) * powf(scale[base + c], -p.beta) -
                                      p.grad_coeff * load_element(x, base + c) * acc);
    }
  }
}

template <typename T>
void launch_lrn_forward(const T* x, T* y, float* scale, const LrnShape& s) {
  if (s.rows <= 0 || s.C <= 0) return;
  VGG_LAUNCH(lrn_grid(s.rows), dim3(32, kLrnWarpsPerBlock), 0, lrn_forward_kernel<T>)(x, y, scale, lrn_params(s));
  VGG_CHECK_LAUNCH("lrn_forward");
}

template <typename T>
void launch_lrn_backward(const T* x, const T* y, const float* scale, const T* dy, T* dx, const LrnShape& s) {
  if (s.rows <= 0 || s.C <= 0) return;
  VGG_LAUNCH(lrn_grid(s.rows), dim3(32, kLrnWarpsPerBlock), 0, lrn_backward_kernel<T>)(x, y, scale, dy, dx,
                                                                                       lrn_params(s));
  VGG_CHECK_LAUNCH("lrn_backward");
}

}  // namespace

void lrn_forward(const float* x, float* y, float* scale, const LrnShape& s) { launch_lrn_forward(x, y, scale, s); }
void lrn_forward(const uint16_t* x, uint16_t* y, float* scale, const LrnShape& s) {
  launch_lrn_forward(x, y, scale, s);
}

void lrn_backward(const float* x, const float* y, const float* scale, const float* dy, float* dx, const LrnShape& s) {
  launch_lrn_backward(x, y, scale, dy, dx, s);
}
void lrn_backward(const uint16_t* x, const uint16_t* y, const float* scale, const uint16_t* dy, uint16_t* dx,
                  const LrnShape& s) {
  launch_lrn_backward(x, y, scale, dy, dx, s);
}

}  // namespace vgg::VGG_GPU_NS
