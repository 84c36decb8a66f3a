#include "interrupt.h"

#include <signal.h>

namespace vgg {

namespace {

int g_depth = 0;  // guarded by the GIL (scopes are made and destroyed with it held)
bool g_installed = false;
struct sigaction g_previous;

extern "C" void on_sigint(int) { detail::sigint_pending.store(true, std::memory_order_relaxed); }

}  // namespace

InterruptScope::InterruptScope() {
  if (g_depth++ > 0) return;
  struct sigaction current;
  if (sigaction(SIGINT, nullptr, &current) != 0) return;
  const bool handled =
      (current.sa_flags & SA_SIGINFO) || (current.sa_handler != SIG_IGN && current.sa_handler != SIG_DFL);
  if (!handled) return;
  struct sigaction ours {};
  ours.sa_handler = on_sigint;
  sigemptyset(&ours.sa_mask);
  ours.sa_flags = 0;
  detail::sigint_pending.store(false, std::memory_order_relaxed);
  if (sigaction(SIGINT, &ours, &g_previous) == 0) g_installed = true;
}

InterruptScope::~InterruptScope() {
  if (--g_depth > 0) return;
  if (g_installed) sigaction(SIGINT, &g_previous, nullptr);
  g_installed = false;
}

bool InterruptScope::take_unconsumed() {
  if (g_depth > 1) return false;  // an enclosing scope reports it
  return detail::sigint_pending.exchange(false, std::memory_order_relaxed);
}

}  // namespace vgg
