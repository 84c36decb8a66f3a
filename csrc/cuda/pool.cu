// Pooling of the GPU backend: max and average pooling over R x S windows (no padding, floor mode), their
// backward passes, and global average pooling. Semantics are those of csrc/cpu/cpu_kernels.h and shapes.h.
//
// One thread per output element (forward) or per input element (backward), channel fastest so that a warp
// reads and writes 32 consecutive floats of an NHWC tensor. The backward passes gather: each dx element visits
// the few windows that contain it and sums their contributions, so there are no atomics, the result does not
// depend on thread order, and overlapping windows (kernel 3, stride 2) need no special case.
//
// Every kernel is templated on the element storage T (float, or bfloat16 bits; element_types.cuh): values are
// compared in float32; sums and means are taken in double and rounded once when stored, as the CPU twin does
// (csrc/cpu/pool.cpp). That keeps the devices in agreement where a float32 sum would overflow or lose bits
// before the division: the mean of four values near FLT_MAX is finite, and a float32 sum of them is inf. These
// kernels are bound by memory traffic, so the double adds cost nothing measurable even where FP64 is slow.
//
// Index arithmetic (div/mod by C, Q, P) dominates these kernels; it is done in 32 bits whenever every tensor
// index fits, which is the common case, and in 64 bits otherwise.
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kPoolThreads = 256;
constexpr int64_t kPoolMaxBlocks = 4096;  // grid-stride loops beyond this; far more threads than an H100 holds

dim3 pool_blocks(int64_t work) { return grid_stride_blocks(work, kPoolThreads, kPoolMaxBlocks); }

// 32-bit indexing is safe when every index, plus one grid-stride step past the end, stays below 2^31.
bool pool_fits_int32(int64_t largest_tensor) {
  return largest_tensor + kPoolMaxBlocks * kPoolThreads < (int64_t{1} << 31);
}

template <typename Index> __device__ __forceinline__ Index pool_thread_index() {
  return static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + static_cast<Index>(threadIdx.x);
}
template <typename Index> __device__ __forceinline__ Index pool_grid_threads() {
  return static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x);
}

// The window extents of one image plane, converted once to the kernel's index type.
template <typename Index> struct PoolDims {
  Index H, W, C, R, S, stride, P, Q;
  explicit PoolDims(const Pool2dShape& s)
      : H(static_cast<Index>(s.H)), W(static_cast<Index>(s.W)), C(static_cast<Index>(s.C)),
        R(static_cast<Index>(s.R)), S(static_cast<Index>(s.S)), stride(static_cast<Index>(s.stride)),
        P(static_cast<Index>(s.P)), Q(static_cast<Index>(s.Q)) {}
};

// Output rows p whose window [p*stride, p*stride + R) contains input row h, as [lo, hi] (empty when lo > hi:
// rows past the last window in floor mode belong to none).
template <typename Index>
__device__ __forceinline__ void windows_containing(Index h, Index R, Index stride, Index P, Index* lo, Index* hi) {
  *lo = h < R ? Index{0} : (h - R) / stride + 1;
  const Index last = h / stride;
  *hi = last < P - 1 ? last : P - 1;
}

// The gather of both backward passes: dx element i of (N,H,W,C) visits the windows that contain its pixel (h, w),
// in (p, q) order, as visit(o, self): o indexes window (p, q), channel c, in (N,P,Q,C), and self = h*W + w is the
// pixel's place in its plane as argmax records it.
template <typename Index, typename Visit>
__device__ __forceinline__ void for_each_window_containing(Index i, const PoolDims<Index>& d, Visit visit) {
  const Index c = i % d.C;
  Index t = i / d.C;
  const Index w = t % d.W;
  t /= d.W;
  const Index h = t % d.H;
  const Index n = t / d.H;
  Index p_lo, p_hi, q_lo, q_hi;
  windows_containing(h, d.R, d.stride, d.P, &p_lo, &p_hi);
  windows_containing(w, d.S, d.stride, d.Q, &q_lo, &q_hi);
  const int32_t self = static_cast<int32_t>(h * d.W + w);
  for (Index p = p_lo; p <= p_hi; ++p)
    for (Index q = q_lo; q <= q_hi; ++q) visit(((n * d.P + p) * d.Q + q) * d.C + c, self);
}

// ---- max pooling ------------------------------------------------------------------------------------------

