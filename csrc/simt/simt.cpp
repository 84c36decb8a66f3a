// The SIMT emulator's engine: fibers, the per-block scheduler, barriers and warp collectives (see simt.h).
//
// Fiber switches: on x86-64, a 14-instruction routine that saves the callee-saved registers on the old stack and
// pops them from the new one (about 3 ns; glibc's _longjmp also walks pthread cleanup handlers). Elsewhere,
// makecontext once per fiber and then _setjmp/_longjmp. With _FORTIFY_SOURCE, glibc maps _longjmp to
// __longjmp_chk, which aborts on the first jump between stacks ("longjmp causes uninitialized stack frame"), so
// the check is switched off before any system header reads it.
#undef _FORTIFY_SOURCE
#define _FORTIFY_SOURCE 0
#undef _FORTIFY_SOURCE

#include "simt.h"
#include "memory.h"
#include "tensor_core.h"
#include "../core/interrupt.h"

#include <pthread.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <unordered_map>
#include <vector>

#if defined(__x86_64__) && !defined(SIMT_NO_ASM_SWITCH)
#define SIMT_ASM_SWITCH 1
// simt_switch_stack(save, to): push the callee-saved registers, store the stack pointer in *save, load `to`, pop
// the registers saved there and return into that context.
extern "C" void simt_switch_stack(void** save, void* to);
asm(R"(
  .text
  .p2align 4
  .globl simt_switch_stack
  .hidden simt_switch_stack
  .type simt_switch_stack, @function
simt_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch_stack, .-simt_switch_stack
)");
#else
#define SIMT_ASM_SWITCH 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt::detail {
namespace {

constexpr size_t kStackBytes = 64 * 1024;
// Fiber i's stack starts (i % 256) * 64 bytes below the top of its mapping. Without this stagger every stack top
// sits at the same page offset, so the few cache lines a resumed fiber touches all fall into one L1 set and a
// 256-thread block thrashes it (a 256^3 SGEMM ran 3x slower).
constexpr size_t kStaggerBytes = 256 * 64;
constexpr size_t kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxDynamicShared = 227 * 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute's opt-in
constexpr size_t kGuardBytes = 256;  // each side of the dynamic shared buffer
constexpr unsigned char kGuardByte = 0xA5;
constexpr size_t kAllocGuardBytes = 64;  // each side of a device allocation (and up to 63 bytes of rounding)
constexpr unsigned kNoThread = ~0u;  // an error found after the block ran (shared memory guards)

enum class State : uint8_t { runnable, barrier, warp, done };

struct Fiber {
#if SIMT_ASM_SWITCH
  void* sp = nullptr;  // saved stack pointer while suspended
#else
  jmp_buf ctx;
#endif
  char* map = nullptr;  // mmap'd region: guard page, then the stack
  size_t map_bytes = 0;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  State state = State::done;
};

// One lane's arrival at a warp collective.
struct Arrival {
  Site site;
  unsigned mask;
  WarpOp op;
  int arg, width;
  uint64_t in, out;
};

struct Warp {
  unsigned existing = 0;    // lanes that exist in this block (a partial last warp has fewer)
  unsigned arrived = 0;     // lanes waiting at a collective
  unsigned at_barrier = 0;  // lanes waiting at __syncthreads
  unsigned exited = 0;      // lanes that returned
  Arrival lanes[32];
};

// interleave: random, and a running thread may also yield before any shared memory access (Engine::rng).
enum class Order : uint8_t { linear, reverse, random, interleave };

// One access as the checks record it.
struct Tag {
  uint64_t block = 0;  // block_serial; 0: none
  uint32_t tid = 0;
  uint32_t barrier = 0;  // barrier_epoch at the access
  uint32_t warp = 0;     // warp_epoch of the thread's warp at the access
};
// Shared memory is shadowed per 2 bytes: lanes storing neighbouring bfloat16 elements of one word do not race
// (on a GPU a store writes only its own bytes).
constexpr size_t kSharedUnit = 2;
struct Shadow {
  Tag write, read1, read2;  // the last write, and two reads of different threads since it
};
struct Static {
  unsigned char* base;
  size_t bytes;
  const char* name;
  std::vector<Shadow> shadow;  // per 2 bytes (kSharedUnit)
  uint64_t launch = 0;         // launch_first_block of the launch that listed it in Engine::statics
};
struct LiveAlloc {
  uintptr_t data;
  size_t bytes;
  unsigned long long id;
  bool host_written;  // filled from the host (mark_host_written): its words are data, whatever their bits
};
struct BlockOrder;

// All emulator state. Launches are serialised by `launch_mutex`, so one instance serves the process.
struct Engine {
  std::mutex launch_mutex;
  std::mutex opt_in_mutex;
  std::unordered_map<const void*, size_t> opt_in;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
  bool schedule_initialised = false;
  Order order = Order::linear;
  uint64_t seed = 0;
  std::mt19937_64 rng;

  std::vector<std::unique_ptr<Fiber>> pool;  // fibers are created once and reused by every later launch
#if SIMT_ASM_SWITCH
  void* scheduler_sp = nullptr;
#else
  jmp_buf scheduler;
  Fiber* booting = nullptr;
  ucontext_t* boot_return = nullptr;
#endif
  Fiber* current = nullptr;

  // The launch.
  const LaunchConfig* config = nullptr;
  void (*thunk)(void*) = nullptr;
  void* thunk_ctx = nullptr;
  unsigned nthreads = 0;
  std::vector<unsigned> order_buf;
  std::vector<Warp> warps;
  unsigned char* shared_alloc = nullptr;  // guard | buffer | guard
  size_t shared_alloc_bytes = 0;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;

  // Checks (set_checks) and their state.
  bool checks_initialised = false;
  bool check_races = false, check_uninit = false, check_bounds = false;
  std::string check_error;  // the first violation found in this block, raised at the thread's next sync point
  unsigned check_error_thread = 0;
  uint64_t launch_first_block = 0;  // block_serial of the launch's first block: older records are ordered
  unsigned barrier_epoch = 0;       // completed __syncthreads of the block
  std::vector<unsigned> warp_epoch;  // completed collectives of each warp
  std::vector<Static*> statics;  // static shared arrays reached in this launch
  std::map<const void*, std::unique_ptr<Static>> static_map;  // every static shared array ever reached
  std::vector<Shadow> dynamic_shadow;                        // per 2 bytes of the dynamic shared buffer
  std::unordered_map<uintptr_t, Shadow> global_shadow;       // per word of device memory, this launch
  std::vector<LiveAlloc> launch_allocs;                      // device allocations, sorted by address
  const BlockOrder* block_order = nullptr;

  // The block.
  unsigned live = 0;
  unsigned exited = 0;
  unsigned first_exited = 0;
  unsigned barrier_count = 0;
  int barrier_mode = 0;
  int barrier_acc = 0;
  int barrier_result = 0;
  Site barrier_site{};
  unsigned barrier_first = 0;
  bool aborting = false;
  std::exception_ptr error;
  unsigned error_thread = 0;

#if SIMT_ASAN
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

Engine g_engine;
inline Engine& engine() { return g_engine; }
thread_local bool tl_in_launch = false;

// Thrown into the fibers of an aborted block so that they unwind their kernel frames; never escapes a fiber.
struct Aborting {};

// ---- fibers --------------------------------------------------------------------------------------------------

void switch_to_scheduler(Fiber* self) {
  Engine& E = engine();
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, E.sched_stack_bottom,
                                 E.sched_stack_size);
#endif
#if SIMT_ASM_SWITCH
  simt_switch_stack(&self->sp, E.scheduler_sp);
#else
  if (_setjmp(self->ctx) == 0) _longjmp(E.scheduler, 1);
#endif
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, &E.sched_stack_bottom, &E.sched_stack_size);
#endif
}

void resume(Fiber* f) {
  Engine& E = engine();
  E.current = f;
  threadIdx = f->tid;
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->map + getpagesize(), f->map_bytes - getpagesize());
#endif
#if SIMT_ASM_SWITCH
  simt_switch_stack(&E.scheduler_sp, f->sp);
#else
  if (_setjmp(E.scheduler) == 0) _longjmp(f->ctx, 1);
#endif
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  E.current = nullptr;
}

std::string thread_str(unsigned linear);
void raise_check_error(Engine& E);

