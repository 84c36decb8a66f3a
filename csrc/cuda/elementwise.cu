// Elementwise ops of the GPU backend: relu (forward, backward), inverted dropout, add, scale, fill, and the
// float32 <-> bfloat16 casts. Semantics are those of csrc/cpu/cpu_kernels.h; every output is overwritten.
// Each kernel is templated on the element storage (float, or uint16_t bfloat16 bits) and computes in float32:
// bfloat16 loads widen exactly and stores round to nearest even (element_types.cuh).
//
// All kernels are memory bound: a grid-stride loop over the elements, with a 4-wide body when every pointer is
// 16-byte aligned (tensors start 64-byte aligned; views may not) and a scalar loop for the last n % 4 elements.
// The grid is capped so it stays within CUDA's limits for any n; each thread then walks several elements.
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"
#include "../rng.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kElementwiseThreads = 256;
// 4096 blocks of 256 threads keep every SM of an H100 (132 SMs x 2048 threads) busy several times over.
constexpr int64_t kElementwiseMaxBlocks = 4096;

// Blocks for `work` independent items, one per thread, capped (the kernels are grid-stride loops).
dim3 elementwise_blocks(int64_t work) { return grid_stride_blocks(work, kElementwiseThreads, kElementwiseMaxBlocks); }

// Number of 4-element groups the vector body handles: all of n / 4 when the pointers allow it, else none.
int64_t elementwise_vector_groups(int64_t n, bool aligned) { return aligned ? n / 4 : 0; }

__device__ __forceinline__ int64_t elementwise_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t elementwise_grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// ---- y = op(x) ----------------------------------------------------------------------------------------------

struct ReluForwardOp {
  // NaN propagates (x < 0 is false for NaN), as in PyTorch.
  __device__ float operator()(float x) const { return x < 0.0f ? 0.0f : x; }
};

struct ScaleOp {
  float alpha;
  __device__ float operator()(float x) const { return alpha * x; }
};

struct IdentityOp {  // the casts: only the storage changes
  __device__ float operator()(float x) const { return x; }
};

// x (n) -> y (n) = op(x). 4-element groups [0, n4), then scalars [4*n4, n).
template <typename In, typename Out, typename Op>
__global__ void map_unary_kernel(const In* x, Out* y, int64_t n4, int64_t n, Op op) {
  const int64_t stride = elementwise_grid_threads();
  for (int64_t i = elementwise_thread_index(); i < n4; i += stride) {
    const float4 v = load4(x, i);
    store4(y, i, make_float4(op(v.x), op(v.y), op(v.z), op(v.w)));
  }
  for (int64_t i = 4 * n4 + elementwise_thread_index(); i < n; i += stride)
    store_element(y, i, op(load_element(x, i)));
}

// ---- y = op(a, b) -------------------------------------------------------------------------------------------

struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

struct ReluBackwardOp {
  // a = forward input x, b = dy: the gradient passes where x > 0 (0 at the kink, as in PyTorch).
  __device__ float operator()(float x, float dy) const { return x > 0.0f ? dy : 0.0f; }
};

// a (n), b (n) -> y (n) = op(a, b); y may alias a or b (each element is read before it is written).
template <typename T, typename Op>
__global__ void map_binary_kernel(const T* a, const T* b, T* y, int64_t n4, int64_t n, Op op) {
  const int64_t stride = elementwise_grid_threads();
  for (int64_t i = elementwise_thread_index(); i < n4; i += stride) {
    const float4 u = load4(a, i);
    const float4 v = load4(b, i);
    store4(y, i, make_float4(op(u.x, v.x), op(u.y, v.y), op(u.z, v.z), op(u.w, v.w)));
  }
  for (int64_t i = 4 * n4 + elementwise_thread_index(); i < n; i += stride)
    store_element(y, i, op(load_element(a, i), load_element(b, i)));
}

template <typename In, typename Out, typename Op>
void launch_unary(const char* name, const In* x, Out* y, int64_t n, Op op) {
  if (n <= 0) return;
  const int64_t n4 = elementwise_vector_groups(n, aligned16(x) && aligned16(y));
  const int64_t work = n4 + (n - 4 * n4);
  VGG_LAUNCH(elementwise_blocks(work), dim3(kElementwiseThreads), 0,
             map_unary_kernel<In, Out, Op>)(x, y, n4, n, op);
  VGG_CHECK_LAUNCH(name);
}

template <typename T, typename Op>
void launch_binary(const char* name, const T* a, const T* b, T* y, int64_t n, Op op) {
  if (n <= 0) return;
  const int64_t n4 = elementwise_vector_groups(n, aligned16(a) && aligned16(b) && aligned16(y));
  const int64_t work = n4 + (n - 4 * n4);
  VGG_LAUNCH(elementwise_blocks(work), dim3(kElementwiseThreads), 0,
             map_binary_kernel<T, Op>)(a, b, y, n4, n, op);
  VGG_CHECK_LAUNCH(name);
}

// ---- dropout ------------------------------------------------------------------------------------------------

