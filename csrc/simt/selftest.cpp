// Small CUDA-style kernels that exercise the SIMT emulator, in the test-only module vggcore._simt_selftest
// (tests/test_simt.py and tests/test_sim_*.py; vggcore itself never imports it). The module carries its own copy
// of the emulator engine, so its schedule and check settings are its own (sim_set_schedule here, not _C's).
// Each one is written exactly as a kernel in csrc/cuda/ would be (VGG_LAUNCH, VGG_DYNAMIC_SHARED, VGG_SHARED),
// so the tests prove what the real kernels rely on: barriers, schedules, warp collectives, error reporting.
#ifndef VGG_GPU_NS
#define VGG_GPU_NS sim
#endif

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <string>
#include <vector>

#include "../cuda/common.cuh"
#include "bind.h"
#include "memory.h"

namespace py = pybind11;

namespace vgg::sim::selftest {

// y[i] = x[i] + x[i-1] within each block, through dynamic shared memory. Without the barrier, thread t reads
// s[t-1] before thread t-1 has written it unless threads happen to run in increasing order.
__global__ void neighbour_sum_kernel(const float* x, float* y, bool with_barrier) {
  VGG_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = x[i];
  if (with_barrier) __syncthreads();
  y[i] = s[t] + (t > 0 ? s[t - 1] : 0.0f);
}

std::vector<float> neighbour_sum(bool with_barrier) {
  const int blocks = 4, threads = 128;
  std::vector<float> x(blocks * threads), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 17);
  VGG_LAUNCH(blocks, threads, threads * sizeof(float), neighbour_sum_kernel)(x.data(), y.data(), with_barrier);
  return y;
}

// Threads of one block wait at two different barriers ("sites"), or half of them return first ("exit").
__global__ void divergent_barrier_kernel(int* out, int kind) {
  const int t = threadIdx.x;
  if (kind == 0) {
    if (t < 16) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else {
    if (t >= 16) return;
    __syncthreads();
  }
  out[t] = t;
}

void divergent_barrier(const std::string& kind) {
  std::vector<int> out(64);
  VGG_LAUNCH(1, 64, 0, divergent_barrier_kernel)(out.data(), kind == "exit" ? 1 : 0);
}

// Lanes of one warp at different shuffles ("sites"), or a lane in the mask that has returned ("exit").
__global__ void divergent_warp_kernel(float* out, int kind) {
  const int t = threadIdx.x;
  float v = static_cast<float>(t);
  if (kind == 0) {
    if (t < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    else v = __shfl_down_sync(0xffffffffu, v, 2);
  } else {
    if (t == 5) return;
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[t] = v;
}

void divergent_warp(const std::string& kind) {
  std::vector<float> out(32);
  VGG_LAUNCH(1, 32, 0, divergent_warp_kernel)(out.data(), kind == "exit" ? 1 : 0);
}

__global__ void bad_width_kernel(float* out, int width) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1, width);
}

void shuffle_bad_width(int width) {
  std::vector<float> out(32);
  VGG_LAUNCH(1, 32, 0, bad_width_kernel)(out.data(), width);
}

// Which lane each thread reads with __shfl_down_sync(full, v, 16, 32) and __shfl_xor_sync(full, v, 4, 8).
__global__ void shuffle_lanes_kernel(int* down, int* xr, int* up, int* idx) {
  const int t = threadIdx.x;
  down[t] = __shfl_down_sync(0xffffffffu, t, 16, 32);
  xr[t] = __shfl_xor_sync(0xffffffffu, t, 4, 8);
  up[t] = __shfl_up_sync(0xffffffffu, t, 3, 8);
  idx[t] = __shfl_sync(0xffffffffu, t, 9, 8);
}

std::vector<std::vector<int>> shuffle_lanes() {
  const int n = 64;
  std::vector<int> down(n), xr(n), up(n), idx(n);
  VGG_LAUNCH(1, n, 0, shuffle_lanes_kernel)(down.data(), xr.data(), up.data(), idx.data());
  return {down, xr, up, idx};
}

// Writes `overshoot` elements past the end (positive) or before the start (negative) of dynamic shared memory.
__global__ void shared_overflow_kernel(int n, int overshoot) {
  VGG_DYNAMIC_SHARED(float, s);
  if (threadIdx.x == 0) s[overshoot >= 0 ? n - 1 + overshoot : overshoot] = 1.0f;
}

void shared_overflow(int overshoot) {
  const int n = 64;
  VGG_LAUNCH(2, 32, n * sizeof(float), shared_overflow_kernel)(n, overshoot);
}

// Per-warp sums with __shfl_down_sync, the block sum through static shared memory, and ballots/votes.
__global__ void warp_reduce_kernel(const float* x, float* warp_sums, float* block_sums, unsigned* ballots,
                                   int* counts) {
  VGG_SHARED(float, partial, [32]);
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int i = blockIdx.x * blockDim.x + t;
  float v = x[i];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const unsigned ballot = __ballot_sync(0xffffffffu, static_cast<int>(x[i]) % 3 == 0);
  if (lane == 0) {
    warp_sums[i / 32] = v;
    partial[warp] = v;
    ballots[i / 32] = ballot;
  }
  const int count = __syncthreads_count(static_cast<int>(x[i]) % 2 == 0);
  if (t == 0) {
    float s = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) s += partial[w];
    block_sums[blockIdx.x] = s;
    counts[blockIdx.x] = count;
  }
}

