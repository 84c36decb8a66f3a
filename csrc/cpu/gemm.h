// A BLIS-style cache-blocked GEMM for the CPU kernels (conv2d.cpp, linear.cpp), T = float or double.
//
//   C (M, N) = [C +] [bias +] A (M, Kd) * B (Kd, N),   C row-major with leading dimension ldc.
//
// How it is organised (Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", 2008):
//  - The caller describes A and B by *packers*, functors that copy a block of the operand into the layout the
//    micro-kernel streams. That lets conv2d feed an im2col view of an NHWC image straight into the packer
//    (implicit GEMM: the im2col matrix is never materialised) while linear passes plain strided matrices.
//  - Packed A: panels of MR rows, for each k the MR values of the panel (mr-interleaved, zero-padded rows).
//    Packed B: panels of NR columns, for each k the NR values of the panel (zero-padded columns).
//  - Blocking: KC along the reduction so one packed B micro-panel (KC x NR) stays in L1 while the micro-kernel
//    sweeps the MC x KC block of packed A held in L2. B is either packed once for the whole call and shared by
//    all threads (when it is small next to the work, e.g. conv weights), or packed per task in KC x NC blocks.
//  - The micro-kernel keeps an MR x NR tile of C in registers; NR spans whole vectors along N (for conv, N is
//    the output-channel axis, contiguous in NHWC), A values are broadcast. It is chosen once at run time:
//    AVX-512 (14 x 2 vectors), AVX2 (6 x 2 vectors) or portable scalar code, see gemm.cpp.
//  - Threads share C by tasks (row chunk x column chunk). Every element of C is computed by one task with the
//    same summation order whatever the thread count or timing, so results are deterministic.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/interrupt.h"

namespace vgg::cpu {

// ---- run-time selected micro-kernel -------------------------------------------------------------------
// c (mr, nr) (row stride ldc) = [c +] a_packed (kc x mr) * b_packed (kc x nr); every tile is full.
template <typename T> using MicroKernelFn = void (*)(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, bool accumulate);
// Packs mr source rows into one A panel: d[q * mr + i] = src[i] ? src[i][q] : 0 for q < len. The hot half of
// packing (im2col rows, x of linear); the AVX-512 float version transposes 16 x 16 blocks in registers.
template <typename T> using PackRowsFn = void (*)(T* d, int mr, const T* const* src, int64_t len);

template <typename T> struct MicroKernel {
  int mr, nr;          // register tile
  int64_t kc, mc, nc;  // cache blocking (elements): KC x NR panel of B in L1, MC x KC block of A in L2
  MicroKernelFn<T> run;
  PackRowsFn<T> pack_rows;
  const char* name;    // "avx512", "avx2" or "scalar": for benchmarks and tests
};

// The best kernel this CPU supports (checked once; VGG_CPU_ISA=avx2|scalar in the environment caps it).
template <typename T> const MicroKernel<T>& micro_kernel();

// ---- workspaces -----------------------------------------------------------------------------------------
// Per-thread buffers that grow and are reused, so hot paths do not allocate on every call. Each slot is an
// independent buffer; a function uses its own slot so nested users (conv backward -> gemm) never collide.
enum class Slot : int {
  pack_a, pack_b, shared_b, conv_col, partials,
  wino_filter, wino_scratch, wino_input, wino_output,  // winograd.cpp
  count
};
// 64-byte aligned buffer of at least n elements of T, owned by the calling thread, contents unspecified.
template <typename T> T* thread_workspace(Slot slot, size_t n);

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Threads a call may start: max_threads(), or 1 when it is already inside a parallel region.
inline int available_threads() {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
#endif
  return max_threads();
}

// ---- packers for plain strided matrices ------------------------------------------------------------------
// A (M, Kd): A(i, p) = a[i * rs + p * cs]. Writes ceil(mc / mr) panels of kc x mr starting at dst.
// GPU counterparts (csrc/cuda/gemm_loaders.cuh): cs == 1 is gemm::DenseAlongK, rs == 1 gemm::DenseAlongRows; the
// two layouts share one packer here because the CPU packs whole panels and the orientation only picks the loop.
template <typename T> struct StridedA {
  const T* a;
  int64_t rs, cs;
  void operator()(T* dst, int mr, int64_t i0, int64_t mc, int64_t p0, int64_t kc) const {
    for (int64_t ib = 0; ib < mc; ib += mr) {
      T* d = dst + (ib / mr) * kc * mr;
      const int64_t rows = std::min<int64_t>(mr, mc - ib);
      if (cs == 1) {
        // rows contiguous along k (x of linear, dy, 1x1 conv input): transpose mr rows into the panel
        const T* src[32];
        for (int ii = 0; ii < mr; ++ii) src[ii] = ii < rows ? a + (i0 + ib + ii) * rs + p0 : nullptr;
        micro_kernel<T>().pack_rows(d, mr, src, kc);
        continue;
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          const T* src = a + (i0 + ib) * rs + (p0 + p) * cs;
          for (int64_t ii = 0; ii < rows; ++ii) d[p * mr + ii] = src[ii * rs];
        }
      }
      for (int64_t ii = rows; ii < mr; ++ii)
        for (int64_t p = 0; p < kc; ++p) d[p * mr + ii] = T(0);
    }
  }
};