[[noreturn]] void fiber_main() {
  Engine& E = engine();
  for (;;) {
    Fiber* self = E.current;
    if (!E.aborting) {
      try {
        E.thunk(E.thunk_ctx);
        raise_check_error(E);
      } catch (const Aborting&) {
      } catch (...) {
        if (!E.error) {
          E.error = std::current_exception();
          E.error_thread = self->linear;
        }
        E.aborting = true;
      }
    }
    self = E.current;
    self->state = State::done;
    --E.live;
    if (E.exited++ == 0) E.first_exited = self->linear;
    E.warps[self->linear / 32].exited |= 1u << (self->linear % 32);
    switch_to_scheduler(self);
  }
}

#if SIMT_ASM_SWITCH
// A new fiber's first switch "returns" here, onto an empty stack.
[[noreturn]] void fiber_entry() {
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &engine().sched_stack_bottom, &engine().sched_stack_size);
#endif
  fiber_main();
}
#else
void fiber_boot() {
  Engine& E = engine();
  if (_setjmp(E.booting->ctx) == 0) setcontext(E.boot_return);
  // The scheduler's first _longjmp into this fiber lands here; the fiber never leaves fiber_main.
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &E.sched_stack_bottom, &E.sched_stack_size);
#endif
  fiber_main();
}
#endif