py::dict warp_reduce() {
  const int blocks = 3, threads = 256;
  std::vector<float> x(blocks * threads);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7) % 23);
  std::vector<float> warp_sums(x.size() / 32), block_sums(blocks);
  std::vector<unsigned> ballots(x.size() / 32);
  std::vector<int> counts(blocks);
  {
    py::gil_scoped_release release;
    VGG_LAUNCH(blocks, threads, 0, warp_reduce_kernel)(x.data(), warp_sums.data(), block_sums.data(), ballots.data(),
                                                       counts.data());
  }
  py::dict d;
  d["x"] = x;
  d["warp_sums"] = warp_sums;
  d["block_sums"] = block_sums;
  d["ballots"] = ballots;
  d["counts"] = counts;
  return d;
}

// Histogram of values with atomicAdd on global memory, from a 2-D grid of 2-D blocks.
__global__ void histogram_kernel(const int* values, int n, int* bins, int nbins) {
  const int tx = blockIdx.x * blockDim.x + threadIdx.x;
  const int ty = blockIdx.y * blockDim.y + threadIdx.y;
  const int i = ty * (gridDim.x * blockDim.x) + tx;
  if (i < n) atomicAdd(&bins[values[i] % nbins], 1);
}

std::vector<int> histogram(const std::vector<int>& values, int nbins) {
  std::vector<int> bins(nbins, 0);
  const int n = static_cast<int>(values.size());
  const dim3 block(8, 4);
  const int grid_x = 4;
  const int grid_y = static_cast<int>(ceil_div(n, 8 * 4 * grid_x));
  VGG_LAUNCH(dim3(grid_x, grid_y), block, 0, histogram_kernel)(values.data(), n, bins.data(), nbins);
  return bins;
}

// C (M,N) = A (M,K) @ B (K,N), 16x16 tiles through static shared memory; two barriers per tile.
template <int TILE>
__global__ void sgemm_kernel(const float* A, const float* B, float* C, int M, int N, int K) {
  VGG_SHARED(float, As, [TILE][TILE]);
  VGG_SHARED(float, Bs, [TILE][TILE]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
    Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.0f;
    __syncthreads();  // the tile is complete before anyone reads it
    for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();  // and fully read before the next iteration overwrites it
  }
  if (row < M && col < N) C[row * N + col] = acc;
}

