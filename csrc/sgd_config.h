// The optimiser's settings, shared by every backend (cpu, sim, cuda): dispatch (csrc/dispatch/optim.cpp) checks
// the user's values and fills this struct; the sgd_update kernels trust it.
#pragma once

namespace vgg {

// SGD with PyTorch's update rule (torch.optim.SGD, dampening 0):
//   d = grad + weight_decay * param
//   momentum > 0: buf = first_step ? d : momentum * buf + d;  d = nesterov ? d + momentum * buf : buf
//   param -= lr * d
struct SgdConfig {
  double lr, momentum, weight_decay;
  bool nesterov;
  bool first_step;  // the momentum buffer is uninitialised and must be set to d
  // sim and cuda: when set, the kernel reads lr, momentum and weight_decay (3 doubles) from this device memory
  // instead of the values above, so that a captured graph's replay uses what the host wrote there last
  // (vggcore.Graph). The values above still decide the structure: momentum > 0 means a momentum buffer.
  const double* device_hyper = nullptr;
};

}  // namespace vgg