Fiber* create_fiber(size_t index) {
  const size_t page = static_cast<size_t>(getpagesize());
  auto* f = new Fiber;
  f->map_bytes = kStackBytes + kStaggerBytes + page;
  void* mem = mmap(nullptr, f->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (mem == MAP_FAILED) {
    delete f;
    throw Error("simt: cannot map a fiber stack");
  }
  f->map = static_cast<char*>(mem);
  mprotect(f->map, page, PROT_NONE);  // a stack overflow faults here instead of corrupting a neighbour
#if SIMT_ASM_SWITCH
  // The stack as simt_switch_stack leaves it: six zeroed registers, then fiber_entry as the return address,
  // then a null return address for fiber_entry itself (so that it starts with the ABI's stack alignment).
  auto** top = reinterpret_cast<void**>(f->map + f->map_bytes - (index % 256) * 64);
  top[-1] = nullptr;
  top[-2] = reinterpret_cast<void*>(&fiber_entry);
  for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
  f->sp = top - 8;
#else
  Engine& E = engine();
  ucontext_t uc, back;
  getcontext(&uc);
  uc.uc_stack.ss_sp = f->map + page;
  uc.uc_stack.ss_size = kStackBytes + kStaggerBytes - (index % 256) * 64;
  uc.uc_link = nullptr;
  makecontext(&uc, fiber_boot, 0);
  E.booting = f;
  E.boot_return = &back;
  swapcontext(&back, &uc);  // runs fiber_boot up to its _setjmp; from now on only _setjmp/_longjmp
  E.booting = nullptr;
#endif
  return f;
}

// ---- messages --------------------------------------------------------------------------------------------------

std::string dim_str(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}
uint3 unlinear(unsigned linear) {
  return uint3{linear % blockDim.x, (linear / blockDim.x) % blockDim.y, linear / (blockDim.x * blockDim.y)};
}
std::string thread_str(unsigned linear) { return dim_str(unlinear(linear)); }
std::string site_str(const Site& s) {
  return std::string(s.name) + " at " + s.file + ":" + std::to_string(s.line);
}
bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && a.counter == b.counter && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

[[noreturn]] void fail(const std::string& what) { throw Error(what); }

void check_resumed() {
  if (engine().aborting) throw Aborting{};
}

// ---- device memory (memory.h) ---------------------------------------------------------------------------------

struct Alloc {
  unsigned char* base;  // guard | data | guard
  size_t bytes, total;
  unsigned long long id;
  std::string label;
  bool host_written = false;
  // The graph pools that may still use it: the capture that made it, and every capture open when it was freed
  // (a second graph can read what the first wrote). It is freed once it is released and all of them are gone.
  std::vector<uint64_t> pools;
  bool released = false;  // freed by its owner, kept alive for the graphs that may still use it
};
struct Registry {
  std::mutex mutex;
  std::map<uintptr_t, Alloc> live;  // by data address
  unsigned long long next_id = 1;
  uint64_t open_pool = 0;           // the pool of the capture in progress (one at a time on sim)
  uint64_t next_pool = 1;
};
Registry& registry() {
  static Registry* r = new Registry;  // leaked: Python may free tensors after static destructors ran
  return *r;
}

// The poison pattern's byte at `offset` from a word-aligned origin (little-endian 0x7FFFFFFF).
inline unsigned char poison_byte(size_t offset) { return offset % 4 == 3 ? 0x7F : 0xFF; }
void fill_poison(unsigned char* p, size_t bytes, size_t origin_offset = 0) {
  for (size_t i = 0; i < bytes; ++i) p[i] = poison_byte(origin_offset + i);
}

// Guard bytes of an allocation: the front zone and everything after data + bytes.
size_t tail_guard_bytes(const Alloc& a) { return a.total - kAllocGuardBytes - a.bytes; }
void poison_guards(Alloc& a) {
  fill_poison(a.base, kAllocGuardBytes);
  fill_poison(a.base + kAllocGuardBytes + a.bytes, tail_guard_bytes(a), a.bytes);
#if SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(a.base, kAllocGuardBytes);
  ASAN_POISON_MEMORY_REGION(a.base + kAllocGuardBytes + a.bytes, tail_guard_bytes(a));
#endif
}
std::string alloc_str(const Alloc& a) {
  return "device allocation #" + std::to_string(a.id) + " (" + a.label + ", " + std::to_string(a.bytes) + " bytes)";
}

// After a launch: any guard byte changed is a write outside an allocation. Repairs the guards it reports.
void check_allocation_guards(const char* kernel_name) {
  Registry& R = registry();
  std::string error;
  {
    std::lock_guard<std::mutex> lock(R.mutex);
    for (auto& [key, a] : R.live) {
#if SIMT_ASAN
      ASAN_UNPOISON_MEMORY_REGION(a.base, kAllocGuardBytes);
      ASAN_UNPOISON_MEMORY_REGION(a.base + kAllocGuardBytes + a.bytes, tail_guard_bytes(a));
#endif
      long long first = 0, last = 0;
      bool dirty = false;
      for (size_t i = 0; i < kAllocGuardBytes; ++i)
        if (a.base[i] != poison_byte(i)) {
          if (!dirty) first = static_cast<long long>(i) - static_cast<long long>(kAllocGuardBytes);
          last = static_cast<long long>(i) - static_cast<long long>(kAllocGuardBytes);
          dirty = true;
        }
      const unsigned char* tail = a.base + kAllocGuardBytes + a.bytes;
      for (size_t i = 0; i < tail_guard_bytes(a); ++i)
        if (tail[i] != poison_byte(a.bytes + i)) {
          if (!dirty) first = static_cast<long long>(a.bytes + i);
          last = static_cast<long long>(a.bytes + i);
          dirty = true;
        }
      if (dirty && error.empty())
        error = std::string("simt: kernel '") + kernel_name + "' wrote outside " + alloc_str(a) + ": byte offsets " +
                std::to_string(first) + ".." + std::to_string(last) +
                (first < 0 ? " (before its start)" : " (past its end)");
      if (dirty) poison_guards(a);
      else {
#if SIMT_ASAN
        ASAN_POISON_MEMORY_REGION(a.base, kAllocGuardBytes);
        ASAN_POISON_MEMORY_REGION(a.base + kAllocGuardBytes + a.bytes, tail_guard_bytes(a));
#endif
      }
    }
  }
  if (!error.empty()) throw Error(error);
}

// ---- the checks (set_checks): shadow memory fed by the instrumentation hooks at the end of this file --------


// Read by every hook (from any host thread running instrumented code): true only while a launch runs with a check on.
std::atomic<bool> g_checks_active{false};

std::string block_of(const Engine& E, uint64_t serial);

// Why two accesses are unordered, or nullptr if they are ordered (or the older one is stale).
const char* unordered(const Engine& E, const Tag& old, const Tag& cur, bool global) {
  if (old.block == 0) return nullptr;
  if (old.block != cur.block) {
    if (!global || old.block < E.launch_first_block) return nullptr;  // another block's shared memory; a launch ago
    return "blocks of one launch are unordered: use an atomic or a second kernel";
  }
  if (old.tid == cur.tid || old.barrier != cur.barrier) return nullptr;
  if (old.tid / 32 != cur.tid / 32) return "different warps with no __syncthreads between them";
  if (old.warp != cur.warp) return nullptr;
  return "the same warp with no __syncwarp or other warp collective between them (lanes are not lock-step)";
}

void violation(Engine& E, std::string what) {
  if (!E.check_error.empty()) return;
  E.check_error = std::move(what);
  E.check_error_thread = E.current->linear;
}

std::string who_str(const Engine& E, const Tag& t, bool with_block) {
  std::string s = "thread " + thread_str(t.tid);
  if (with_block) s += " of block " + block_of(E, t.block);
  return s;
}

void record(Engine& E, Shadow& sh, const Tag& cur, bool write, bool global, const std::function<std::string()>& where) {
  if (E.check_races) {
    const auto race = [&](const Tag& old, bool old_write) {
      const char* why = unordered(E, old, cur, global);
      if (!why) return false;
      const bool blocks = old.block != cur.block;
      violation(E, std::string(global ? "device memory" : "shared memory") + " race on " + where() + ": " +
                       who_str(E, cur, blocks) + (write ? " writes it and " : " reads it and ") +
                       who_str(E, old, blocks) + (old_write ? " wrote it" : " read it") + ", " + why);
      return true;
    };
    if (race(sh.write, true)) return;
    if (write && (race(sh.read1, false) || race(sh.read2, false))) return;
  }
  if (write) {
    sh.write = cur;
    sh.read1 = sh.read2 = Tag{};
  } else if (sh.read1.block != cur.block || sh.read1.barrier != cur.barrier || sh.read1.tid == cur.tid) {
    if (sh.read1.block != cur.block || sh.read1.barrier != cur.barrier) sh.read1 = cur;
  } else {
    sh.read2 = cur;
  }
}

void shared_access(Engine& E, std::vector<Shadow>& shadow, size_t offset, size_t size, bool write, const char* region,
                   size_t region_bytes) {
  const Tag cur{block_serial, E.current->linear, E.barrier_epoch, E.warp_epoch[E.current->linear / 32]};
  for (size_t w = offset / kSharedUnit; w <= (offset + size - 1) / kSharedUnit && w < shadow.size(); ++w) {
    Shadow& sh = shadow[w];
    const auto where = [&] {
      return "byte offset " + std::to_string(w * kSharedUnit) + " of " + region + " (" + std::to_string(region_bytes) + " bytes)";
    };
    if (!write && E.check_uninit && sh.write.block != cur.block) {
      violation(E, "uninitialised shared memory read: thread " + thread_str(cur.tid) + " reads " + where() +
                       ", which no thread of this block has written");
      return;
    }
    record(E, sh, cur, write, false, where);
    if (!E.check_error.empty()) return;
  }
}

// Keys of global_shadow for 2-byte halves (user-space addresses never reach bit 63).
constexpr uintptr_t kNarrowKey = uintptr_t{1} << 63;

void global_access(Engine& E, const LiveAlloc& a, uintptr_t addr, size_t size, bool write) {
  const Tag cur{block_serial, E.current->linear, E.barrier_epoch, E.warp_epoch[E.current->linear / 32]};
  // Per word; an access narrower than a word (a bfloat16 store) is tracked per 2-byte half, under keys of their own,
  // so that two threads storing the two halves of one word are not a race (they are not on a GPU).
  const bool narrow = size < 4;
  const uintptr_t unit = narrow ? 2 : 4;
  for (uintptr_t w = addr / unit; w <= (addr + size - 1) / unit; ++w) {
    Shadow& sh = E.global_shadow[narrow ? (w | kNarrowKey) : w];
    const auto where = [&] {
      Registry& R = registry();
      std::lock_guard<std::mutex> lock(R.mutex);
      const auto it = R.live.find(a.data);
      return "byte offset " + std::to_string(w * unit - a.data) + " of " +
             (it != R.live.end() ? alloc_str(it->second) : "device allocation #" + std::to_string(a.id));
    };
    record(E, sh, cur, write, true, where);
    if (!E.check_error.empty()) return;
  }
}

// Schedule "interleave": before one shared memory access in four, the thread lets the others run, so the lanes of
// a warp interleave between collectives (code that assumes lock-step lanes sees another order every time).
void maybe_yield(Engine& E) {
  if (E.order != Order::interleave || (E.rng() & 3) != 0) return;
  switch_to_scheduler(E.current);  // stays runnable; the scheduler's next sweep resumes it
}

// A read of dynamic shared memory that a cp.async of this block still has in flight (its words hold the in-flight
// pattern until the copy lands at the issuing thread's cp.async.wait_group): a missing or short wait, or a missing
// barrier after another thread's wait. The pattern only triggers the lookup; the pending copies decide.
bool async_copy_read(Engine& E, uintptr_t a, size_t size, uintptr_t lo) {
  for (uintptr_t w = a & ~uintptr_t{3}; w < a + size; w += 4) {
    uint32_t word;
    std::memcpy(&word, reinterpret_cast<const void*>(w), 4);
    if (word != ::simt::tc::kAsyncPoison) continue;
    const int issuer = ::simt::tc::copy_in_flight(reinterpret_cast<const void*>(w));
    if (issuer < 0) continue;
    violation(E, "shared memory read before its cp.async landed: thread " + thread_str(E.current->linear) +
                     " reads byte offset " + std::to_string(w - lo) + " of the dynamic shared buffer, which a "
                     "cp.async of thread " + thread_str(static_cast<unsigned>(issuer)) +
                     " still has in flight (a missing or short cp.async.wait_group, or no barrier after it)");
    return true;
  }
  return false;
}

void on_access(const void* ptr, size_t size, bool write) {
  Engine& E = engine();
  if (!tl_in_launch || !E.current || !E.check_error.empty() || size == 0) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t alloc_lo = reinterpret_cast<uintptr_t>(E.shared_alloc);
  const bool any_check = E.check_races || E.check_uninit || E.check_bounds;
  if (a < alloc_lo + E.shared_bytes + 2 * kGuardBytes && a + size > alloc_lo) {
    maybe_yield(E);
    if (!any_check) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(E.shared);
    const size_t bytes = E.config->dynamic_shared_bytes;
    if (a < lo || a + size > lo + bytes) {
      if (E.check_bounds)
        violation(E, std::string("out-of-bounds shared memory ") + (write ? "write" : "read") + ": thread " +
                         thread_str(E.current->linear) + " accesses byte offset " +
                         std::to_string(static_cast<long long>(a - lo)) + " of the dynamic shared buffer (" +
                         std::to_string(bytes) + " bytes)");
      return;
    }
    if (!write && E.check_uninit && async_copy_read(E, a, size, lo)) return;
    if (E.check_races || E.check_uninit)
      shared_access(E, E.dynamic_shadow, a - lo, size, write, "the dynamic shared buffer", bytes);
    return;
  }
  for (Static* st : E.statics) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(st->base);
    if (a >= lo && a < lo + st->bytes) {
      maybe_yield(E);
      if (E.check_races || E.check_uninit) {
        const std::string region = std::string("static shared array '") + st->name + "'";
        shared_access(E, st->shadow, a - lo, size, write, region.c_str(), st->bytes);
      }
      return;
    }
  }
  if (!any_check) return;
  // Device allocations, with their guard zones: the last one starting at or below the end of the access.
  auto& v = E.launch_allocs;
  auto it = std::upper_bound(v.begin(), v.end(), a + size - 1 + kAllocGuardBytes,
                             [](uintptr_t x, const LiveAlloc& l) { return x < l.data; });
  while (it != v.begin()) {
    --it;
    if (a + size + kAllocGuardBytes <= it->data) continue;                  // the access is before its front guard
    if (a >= it->data + ((it->bytes + 63) & ~size_t{63}) + kAllocGuardBytes) break;  // after its tail guard
    if (a < it->data || a + size > it->data + it->bytes) {
      if (E.check_bounds) {
        Registry& R = registry();
        std::string name;
        {
          std::lock_guard<std::mutex> lock(R.mutex);
          const auto found = R.live.find(it->data);
          name = found != R.live.end() ? alloc_str(found->second) : "device allocation #" + std::to_string(it->id);
        }
        violation(E, std::string("out-of-bounds device memory ") + (write ? "write" : "read") + ": thread " +
                         thread_str(E.current->linear) + " accesses byte offset " +
                         std::to_string(static_cast<long long>(a - it->data)) + " of " + name);
      }
      return;
    }
    if (E.check_uninit && !write && size >= 4 && !it->host_written) {
      // A fresh allocation holds the poison word until something writes it (real data never has this NaN).
      for (uintptr_t w = (a + 3) & ~uintptr_t{3}; w + 4 <= a + size; w += 4) {
        uint32_t word;
        std::memcpy(&word, reinterpret_cast<const void*>(w), 4);
        if (word != kPoisonWord) continue;
        Registry& R = registry();
        std::string name;
        {
          std::lock_guard<std::mutex> lock(R.mutex);
          const auto found = R.live.find(it->data);
          name = found != R.live.end() ? alloc_str(found->second) : "device allocation #" + std::to_string(it->id);
        }
        violation(E, "uninitialised device memory read: thread " + thread_str(E.current->linear) +
                         " reads byte offset " + std::to_string(w - it->data) + " of " + name +
                         ", which still holds the allocation's poison (nothing has written it)");
        return;
      }
    }
    if (E.check_races) global_access(E, *it, a, size, write);
    return;
  }
}

