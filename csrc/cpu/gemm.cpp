// Micro-kernels and run-time ISA selection for the blocked GEMM in gemm.h.
//
// The library is compiled for baseline x86-64; the AVX-512 and AVX2 kernels are separate functions carrying
// __attribute__((target(...))), called only after __builtin_cpu_supports says the CPU has the instructions.
// Other architectures get the portable kernel (which the compiler vectorises for whatever the target has).
#include "gemm.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VGG_X86 1
#endif

namespace vgg::cpu {

// ---- workspaces -----------------------------------------------------------------------------------------
namespace {
struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  ~Buffer() { ::operator delete(p, std::align_val_t(64)); }
};
thread_local Buffer workspace_buffers[int(Slot::count)];
}  // namespace

template <typename T> T* thread_workspace(Slot slot, size_t n) {
  Buffer& b = workspace_buffers[int(slot)];
  const size_t bytes = std::max<size_t>(n, 1) * sizeof(T);
  if (bytes > b.bytes) {
    ::operator delete(b.p, std::align_val_t(64));
    b.p = nullptr;
    b.bytes = 0;
    // grow by half again so a sequence of slightly larger layers does not reallocate each time
    const size_t want = bytes + bytes / 2;
    b.p = ::operator new(want, std::align_val_t(64));
    b.bytes = want;
  }
  return static_cast<T*>(b.p);
}

// ---- portable kernel ------------------------------------------------------------------------------------
// c (MR, NR) = [c +] a (kc x MR packed) * b (kc x NR packed). Plain loops over a local accumulator array that
// the compiler keeps in vector registers for the baseline ISA.
template <typename T, int MR, int NR>
void micro_kernel_scalar(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, bool accumulate) {
  T acc[MR][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += NR;
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

// d (len x mr) = transpose of the mr rows src[i][0..len), a null row reads as zeros.
template <typename T> void pack_rows_scalar(T* d, int mr, const T* const* src, int64_t len) {
  for (int i = 0; i < mr; ++i) {
    const T* s = src[i];
    if (s)
      for (int64_t q = 0; q < len; ++q) d[q * mr + i] = s[q];
    else
      for (int64_t q = 0; q < len; ++q) d[q * mr + i] = T(0);
  }
}

#ifdef VGG_X86
// GCC 12's intrinsic headers build masked/zeroing ops on a self-initialised "undefined" vector, which
// -Wmaybe-uninitialized misreports once inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The same for float rows on AVX-512, mr <= 16: load 16 values of every row (masked at the end), transpose
// the 16 x 16 block in registers (unpack ps, unpack pd, two rounds of 128-bit lane shuffles), store 16
// rows of mr values. About 4x fewer instructions per element than the scalar scatter.
__attribute__((target("avx512f"))) void pack_rows_avx512_f32(float* d, int mr, const float* const* src, int64_t len) {
  if (mr > 16) return pack_rows_scalar(d, mr, src, len);
  const __mmask16 row_mask = __mmask16((1u << mr) - 1);
  for (int64_t q0 = 0; q0 < len; q0 += 16) {
    const int64_t cnt = std::min<int64_t>(16, len - q0);
    const __mmask16 load_mask = __mmask16((1u << cnt) - 1);
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i)
      r[i] = (i < mr && src[i]) ? _mm512_maskz_loadu_ps(load_mask, src[i] + q0) : _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int h = 0; h < 16; h += 8)
      for (int i = 0; i < 4; ++i) {
        t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
        t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
      }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int q = 0; q < cnt; ++q) _mm512_mask_storeu_ps(d + (q0 + q) * mr, row_mask, r[q]);
  }
}
#pragma GCC diagnostic pop

// ---- AVX-512: MR rows x NV vectors; 14 x 2 uses 28 accumulators + 2 B vectors + 1 broadcast of 32 zmm ----
// Per k: NV aligned loads of B, MR broadcasts of A (folded into the FMA as {1toN} memory operands), MR * NV FMAs.
// Two FMA ports and two-three load ports: 28 FMAs against 16 loads keeps the FMA units the bottleneck.
template <int MR, int NV>
__attribute__((target("avx512f"))) void micro_kernel_avx512_f32(int64_t kc, const float* a, const float* b, float* c,
                                                                  int64_t ldc, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_ps(b + 16 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += 16 * NV;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* cp = c + i * ldc + 16 * j;
      __m512 v = acc[i][j];
      if (accumulate) v = _mm512_add_ps(v, _mm512_loadu_ps(cp));
      _mm512_storeu_ps(cp, v);
    }
}