// Small-integer inputs make every fp32 sum exact, so the test can demand equality.
void sgemm_inputs(int M, int N, int K, std::vector<float>& A, std::vector<float>& B) {
  A.resize(static_cast<size_t>(M) * K);
  B.resize(static_cast<size_t>(K) * N);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) A[i * K + k] = static_cast<float>((i * 3 + k * 5) % 7 - 3);
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) B[k * N + j] = static_cast<float>((k * 2 + j * 3) % 5 - 2);
}

std::vector<float> sgemm(int M, int N, int K) {
  std::vector<float> A, B, C(static_cast<size_t>(M) * N);
  sgemm_inputs(M, N, K, A, B);
  py::gil_scoped_release release;
  constexpr int T = 16;
  VGG_LAUNCH(dim3(ceil_div(N, T), ceil_div(M, T)), dim3(T, T), 0, sgemm_kernel<T>)(A.data(), B.data(), C.data(), M,
                                                                                     N, K);
  return C;
}

// Seconds for one n^3 SGEMM launch and the number of barrier arrivals it made.
std::pair<double, long long> sgemm_seconds(int n) {
  std::vector<float> A, B, C(static_cast<size_t>(n) * n);
  sgemm_inputs(n, n, n, A, B);
  py::gil_scoped_release release;
  constexpr int T = 16;
  const auto start = std::chrono::steady_clock::now();
  VGG_LAUNCH(dim3(ceil_div(n, T), ceil_div(n, T)), dim3(T, T), 0, sgemm_kernel<T>)(A.data(), B.data(), C.data(), n, n,
                                                                                     n);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long long arrivals = 2LL * n * n * ceil_div(n, T);
  return {seconds, arrivals};
}

__global__ void throwing_kernel(int bad_thread) {
  if (static_cast<int>(threadIdx.x) == bad_thread) throw std::runtime_error("boom from a kernel");
  __syncthreads();
}

void kernel_throws() { VGG_LAUNCH(2, 64, 0, throwing_kernel)(37); }

__global__ void empty_kernel() {}

void bad_launch(const std::string& kind) {
  if (kind == "threads") VGG_LAUNCH(1, 2048, 0, empty_kernel)();
  else if (kind == "block_z") VGG_LAUNCH(1, dim3(1, 1, 128), 0, empty_kernel)();
  else if (kind == "grid_y") VGG_LAUNCH(dim3(1, 70000), 32, 0, empty_kernel)();
  else if (kind == "zero") VGG_LAUNCH(0, 32, 0, empty_kernel)();
  else if (kind == "shared") VGG_LAUNCH(1, 32, 300 * 1024, empty_kernel)();
  else throw std::invalid_argument("unknown bad_launch kind " + kind);
}

// __launch_bounds__ through VGG_LAUNCH_BOUNDS: 64 (a multiple of 32) and 96 + 1 (not one).
__global__ void VGG_LAUNCH_BOUNDS(64) bounded64_kernel(int* out) { out[threadIdx.x] = 1; }
__global__ void VGG_LAUNCH_BOUNDS(97, 2) bounded97_kernel(int* out) { out[threadIdx.x] = 1; }

// Threads that wrote their slot (a launch over the bound raises before any thread runs).
int launch_bounds(int bound, int threads) {
  std::vector<int> out(1024, 0);
  if (bound == 64) VGG_LAUNCH(1, threads, 0, bounded64_kernel)(out.data());
  else if (bound == 97) VGG_LAUNCH(1, threads, 0, bounded97_kernel)(out.data());
  else throw std::invalid_argument("launch_bounds: bound must be 64 or 97");
  int n = 0;
  for (int v : out) n += v;
  return n;
}

int launch_bound_of(int bound) {
  const auto addr = [](auto* kernel) { return reinterpret_cast<const void*>(kernel); };
  return simt::detail::launch_bound(bound == 64 ? addr(&bounded64_kernel)
                                    : bound == 97 ? addr(&bounded97_kernel)
                                                  : addr(&empty_kernel));
}