// Raises the first violation the hooks found, at the calling thread's sync point or exit.
void raise_check_error(Engine& E) {
  if (E.check_error.empty()) return;
  std::string what = std::move(E.check_error);
  E.check_error.clear();
  E.error_thread = E.check_error_thread;
  g_checks_active = false;  // nothing more to record in this launch
  throw Error("simt: " + what);
}

// ---- warp collectives ----------------------------------------------------------------------------------------

bool valid_width(int width) { return width >= 1 && width <= 32 && (width & (width - 1)) == 0; }

// The lane a shuffle reads, by the PTX ISA's shfl.sync rules (c = width-derived clamp/segment mask).
int shuffle_source(WarpOp op, int lane, int arg, int width) {
  const int seg_start = lane & ~(width - 1);
  const int seg_end = seg_start + width - 1;
  switch (op) {
    case WarpOp::shfl_idx: return seg_start + (arg & (width - 1));
    case WarpOp::shfl_up: { const int j = lane - arg; return j < seg_start ? lane : j; }
    case WarpOp::shfl_down: { const int j = lane + arg; return j > seg_end ? lane : j; }
    case WarpOp::shfl_xor: { const int j = lane ^ (arg & 31); return j > seg_end ? lane : j; }
    default: return lane;
  }
}

void complete_collective(Warp& w, unsigned group, unsigned warp_index) {
  const Arrival& first = w.lanes[std::countr_zero(group)];
  const WarpOp op = first.op;
  uint64_t reduced = 0;
  if (op == WarpOp::ballot || op == WarpOp::any || op == WarpOp::all) {
    unsigned ballot = 0;
    for (unsigned m = group; m; m &= m - 1) {
      const int l = std::countr_zero(m);
      if (w.lanes[l].in) ballot |= 1u << l;
    }
    reduced = op == WarpOp::ballot ? ballot : op == WarpOp::any ? (ballot != 0) : (ballot == group);
  } else if (op == WarpOp::reduce_add || op == WarpOp::reduce_min || op == WarpOp::reduce_max) {
    const bool is_signed = first.arg != 0;
    int64_t acc = 0;
    bool start = true;
    for (unsigned m = group; m; m &= m - 1) {
      const uint64_t bits = w.lanes[std::countr_zero(m)].in;
      const int64_t v = is_signed ? static_cast<int64_t>(bits) : static_cast<int64_t>(bits & 0xffffffffu);
      if (op == WarpOp::reduce_add) acc += v;
      else if (start) acc = v;
      else acc = op == WarpOp::reduce_min ? std::min(acc, v) : std::max(acc, v);
      start = false;
    }
    reduced = static_cast<uint64_t>(acc) & 0xffffffffu;
  }
  for (unsigned m = group; m; m &= m - 1) {
    const int l = std::countr_zero(m);
    Arrival& a = w.lanes[l];
    switch (op) {
      case WarpOp::shfl_idx:
      case WarpOp::shfl_up:
      case WarpOp::shfl_down:
      case WarpOp::shfl_xor: {
        const int src = shuffle_source(op, l, a.arg, a.width);
        if (!(group & (1u << src)))
          fail("simt: " + site_str(a.site) + ": thread " + thread_str(warp_index * 32 + l) + " reads lane " +
               std::to_string(src) + ", which is not in the mask (undefined on a GPU)");
        a.out = w.lanes[src].in;
        break;
      }
      case WarpOp::match_any: {
        unsigned same = 0;
        for (unsigned k = group; k; k &= k - 1)
          if (w.lanes[std::countr_zero(k)].in == a.in) same |= 1u << std::countr_zero(k);
        a.out = same;
        break;
      }
      default: a.out = reduced; break;
    }
  }
}

}  // namespace

void note_access(const void* ptr, size_t size, bool write) {
  if (g_checks_active.load(std::memory_order_relaxed)) on_access(ptr, size, write);
}

// An 8- or 16-byte access (float2, float4, uint2, uint4) must be naturally aligned: a GPU faults on a misaligned one,
// where the host CPU would quietly do it. Checked for shared and device memory (with the bounds check), and raised at
// once: the access that follows may itself crash the host.
void on_vector_access(const void* ptr, size_t size, bool write) {
  Engine& E = engine();
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  if (a % size != 0 && tl_in_launch && E.current && E.check_bounds && E.check_error.empty()) {
    const char* region = nullptr;
    const uintptr_t shared_lo = reinterpret_cast<uintptr_t>(E.shared_alloc);
    if (a >= shared_lo && a < shared_lo + E.shared_bytes + 2 * kGuardBytes) region = "shared memory";
    for (const Static* st : E.statics)
      if (a >= reinterpret_cast<uintptr_t>(st->base) && a < reinterpret_cast<uintptr_t>(st->base) + st->bytes)
        region = "shared memory";
    if (!region) {
      const auto& v = E.launch_allocs;
      auto it = std::upper_bound(v.begin(), v.end(), a, [](uintptr_t x, const LiveAlloc& l) { return x < l.data; });
      if (it != v.begin() && a < std::prev(it)->data + std::prev(it)->bytes) region = "device memory";
    }
    if (region)
      fail("simt: misaligned " + std::to_string(size) + "-byte " + (write ? "store to " : "load from ") + region +
           ": thread " + thread_str(E.current->linear) + " accesses an address " + std::to_string(a % size) +
           " bytes past a " + std::to_string(size) + "-byte boundary (a GPU faults on it)");
  }
  on_access(ptr, size, write);
}