template <int MR, int NV>
__attribute__((target("avx512f"))) void micro_kernel_avx512_f64(int64_t kc, const double* a, const double* b,
                                                                  double* c, int64_t ldc, bool accumulate) {
  __m512d acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_pd();
  for (int64_t p = 0; p < kc; ++p) {
    __m512d bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_load_pd(b + 8 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512d ai = _mm512_set1_pd(a[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_pd(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += 8 * NV;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      double* cp = c + i * ldc + 8 * j;
      __m512d v = acc[i][j];
      if (accumulate) v = _mm512_add_pd(v, _mm512_loadu_pd(cp));
      _mm512_storeu_pd(cp, v);
    }
}

// ---- AVX2 + FMA: 6 rows x 2 vectors = 12 accumulators of 16 ymm (the classic Haswell shape) ----------------
template <int MR, int NV>
__attribute__((target("avx2,fma"))) void micro_kernel_avx2_f32(int64_t kc, const float* a, const float* b, float* c,
                                                                 int64_t ldc, bool accumulate) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_ps(b + 8 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += 8 * NV;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* cp = c + i * ldc + 8 * j;
      __m256 v = acc[i][j];
      if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(cp));
      _mm256_storeu_ps(cp, v);
    }
}

template <int MR, int NV>
__attribute__((target("avx2,fma"))) void micro_kernel_avx2_f64(int64_t kc, const double* a, const double* b,
                                                                 double* c, int64_t ldc, bool accumulate) {
  __m256d acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_setzero_pd();
  for (int64_t p = 0; p < kc; ++p) {
    __m256d bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_load_pd(b + 4 * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256d ai = _mm256_broadcast_sd(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_pd(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += 4 * NV;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      double* cp = c + i * ldc + 4 * j;
      __m256d v = acc[i][j];
      if (accumulate) v = _mm256_add_pd(v, _mm256_loadu_pd(cp));
      _mm256_storeu_pd(cp, v);
    }
}
#endif  // VGG_X86

namespace {

// "avx512" > "avx2" > "scalar"; VGG_CPU_ISA lowers the choice (tests run the fallbacks on an AVX-512 machine).
int isa_level() {
  int level = 0;
#ifdef VGG_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f")) level = 2;
#endif
  if (const char* cap = std::getenv("VGG_CPU_ISA")) {
    const std::string s(cap);
    if (s == "scalar") level = 0;
    else if (s == "avx2") level = std::min(level, 1);
  }
  return level;
}

// Blocking: KC x NR of B is 256 x 32 floats = 32 KiB (L1 is 48 KiB on recent cores), MC x KC of A is
// 336 x 256 floats = 336 KiB (well inside a 1-2 MiB L2), NC x KC per-task B block 512 x 256 floats = 512 KiB.
// Doubles halve KC so the byte sizes stay the same.
template <typename T> MicroKernel<T> select_kernel();

template <> MicroKernel<float> select_kernel<float>() {
  switch (isa_level()) {
#ifdef VGG_X86
    case 2: return {14, 32, 256, 14 * 24, 512, micro_kernel_avx512_f32<14, 2>, pack_rows_avx512_f32, "avx512"};
    case 1: return {6, 16, 256, 6 * 48, 512, micro_kernel_avx2_f32<6, 2>, pack_rows_scalar<float>, "avx2"};
#endif
    default: return {4, 16, 256, 4 * 64, 512, micro_kernel_scalar<float, 4, 16>, pack_rows_scalar<float>, "scalar"};
  }
}

template <> MicroKernel<double> select_kernel<double>() {
  switch (isa_level()) {
#ifdef VGG_X86
    case 2: return {14, 16, 128, 14 * 24, 512, micro_kernel_avx512_f64<14, 2>, pack_rows_scalar<double>, "avx512"};
    case 1: return {6, 8, 128, 6 * 48, 512, micro_kernel_avx2_f64<6, 2>, pack_rows_scalar<double>, "avx2"};
#endif
    default: return {4, 8, 128, 4 * 64, 512, micro_kernel_scalar<double, 4, 8>, pack_rows_scalar<double>, "scalar"};
  }
}

}  // namespace

template <typename T> const MicroKernel<T>& micro_kernel() {
  static const MicroKernel<T> kernel = select_kernel<T>();  // thread-safe one-time initialisation
  return kernel;
}

// C (M, N) (ldc) = [C +] [bias +] A (M, Kd) * B (Kd, N) with element strides as declared in gemm.h.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t Kd, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t b_rs,
          int64_t b_cs, T* c, int64_t ldc, bool accumulate, const T* bias, bool parallel) {
  gemm_packed(M, N, Kd, StridedA<T>{a, a_rs, a_cs}, StridedB<T>{b, b_rs, b_cs}, c, ldc, accumulate, bias, parallel);
}

template const MicroKernel<float>& micro_kernel<float>();
template const MicroKernel<double>& micro_kernel<double>();
template float* thread_workspace<float>(Slot, size_t);
template double* thread_workspace<double>(Slot, size_t);
template int32_t* thread_workspace<int32_t>(Slot, size_t);
template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                          float*, int64_t, bool, const float*, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                           int64_t, double*, int64_t, bool, const double*, bool);

}  // namespace vgg::cpu
