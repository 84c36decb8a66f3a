// The SIMT emulator: runs the CUDA kernels of csrc/cuda/*.cu on the CPU, compiled by g++ (device "sim").
//
// Each CUDA thread is a fiber (64 KiB mmap'd stack with a guard page, switched by a small assembly routine on
// x86-64 and with _setjmp/_longjmp elsewhere, see simt.cpp); the blocks
// of a grid run one after another on the launching OS thread, so a `__shared__` array (a `static` here) is shared
// by the fibers of the live block. A process-wide lock serialises launches, so two host threads never share the
// static shared arrays. Kernel files never use <<<>>>: they launch through VGG_LAUNCH (../cuda/common.cuh), which
// here expands to
//
//   simt::launcher(grid, block, dynamic_shared_bytes, "kernel<T, 16>", kernel<T, 16>)(args...);
//
// and runs the whole grid synchronously. Every error the emulator detects is thrown from the launch as
// simt::Error (a std::runtime_error) naming the kernel, block and thread:
//   - invalid launch dimensions or dynamic shared size (CUDA's limits: 1024 threads, block.z <= 64,
//     grid.y/z <= 65535, 227 KiB dynamic shared memory);
//   - any exception thrown inside the kernel (the block is unwound cleanly and the next launch works);
//   - divergent barriers: live threads waiting at different __syncthreads call sites (file, line, __COUNTER__),
//     or a __syncthreads reached while another thread of the block has returned (strict: CUDA only defines
//     __syncthreads in code that every thread of the block reaches, so `if (i >= n) return;` before a barrier
//     is reported even though sm_70+ hardware usually tolerates it);
//   - warp collectives (__syncwarp, __shfl*_sync, __ballot/__any/__all_sync, __reduce_*_sync): every lane named
//     in the mask must reach the same call site with the same mask; a named lane that returned, waits at a
//     __syncthreads or at another collective is an error, so is a mask without the calling lane, a shuffle
//     width that is not a power of two in [1, 32], and a shuffle that reads a lane outside the mask;
//   - writes just outside the dynamic shared buffer (256-byte guard zones checked after each block).
//   - with checks on (simt::set_checks, VGG_SIM_CHECKS): shared and global memory races, reads of shared memory
//     not written in this block, and device-memory accesses outside every allocation (see set_checks).
// Shared memory is poisoned with the word 0x7FFFFFFF (NaN as float and double, INT_MAX as int) before every
// block: the dynamic buffer at block start, each static array (VGG_SHARED) when the block's first thread reaches
// its declaration, which is before any thread of the block can touch it. Device allocations of the sim backend
// (simt::device_alloc, csrc/simt/memory.h) have their exact size, guard zones that are checked after every
// launch, and start poisoned too.
//
// Scheduling: within a block every runnable fiber runs until it blocks (barrier, collective) or returns, in the
// order given by simt::set_schedule ("linear", "reverse", "random:SEED"; default from VGG_SIM_SCHEDULE), which
// also orders the blocks. A kernel missing a barrier passes in one order and fails in another: test several.
#pragma once

#if defined(__CUDACC__)
#error "simt.h is the CPU emulator: include it only in the g++ build"
#endif

#include <atomic>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords -----------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
// Plain __shared__ is a static local; use VGG_SHARED (csrc/cuda/common.cuh) so that the array is poisoned per block.
#define __shared__ static
// __launch_bounds__(N[, min_blocks]) is recorded in the function itself so that a launch can enforce it: the
// kernel starts with N / 32 one-byte NOPs when N is a multiple of 32 and 32 + N otherwise (at most 32 NOPs for
// every bound a real kernel uses); simt::detail::launch_bound() counts them. Code without the attribute has none.
#define __launch_bounds__(...) SIMT_LAUNCH_BOUNDS_(__VA_ARGS__, 0)
#define SIMT_LAUNCH_BOUNDS_(max_threads, ...) \
  __attribute__((patchable_function_entry(::simt::detail::launch_bound_nops(max_threads), 0)))
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define VGG_SIMT_ACTIVE 1  // the emulator build; __CUDA_ARCH__ stays undefined on purpose