uint64_t warp_collective(Site site, WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  Engine& E = engine();
  Fiber* self = E.current;
  if (!self) fail(std::string("simt: ") + site.name + " called outside a kernel");
  const unsigned lane = self->linear % 32;
  const unsigned warp_index = self->linear / 32;
  raise_check_error(E);
  Warp& w = E.warps[warp_index];
  const unsigned bit = 1u << lane;
  const auto who = [&] { return "thread " + thread_str(self->linear) + " (lane " + std::to_string(lane) + ")"; };
  if (!(mask & bit)) fail("simt: " + site_str(site) + ": " + who() + " is not in its own mask");
  if ((op == WarpOp::shfl_idx || op == WarpOp::shfl_up || op == WarpOp::shfl_down || op == WarpOp::shfl_xor) &&
      !valid_width(width))
    fail("simt: " + site_str(site) + ": invalid shuffle width " + std::to_string(width) +
         " (must be a power of two in [1, 32])");
  // Lanes past the end of a partial last warp do not exist: a full mask there names only the existing lanes.
  const unsigned group = mask & w.existing;
  if (const unsigned gone = group & w.exited)
    fail("simt: " + site_str(site) + ": " + who() + " waits for lane " + std::to_string(std::countr_zero(gone)) +
         ", which has already returned");
  if (const unsigned waiting = group & w.at_barrier) {
    const unsigned other = warp_index * 32 + std::countr_zero(waiting);
    fail("simt: divergent warp: " + who() + " reached " + site_str(site) + " while thread " + thread_str(other) +
         " named in its mask waits at " + site_str(E.barrier_site));
  }
  // Each earlier arrival was checked the same way, so comparing with one waiting lane of the group suffices.
  if (const unsigned waiting = group & w.arrived) {
    const unsigned m = waiting;
    const Arrival& o = w.lanes[std::countr_zero(m)];
    if (!same_site(o.site, site) || o.mask != mask) {
      char masks[64] = "";
      if (o.mask != mask) std::snprintf(masks, sizeof masks, " (mask 0x%08x vs 0x%08x)", mask, o.mask);
      fail("simt: divergent warp collective: " + who() + " reached " + site_str(site) + " while thread " +
           thread_str(warp_index * 32 + std::countr_zero(m)) + " waits at " + site_str(o.site) + masks);
    }
  }
  Arrival& mine = w.lanes[lane];
  mine = Arrival{site, mask, op, arg, width, value, 0};
  if (((w.arrived | bit) & group) == group) {
    // The last lane to arrive completes the collective for the whole group and carries on without a switch.
    complete_collective(w, group, warp_index);
    ++E.warp_epoch[warp_index];
    w.arrived &= ~group;
    for (unsigned m = group & ~bit; m; m &= m - 1)
      E.pool[warp_index * 32 + std::countr_zero(m)]->state = State::runnable;
    return mine.out;
  }
  w.arrived |= bit;
  self->state = State::warp;
  switch_to_scheduler(self);
  check_resumed();
  return mine.out;
}

unsigned active_mask() {
  Engine& E = engine();
  if (!E.current) return 0;
  const Warp& w = E.warps[E.current->linear / 32];
  return w.existing & ~w.exited;
}

void trap(const char* why) { fail(std::string("simt: ") + why); }

int syncthreads(Site site, int mode, int predicate) {
  Engine& E = engine();
  Fiber* self = E.current;
  if (!self) fail("simt: __syncthreads called outside a kernel");
  raise_check_error(E);
  if (E.barrier_count == 0) {
    E.barrier_site = site;
    E.barrier_mode = mode;
    E.barrier_first = self->linear;
    E.barrier_acc = mode == 2 ? 1 : 0;
  } else if (!same_site(site, E.barrier_site)) {
    fail("simt: divergent barrier: thread " + thread_str(self->linear) + " reached " + site_str(site) +
         " while thread " + thread_str(E.barrier_first) + " waits at " + site_str(E.barrier_site));
  }
  switch (mode) {
    case 1: E.barrier_acc += predicate; break;
    case 2: E.barrier_acc &= predicate; break;
    case 3: E.barrier_acc |= predicate; break;
    default: break;
  }
  ++E.barrier_count;
  self->state = State::barrier;
  E.warps[self->linear / 32].at_barrier |= 1u << (self->linear % 32);
  switch_to_scheduler(self);
  check_resumed();
  return E.barrier_result;
}

namespace {

// ---- the scheduler -----------------------------------------------------------------------------------------

void parse_schedule(const std::string& s, Order& order, uint64_t& seed) {
  if (s.empty() || s == "linear") {
    order = Order::linear;
  } else if (s == "reverse") {
    order = Order::reverse;
  } else if (s == "random" || s.rfind("random:", 0) == 0 || s == "interleave" || s.rfind("interleave:", 0) == 0) {
    const bool interleave = s[0] == 'i';
    order = interleave ? Order::interleave : Order::random;
    seed = 0;
    const size_t prefix = interleave ? 11 : 7;
    if (s.size() > prefix) {
      const std::string digits = s.substr(prefix);
      if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
        throw std::invalid_argument("simt: bad schedule '" + s + "': the seed of " + s.substr(0, prefix) +
                                    "SEED must be a number");
      seed = std::stoull(digits);
    }
  } else {
    throw std::invalid_argument("simt: unknown schedule '" + s +
                                "' (expected linear, reverse, random:SEED or interleave:SEED)");
  }
}

void parse_checks(const std::string& text, bool& races, bool& uninit, bool& bounds) {
  races = uninit = bounds = false;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string name = text.substr(start, end - start);
    if (name == "races") races = true;
    else if (name == "uninit") uninit = true;
    else if (name == "bounds") bounds = true;
    else if (name == "all") races = uninit = bounds = true;
    else if (!name.empty() && name != "none")
      throw std::invalid_argument("simt: unknown check '" + name + "' (expected races, uninit, bounds, all or none)");
    start = end + 1;
  }
}

void init_checks_from_env(Engine& E) {
  if (E.checks_initialised) return;
  E.checks_initialised = true;
  if (const char* env = std::getenv("VGG_SIM_CHECKS")) {
    try {
      parse_checks(env, E.check_races, E.check_uninit, E.check_bounds);
    } catch (const std::invalid_argument& e) {
      throw Error(std::string(e.what()) + " in VGG_SIM_CHECKS");
    }
  }
}

void init_schedule_from_env(Engine& E) {
  if (E.schedule_initialised) return;
  E.schedule_initialised = true;
  const char* env = std::getenv("VGG_SIM_SCHEDULE");
  if (env) {
    try {
      parse_schedule(env, E.order, E.seed);
    } catch (const std::invalid_argument& e) {
      throw Error(std::string(e.what()) + " in VGG_SIM_SCHEDULE");
    }
  }
  E.rng.seed(E.seed);
}

void order_threads(Engine& E) {
  auto& o = E.order_buf;
  if (E.order == Order::random || E.order == Order::interleave) std::shuffle(o.begin(), o.end(), E.rng);
}

// A thread that waits at a collective whose lanes can no longer arrive: name both.
[[noreturn]] void report_stall(Engine& E) {
  for (unsigned t = 0; t < E.nthreads; ++t) {
    const Fiber* f = E.pool[t].get();
    if (f->state != State::warp) continue;
    const Warp& w = E.warps[t / 32];
    const Arrival& a = w.lanes[t % 32];
    const unsigned missing = (a.mask & w.existing) & ~w.arrived;
    const unsigned lane = std::countr_zero(missing);
    const unsigned other = (t / 32) * 32 + lane;
    E.error_thread = t;
    if (missing == 0) break;
    if (w.exited & (1u << lane))
      fail("simt: " + site_str(a.site) + ": thread " + thread_str(t) + " waits for lane " + std::to_string(lane) +
           ", which has returned");
    fail("simt: divergent warp: thread " + thread_str(t) + " waits at " + site_str(a.site) + " while thread " +
         thread_str(other) + " named in its mask waits at " + site_str(E.barrier_site));
  }
  fail("simt: internal error: block stalled with no waiting thread");
}

// Runs one block to completion; on error, unwinds every fiber and rethrows.
void run_block(Engine& E) {
  for (unsigned t = 0; t < E.nthreads; ++t) E.pool[t]->state = State::runnable;
  for (Warp& w : E.warps) w.arrived = w.at_barrier = w.exited = 0;
  E.live = E.nthreads;
  E.exited = 0;
  E.barrier_count = 0;
  E.aborting = false;
  E.error = nullptr;
  E.error_thread = kNoThread;
  if (E.order == Order::reverse) std::reverse(E.order_buf.begin(), E.order_buf.end());

  try {
    while (E.live > 0) {
      order_threads(E);
      bool progress = false;
      for (unsigned t : E.order_buf) {
        Fiber* f = E.pool[t].get();
        if (f->state != State::runnable) continue;
        resume(f);
        progress = true;
        if (E.aborting) break;
      }
      if (E.aborting) break;
      if (E.live == 0) break;
      if (E.barrier_count == E.live) {
        if (E.exited > 0) {
          E.error_thread = E.barrier_first;
          fail("simt: divergent barrier: " + std::to_string(E.live) + " threads wait at " + site_str(E.barrier_site) +
               " but thread " + thread_str(E.first_exited) + " has returned (every thread of a block must reach "
               "each __syncthreads)");
        }
        E.barrier_result = E.barrier_acc;
        E.barrier_count = 0;
        ++E.barrier_epoch;
        for (unsigned t = 0; t < E.nthreads; ++t)
          if (E.pool[t]->state == State::barrier) E.pool[t]->state = State::runnable;
        for (Warp& w : E.warps) w.at_barrier = 0;
        continue;
      }
      if (!progress) report_stall(E);
    }
    raise_check_error(E);
  } catch (...) {
    if (!E.error) E.error = std::current_exception();
    E.aborting = true;
  }
  if (E.order == Order::reverse) std::reverse(E.order_buf.begin(), E.order_buf.end());
  if (E.aborting) {
    // Let every unfinished fiber unwind (its barrier or collective throws Aborting) so the pool is reusable.
    for (unsigned t = 0; t < E.nthreads; ++t)
      if (E.pool[t]->state != State::done) resume(E.pool[t].get());
    std::rethrow_exception(E.error);
  }
}

