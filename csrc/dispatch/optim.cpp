// The in-place SGD update: validation and backend dispatch.
#include <cmath>

#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

void sgd_update(Tensor& param, const Tensor& grad, const std::optional<Tensor>& momentum_buf, double lr,
                double momentum, double weight_decay, bool nesterov, bool first_step,
                const std::optional<Tensor>& device_hyper) {
  const char* op = "sgd";
  check_float(op, "param", param);
  check_same(op, "param", param, "grad", grad);
  check_shape(op, "grad", grad, param.shape());
  VGG_CHECK(std::isfinite(lr) && lr >= 0, ValueError, op, ": lr must be a finite number >= 0, got ", lr);
  VGG_CHECK(std::isfinite(momentum) && momentum >= 0, ValueError, op, ": momentum must be >= 0, got ", momentum);
  VGG_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, ValueError, op, ": weight_decay must be >= 0, got ",
            weight_decay);
  VGG_CHECK(!nesterov || momentum > 0, ValueError, op, ": nesterov momentum needs momentum > 0");
  VGG_CHECK(momentum_buf.has_value() == (momentum > 0), ValueError, op,
            ": a momentum buffer is needed exactly when momentum > 0");
  if (momentum_buf) {
    check_same(op, "param", param, "momentum_buffer", *momentum_buf);
    check_shape(op, "momentum_buffer", *momentum_buf, param.shape());
  }
  SgdConfig cfg{lr, momentum, weight_decay, nesterov, first_step};
  if (device_hyper) {
    VGG_CHECK(param.device().type != DeviceType::CPU, ValueError,
              op, ": device hyper-parameters are for sim and cuda (graph replay); on the cpu pass the numbers");
    VGG_CHECK(device_hyper->dtype() == DType::Int64 && device_hyper->numel() == 3 &&
                  device_hyper->device() == param.device(),
              ValueError, op, ": device_hyper must be 3 int64 (the bits of lr, momentum, weight_decay) on ",
              param.device().str(), ", got ", describe(*device_hyper));
    cfg.device_hyper = reinterpret_cast<const double*>(device_hyper->data<int64_t>());
  }
  VGG_RUN_KERNEL(param.device(), param.dtype(), sgd_update, param.data<T>(), grad.data<T>(),
                 momentum_buf ? momentum_buf->data<T>() : nullptr, param.numel(), cfg);
}

}  // namespace vgg::ops
