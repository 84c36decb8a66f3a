// Ctrl-C for long C++ ops. Compute runs with the GIL released, so Python's own SIGINT handling (a flag checked
// between bytecodes) cannot stop it. While an op runs, InterruptScope installs a SIGINT handler that only sets a
// process-wide atomic flag; long kernels poll it between chunks and stop with Interrupted, which the bindings
// turn into KeyboardInterrupt. The previous handler comes back when the last scope ends.
//
// The polling half is header-only (an inline variable), so code built into other modules, such as the emulator's
// test-only module, compiles and links without interrupt.cpp; there the flag is simply never set.
#pragma once

#include <atomic>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vgg {

// -> KeyboardInterrupt
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline std::atomic<bool> sigint_pending{false};  // set by the SIGINT handler that InterruptScope installs
}  // namespace detail

// True once SIGINT arrived during an op (one relaxed atomic load: cheap enough for any loop).
inline bool interrupt_pending() { return detail::sigint_pending.load(std::memory_order_relaxed); }

// Throws Interrupted (and clears the flag) if SIGINT arrived. A no-op inside an OpenMP parallel region, where an
// exception may not escape: kernels skip their remaining chunks there (`if (interrupt_pending()) continue;`) and
// call this after the region.
inline void throw_if_interrupted() {
  if (!interrupt_pending()) return;
#ifdef _OPENMP
  if (omp_in_parallel()) return;
#endif
  detail::sigint_pending.store(false, std::memory_order_relaxed);
  throw Interrupted("interrupted by Ctrl-C (SIGINT)");
}

// Installs the flag-setting SIGINT handler for its lifetime (nested and concurrent scopes share one install).
// Construct and destroy with the GIL held (the bindings do), so installs are serialised. If SIGINT is ignored or
// has the default action when the first scope starts, nothing is installed: the user's choice stands.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
  // True if SIGINT arrived during the scope and no kernel consumed it (the op finished first); clears the flag.
  bool take_unconsumed();
};

}  // namespace vgg