// ---- vector types (global namespace, aligned like CUDA's) --------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct uint2 { unsigned int x, y; } __attribute__((aligned(8)));
struct uint4 { unsigned int x, y, z, w; } __attribute__((aligned(16)));
struct int2 { int x, y; } __attribute__((aligned(8)));
struct int3 { int x, y, z; };
struct int4 { int x, y, z, w; } __attribute__((aligned(16)));
struct float2 { float x, y; } __attribute__((aligned(8)));
struct float3 { float x, y, z; };
struct float4 { float x, y, z, w; } __attribute__((aligned(16)));
struct double2 { double x, y; } __attribute__((aligned(16)));

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

inline constexpr float2 make_float2(float x, float y) { return float2{x, y}; }
inline constexpr float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline constexpr float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline constexpr int2 make_int2(int x, int y) { return int2{x, y}; }
inline constexpr int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline constexpr int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline constexpr uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline constexpr uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
inline constexpr uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline constexpr double2 make_double2(double x, double y) { return double2{x, y}; }

// ---- built-in variables: constant-initialised thread-locals, set by the scheduler before each fiber resumes ----
inline thread_local constinit uint3 threadIdx{0, 0, 0};
inline thread_local constinit uint3 blockIdx{0, 0, 0};
inline thread_local constinit dim3 blockDim{1, 1, 1};
inline thread_local constinit dim3 gridDim{1, 1, 1};
inline constexpr int warpSize = 32;

