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

// ---- SIMD micro-kernels: MR rows x NV vectors of C held in registers ---------------------------------------
// One struct per ISA and element type names the vector register and the handful of operations the kernel uses;
// its members carry the ISA as a target attribute. micro_kernel_simd is written once over such a struct and has
// no target of its own: the entry points micro_kernel_avx512 / micro_kernel_avx2 carry the target and `flatten`,
// which inlines the kernel and every vector operation into them, so the intrinsics are compiled for that ISA and
// no vector value crosses a call. (A target-less always_inline wrapper around the intrinsics would not do: GCC
// checks the ISA against the function an intrinsic is inlined into first, not where it finally lands.)
#define VGG_AVX512_INLINE __attribute__((target("avx512f"))) inline
#define VGG_AVX2_INLINE __attribute__((target("avx2,fma"))) inline
struct Avx512F32 {
  using T = float;
  using V = __m512;
  static constexpr int lanes = 16;
  static VGG_AVX512_INLINE V zero() { return _mm512_setzero_ps(); }
  static VGG_AVX512_INLINE V load(const T* p) { return _mm512_load_ps(p); }  // packed B: 64-byte aligned
  static VGG_AVX512_INLINE V loadu(const T* p) { return _mm512_loadu_ps(p); }
  static VGG_AVX512_INLINE V broadcast(const T* p) { return _mm512_set1_ps(*p); }
  static VGG_AVX512_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static VGG_AVX512_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static VGG_AVX512_INLINE void storeu(T* p, V v) { _mm512_storeu_ps(p, v); }
};
struct Avx512F64 {
  using T = double;
  using V = __m512d;
  static constexpr int lanes = 8;
  static VGG_AVX512_INLINE V zero() { return _mm512_setzero_pd(); }
  static VGG_AVX512_INLINE V load(const T* p) { return _mm512_load_pd(p); }
  static VGG_AVX512_INLINE V loadu(const T* p) { return _mm512_loadu_pd(p); }
  static VGG_AVX512_INLINE V broadcast(const T* p) { return _mm512_set1_pd(*p); }
  static VGG_AVX512_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static VGG_AVX512_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static VGG_AVX512_INLINE void storeu(T* p, V v) { _mm512_storeu_pd(p, v); }
};
struct Avx2F32 {
  using T = float;
  using V = __m256;
  static constexpr int lanes = 8;
  static VGG_AVX2_INLINE V zero() { return _mm256_setzero_ps(); }
  static VGG_AVX2_INLINE V load(const T* p) { return _mm256_load_ps(p); }
  static VGG_AVX2_INLINE V loadu(const T* p) { return _mm256_loadu_ps(p); }
  static VGG_AVX2_INLINE V broadcast(const T* p) { return _mm256_broadcast_ss(p); }
  static VGG_AVX2_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static VGG_AVX2_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static VGG_AVX2_INLINE void storeu(T* p, V v) { _mm256_storeu_ps(p, v); }
};
struct Avx2F64 {
  using T = double;
  using V = __m256d;
  static constexpr int lanes = 4;
  static VGG_AVX2_INLINE V zero() { return _mm256_setzero_pd(); }
  static VGG_AVX2_INLINE V load(const T* p) { return _mm256_load_pd(p); }
  static VGG_AVX2_INLINE V loadu(const T* p) { return _mm256_loadu_pd(p); }
  static VGG_AVX2_INLINE V broadcast(const T* p) { return _mm256_broadcast_sd(p); }
  static VGG_AVX2_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static VGG_AVX2_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static VGG_AVX2_INLINE void storeu(T* p, V v) { _mm256_storeu_pd(p, v); }
};

// AVX-512: 14 x 2 uses 28 accumulators + 2 B vectors + 1 broadcast of 32 zmm. AVX2: 6 x 2 uses 12 of 16 ymm
// (the classic Haswell shape). Per k: NV aligned loads of B, MR broadcasts of A (folded into the FMA as {1toN}
// memory operands on AVX-512), MR * NV FMAs. Two FMA ports and two-three load ports: 28 FMAs against 16 loads
// keeps the FMA units the bottleneck.
//
// The target-less kernel sees the members' vector returns, which -Wpsabi flags; flatten means no such call is
// ever emitted.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename Vec, int MR, int NV>
inline void micro_kernel_simd(int64_t kc, const typename Vec::T* a, const typename Vec::T* b, typename Vec::T* c,
                              int64_t ldc, bool accumulate) {
  constexpr int L = Vec::lanes;
  typename Vec::V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = Vec::zero();
  for (int64_t p = 0; p < kc; ++p) {
    typename Vec::V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = Vec::load(b + L * j);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename Vec::V ai = Vec::broadcast(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fmadd(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += L * NV;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      typename Vec::T* cp = c + i * ldc + L * j;
      typename Vec::V v = acc[i][j];
      if (accumulate) v = Vec::add(v, Vec::loadu(cp));
      Vec::storeu(cp, v);
    }
}
#pragma GCC diagnostic pop
#undef VGG_AVX512_INLINE
#undef VGG_AVX2_INLINE

template <typename Vec, int MR, int NV>
__attribute__((target("avx512f"), flatten)) void micro_kernel_avx512(int64_t kc, const typename Vec::T* a,
                                                                      const typename Vec::T* b, typename Vec::T* c,
                                                                      int64_t ldc, bool accumulate) {
  micro_kernel_simd<Vec, MR, NV>(kc, a, b, c, ldc, accumulate);
}

template <typename Vec, int MR, int NV>
__attribute__((target("avx2,fma"), flatten)) void micro_kernel_avx2(int64_t kc, const typename Vec::T* a,
                                                                     const typename Vec::T* b, typename Vec::T* c,
                                                                     int64_t ldc, bool accumulate) {
  micro_kernel_simd<Vec, MR, NV>(kc, a, b, c, ldc, accumulate);
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
    case 2: return {14, 32, 256, 14 * 24, 512, micro_kernel_avx512<Avx512F32, 14, 2>, pack_rows_avx512_f32, "avx512"};
    case 1: return {6, 16, 256, 6 * 48, 512, micro_kernel_avx2<Avx2F32, 6, 2>, pack_rows_scalar<float>, "avx2"};
#endif
    default: return {4, 16, 256, 4 * 64, 512, micro_kernel_scalar<float, 4, 16>, pack_rows_scalar<float>, "scalar"};
  }
}

template <> MicroKernel<double> select_kernel<double>() {
  switch (isa_level()) {
#ifdef VGG_X86
    case 2: return {14, 16, 128, 14 * 24, 512, micro_kernel_avx512<Avx512F64, 14, 2>, pack_rows_scalar<double>, "avx512"};
    case 1: return {6, 8, 128, 6 * 48, 512, micro_kernel_avx2<Avx2F64, 6, 2>, pack_rows_scalar<double>, "avx2"};
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