// Fills `bytes` of dynamic shared memory and sums it back (bytes / 4 ones).
__device__ void big_shared_sum(int* out, int words) {
  VGG_DYNAMIC_SHARED(int, s);
  for (int i = threadIdx.x; i < words; i += blockDim.x) s[i] = 1;
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int i = 0; i < words; ++i) sum += s[i];
    *out = sum;
  }
}

__global__ void big_shared_kernel(int* out, int words) { big_shared_sum(out, words); }
__global__ void big_shared_other_kernel(int* out, int words) { big_shared_sum(out, words); }

// Launches big_shared_kernel with `bytes` of dynamic shared memory after opting in to `opt_in` bytes (0: none).
int big_shared(size_t bytes, size_t opt_in) {
  if (opt_in) vgg_opt_in_dynamic_shared(big_shared_kernel, opt_in);
  int out = -1;
  VGG_LAUNCH(1, 128, bytes, big_shared_kernel)(&out, static_cast<int>(bytes / 4));
  return out;
}

// The opt-in is per kernel: another kernel with the same signature still gets 48 KiB.
int big_shared_other(size_t bytes) {
  int out = -1;
  VGG_LAUNCH(1, 128, bytes, big_shared_other_kernel)(&out, static_cast<int>(bytes / 4));
  return out;
}

// ---- the checks: one kernel per kind of bug, each with a correct variant (kind 0) -----------------------------

// Shared memory races in a 64-thread block (two warps). kind 1: threads 0 and 32 write one word; 2: thread 40 reads
// a word thread 0 wrote; 3: lane 1 reads a word lane 0 wrote (one warp, no __syncwarp); 4: every thread does
// `total += 1` on one word (a lost atomicAdd); 5: as 3 with __syncwarp between; 6: as 4 with atomicAdd.
__global__ void shared_race_kernel(int* out_all, int kind) {
  VGG_SHARED(int, s, [64]);
  const int t = threadIdx.x;
  int* out = out_all + 4 * blockIdx.x;  // each block its own outputs
  s[t] = t;
  __syncthreads();
  if (kind == 1 && (t == 0 || t == 32)) s[0] = t;
  if (kind == 2) {
    if (t == 0) s[1] = 7;
    if (t == 40) out[1] = s[1];
  }
  if (kind == 3 || kind == 5) {
    if (t == 0) s[2] = 9;
    if (kind == 5) __syncwarp();
    if (t == 1) out[2] = s[2];
  }
  if (kind == 4) s[3] += 1;
  if (kind == 6) atomicAdd(&s[3], 1);
  __syncthreads();
  if (t == 0) out[0] = s[3];
}

int shared_race(int kind) {
  int* out = static_cast<int*>(simt::device_alloc(64 * sizeof(int), "out"));
  int result = 0;
  try {
    VGG_LAUNCH(2, 64, 0, shared_race_kernel)(out, kind);
    result = out[0];
  } catch (...) {
    simt::device_free(out);
    throw;
  }
  simt::device_free(out);
  return result;
}

// Device memory: kind 1: every block writes out[0] (blocks race); 2: `out[0] += 1` from every thread of one
// block (a lost atomicAdd); 3: atomicAdd from every block (fine); 4: reads one element past the end of `in`;
// 5: writes one element past the end of `out`; 6: reads `in` one element before its start.
__global__ void global_kernel(const float* in, float* out, int n, int kind) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (kind == 1 && threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
  if (kind == 2 && blockIdx.x == 0) out[0] += 1.0f;
  if (kind == 3) atomicAdd(&out[0], 1.0f);
  if (kind == 4 && i < n) out[i] = in[i + 1];
  if (kind == 5 && i <= n) out[i] = 1.0f;
  if (kind == 6 && i < n) out[i] = in[i - 1];
  if (kind == 0 && i < n) out[i] = in[i];
}