void prepare_shared(Engine& E, size_t bytes) {
  const size_t rounded = (bytes + 15) & ~size_t{15};
  const size_t need = rounded + 2 * kGuardBytes;
  if (need > E.shared_alloc_bytes) {
    std::free(E.shared_alloc);
    E.shared_alloc = static_cast<unsigned char*>(std::aligned_alloc(64, (need + 63) & ~size_t{63}));
    if (!E.shared_alloc) throw Error("simt: cannot allocate dynamic shared memory");
    E.shared_alloc_bytes = need;
  }
  E.shared = E.shared_alloc + kGuardBytes;
  E.shared_bytes = rounded;
}

void poison_shared(Engine& E) {
#if SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(E.shared_alloc, E.shared_bytes + 2 * kGuardBytes);
#endif
  std::memset(E.shared_alloc, kGuardByte, kGuardBytes);
  fill_poison(E.shared, E.shared_bytes);
  std::memset(E.shared + E.shared_bytes, kGuardByte, kGuardBytes);
#if SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(E.shared_alloc, kGuardBytes);
  ASAN_POISON_MEMORY_REGION(E.shared + E.config->dynamic_shared_bytes,
                            E.shared_bytes - E.config->dynamic_shared_bytes + kGuardBytes);
#endif
}

void check_shared_guards(Engine& E) {
#if SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(E.shared_alloc, E.shared_bytes + 2 * kGuardBytes);
#endif
  const size_t size = E.config->dynamic_shared_bytes;
  for (size_t i = 0; i < kGuardBytes; ++i)
    if (E.shared_alloc[i] != kGuardByte)
      fail("simt: shared memory overflow: a thread wrote " + std::to_string(kGuardBytes - i) +
           " bytes before the start of the dynamic shared buffer (" + std::to_string(size) + " bytes)");
  // Bytes between the requested size and the 16-byte rounding count as overflow too.
  const unsigned char* tail = E.shared + size;
  for (size_t i = 0; i < E.shared_bytes - size + kGuardBytes; ++i)
    if (tail[i] != (i < E.shared_bytes - size ? poison_byte(size + i) : kGuardByte))
      fail("simt: shared memory overflow: a thread wrote at byte offset " + std::to_string(size + i) +
           " of the dynamic shared buffer, which has " + std::to_string(size) + " bytes");
}

void validate(const LaunchConfig& c) {
  const auto bad = [&](const std::string& what) {
    throw Error(std::string("simt: invalid launch of kernel '") + c.kernel_name + "': " + what);
  };
  const auto e = [](const Extent& x) {
    return "(" + std::to_string(x.x) + "," + std::to_string(x.y) + "," + std::to_string(x.z) + ")";
  };
  if (c.grid.x < 1 || c.grid.y < 1 || c.grid.z < 1) bad("grid " + e(c.grid) + " has an empty dimension");
  if (c.block.x < 1 || c.block.y < 1 || c.block.z < 1) bad("block " + e(c.block) + " has an empty dimension");
  if (c.grid.x > 2147483647) bad("grid.x = " + std::to_string(c.grid.x) + " exceeds 2^31-1");
  if (c.grid.y > 65535) bad("grid.y = " + std::to_string(c.grid.y) + " exceeds 65535");
  if (c.grid.z > 65535) bad("grid.z = " + std::to_string(c.grid.z) + " exceeds 65535");
  if (c.block.x > 1024) bad("block.x = " + std::to_string(c.block.x) + " exceeds 1024");
  if (c.block.y > 1024) bad("block.y = " + std::to_string(c.block.y) + " exceeds 1024");
  if (c.block.z > 64) bad("block.z = " + std::to_string(c.block.z) + " exceeds 64");
  if (c.block.x * c.block.y * c.block.z > static_cast<int64_t>(kMaxThreadsPerBlock))
    bad("block " + e(c.block) + " has " + std::to_string(c.block.x * c.block.y * c.block.z) +
        " threads, more than 1024");
  if (c.dynamic_shared_bytes > kMaxDynamicShared)
    bad("dynamic shared memory of " + std::to_string(c.dynamic_shared_bytes) + " bytes exceeds 227 KiB (" +
        std::to_string(kMaxDynamicShared) + " bytes)");
  if (c.dynamic_shared_bytes > kDefaultDynamicShared) {
    Engine& E = engine();
    size_t allowed = kDefaultDynamicShared;
    {
      std::lock_guard<std::mutex> lock(E.opt_in_mutex);
      const auto it = E.opt_in.find(c.kernel);
      if (it != E.opt_in.end()) allowed = std::max(allowed, it->second);
    }
    if (c.dynamic_shared_bytes > allowed)
      bad("dynamic shared memory of " + std::to_string(c.dynamic_shared_bytes) + " bytes exceeds " +
          std::to_string(allowed) + " bytes: above 48 KiB a kernel must opt in first with "
          "vgg_opt_in_dynamic_shared (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, "
          "bytes))");
  }
  if (const int bound = launch_bound(c.kernel); bound > 0 && c.block.x * c.block.y * c.block.z > bound)
    bad("block " + e(c.block) + " has " + std::to_string(c.block.x * c.block.y * c.block.z) +
        " threads, more than the kernel's __launch_bounds__(" + std::to_string(bound) + ")");
}

// Visits the blocks of the grid in schedule order without materialising a permutation: random order is an
// affine map i -> (a*i + c) mod n with gcd(a, n) = 1.
struct BlockOrder {
  uint64_t n, a = 1, c = 0;
  bool reverse = false;
  BlockOrder(Engine& E, uint64_t count) : n(count) {
    if (E.order == Order::reverse) reverse = true;
    if ((E.order == Order::random || E.order == Order::interleave) && n > 1) {
      do a = E.rng() % n; while (std::gcd(a, n) != 1);
      c = E.rng() % n;
    }
  }
  uint64_t operator[](uint64_t i) const {
    if (reverse) return n - 1 - i;
    return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * i + c) % n);
  }
};

std::string where(const Engine& E) {
  return E.error_thread == kNoThread ? std::string() : " thread " + thread_str(E.error_thread);
}

std::string block_of(const Engine& E, uint64_t serial) {
  if (!E.block_order || serial < E.launch_first_block) return "?";
  const uint64_t b = (*E.block_order)[serial - E.launch_first_block];
  const uint64_t gx = gridDim.x, gy = gridDim.y;
  return dim_str(uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                       static_cast<unsigned>(b / (gx * gy))});
}

// What the checks need for this launch: the device allocations and fresh shadow state.
void prepare_checks(Engine& E, unsigned nwarps) {
  E.statics.clear();
  E.warp_epoch.assign(nwarps, 0);
  E.launch_first_block = block_serial + 1;
  const bool checks = E.check_races || E.check_uninit || E.check_bounds;
  g_checks_active = checks || E.order == Order::interleave;  // interleave yields from the hooks
  if (!checks) return;
  E.dynamic_shadow.assign((E.config->dynamic_shared_bytes + kSharedUnit - 1) / kSharedUnit, Shadow{});
  E.global_shadow.clear();
  E.launch_allocs.clear();
  Registry& R = registry();
  std::lock_guard<std::mutex> lock(R.mutex);
  for (const auto& [key, a] : R.live) E.launch_allocs.push_back(LiveAlloc{key, a.bytes, a.id, a.host_written});
}

}  // namespace

int launch_bound(const void* kernel) {
#if defined(__x86_64__)
  if (!kernel) return 0;
  const auto* p = static_cast<const unsigned char*>(kernel);
  if (p[0] == 0xf3 && p[1] == 0x0f && p[2] == 0x1e && p[3] == 0xfa) p += 4;  // endbr64 (-fcf-protection)
  int nops = 0;
  while (nops < 32 + 1024 && p[nops] == 0x90) ++nops;
  return nops <= 32 ? nops * 32 : nops - 32;
#else
  return 0;
#endif
}

