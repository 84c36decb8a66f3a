// Element storage of the GPU kernels: float32 (float) or bfloat16 (uint16_t bits, core/bfloat16.h).
//
// Kernels that are not matrix products are templated on the storage type T and compute in float32 whatever T is:
//   float v = load_element(x, i);  ...;  store_element(y, i, v);   // bfloat16: widen exactly, round to nearest even
//   float4 q = load4(x, g);  store4(y, g, q);                      // elements 4g .. 4g+3
// The 4-wide forms need the address of element 4g aligned to 4 * sizeof(T) bytes (16 for float, 8 for bfloat16);
// the callers check 16-byte alignment of the tensor starts, which covers both.
#pragma once

#include <cstdint>

#include "../core/bfloat16.h"
#include "common.cuh"

namespace vgg::VGG_GPU_NS {

__device__ __forceinline__ float load_element(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_element(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
__device__ __forceinline__ void store_element(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_element(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

__device__ __forceinline__ float4 load4(const float* p, int64_t group) {
  check_vector_aligned(p + 4 * group, 16);
  return reinterpret_cast<const float4*>(p)[group];
}
__device__ __forceinline__ float4 load4(const uint16_t* p, int64_t group) {
  // Four bfloat16 in one 8-byte load: element 4g in the low half of .x (little endian), 4g+3 in the high half of .y.
  check_vector_aligned(p + 4 * group, 8);
  const uint2 v = reinterpret_cast<const uint2*>(p)[group];
  return make_float4(bits_to_float(v.x << 16), bits_to_float(v.x & 0xffff0000u), bits_to_float(v.y << 16),
                     bits_to_float(v.y & 0xffff0000u));
}
__device__ __forceinline__ void store4(float* p, int64_t group, float4 v) {
  check_vector_aligned(p + 4 * group, 16);
  reinterpret_cast<float4*>(p)[group] = v;
}
__device__ __forceinline__ void store4(uint16_t* p, int64_t group, float4 v) {
  const uint32_t lo = static_cast<uint32_t>(float_to_bf16(v.x)) | (static_cast<uint32_t>(float_to_bf16(v.y)) << 16);
  const uint32_t hi = static_cast<uint32_t>(float_to_bf16(v.z)) | (static_cast<uint32_t>(float_to_bf16(v.w)) << 16);
  check_vector_aligned(p + 4 * group, 8);
  reinterpret_cast<uint2*>(p)[group] = make_uint2(lo, hi);
}

}  // namespace vgg::VGG_GPU_NS