// B (Kd, N): B(p, j) = b[p * rs + j * cs]. Writes ceil(nc / nr) panels of kc x nr starting at dst.
// GPU counterparts: cs == 1 is gemm::DenseAlongRows, rs == 1 gemm::DenseAlongK (B's rows are the GEMM's N axis).
template <typename T> struct StridedB {
  const T* b;
  int64_t rs, cs;
  void operator()(T* dst, int nr, int64_t p0, int64_t kc, int64_t j0, int64_t nc) const {
    for (int64_t jb = 0; jb < nc; jb += nr) {
      T* d = dst + (jb / nr) * kc * nr;
      const int64_t cols = std::min<int64_t>(nr, nc - jb);
      if (cs == 1) {
        for (int64_t p = 0; p < kc; ++p) {
          const T* src = b + (p0 + p) * rs + j0 + jb;
          T* dp = d + p * nr;
          for (int64_t jj = 0; jj < cols; ++jj) dp[jj] = src[jj];
          for (int64_t jj = cols; jj < nr; ++jj) dp[jj] = T(0);
        }
      } else {
        // columns contiguous along k (weights (OUT, IN) read as B = w^T): walk each column once
        for (int64_t jj = 0; jj < cols; ++jj) {
          const T* src = b + p0 * rs + (j0 + jb + jj) * cs;
          for (int64_t p = 0; p < kc; ++p) d[p * nr + jj] = src[p * rs];
        }
        for (int64_t jj = cols; jj < nr; ++jj)
          for (int64_t p = 0; p < kc; ++p) d[p * nr + jj] = T(0);
      }
    }
  }
};

namespace detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// One task: rows [i0, i1) x columns [j0, j1) of C, the whole reduction. B comes from `shared_b` (all of B
// packed, panel (pc, jr) at pc * n_pad + jr * kc_eff * nr) or is packed here per KC block.
template <typename T, typename PackA, typename PackB>
void gemm_task(const MicroKernel<T>& uk, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t Kd,
               const PackA& pack_a, const PackB& pack_b, const T* shared_b, int64_t n_pad, T* c, int64_t ldc,
               bool accumulate, const T* bias) {
  const int mr = uk.mr, nr = uk.nr;
  const int64_t kc_max = uk.kc, mc_max = uk.mc;
  T* a_buf = thread_workspace<T>(Slot::pack_a, size_t(round_up(std::min(mc_max, i1 - i0), mr) * kc_max));
  T* b_buf = shared_b ? nullptr : thread_workspace<T>(Slot::pack_b, size_t(round_up(j1 - j0, nr) * kc_max));
  alignas(64) T tile[16 * 64];  // edge tiles: mr * nr <= 14 * 32 (float) / 14 * 16 (double)

  for (int64_t pc = 0; pc < Kd; pc += kc_max) {
    const int64_t kc = std::min(kc_max, Kd - pc);
    const bool first = pc == 0;
    const bool acc = accumulate || !first || bias != nullptr;
    const T* b_blk;
    if (shared_b) {
      b_blk = shared_b + pc * n_pad + (j0 / nr) * kc * nr;  // j0 is a multiple of nr
    } else {
      pack_b(b_buf, nr, pc, kc, j0, j1 - j0);
      b_blk = b_buf;
    }
    for (int64_t ic = i0; ic < i1; ic += mc_max) {
      const int64_t mc = std::min(mc_max, i1 - ic);
      pack_a(a_buf, mr, ic, mc, pc, kc);
      for (int64_t jr = j0; jr < j1; jr += nr) {
        const int64_t nn = std::min<int64_t>(nr, j1 - jr);
        const T* bp = b_blk + ((jr - j0) / nr) * kc * nr;
        for (int64_t ir = ic; ir < ic + mc; ir += mr) {
          const int64_t mm = std::min<int64_t>(mr, ic + mc - ir);
          const T* ap = a_buf + ((ir - ic) / mr) * kc * mr;
          T* cp = c + ir * ldc + jr;
          if (mm == mr && nn == nr) {
            // the bias goes into the C tile right before its first product, while the tile is in cache
            if (first && bias && !accumulate)
              for (int ii = 0; ii < mr; ++ii) std::memcpy(cp + ii * ldc, bias + jr, sizeof(T) * size_t(nr));
            uk.run(kc, ap, bp, cp, ldc, acc);
          } else {
            uk.run(kc, ap, bp, tile, nr, false);
            for (int64_t ii = 0; ii < mm; ++ii)
              for (int64_t jj = 0; jj < nn; ++jj) {
                T v = tile[ii * nr + jj];
                if (first && bias && !accumulate) v += bias[jr + jj];
                T& dst = cp[ii * ldc + jj];
                dst = (accumulate || !first) ? dst + v : v;
              }
          }
        }
      }
    }
  }
}

}  // namespace detail

