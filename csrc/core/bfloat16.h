// bfloat16: the top 16 bits of an IEEE float32 (1 sign, 8 exponent, 7 mantissa bits), stored as uint16_t.
//
// float32 -> bfloat16 rounds to nearest, ties to even, on the bit pattern: adding 0x7fff plus the lowest kept bit
// carries into the kept half exactly when the dropped half is above one half ulp, or exactly one half with an odd
// kept half. That is also right for subnormals (the spacing is uniform there) and rounds values past the largest
// bfloat16 to infinity. NaN is handled first (the add could carry a NaN payload into infinity) and stays a quiet
// NaN with its sign. bfloat16 -> float32 is exact: a shift.
//
// One header for every build: host C++ (cpu conversions), nvcc (host and device) and the SIMT emulator.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define VGG_BF16_FN __host__ __device__ __forceinline__
#else
#define VGG_BF16_FN inline
#endif

namespace vgg {

VGG_BF16_FN uint32_t float_to_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

VGG_BF16_FN float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

VGG_BF16_FN uint16_t float_to_bf16(float value) {
  const uint32_t bits = float_to_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // NaN -> quiet NaN
  const uint32_t rounded = bits + 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

VGG_BF16_FN float bf16_to_float(uint16_t bits) { return bits_to_float(static_cast<uint32_t>(bits) << 16); }

}  // namespace vgg