// x (n) -> y (n) = keep(seed, offset + i) ? x * keep_scale : 0, keep as rng.h's dropout_keep. A dropped element
// is an exact 0 even when x is inf or NaN (a select, not a multiply by a 0/1 mask).
// Philox yields four words per counter, and rng.h assigns counter i / 4 to elements 4*(i/4) .. 4*(i/4)+3, so the
// 4-wide body draws one Philox block per group instead of four (Philox-10 is ~100 integer ops, which would
// otherwise make dropout compute bound); that needs offset % 4 == 0 (the launcher uses the scalar loop
// otherwise), so that group i is Philox block offset / 4 + i. The bits-to-uniform step below must stay identical to
// dropout_uniform in rng.h; the emulator test compares every element's mask with dropout_keep on the host.
template <typename T>
__global__ void dropout_kernel(const T* x, T* y, int64_t n4, int64_t n, double p, float keep_scale, uint64_t seed,
                               uint64_t offset, const uint64_t* device_seed) {
  if (device_seed != nullptr) seed = *device_seed;  // a graph's replay: the seed the host wrote before it
  const int64_t stride = elementwise_grid_threads();
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t i = elementwise_thread_index(); i < n4; i += stride) {
    const uint64_t group = offset / 4 + static_cast<uint64_t>(i);
    const Philox4 counter{{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), 0u, 0u}};
    const Philox4 bits = philox4x32_10(counter, key0, key1);
    bool keep[4];
    for (int j = 0; j < 4; ++j) {
      const float u = static_cast<float>(bits.v[j] >> 8) * (1.0f / 16777216.0f);
      keep[j] = static_cast<double>(u) >= p;
    }
    const float4 v = load4(x, i);
    store4(y, i, make_float4(keep[0] ? v.x * keep_scale : 0.0f, keep[1] ? v.y * keep_scale : 0.0f,
                             keep[2] ? v.z * keep_scale : 0.0f, keep[3] ? v.w * keep_scale : 0.0f));
  }
  for (int64_t i = 4 * n4 + elementwise_thread_index(); i < n; i += stride)
    store_element(y, i,
                  dropout_keep(seed, offset + static_cast<uint64_t>(i), p) ? load_element(x, i) * keep_scale : 0.0f);
}

// ---- fill ---------------------------------------------------------------------------------------------------

// y (n) = value (rounded once to T)
template <typename T>
__global__ void fill_kernel(T* y, int64_t n4, int64_t n, float value) {
  const int64_t stride = elementwise_grid_threads();
  const float4 v = make_float4(value, value, value, value);
  for (int64_t i = elementwise_thread_index(); i < n4; i += stride) store4(y, i, v);
  for (int64_t i = 4 * n4 + elementwise_thread_index(); i < n; i += stride) store_element(y, i, value);
}

template <typename T>
void launch_dropout(const T* x, T* y, int64_t n, double p, uint64_t seed, uint64_t offset, const uint64_t* device_seed) {
  if (n <= 0) return;
  const float keep_scale = static_cast<float>(1.0 / (1.0 - p));
  const int64_t n4 = elementwise_vector_groups(n, aligned16(x) && aligned16(y) && offset % 4 == 0);
  const int64_t work = n4 + (n - 4 * n4);
  VGG_LAUNCH(elementwise_blocks(work), dim3(kElementwiseThreads), 0,
             dropout_kernel<T>)(x, y, n4, n, p, keep_scale, seed, offset, device_seed);
  VGG_CHECK_LAUNCH("dropout");
}

template <typename T>
void launch_fill(T* y, double value, int64_t n) {
  if (n <= 0) return;
  const int64_t n4 = elementwise_vector_groups(n, aligned16(y));
  const int64_t work = n4 + (n - 4 * n4);
  VGG_LAUNCH(elementwise_blocks(work), dim3(kElementwiseThreads), 0,
             fill_kernel<T>)(y, n4, n, static_cast<float>(value));
  VGG_CHECK_LAUNCH("fill");
}

}  // namespace

void relu_forward(const float* x, float* y, int64_t n) { launch_unary("relu_forward", x, y, n, ReluForwardOp{}); }
void relu_forward(const uint16_t* x, uint16_t* y, int64_t n) {
  launch_unary("relu_forward", x, y, n, ReluForwardOp{});
}

void relu_backward(const float* x, const float* dy, float* dx, int64_t n) {
  launch_binary("relu_backward", x, dy, dx, n, ReluBackwardOp{});
}
void relu_backward(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int64_t n) {
  launch_binary("relu_backward", x, dy, dx, n, ReluBackwardOp{});
}

void dropout(const float* x, float* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  launch_dropout(x, y, n, p, seed, offset, nullptr);
}
void dropout(const uint16_t* x, uint16_t* y, int64_t n, double p, uint64_t seed, uint64_t offset) {
  launch_dropout(x, y, n, p, seed, offset, nullptr);
}
void dropout(const float* x, float* y, int64_t n, double p, uint64_t seed, uint64_t offset, const uint64_t* device_seed) {
  launch_dropout(x, y, n, p, seed, offset, device_seed);
}
void dropout(const uint16_t* x, uint16_t* y, int64_t n, double p, uint64_t seed, uint64_t offset,
             const uint64_t* device_seed) {
  launch_dropout(x, y, n, p, seed, offset, device_seed);
}

void add(const float* a, const float* b, float* y, int64_t n) { launch_binary("add", a, b, y, n, AddOp{}); }
void add(const uint16_t* a, const uint16_t* b, uint16_t* y, int64_t n) { launch_binary("add", a, b, y, n, AddOp{}); }

void scale(const float* x, float* y, double alpha, int64_t n) {
  launch_unary("scale", x, y, n, ScaleOp{static_cast<float>(alpha)});
}
void scale(const uint16_t* x, uint16_t* y, double alpha, int64_t n) {
  launch_unary("scale", x, y, n, ScaleOp{static_cast<float>(alpha)});
}

void fill(float* y, double value, int64_t n) { launch_fill(y, value, n); }
void fill(uint16_t* y, double value, int64_t n) { launch_fill(y, value, n); }

void cast(const float* x, uint16_t* y, int64_t n) { launch_unary("cast to bfloat16", x, y, n, IdentityOp{}); }
void cast(const uint16_t* x, float* y, int64_t n) { launch_unary("cast to float32", x, y, n, IdentityOp{}); }

}  // namespace vgg::VGG_GPU_NS