// x (N,H,W,C) -> y (N,P,Q,C), argmax (N,P,Q,C) = h*W + w of the winner inside its plane. The first maximum in
// row-major window order wins; a NaN beats every number (so NaN propagates) and the first NaN is kept.
template <typename T, typename Index>
__global__ void max_pool2d_forward_kernel(const T* x, T* y, int32_t* argmax, PoolDims<Index> d, Index total) {
  for (Index i = pool_thread_index<Index>(); i < total; i += pool_grid_threads<Index>()) {
    const Index c = i % d.C;
    Index t = i / d.C;
    const Index q = t % d.Q;
    t /= d.Q;
    const Index p = t % d.P;
    const Index n = t / d.P;
    const T* plane = x + n * d.H * d.W * d.C + c;  // element (h, w) of this channel at plane[(h*W + w)*C]
    const Index h0 = p * d.stride, w0 = q * d.stride;
    Index best_at = h0 * d.W + w0;
    float best = load_element(plane, best_at * d.C);
    for (Index r = 0; r < d.R; ++r) {
      for (Index s = 0; s < d.S; ++s) {
        const Index at = (h0 + r) * d.W + (w0 + s);
        const float v = load_element(plane, at * d.C);
        if (v > best || (v != v && best == best)) {
          best = v;
          best_at = at;
        }
      }
    }
    store_element(y, i, best);
    argmax[i] = static_cast<int32_t>(best_at);
  }
}

// dy (N,P,Q,C), argmax (N,P,Q,C) -> dx (N,H,W,C): dx[n,h,w,c] = sum of dy over the windows containing (h, w)
// whose argmax is h*W + w, in (p, q) order.
template <typename T, typename Index>
__global__ void max_pool2d_backward_kernel(const T* dy, const int32_t* argmax, T* dx, PoolDims<Index> d,
                                           Index total) {
  for (Index i = pool_thread_index<Index>(); i < total; i += pool_grid_threads<Index>()) {
    double sum = 0.0;
    for_each_window_containing(i, d, [&](Index o, int32_t self) {
      if (argmax[o] == self) sum += load_element(dy, o);
    });
    store_element(dx, i, static_cast<float>(sum));
  }
}

// ---- average pooling ----------------------------------------------------------------------------------------

// x (N,H,W,C) -> y (N,P,Q,C) = window sum / (R*S)
template <typename T, typename Index>
__global__ void avg_pool2d_forward_kernel(const T* x, T* y, PoolDims<Index> d, Index total) {
  const double inv_window = 1.0 / static_cast<double>(d.R * d.S);
  for (Index i = pool_thread_index<Index>(); i < total; i += pool_grid_threads<Index>()) {
    const Index c = i % d.C;
    Index t = i / d.C;
    const Index q = t % d.Q;
    t /= d.Q;
    const Index p = t % d.P;
    const Index n = t / d.P;
    const T* plane = x + n * d.H * d.W * d.C + c;
    const Index h0 = p * d.stride, w0 = q * d.stride;
    double sum = 0.0;
    for (Index r = 0; r < d.R; ++r)
      for (Index s = 0; s < d.S; ++s) sum += load_element(plane, ((h0 + r) * d.W + (w0 + s)) * d.C);
    store_element(y, i, static_cast<float>(sum * inv_window));
  }
}

// dy (N,P,Q,C) -> dx (N,H,W,C) = (sum of dy over the windows containing (h, w)) / (R*S)
template <typename T, typename Index>
__global__ void avg_pool2d_backward_kernel(const T* dy, T* dx, PoolDims<Index> d, Index total) {
  const double inv_window = 1.0 / static_cast<double>(d.R * d.S);
  for (Index i = pool_thread_index<Index>(); i < total; i += pool_grid_threads<Index>()) {
    double sum = 0.0;
    for_each_window_containing(i, d, [&](Index o, int32_t) { sum += load_element(dy, o); });
    store_element(dx, i, static_cast<float>(sum * inv_window));
  }
}

// ---- global average pooling ---------------------------------------------------------------------------------

// Block shape for the global-average reduction: 32 channels (one coalesced 128-byte row segment per warp) by
// 8 slices of the HW positions.
constexpr int kGapChannels = 32;
constexpr int kGapSlices = 8;
constexpr int64_t kGapMaxImagesPerGrid = 65535;  // gridDim.y limit; images beyond it are grid-strided