namespace simt {

// Everything the emulator detects, and every exception escaping a kernel, reaches the launch site as this.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The sim equivalent of cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes): a
// launch of `kernel` with more than 48 KiB of dynamic shared memory is refused unless it opted in to at least
// that much first. Throws simt::Error above 227 KiB, as the GPU refuses it.
void set_max_dynamic_shared(const void* kernel, size_t bytes);

// "linear" (default), "reverse", "random" or "random:SEED". Throws std::invalid_argument for anything else.
void set_schedule(const std::string& schedule);
std::string get_schedule();

// A number that differs for every block run by this process (per-thread emulator state, such as pending
// cp.async copies in tensor_core.cpp, is tagged with it so that nothing leaks from one block into the next).
uint64_t block_serial();

// The current block's dynamic shared memory (16-byte aligned, the size given at launch, poisoned per block).
void* dynamic_shared();

// The checks that cost time, as a comma-separated list (default from VGG_SIM_CHECKS, else none):
//   "races":  two threads touching one shared or device-memory byte where at least one writes, not through an
//             atomic, with no __syncthreads between them (different warps or blocks) and, within a warp, no
//             collective of that warp between them either (independent thread scheduling);
//   "uninit": a read of shared memory that no thread of the block has written, or of device memory that still
//             holds the poison of a fresh allocation;
//   "bounds": a kernel access to memory that is neither a device allocation (with its exact size), the block's
//             shared memory nor the thread's own stack/arguments (host memory passed by the self-tests is exempt
//             only when it is registered as a device allocation, so this check needs device_alloc'd buffers);
//   "all" (every check above) or "" / "none".
// They see every load and store of the kernel sources, which g++ instruments with -fsanitize=thread's hooks
// (implemented here, not by libtsan). Throws std::invalid_argument for an unknown name.
void set_checks(const std::string& checks);
std::string get_checks();

// The poison word of fresh shared and device memory: NaN as float (and as double), INT_MAX as int32.
inline constexpr uint32_t kPoisonWord = 0x7FFFFFFFu;

namespace detail {

constexpr int launch_bound_nops(long long max_threads) {
  return max_threads < 1 || max_threads > 1024 ? throw "__launch_bounds__ must be in [1, 1024]"
         : max_threads % 32 == 0             ? static_cast<int>(max_threads / 32)
                                             : static_cast<int>(32 + max_threads);
}
// The N of a kernel's __launch_bounds__(N), or 0 when it has none (or on a target without the NOP encoding).
int launch_bound(const void* kernel);

// Where a barrier or collective sits in the source: two on one line differ by __COUNTER__.
struct Site {
  const char* file;
  int line;
  int counter;
  const char* name;
};

// Block-wide barrier; `mode` 0: plain, 1: count, 2: and, 3: or of the predicate. Returns the reduction.
int syncthreads(Site site, int mode, int predicate);

enum class WarpOp : uint8_t { sync, shfl_idx, shfl_up, shfl_down, shfl_xor, ballot, any, all, reduce_add, reduce_min, reduce_max, match_any };
// Rendezvous of the lanes in `mask`; returns this lane's result bits.
uint64_t warp_collective(Site site, WarpOp op, unsigned mask, uint64_t value, int arg, int width);
unsigned active_mask();
[[noreturn]] void trap(const char* why);
// An access the instrumentation cannot see (the tensor-core models copy with memcpy), fed to the checks as if an
// instrumented load or store had made it. Free when the checks are off.
void note_access(const void* ptr, size_t size, bool write);

template <typename T>
T shuffle(Site site, WarpOp op, unsigned mask, T value, int arg, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_*_sync supports 1- to 8-byte types");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = warp_collective(site, op, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// A launch's grid or block extent as given (64-bit, so an oversized int64 is reported rather than truncated).
struct Extent {
  int64_t x, y, z;
  constexpr Extent(dim3 d) : x(d.x), y(d.y), z(d.z) {}
  constexpr Extent(uint3 d) : x(d.x), y(d.y), z(d.z) {}
  template <std::integral I>
  constexpr Extent(I v) : x(static_cast<int64_t>(v)), y(1), z(1) {}
};

struct LaunchConfig {
  Extent grid, block;
  size_t dynamic_shared_bytes;
  const char* kernel_name;
  const void* kernel = nullptr;  // for __launch_bounds__ and the dynamic shared memory opt-in
};

// Runs thunk(ctx) once per CUDA thread of the grid; throws simt::Error.
void run_grid(const LaunchConfig& config, void (*thunk)(void*), void* ctx);
// The launch-time checks of run_grid (dimensions, dynamic shared memory, __launch_bounds__) without running it.
void validate_launch(const LaunchConfig& config);

// A graph capture in progress on this host thread (csrc/simt/recording.h): launches, device-to-device copies and
// memsets are appended to it, in order, instead of running. nullptr when not capturing.
struct Recording {
  std::vector<std::function<void()>> steps;
};
inline thread_local Recording* t_recording = nullptr;

// A static shared array (VGG_SHARED): poisoned when the first thread of each block reaches its declaration.
struct SharedSlot {
  uint64_t block = 0;  // the block_serial that last poisoned it
};
inline constinit uint64_t block_serial = 1;  // distinct for every block the emulator runs (bumped at block start)
void first_reach_shared(SharedSlot& slot, void* array, size_t bytes, const char* name);
inline void reach_shared(SharedSlot& slot, void* array, size_t bytes, const char* name) {
  if (slot.block != block_serial) first_reach_shared(slot, array, bytes, name);
}

}  // namespace detail

template <typename... P>
class Launcher {
 public:
  Launcher(detail::LaunchConfig config, void (*kernel)(P...)) : config_(config), kernel_(kernel) {}

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    // Each CUDA thread receives its own copy of the arguments (std::apply copies into by-value parameters).
    std::tuple<P...> packed(std::forward<A>(args)...);
    if (detail::t_recording != nullptr) {
      // Captured: the arguments are kept by value, as cudaStreamBeginCapture keeps a kernel node's parameters, and
      // every replay runs the grid with all of the eager launch's checks. A bad configuration fails at capture.
      detail::validate_launch(config_);
      detail::t_recording->steps.emplace_back([config = config_, kernel = kernel_, packed]() mutable {
        Call call{kernel, &packed};
        detail::run_grid(config, &Call::invoke, &call);
      });
      return;
    }
    Call call{kernel_, &packed};
    detail::run_grid(config_, &Call::invoke, &call);
  }

 private:
  struct Call {
    void (*kernel)(P...);
    std::tuple<P...>* args;
    static void invoke(void* self) {
      auto* c = static_cast<Call*>(self);
      std::apply(c->kernel, *c->args);
    }
  };
  detail::LaunchConfig config_;
  void (*kernel_)(P...);
};

template <typename... P>
Launcher<P...> launcher(detail::Extent grid, detail::Extent block, size_t dynamic_shared_bytes, const char* kernel_name,
                        void (*kernel)(P...)) {
  return Launcher<P...>(
      detail::LaunchConfig{grid, block, dynamic_shared_bytes, kernel_name, reinterpret_cast<const void*>(kernel)},
      kernel);
}

}  // namespace simt