std::vector<float> global_access(int kind) {
  const int n = 100;
  auto* in = static_cast<float*>(simt::device_alloc(n * sizeof(float), "input"));
  auto* out = static_cast<float*>(simt::device_alloc(n * sizeof(float), "output"));
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>(i);
  for (int i = 0; i < n; ++i) out[i] = 0.0f;
  std::vector<float> result;
  try {
    VGG_LAUNCH(4, 32, 0, global_kernel)(in, out, n, kind);
    result.assign(out, out + n);
  } catch (...) {
    simt::device_free(in);
    simt::device_free(out);
    throw;
  }
  simt::device_free(in);
  simt::device_free(out);
  return result;
}

// Shared memory read before any write. kind 1: a block sum that forgets the barrier before thread 0 reads the
// warp totals (static shared); 2: thread 0 reads a dynamic shared word nobody wrote; 3: reads one past the end of
// the dynamic buffer; 0: the correct block sum. Returns the block sums of 3 blocks of 64 threads.
__global__ void uninit_kernel(float* out, int kind) {
  VGG_SHARED(float, totals, [2]);
  VGG_DYNAMIC_SHARED(float, dyn);
  const int t = threadIdx.x;
  float v = 1.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (t % 32 == 0) totals[t / 32] = v;
  dyn[t] = v;
  if (kind != 1) __syncthreads();
  if (t == 0) {
    float sum = totals[0] + totals[1];
    if (kind == 2) sum += dyn[64];
    if (kind == 3) sum += dyn[80];
    out[blockIdx.x] = sum;
  }
  if (kind == 1) __syncthreads();
}

std::vector<float> uninit(int kind) {
  auto* out = static_cast<float*>(simt::device_alloc(3 * sizeof(float), "block sums"));
  std::vector<float> result;
  try {
    VGG_LAUNCH(3, 64, 80 * sizeof(float), uninit_kernel)(out, kind);
    result.assign(out, out + 3);
  } catch (...) {
    simt::device_free(out);
    throw;
  }
  simt::device_free(out);
  return result;
}

// Lane 0 writes s[0] = 1 then s[0] = 2; lane 1 reads s[0] in between its own two accesses (all without a
// __syncwarp: a race). Serial schedules let lane 1 see 0 or 2 only; "interleave" also shows it the 1.
__global__ void interleave_kernel(int* seen) {
  VGG_SHARED(int, s, [2]);
  if (threadIdx.x == 0) s[0] = 0;
  __syncthreads();
  volatile int* v = s;  // keeps the first store (the compiler would drop it as dead)
  if (threadIdx.x == 0) {
    v[0] = 1;
    v[1] = 0;
    v[0] = 2;
  } else if (threadIdx.x == 1) {
    v[1] = 5;
    *seen = v[0];
  }
}

int interleave_probe() {
  int seen = -1;
  VGG_LAUNCH(1, 32, 0, interleave_kernel)(&seen);
  return seen;
}

// The first word of a fresh device allocation (the poison), as bits.
unsigned fresh_word() {
  auto* p = static_cast<unsigned*>(simt::device_alloc(8, "fresh"));
  const unsigned v = p[0];
  simt::device_free(p);
  return v;
}

}  // namespace vgg::sim::selftest