// x (N, HW, C) -> y (N, C) = mean over HW. Block (32, 8), grid (ceil(C/32), min(N, 65535)). Each slice sums
// every 8th position in order, then slice 0 adds the 8 partial sums in order: deterministic.
template <typename T>
__global__ void global_avg_pool_forward_kernel(const T* x, T* y, int64_t N, int64_t HW, int64_t C) {
  VGG_SHARED(double, partial, [kGapSlices][kGapChannels]);
  const double inv_hw = 1.0 / static_cast<double>(HW);
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kGapChannels + threadIdx.x;
  // The image loop is uniform across the block, so every thread reaches both barriers on every iteration.
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    double sum = 0.0;
    if (c < C) {
      const T* column = x + n * HW * C + c;
      for (int64_t j = threadIdx.y; j < HW; j += kGapSlices) sum += load_element(column, j * C);
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
      double total = 0.0;
      for (int k = 0; k < kGapSlices; ++k) total += partial[k][threadIdx.x];
      store_element(y, n * C + c, static_cast<float>(total * inv_hw));
    }
    // Keep the next image's writes to `partial` away from the slice-0 threads still reading it.
    __syncthreads();
  }
}

// dy (N, C) -> dx (N, HW, C) = dy / HW broadcast over the HW positions.
template <typename T, typename Index>
__global__ void global_avg_pool_backward_kernel(const T* dy, T* dx, Index HW, Index C, Index total) {
  const double inv_hw = 1.0 / static_cast<double>(HW);
  for (Index i = pool_thread_index<Index>(); i < total; i += pool_grid_threads<Index>()) {
    const Index c = i % C;
    const Index n = i / (HW * C);
    store_element(dx, i, static_cast<float>(load_element(dy, n * C + c) * inv_hw));
  }
}


template <typename T>
void launch_max_pool2d_forward(const T* x, T* y, int32_t* argmax, const Pool2dShape& s) {
  const int64_t total = s.N * s.P * s.Q * s.C;
  if (total <= 0) return;
  const dim3 grid = pool_blocks(total), block(kPoolThreads);
  if (pool_fits_int32(s.N * s.H * s.W * s.C)) {
    VGG_LAUNCH(grid, block, 0, max_pool2d_forward_kernel<T, int32_t>)(x, y, argmax, PoolDims<int32_t>(s),
                                                                   static_cast<int32_t>(total));
  } else {
    VGG_LAUNCH(grid, block, 0, max_pool2d_forward_kernel<T, int64_t>)(x, y, argmax, PoolDims<int64_t>(s), total);
  }
  VGG_CHECK_LAUNCH("max_pool2d_forward");
}

template <typename T>
void launch_max_pool2d_backward(const T* dy, const int32_t* argmax, T* dx, const Pool2dShape& s) {
  const int64_t total = s.N * s.H * s.W * s.C;
  if (total <= 0) return;
  const dim3 grid = pool_blocks(total), block(kPoolThreads);
  if (pool_fits_int32(total)) {
    VGG_LAUNCH(grid, block, 0, max_pool2d_backward_kernel<T, int32_t>)(dy, argmax, dx, PoolDims<int32_t>(s),
                                                                    static_cast<int32_t>(total));
  } else {
    VGG_LAUNCH(grid, block, 0, max_pool2d_backward_kernel<T, int64_t>)(dy, argmax, dx, PoolDims<int64_t>(s), total);
  }
  VGG_CHECK_LAUNCH("max_pool2d_backward");
}

template <typename T>
void launch_avg_pool2d_forward(const T* x, T* y, const Pool2dShape& s) {
  const int64_t total = s.N * s.P * s.Q * s.C;
  if (total <= 0) return;
  const dim3 grid = pool_blocks(total), block(kPoolThreads);
  if (pool_fits_int32(s.N * s.H * s.W * s.C)) {
    VGG_LAUNCH(grid, block, 0, avg_pool2d_forward_kernel<T, int32_t>)(x, y, PoolDims<int32_t>(s),
                                                                   static_cast<int32_t>(total));
  } else {
    VGG_LAUNCH(grid, block, 0, avg_pool2d_forward_kernel<T, int64_t>)(x, y, PoolDims<int64_t>(s), total);
  }
  VGG_CHECK_LAUNCH("avg_pool2d_forward");
}