void run_grid(const LaunchConfig& config, void (*thunk)(void*), void* ctx) {
  if (tl_in_launch) throw Error(std::string("simt: kernel '") + config.kernel_name + "' launched from inside a kernel");
  validate(config);
  Engine& E = engine();
  std::lock_guard<std::mutex> lock(E.launch_mutex);
  tl_in_launch = true;
  struct Reset {
    ~Reset() {
      tl_in_launch = false;
      threadIdx = uint3{0, 0, 0};
      blockIdx = uint3{0, 0, 0};
      blockDim = dim3();
      gridDim = dim3();
      engine().current = nullptr;
    }
  } reset;
  struct ChecksOff {
    ~ChecksOff() {
      g_checks_active = false;
      engine().block_order = nullptr;
    }
  } checks_off;

  init_schedule_from_env(E);
  init_checks_from_env(E);
  const unsigned n = static_cast<unsigned>(config.block.x * config.block.y * config.block.z);
  while (E.pool.size() < n) E.pool.emplace_back(create_fiber(E.pool.size()));
  E.config = &config;
  E.thunk = thunk;
  E.thunk_ctx = ctx;
  E.nthreads = n;
  gridDim = dim3(static_cast<unsigned>(config.grid.x), static_cast<unsigned>(config.grid.y),
                 static_cast<unsigned>(config.grid.z));
  blockDim = dim3(static_cast<unsigned>(config.block.x), static_cast<unsigned>(config.block.y),
                  static_cast<unsigned>(config.block.z));
  for (unsigned t = 0; t < n; ++t) {
    E.pool[t]->linear = t;
    E.pool[t]->tid = unlinear(t);
  }
  E.order_buf.resize(n);
  std::iota(E.order_buf.begin(), E.order_buf.end(), 0u);
  E.warps.assign((n + 31) / 32, Warp{});
  for (unsigned wi = 0; wi < E.warps.size(); ++wi) {
    const unsigned lanes = std::min(32u, n - wi * 32);
    E.warps[wi].existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  }
  prepare_shared(E, config.dynamic_shared_bytes);

  const uint64_t gx = gridDim.x, gy = gridDim.y;
  const uint64_t nblocks = gx * gy * gridDim.z;
  const BlockOrder blocks(E, nblocks);
  E.block_order = &blocks;
  prepare_checks(E, static_cast<unsigned>(E.warps.size()));
  for (uint64_t i = 0; i < nblocks; ++i) {
    vgg::throw_if_interrupted();  // Ctrl-C between blocks (core/interrupt.h)
    const uint64_t b = blocks[i];
    ++block_serial;
    E.barrier_epoch = 0;
    blockIdx = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                     static_cast<unsigned>(b / (gx * gy))};
    try {
      poison_shared(E);
      run_block(E);
      check_shared_guards(E);
    } catch (const Aborting&) {
      throw Error("simt: internal error: abort escaped a fiber");
    } catch (const std::exception& e) {
      std::string what = e.what();
      if (dynamic_cast<const Error*>(&e) && what.rfind("simt: ", 0) == 0) what.erase(0, 6);
      else what = "exception: " + what;
      throw Error(std::string("simt: kernel '") + config.kernel_name + "' block " + dim_str(blockIdx) + where(E) +
                  ": " + what);
    } catch (...) {
      throw Error(std::string("simt: kernel '") + config.kernel_name + "' block " + dim_str(blockIdx) + where(E) +
                  ": unknown exception");
    }
  }
  g_checks_active = false;
  check_allocation_guards(config.kernel_name);
}

void first_reach_shared(SharedSlot& slot, void* array, size_t bytes, const char* name) {
  Engine& E = engine();
  slot.block = block_serial;
  if (!E.current) return;  // called outside a kernel: nothing to poison for
  fill_poison(static_cast<unsigned char*>(array), bytes);
  if (!g_checks_active) return;
  auto& st = E.static_map[array];
  if (!st) st = std::make_unique<Static>(Static{static_cast<unsigned char*>(array), bytes, name, {}, 0});
  if (st->launch != E.launch_first_block) {
    st->launch = E.launch_first_block;
    st->shadow.assign((bytes + kSharedUnit - 1) / kSharedUnit, Shadow{});
    E.statics.push_back(st.get());
  }
}

void validate_launch(const LaunchConfig& config) { validate(config); }

}  // namespace simt::detail

namespace simt {

void set_schedule(const std::string& schedule) {
  auto& E = detail::engine();
  std::lock_guard<std::mutex> lock(E.launch_mutex);
  detail::parse_schedule(schedule, E.order, E.seed);
  E.schedule_initialised = true;
  E.rng.seed(E.seed);
}

std::string get_schedule() {
  auto& E = detail::engine();
  std::lock_guard<std::mutex> lock(E.launch_mutex);
  detail::init_schedule_from_env(E);
  switch (E.order) {
    case detail::Order::linear: return "linear";
    case detail::Order::reverse: return "reverse";
    case detail::Order::interleave: return "interleave:" + std::to_string(E.seed);
    default: return "random:" + std::to_string(E.seed);
  }
}

void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  if (bytes > detail::kMaxDynamicShared)
    throw Error("simt: vgg_opt_in_dynamic_shared(" + std::to_string(bytes) + " bytes): at most " + std::to_string(detail::kMaxDynamicShared) + " bytes (227 KiB) of dynamic shared "
                "memory per block");
  auto& E = detail::engine();
  std::lock_guard<std::mutex> lock(E.opt_in_mutex);
  E.opt_in[kernel] = bytes;
}

void set_checks(const std::string& checks) {
  auto& E = detail::engine();
  std::lock_guard<std::mutex> lock(E.launch_mutex);
  detail::parse_checks(checks, E.check_races, E.check_uninit, E.check_bounds);
  E.checks_initialised = true;
}

std::string get_checks() {
  auto& E = detail::engine();
  std::lock_guard<std::mutex> lock(E.launch_mutex);
  detail::init_checks_from_env(E);
  std::string out;
  for (auto [on, name] : {std::pair{E.check_races, "races"}, {E.check_uninit, "uninit"}, {E.check_bounds, "bounds"}})
    if (on) out += (out.empty() ? "" : ",") + std::string(name);
  return out;
}

namespace detail {

// A capture's allocation: a freed block of the open pool with exactly `bytes` (held by that pool alone), made
// the caller's again; nullptr when there is none. Caller holds R.mutex.
unsigned char* reuse_pool_block_locked(Registry& R, size_t bytes, const char* what) {
  for (auto& [data, a] : R.live) {
    if (!a.released || a.bytes != bytes || a.pools.size() != 1 || a.pools.front() != R.open_pool) continue;
    a.released = false;
    a.host_written = false;
    a.id = R.next_id++;
    a.label = what;
    return reinterpret_cast<unsigned char*>(data);
  }
  return nullptr;
}

// The step a capture records for each of its allocations: at this point of every replay, the block holds the
// poison word again, unless the host fills it between replays.
void record_poison_at_replay(unsigned char* data) {
  record_or_run([data] {
    Registry& R = registry();
    std::lock_guard<std::mutex> lock(R.mutex);
    const auto it = R.live.find(reinterpret_cast<uintptr_t>(data));
    if (it != R.live.end() && !it->second.host_written) fill_poison(data, it->second.bytes);
  });
}

}  // namespace detail

void* device_alloc(size_t bytes, const char* what) {
  using detail::kAllocGuardBytes;
  auto& R = detail::registry();
  if (detail::t_recording != nullptr) {
    unsigned char* reused = nullptr;
    {
      std::lock_guard<std::mutex> lock(R.mutex);
      reused = detail::reuse_pool_block_locked(R, bytes, what);
    }
    if (reused != nullptr) {
      detail::record_poison_at_replay(reused);
      return reused;
    }
  }
  const size_t total = kAllocGuardBytes + ((bytes + 63) & ~size_t{63}) + kAllocGuardBytes;
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(64, total));
  if (!base) throw std::bad_alloc();
  detail::fill_poison(base + kAllocGuardBytes, bytes);
  try {
    std::lock_guard<std::mutex> lock(R.mutex);
    detail::Alloc& a = R.live[reinterpret_cast<uintptr_t>(base + kAllocGuardBytes)];
    a = detail::Alloc{base, bytes, total, R.next_id++, what};
    if (R.open_pool != 0) a.pools.push_back(R.open_pool);
    detail::poison_guards(a);
  } catch (...) {
    std::free(base);
    throw;
  }
  if (detail::t_recording != nullptr) detail::record_poison_at_replay(base + kAllocGuardBytes);
  return base + kAllocGuardBytes;
}