// ---- barriers and warp collectives (macros so that each call site is identified) -------------------------------
#define SIMT_SITE_(name) (::simt::detail::Site{__FILE__, __LINE__, __COUNTER__, name})
#define __syncthreads() ((void)::simt::detail::syncthreads(SIMT_SITE_("__syncthreads"), 0, 1))
#define __syncthreads_count(pred) ::simt::detail::syncthreads(SIMT_SITE_("__syncthreads_count"), 1, (pred) ? 1 : 0)
#define __syncthreads_and(pred) ::simt::detail::syncthreads(SIMT_SITE_("__syncthreads_and"), 2, (pred) ? 1 : 0)
#define __syncthreads_or(pred) ::simt::detail::syncthreads(SIMT_SITE_("__syncthreads_or"), 3, (pred) ? 1 : 0)
#define __syncwarp(...) \
  ((void)::simt::detail::syncwarp_(SIMT_SITE_("__syncwarp") __VA_OPT__(, ) __VA_ARGS__))
#define __shfl_sync(...) \
  ::simt::detail::shuffle(SIMT_SITE_("__shfl_sync"), ::simt::detail::WarpOp::shfl_idx, __VA_ARGS__)
#define __shfl_up_sync(...) \
  ::simt::detail::shuffle(SIMT_SITE_("__shfl_up_sync"), ::simt::detail::WarpOp::shfl_up, __VA_ARGS__)
#define __shfl_down_sync(...) \
  ::simt::detail::shuffle(SIMT_SITE_("__shfl_down_sync"), ::simt::detail::WarpOp::shfl_down, __VA_ARGS__)
#define __shfl_xor_sync(...) \
  ::simt::detail::shuffle(SIMT_SITE_("__shfl_xor_sync"), ::simt::detail::WarpOp::shfl_xor, __VA_ARGS__)
#define __ballot_sync(mask, pred)                                                                                  \
  static_cast<unsigned>(::simt::detail::warp_collective(SIMT_SITE_("__ballot_sync"), ::simt::detail::WarpOp::ballot, \
                                                        (mask), (pred) ? 1u : 0u, 0, 32))
#define __any_sync(mask, pred)                                                                                    \
  static_cast<int>(::simt::detail::warp_collective(SIMT_SITE_("__any_sync"), ::simt::detail::WarpOp::any, (mask), \
                                                   (pred) ? 1u : 0u, 0, 32))
#define __all_sync(mask, pred)                                                                                    \
  static_cast<int>(::simt::detail::warp_collective(SIMT_SITE_("__all_sync"), ::simt::detail::WarpOp::all, (mask), \
                                                   (pred) ? 1u : 0u, 0, 32))
#define __match_any_sync(mask, value)                                                                    \
  static_cast<unsigned>(::simt::detail::warp_collective(SIMT_SITE_("__match_any_sync"),                 \
                                                        ::simt::detail::WarpOp::match_any, (mask),      \
                                                        ::simt::detail::match_bits_(value), 0, 32))
#define __reduce_add_sync(mask, value) \
  ::simt::detail::reduce_(SIMT_SITE_("__reduce_add_sync"), ::simt::detail::WarpOp::reduce_add, (mask), (value))
#define __reduce_min_sync(mask, value) \
  ::simt::detail::reduce_(SIMT_SITE_("__reduce_min_sync"), ::simt::detail::WarpOp::reduce_min, (mask), (value))
#define __reduce_max_sync(mask, value) \
  ::simt::detail::reduce_(SIMT_SITE_("__reduce_max_sync"), ::simt::detail::WarpOp::reduce_max, (mask), (value))

namespace simt::detail {
inline void syncwarp_(Site site, unsigned mask = 0xffffffffu) { warp_collective(site, WarpOp::sync, mask, 0, 0, 32); }
template <typename T>
uint64_t match_bits_(T value) {
  static_assert(std::is_integral_v<T> && sizeof(T) <= 8, "__match_any_sync takes an integer");
  return static_cast<uint64_t>(value);
}
template <typename T>
T reduce_(Site site, WarpOp op, unsigned mask, T value) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, unsigned>, "__reduce_*_sync takes int or unsigned");
  // Signedness travels in `arg` (1 = signed) so min/max compare correctly.
  const uint64_t bits = std::is_signed_v<T> ? static_cast<uint64_t>(static_cast<int64_t>(value)) : value;
  return static_cast<T>(warp_collective(site, op, mask, bits, std::is_signed_v<T> ? 1 : 0, 32));
}
}  // namespace simt::detail

