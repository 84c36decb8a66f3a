// Tensor-core and asynchronous-copy instructions behind small wrappers, for the kernels of tc_gemm.cuh.
//
// nvcc for sm_80 and later gets inline PTX; the emulator build (device "sim") gets the exact models of
// ../simt/tensor_core.h: mma and ldmatrix as warp collectives over the PTX ISA's per-lane fragment layouts,
// cp.async as a deferred copy whose destination holds poison until the matching wait. The conversions are
// plain bit arithmetic in the emulator and identical in result to the PTX instructions.
//
// Fragment layouts (PTX ISA 8.x, 9.7.14.5.7 "Matrix Fragments for mma.m16n8k8" and 9.7.14.5.8 "Matrix
// Fragments for mma.m16n8k16 with floating point type"), g = lane >> 2, t = lane & 3:
//   tf32 A (16x8):  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4);  B (8x8): b0 (t, g)  b1 (t+4, g)
//   bf16 A (16x16): a0 (g, 2t..+1)  a1 (g+8, 2t..+1)  a2 (g, 2t+8..+9)  a3 (g+8, 2t+8..+9)
//   bf16 B (16x8):  b0 (k = 2t..+1, n = g)  b1 (k = 2t+8..+9, n = g)
//   C/D (16x8 float): c0, c1 (g, 2t..2t+1)  c2, c3 (g+8, 2t..2t+1)
// ldmatrix (9.7.14.5.15): lanes 8i..8i+7 address the 8 rows (16 bytes each) of matrix i; lane L receives row
// L/4, 16-bit columns 2(L%4) and 2(L%4)+1 of each matrix (.trans: rows 2(L%4), 2(L%4)+1 of column L/4).
#pragma once

#include <cstdint>

#include "common.cuh"

#include <cstring>

#if !defined(__CUDACC__)
#include "../simt/tensor_core.h"
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define VGG_MMA_PTX 1
#else
#define VGG_MMA_PTX 0
#endif
// nvcc's host pass and GPUs older than sm_80 (which the planner never sends here) get a trap, not the emulator.
#if defined(__CUDACC__)
#define VGG_MMA_NO_PTX(emulated) __trap()
#else
#define VGG_MMA_NO_PTX(emulated) emulated
#endif

namespace vgg::VGG_GPU_NS::mma {

__host__ __device__ __forceinline__ uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

__host__ __device__ __forceinline__ float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---- conversions -------------------------------------------------------------------------------------------------

// cvt.rna.tf32.f32: round to the nearest tf32 (10 mantissa bits), ties away from zero; the low 13 bits become 0.
__host__ __device__ __forceinline__ uint32_t to_tf32(float x) {
#if VGG_MMA_PTX
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  const uint32_t u = float_bits(x);
  if ((u & 0x7F800000u) == 0x7F800000u) return (u & 0x007FFFFFu) ? (u | 0x00400000u) & 0xFFFFE000u : u;
  return (u + 0x1000u) & 0xFFFFE000u;  // adding half an ulp to the magnitude rounds ties away from zero
#endif
}

// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN).
__host__ __device__ __forceinline__ uint16_t to_bf16(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Two floats -> one register of two bf16 (lo in bits 0-15), round to nearest even: cvt.rn.bf16x2.f32.
__host__ __device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#if VGG_MMA_PTX
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return static_cast<uint32_t>(to_bf16(lo)) | (static_cast<uint32_t>(to_bf16(hi)) << 16);
#endif
}

__host__ __device__ __forceinline__ float bf16_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

// ---- mma.sync ----------------------------------------------------------------------------------------------------

// d = a (16x8 tf32) * b (8x8 tf32) + c, row.col, float32 accumulators. A register that did not go through
// to_tf32 is read as the hardware reads it: its low 13 mantissa bits ignored.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         const float (&c)[4]) {
#if VGG_MMA_PTX
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  VGG_MMA_NO_PTX(::simt::tc::mma_m16n8k8_tf32(d, a, b, c));
#endif
}

// d = a (16x16 bf16) * b (16x8 bf16) + c, row.col, float32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         const float (&c)[4]) {
#if VGG_MMA_PTX
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  VGG_MMA_NO_PTX(::simt::tc::mma_m16n8k16_bf16(d, a, b, c));
#endif
}

// ---- ldmatrix (shared memory, 16-bit elements, 16-byte aligned row addresses) -----------------------------------

#if VGG_MMA_PTX
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

template <int COUNT, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t (&out)[COUNT], const void* row) {
  static_assert(COUNT == 1 || COUNT == 2 || COUNT == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if VGG_MMA_PTX
  const uint32_t s = shared_address(row);
  if constexpr (COUNT == 1) {
    if constexpr (TRANS)
      asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(out[0]) : "r"(s));
    else asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(out[0]) : "r"(s));
  } else if constexpr (COUNT == 2) {
    if constexpr (TRANS)
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];"
                   : "=r"(out[0]), "=r"(out[1])
                   : "r"(s));
    else asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(out[0]), "=r"(out[1]) : "r"(s));
  } else {
    if constexpr (TRANS)
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                   : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3]) : "r"(s));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                   : "=r"(out[0]), "=r"(out[1]), "=r"(out[2]), "=r"(out[3]) : "r"(s));
  }
#else
  VGG_MMA_NO_PTX(::simt::tc::ldmatrix(out, COUNT, TRANS, row));
#endif
}

// ---- cp.async (global -> shared, .ca: cached in L1; BYTES 4, 8 or 16) -------------------------------------------

// Copies src_bytes of BYTES from src and zero-fills the rest (src_bytes = 0: nothing is read, src may be any
// valid address: the zero-fill form serves conv padding and tile tails).
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int src_bytes) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if VGG_MMA_PTX
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(shared_address(dst)), "l"(src), "n"(BYTES),
               "r"(src_bytes)
               : "memory");
#else
  VGG_MMA_NO_PTX(::simt::tc::cp_async(dst, src, BYTES, src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if VGG_MMA_PTX
  asm volatile("cp.async.commit_group;" ::: "memory");
#else
  VGG_MMA_NO_PTX(::simt::tc::cp_async_commit());
#endif
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#if VGG_MMA_PTX
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#else
  VGG_MMA_NO_PTX(::simt::tc::cp_async_wait(PENDING));
#endif
}

}  // namespace vgg::VGG_GPU_NS::mma