void device_free(void* ptr) noexcept {
  if (!ptr) return;
  auto& R = detail::registry();
  unsigned char* base = nullptr;
  {
    std::lock_guard<std::mutex> lock(R.mutex);
    const auto it = R.live.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == R.live.end()) return;  // not ours: leak rather than free a foreign pointer
    // A recorded launch may still use a block freed during a capture, or one the capture made: the graph's pool
    // keeps it (registered, so every check still sees it) until the graph is destroyed (release_pool).
    std::vector<uint64_t>& pools = it->second.pools;
    if (R.open_pool != 0 && std::find(pools.begin(), pools.end(), R.open_pool) == pools.end())
      pools.push_back(R.open_pool);
    if (!pools.empty()) {
      it->second.released = true;
      return;
    }
    base = it->second.base;
#if SIMT_ASAN
    ASAN_UNPOISON_MEMORY_REGION(base, it->second.total);
#endif
    R.live.erase(it);
  }
  std::free(base);
}

void set_allocation_label(void* ptr, std::string label) {
  auto& R = detail::registry();
  std::lock_guard<std::mutex> lock(R.mutex);
  const auto it = R.live.find(reinterpret_cast<uintptr_t>(ptr));
  if (it != R.live.end()) it->second.label = std::move(label);
}

void mark_host_written(void* ptr) {
  auto& R = detail::registry();
  std::lock_guard<std::mutex> lock(R.mutex);
  const auto it = R.live.find(reinterpret_cast<uintptr_t>(ptr));
  if (it != R.live.end()) it->second.host_written = true;
}

uint64_t block_serial() { return detail::block_serial; }

uint64_t begin_capture(uint64_t share) {
  auto& R = detail::registry();
  std::lock_guard<std::mutex> lock(R.mutex);
  if (R.open_pool != 0 || detail::t_recording != nullptr)
    throw std::runtime_error("graph capture: a capture is already in progress on device sim (one at a time)");
  if (share >= R.next_pool)
    throw std::runtime_error("graph capture: no memory pool " + std::to_string(share) + " on device sim");
  detail::t_recording = new detail::Recording();
  R.open_pool = share != 0 ? share : R.next_pool++;
  return R.open_pool;
}

std::vector<std::function<void()>> end_capture() noexcept {
  std::vector<std::function<void()>> steps;
  if (detail::t_recording != nullptr) {
    steps.swap(detail::t_recording->steps);
    delete detail::t_recording;
    detail::t_recording = nullptr;
  }
  auto& R = detail::registry();
  std::lock_guard<std::mutex> lock(R.mutex);
  R.open_pool = 0;
  return steps;
}

bool capturing() noexcept { return detail::t_recording != nullptr; }

void record_or_run(std::function<void()> step) {
  if (detail::t_recording != nullptr) {
    detail::t_recording->steps.push_back(std::move(step));
    return;
  }
  step();
}

void release_pool(uint64_t pool) noexcept {
  if (pool == 0) return;
  auto& R = detail::registry();
  std::vector<unsigned char*> bases;
  {
    std::lock_guard<std::mutex> lock(R.mutex);
    for (auto it = R.live.begin(); it != R.live.end();) {
      detail::Alloc& a = it->second;
      const auto held = std::find(a.pools.begin(), a.pools.end(), pool);
      if (held != a.pools.end()) a.pools.erase(held);
      // Still owned (a tensor the capture made, alive in Python: an ordinary block from now on), or still held by
      // another graph: kept.
      if (held == a.pools.end() || !a.released || !a.pools.empty()) {
        ++it;
        continue;
      }
#if SIMT_ASAN
      ASAN_UNPOISON_MEMORY_REGION(a.base, a.total);
#endif
      bases.push_back(a.base);
      it = R.live.erase(it);
    }
  }
  for (unsigned char* base : bases) std::free(base);
}

void* dynamic_shared() {
  auto& E = detail::engine();
  if (!E.current) throw Error("simt: dynamic_shared() called outside a kernel");
  return E.shared;
}

}  // namespace simt

// ---- instrumentation hooks -------------------------------------------------------------------------------------
// g++ -fsanitize=thread makes every load and store in the kernel sources call these (the kernel files are built
// with it; this file is not). They stand in for libtsan, which is never linked: a call that finds the checks
// off costs one predictable branch. Hidden, so that _C and _simt_selftest each keep their own. Left out of the
// AddressSanitizer build (VGG_SIM_ASAN), which turns the hooks off: its -fsanitize=address declares the __tsan_*
// builtins too, with signatures these definitions would contradict.
#if !SIMT_ASAN
#define SIMT_HOOK_ extern "C" __attribute__((visibility("hidden")))
#define SIMT_ACCESS_HOOKS_(n)                                                                                     \
  SIMT_HOOK_ void __tsan_read##n(void* p) {                                                                       \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, n, false);                \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_write##n(void* p) {                                                                      \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, n, true);                 \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_unaligned_read##n(void* p) {                                                             \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, n, false);                \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_unaligned_write##n(void* p) {                                                            \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, n, true);                 \
  }
// 8 and 16 bytes: the vector types, which must also be aligned (on_vector_access).
#define SIMT_VECTOR_HOOKS_(n)                                                                                     \
  SIMT_HOOK_ void __tsan_read##n(void* p) {                                                                       \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0))                       \
      simt::detail::on_vector_access(p, n, false);                                                                \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_write##n(void* p) {                                                                      \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0))                       \
      simt::detail::on_vector_access(p, n, true);                                                                 \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_unaligned_read##n(void* p) {                                                             \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0))                       \
      simt::detail::on_vector_access(p, n, false);                                                                \
  }                                                                                                               \
  SIMT_HOOK_ void __tsan_unaligned_write##n(void* p) {                                                            \
    if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0))                       \
      simt::detail::on_vector_access(p, n, true);                                                                 \
  }
SIMT_ACCESS_HOOKS_(1)
SIMT_ACCESS_HOOKS_(2)
SIMT_ACCESS_HOOKS_(4)
SIMT_VECTOR_HOOKS_(8)
SIMT_VECTOR_HOOKS_(16)
SIMT_HOOK_ void __tsan_read_range(void* p, unsigned long size) {
  if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, size, false);
}
SIMT_HOOK_ void __tsan_write_range(void* p, unsigned long size) {
  if (__builtin_expect(simt::detail::g_checks_active.load(std::memory_order_relaxed), 0)) simt::detail::on_access(p, size, true);
}
SIMT_HOOK_ void __tsan_init() {}
SIMT_HOOK_ void __tsan_func_entry(void*) {}
SIMT_HOOK_ void __tsan_func_exit() {}
SIMT_HOOK_ void __tsan_vptr_update(void**, void*) {}
SIMT_HOOK_ void __tsan_vptr_read(void**) {}
// Atomics in instrumented code (static-local guards, std::atomic in host code of the kernel files): performed,
// always sequentially consistent, and not seen by the checks.
#define SIMT_ATOMIC_HOOKS_(bits, T)                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  SIMT_HOOK_ void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  SIMT_HOOK_ T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                         \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                          \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                                         \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                            \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                                        \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                           \
  }                                                                                                              \
  SIMT_HOOK_ int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {             \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                      \
  }                                                                                                              \
  SIMT_HOOK_ int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {               \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                       \
  }                                                                                                              \
  SIMT_HOOK_ T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                   \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                            \
    return c;                                                                                                    \
  }
SIMT_ATOMIC_HOOKS_(8, uint8_t)
SIMT_ATOMIC_HOOKS_(16, uint16_t)
SIMT_ATOMIC_HOOKS_(32, uint32_t)
SIMT_ATOMIC_HOOKS_(64, uint64_t)
SIMT_HOOK_ void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
SIMT_HOOK_ void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#endif  // !SIMT_ASAN