PYBIND11_MODULE(_simt_selftest, m) {
  namespace st = vgg::sim::selftest;
  simt::bind_settings(m);
  m.def("simt_selftest_neighbour_sum", &st::neighbour_sum, py::arg("with_barrier"),
        "y[i] = x[i] + x[i-1] per 128-thread block through shared memory, x[i] = i % 17; 4 blocks.");
  m.def("simt_selftest_divergent_barrier", &st::divergent_barrier, py::arg("kind") = "sites",
        "A barrier reached at two call sites ('sites') or after some threads returned ('exit'): raises.");
  m.def("simt_selftest_divergent_warp", &st::divergent_warp, py::arg("kind") = "sites",
        "Lanes at two different shuffles ('sites') or a lane of the mask returned ('exit'): raises.");
  m.def("simt_selftest_shuffle_bad_width", &st::shuffle_bad_width, py::arg("width") = 12,
        "__shfl_down_sync with the given width: raises unless a power of two in [1, 32].");
  m.def("simt_selftest_shuffle_lanes", &st::shuffle_lanes,
        "Source thread of each of 64 threads for down(16, w32), xor(4, w8), up(3, w8), idx(9, w8).");
  m.def("simt_selftest_shared_overflow", &st::shared_overflow, py::arg("overshoot") = 1,
        "Writes `overshoot` floats past the end (or before the start, if negative) of dynamic shared memory.");
  m.def("simt_selftest_warp_reduce", &st::warp_reduce,
        "Warp sums by shuffles, block sums by shared memory, ballots and __syncthreads_count; 3x256 threads.");
  m.def("simt_selftest_histogram", &st::histogram, py::arg("values"), py::arg("nbins"),
        "Histogram of values % nbins with atomicAdd from a 2-D grid.", py::call_guard<py::gil_scoped_release>());
  m.def("simt_selftest_sgemm", &st::sgemm, py::arg("M"), py::arg("N"), py::arg("K"),
        "16x16-tiled SGEMM of A[i,k] = (3i+5k)%7-3 and B[k,j] = (2k+3j)%5-2, row-major (M*N list).");
  m.def("simt_selftest_sgemm_seconds", &st::sgemm_seconds, py::arg("n"),
        "(seconds, barrier arrivals) of one n^3 tiled SGEMM launch.");
  m.def("simt_selftest_kernel_throws", &st::kernel_throws, "A kernel whose thread 37 throws: raises.");
  m.def("simt_selftest_bad_launch", &st::bad_launch, py::arg("kind"),
        "An invalid launch: 'threads', 'block_z', 'grid_y', 'zero' or 'shared': raises.");
  m.def("simt_selftest_launch_bounds", &st::launch_bounds, py::arg("bound"), py::arg("threads"),
        "Launches a VGG_LAUNCH_BOUNDS(64) or (97, 2) kernel with `threads` threads; returns how many ran.");
  m.def("simt_selftest_launch_bound_of", &st::launch_bound_of, py::arg("bound"),
        "The bound the emulator reads from the 64 or 97 kernel (anything else: a kernel without bounds).");
  m.def("simt_selftest_big_shared", &st::big_shared, py::arg("bytes"), py::arg("opt_in") = 0,
        "Sum of bytes/4 ones through dynamic shared memory, after vgg_opt_in_dynamic_shared(opt_in) if nonzero.");
  m.def("simt_selftest_shared_race", &st::shared_race, py::arg("kind"),
        "Shared memory races (1: write-write, 2: read-write, 3: in a warp, 4: += for atomicAdd; 0, 5, 6: fine).");
  m.def("simt_selftest_global_access", &st::global_access, py::arg("kind"),
        "Device memory races and bounds (1: blocks race, 2: +=, 3: atomicAdd, 4-6: out of bounds; 0: copy).");
  m.def("simt_selftest_uninit", &st::uninit, py::arg("kind"),
        "Uninitialised shared reads (1: missing barrier, 2: unwritten word, 3: past the end; 0: fine).");
  m.def("simt_selftest_interleave_probe", &st::interleave_probe,
        "What lane 1 reads of a word lane 0 sets to 1 then 2 with no __syncwarp (0, 1 or 2).");
  m.def("simt_selftest_fresh_word", &st::fresh_word, "The first word of a fresh sim device allocation.");
  m.def("simt_selftest_big_shared_other", &st::big_shared_other, py::arg("bytes"),
        "Like big_shared but a kernel that never opted in.");
}