inline unsigned __activemask() { return ::simt::detail::active_mask(); }
[[noreturn]] inline void __trap() { ::simt::detail::trap("__trap() called"); }
inline void __threadfence() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) {}
template <typename T>
inline T __ldg(const T* p) { return *p; }

// ---- atomics: fibers switch only inside barriers and collectives, and launches are serialised, so a plain
// read-modify-write is atomic with respect to every other emulated thread. -------------------------------------
// The race check does not see atomics: their functions are not instrumented.
#define SIMT_ATOMIC_ __attribute__((no_sanitize_thread, noinline))
template <typename T>
SIMT_ATOMIC_ T simt_atomic_rmw_(T* p, T v, int op) {
  T old = *p;
  switch (op) {
    case 0: *p = old + v; break;
    case 1: *p = old - v; break;
    case 2: *p = v > old ? v : old; break;
    case 3: *p = v < old ? v : old; break;
    case 4: *p = v; break;
  }
  return old;
}
inline int atomicAdd(int* p, int v) { return simt_atomic_rmw_(p, v, 0); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return simt_atomic_rmw_(p, v, 0); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return simt_atomic_rmw_(p, v, 0); }
inline float atomicAdd(float* p, float v) { return simt_atomic_rmw_(p, v, 0); }
inline double atomicAdd(double* p, double v) { return simt_atomic_rmw_(p, v, 0); }
inline int atomicSub(int* p, int v) { return simt_atomic_rmw_(p, v, 1); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return simt_atomic_rmw_(p, v, 1); }
inline int atomicMax(int* p, int v) { return simt_atomic_rmw_(p, v, 2); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return simt_atomic_rmw_(p, v, 2); }
inline long long atomicMax(long long* p, long long v) { return simt_atomic_rmw_(p, v, 2); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return simt_atomic_rmw_(p, v, 2); }
inline int atomicMin(int* p, int v) { return simt_atomic_rmw_(p, v, 3); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return simt_atomic_rmw_(p, v, 3); }
inline long long atomicMin(long long* p, long long v) { return simt_atomic_rmw_(p, v, 3); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return simt_atomic_rmw_(p, v, 3); }
inline int atomicExch(int* p, int v) { return simt_atomic_rmw_(p, v, 4); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return simt_atomic_rmw_(p, v, 4); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return simt_atomic_rmw_(p, v, 4); }
inline float atomicExch(float* p, float v) { return simt_atomic_rmw_(p, v, 4); }
template <typename T>
SIMT_ATOMIC_ T simt_atomic_cas_(T* p, T compare, T v) {
  T old = *p;
  if (old == compare) *p = v;
  return old;
}
inline int atomicCAS(int* p, int c, int v) { return simt_atomic_cas_(p, c, v); }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { return simt_atomic_cas_(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
  return simt_atomic_cas_(p, c, v);
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short c, unsigned short v) { return simt_atomic_cas_(p, c, v); }
SIMT_ATOMIC_ inline int atomicAnd(int* p, int v) { int o = *p; *p = o & v; return o; }
SIMT_ATOMIC_ inline unsigned atomicAnd(unsigned* p, unsigned v) { unsigned o = *p; *p = o & v; return o; }
SIMT_ATOMIC_ inline int atomicOr(int* p, int v) { int o = *p; *p = o | v; return o; }
SIMT_ATOMIC_ inline unsigned atomicOr(unsigned* p, unsigned v) { unsigned o = *p; *p = o | v; return o; }
SIMT_ATOMIC_ inline int atomicXor(int* p, int v) { int o = *p; *p = o ^ v; return o; }
SIMT_ATOMIC_ inline unsigned atomicXor(unsigned* p, unsigned v) { unsigned o = *p; *p = o ^ v; return o; }
SIMT_ATOMIC_ inline unsigned atomicInc(unsigned* p, unsigned limit) {
  unsigned o = *p;
  *p = (o >= limit) ? 0 : o + 1;
  return o;
}
SIMT_ATOMIC_ inline unsigned atomicDec(unsigned* p, unsigned limit) {
  unsigned o = *p;
  *p = (o == 0 || o > limit) ? limit : o - 1;
  return o;
}

// ---- device math and bit intrinsics that g++ lacks ---------------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }
inline int __ffsll(long long x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline long long clock64() { return static_cast<long long>(__builtin_ia32_rdtsc()); }

// CUDA's global min/max accept mixed argument types (e.g. min(int64_t, int)); std::min does not.
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline constexpr std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline constexpr std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