// C (M, N) = [C +] [bias (N) +] A (M, Kd) * B (Kd, N) with packers as above; bias may be nullptr.
// Uses omp_get_max_threads() threads unless called from inside a parallel region (then runs serially).
// Pass parallel = false to run on the calling thread only (callers that parallelise over their own tasks).
template <typename T, typename PackA, typename PackB>
void gemm_packed(int64_t M, int64_t N, int64_t Kd, const PackA& pack_a, const PackB& pack_b, T* c, int64_t ldc,
                 bool accumulate, const T* bias = nullptr, bool parallel = true) {
  if (M <= 0 || N <= 0) return;
  if (Kd <= 0) {  // empty reduction: C = [C +] bias
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = (accumulate ? c[i * ldc + j] : T(0)) + (bias ? bias[j] : T(0));
    return;
  }
  using namespace detail;
  const MicroKernel<T>& uk = micro_kernel<T>();
  const int mr = uk.mr, nr = uk.nr;
  const int threads = parallel ? available_threads() : 1;
  const int64_t n_pad = round_up(N, nr);

  // Tasks: about 4 per thread for balance. Row chunks are whole multiples of mr, column chunks of nr.
  // With several row chunks, B would be packed once per chunk: share one packed copy instead when it fits
  // (conv weights, up to 64 MiB of floats). Otherwise each task packs KC x NC blocks of B itself, and row
  // chunks are made long to amortise that.
  const int64_t want = threads > 1 ? 4 * int64_t(threads) : 1;
  auto row_chunk = [&](int64_t cap) { return std::max<int64_t>(mr, std::min(cap, round_up(ceil_div(M, want), mr))); };
  int64_t mchunk = row_chunk(uk.mc);
  const bool share_b = threads > 1 && ceil_div(M, mchunk) > 1 && Kd * n_pad <= (int64_t(1) << 24);
  if (!share_b) mchunk = row_chunk(8 * uk.mc);
  const int64_t mtasks = ceil_div(M, mchunk);
  int64_t nchunk = round_up(ceil_div(N, std::max<int64_t>(1, ceil_div(want, mtasks))), nr);
  if (!share_b) nchunk = std::min(nchunk, uk.nc);
  nchunk = std::max<int64_t>(nchunk, nr);
  const int64_t ntasks = ceil_div(N, nchunk);
  const int64_t tasks = mtasks * ntasks;

  T* shared_b = nullptr;
  if (share_b) {
    shared_b = thread_workspace<T>(Slot::shared_b, size_t(Kd * n_pad));
    const int64_t kblocks = ceil_div(Kd, uk.kc), npanels = n_pad / nr;
#pragma omp parallel for schedule(static) num_threads(threads) collapse(2)
    for (int64_t kb = 0; kb < kblocks; ++kb)
      for (int64_t jp = 0; jp < npanels; ++jp) {
        const int64_t pc = kb * uk.kc, kc = std::min(uk.kc, Kd - pc);
        pack_b(shared_b + pc * n_pad + jp * kc * nr, nr, pc, kc, jp * nr, std::min<int64_t>(nr, N - jp * nr));
      }
  }

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (tasks > 1 && threads > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining tasks, throw after the parallel region
    const int64_t i0 = (t / ntasks) * mchunk, j0 = (t % ntasks) * nchunk;
    gemm_task(uk, i0, std::min(M, i0 + mchunk), j0, std::min(N, j0 + nchunk), Kd, pack_a, pack_b, shared_b, n_pad,
              c, ldc, accumulate, bias);
  }
  throw_if_interrupted();
}

// Plain strided GEMM: C (M, N) (ldc) = [C +] A (M, Kd) * B (Kd, N),
// A(i, p) = a[i * a_rs + p * a_cs], B(p, j) = b[p * b_rs + j * b_cs].
template <typename T>
void gemm(int64_t M, int64_t N, int64_t Kd, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t b_rs,
          int64_t b_cs, T* c, int64_t ldc, bool accumulate, const T* bias = nullptr, bool parallel = true);

}  // namespace vgg::cpu