template <typename T>
void launch_avg_pool2d_backward(const T* dy, T* dx, const Pool2dShape& s) {
  const int64_t total = s.N * s.H * s.W * s.C;
  if (total <= 0) return;
  const dim3 grid = pool_blocks(total), block(kPoolThreads);
  if (pool_fits_int32(total)) {
    VGG_LAUNCH(grid, block, 0, avg_pool2d_backward_kernel<T, int32_t>)(dy, dx, PoolDims<int32_t>(s),
                                                                    static_cast<int32_t>(total));
  } else {
    VGG_LAUNCH(grid, block, 0, avg_pool2d_backward_kernel<T, int64_t>)(dy, dx, PoolDims<int64_t>(s), total);
  }
  VGG_CHECK_LAUNCH("avg_pool2d_backward");
}

template <typename T>
void launch_global_avg_pool_forward(const T* x, T* y, int64_t N, int64_t HW, int64_t C) {
  if (N <= 0 || C <= 0) return;
  const int64_t images = N < kGapMaxImagesPerGrid ? N : kGapMaxImagesPerGrid;
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kGapChannels)), static_cast<unsigned>(images));
  VGG_LAUNCH(grid, dim3(kGapChannels, kGapSlices), 0, global_avg_pool_forward_kernel<T>)(x, y, N, HW, C);
  VGG_CHECK_LAUNCH("global_avg_pool_forward");
}

template <typename T>
void launch_global_avg_pool_backward(const T* dy, T* dx, int64_t N, int64_t HW, int64_t C) {
  const int64_t total = N * HW * C;
  if (total <= 0) return;
  const dim3 grid = pool_blocks(total), block(kPoolThreads);
  if (pool_fits_int32(total)) {
    VGG_LAUNCH(grid, block, 0, global_avg_pool_backward_kernel<T, int32_t>)(
        dy, dx, static_cast<int32_t>(HW), static_cast<int32_t>(C), static_cast<int32_t>(total));
  } else {
    VGG_LAUNCH(grid, block, 0, global_avg_pool_backward_kernel<T, int64_t>)(dy, dx, HW, C, total);
  }
  VGG_CHECK_LAUNCH("global_avg_pool_backward");
}

}  // namespace

void max_pool2d_forward(const float* x, float* y, int32_t* argmax, const Pool2dShape& s) {
  launch_max_pool2d_forward(x, y, argmax, s);
}
void max_pool2d_forward(const uint16_t* x, uint16_t* y, int32_t* argmax, const Pool2dShape& s) {
  launch_max_pool2d_forward(x, y, argmax, s);
}
void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, const Pool2dShape& s) {
  launch_max_pool2d_backward(dy, argmax, dx, s);
}
void max_pool2d_backward(const uint16_t* dy, const int32_t* argmax, uint16_t* dx, const Pool2dShape& s) {
  launch_max_pool2d_backward(dy, argmax, dx, s);
}
void avg_pool2d_forward(const float* x, float* y, const Pool2dShape& s) { launch_avg_pool2d_forward(x, y, s); }
void avg_pool2d_forward(const uint16_t* x, uint16_t* y, const Pool2dShape& s) { launch_avg_pool2d_forward(x, y, s); }
void avg_pool2d_backward(const float* dy, float* dx, const Pool2dShape& s) { launch_avg_pool2d_backward(dy, dx, s); }
void avg_pool2d_backward(const uint16_t* dy, uint16_t* dx, const Pool2dShape& s) {
  launch_avg_pool2d_backward(dy, dx, s);
}
void global_avg_pool_forward(const float* x, float* y, int64_t N, int64_t HW, int64_t C) {
  launch_global_avg_pool_forward(x, y, N, HW, C);
}
void global_avg_pool_forward(const uint16_t* x, uint16_t* y, int64_t N, int64_t HW, int64_t C) {
  launch_global_avg_pool_forward(x, y, N, HW, C);
}
void global_avg_pool_backward(const float* dy, float* dx, int64_t N, int64_t HW, int64_t C) {
  launch_global_avg_pool_backward(dy, dx, N, HW, C);
}
void global_avg_pool_backward(const uint16_t* dy, uint16_t* dx, int64_t N, int64_t HW, int64_t C) {
  launch_global_avg_pool_backward(dy, dx, N, HW, C);
}

}  // namespace vgg::VGG_GPU_NS
