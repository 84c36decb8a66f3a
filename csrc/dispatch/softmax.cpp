// softmax, log_softmax and cross-entropy over the last axis: validation and backend dispatch.
// bfloat16 input (sim, cuda) gives float32 output, as the loss ops run in float32 under mixed precision; the
// backward ops then see float32 only (the Python layer rounds the input gradient back to bfloat16).
#include <cmath>
#include <vector>

#include "../ops.h"
#include "../core/graph.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

namespace {

struct Rows {
  int64_t rows, cols;
};

Rows rows_cols(const char* op, const Tensor& x) {
  check_float(op, "input", x);
  VGG_CHECK(x.dim() >= 1 && x.size(-1) >= 1, ValueError, op,
            ": input needs a non-empty last axis (classes), got shape ", shape_str(x.shape()));
  return {x.numel() / x.size(-1), x.size(-1)};
}

}  // namespace

namespace {

// float32 for bfloat16 input, else the input's dtype.
DType output_dtype(const Tensor& x) { return x.dtype() == DType::BFloat16 ? DType::Float32 : x.dtype(); }

}  // namespace

Tensor softmax_forward(const Tensor& x) {
  const Rows r = rows_cols("softmax", x);
  Tensor y = Tensor::empty(x.shape(), output_dtype(x), x.device());
  if (x.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), softmax_forward, x.data<uint16_t>(), y.data<float>(), r.rows, r.cols);
  } else {
    VGG_RUN_KERNEL_NO_BF16(x.device(), x.dtype(), softmax_forward, x.data<T>(), y.data<T>(), r.rows, r.cols);
  }
  return y;
}

Tensor log_softmax_forward(const Tensor& x) {
  const Rows r = rows_cols("log_softmax", x);
  Tensor y = Tensor::empty(x.shape(), output_dtype(x), x.device());
  if (x.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(x.device(), log_softmax_forward, x.data<uint16_t>(), y.data<float>(), r.rows, r.cols);
  } else {
    VGG_RUN_KERNEL_NO_BF16(x.device(), x.dtype(), log_softmax_forward, x.data<T>(), y.data<T>(), r.rows, r.cols);
  }
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  const char* op = "softmax_backward";
  const Rows r = rows_cols(op, y);
  check_no_bf16(op, "output", y, "softmax returns float32 for bfloat16 input");
  check_same(op, "output", y, "grad_output", dy);
  check_shape(op, "grad_output", dy, y.shape());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  VGG_RUN_KERNEL_NO_BF16(y.device(), y.dtype(), softmax_backward, y.data<T>(), dy.data<T>(), dx.data<T>(), r.rows,
                         r.cols);
  return dx;
}

Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) {
  const char* op = "log_softmax_backward";
  const Rows r = rows_cols(op, y);
  check_no_bf16(op, "output", y, "log_softmax returns float32 for bfloat16 input");
  check_same(op, "output", y, "grad_output", dy);
  check_shape(op, "grad_output", dy, y.shape());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  VGG_RUN_KERNEL_NO_BF16(y.device(), y.dtype(), log_softmax_backward, y.data<T>(), dy.data<T>(), dx.data<T>(),
                         r.rows, r.cols);
  return dx;
}

namespace {

// Checks labels on the host (they decide memory addresses in the kernels) and returns them on the logits'
// device. Called once per loss, by the forward; the backward reuses what it returned.
Tensor checked_labels(const char* op, const Tensor& logits, const Tensor& target) {
  VGG_CHECK(target.defined(), TypeError, op, ": target is not a tensor");
  VGG_CHECK(target.dtype() == DType::Int64, TypeError, op, ": target must hold int64 class labels, got ",
            dtype_name(target.dtype()));
  const int64_t rows = logits.size(0), classes = logits.size(1);
  VGG_CHECK(target.shape() == Shape{rows}, ValueError, op, ": target must have shape (", rows,
            ",), one label per row of logits ", shape_str(logits.shape()), ", got ", shape_str(target.shape()));
  // A graph capture cannot read labels on the host: captured with labels already on the logits' device, they are
  // whatever the host copies there before each replay, and that copy is where they are checked (vc.train does).
  if (capturing(logits.device()) && target.device() == logits.device()) return target;
  std::vector<int64_t> labels(static_cast<size_t>(rows));
  target.copy_to_host(labels.data());
  for (int64_t i = 0; i < rows; ++i)
    VGG_CHECK(labels[i] >= 0 && labels[i] < classes, ValueError, op, ": target[", i, "] = ", labels[i],
              " is out of range for ", classes, " classes (logits ", shape_str(logits.shape()), ")");
  return target.device() == logits.device() ? target : target.to(logits.device());
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> cross_entropy_forward(const Tensor& logits, const Tensor& target) {
  const char* op = "cross_entropy";
  check_float(op, "logits", logits);
  VGG_CHECK(logits.dim() == 2 && logits.size(0) >= 1 && logits.size(1) >= 1, ValueError, op,
            ": logits must be 2-D (batch, classes) and non-empty, got shape ", shape_str(logits.shape()));
  const Tensor labels = checked_labels(op, logits, target);
  Tensor loss = Tensor::empty({}, output_dtype(logits), logits.device());
  Tensor logp = Tensor::empty(logits.shape(), output_dtype(logits), logits.device());
  if (logits.dtype() == DType::BFloat16) {
    VGG_RUN_GPU(logits.device(), cross_entropy_forward, logits.data<uint16_t>(), labels.data<int64_t>(),
                logp.data<float>(), loss.data<float>(), logits.size(0), logits.size(1));
  } else {
    VGG_RUN_KERNEL_NO_BF16(logits.device(), logits.dtype(), cross_entropy_forward, logits.data<T>(),
                           labels.data<int64_t>(), logp.data<T>(), loss.data<T>(), logits.size(0), logits.size(1));
  }
  return {loss, logp, labels};
}

Tensor cross_entropy_backward(const Tensor& logp, const Tensor& labels, const Tensor& dloss) {
  const char* op = "cross_entropy_backward";
  check_float(op, "logp", logp);
  check_no_bf16(op, "logp", logp, "cross_entropy returns float32 log-probabilities for bfloat16 logits");
  VGG_CHECK(logp.dim() == 2, ValueError, op, ": logp must be 2-D, got ", shape_str(logp.shape()));
  check_same(op, "logp", logp, "grad_output", dloss);
  VGG_CHECK(dloss.numel() == 1, ValueError, op, ": grad_output must be a scalar, got ", shape_str(dloss.shape()));
  VGG_CHECK(labels.defined() && labels.dtype() == DType::Int64, TypeError, op,
            ": labels must be the int64 labels cross_entropy_forward returned");
  VGG_CHECK(labels.shape() == Shape{logp.size(0)} && labels.device() == logp.device(), ValueError, op, ": labels ",
            shape_str(labels.shape()), " on ", labels.device().str(), " must have shape (", logp.size(0), ",) on ",
            logp.device().str(), ", as cross_entropy_forward returned them for logp ", shape_str(logp.shape()));
  Tensor dx = Tensor::empty(logp.shape(), logp.dtype(), logp.device());
  VGG_RUN_KERNEL_NO_BF16(logp.device(), logp.dtype(), cross_entropy_backward, logp.data<T>(),
                         labels.data<int64_t>(), dloss.data<T>(), dx.data<T>(), logp.size(0), logp.size(1));
  return dx;
}

}  // namespace vgg::ops
