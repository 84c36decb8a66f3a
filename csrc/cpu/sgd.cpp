// SGD step with PyTorch's update rule (torch.optim.SGD, dampening 0), in place. Rule in sgd_config.h.
//
// One pass over memory per parameter tensor; the arithmetic runs in double (free next to the loads) and
// is rounded to T once per stored value, so float parameters see no extra error from the intermediate
// steps. The branches on the configuration are hoisted out of the element loop so each loop vectorises.
#include <cstdint>

#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {
constexpr int64_t kParallelMinElements = int64_t{1} << 16;
}  // namespace

// In place: param (n), grad (n), momentum_buf (n) or nullptr when cfg.momentum == 0.
//   d = grad + weight_decay * param
//   momentum > 0: buf = first_step ? d : momentum * buf + d;  d = nesterov ? d + momentum * buf : buf
//   param -= lr * d
template <typename T>
void sgd_update(T* param, const T* grad, T* momentum_buf, int64_t n, const SgdConfig& cfg) {
  const double lr = cfg.lr, mu = cfg.momentum, wd = cfg.weight_decay;
  if (mu == 0.0) {
    // Plain SGD: no buffer is read or written (PyTorch keeps none either); nesterov needs momentum.
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double p = static_cast<double>(param[i]);
      const double d = static_cast<double>(grad[i]) + wd * p;
      param[i] = static_cast<T>(p - lr * d);
    }
    return;
  }
  const bool first = cfg.first_step, nesterov = cfg.nesterov;  // loop-invariant: become selects, not branches
#pragma omp parallel for simd if (n >= kParallelMinElements) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double p = static_cast<double>(param[i]);
    const double d = static_cast<double>(grad[i]) + wd * p;
    // On the first step the buffer holds uninitialised memory: the select discards what was loaded (a
    // multiply by 0 would not, as the garbage may be NaN). The load is unconditional so the loop vectorises.
    const double prev = static_cast<double>(momentum_buf[i]);
    const double buf = first ? d : mu * prev + d;
    const T buf_stored = static_cast<T>(buf);
    momentum_buf[i] = buf_stored;
    // The step reads the buffer as stored (rounded to T), as PyTorch's update reads it back.
    const double b = static_cast<double>(buf_stored);
    param[i] = static_cast<T>(p - lr * (nesterov ? d + mu * b : b));
  }
}

template void sgd_update<float>(float*, const float*, float*, int64_t, const SgdConfig&);
template void sgd_update<double>(double*, const double*, double*, int64_t, const SgdConfig&);

}  // namespace vgg::cpu
