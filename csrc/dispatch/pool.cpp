// max/avg/global-average pooling: validation and backend dispatch.
#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

namespace {

Pool2dShape pool_geometry(const char* op, const Shape& x_shape, int64_t kernel, int64_t stride) {
  VGG_CHECK(x_shape.size() == 4, ValueError, op, ": input must be 4-D NHWC (N, H, W, C), got shape ",
            shape_str(x_shape));
  check_positive(op, "kernel_size", kernel);
  check_positive(op, "stride", stride);
  Pool2dShape s{};
  s.N = x_shape[0], s.H = x_shape[1], s.W = x_shape[2], s.C = x_shape[3];
  s.R = s.S = kernel;
  s.stride = stride;
  VGG_CHECK(s.N >= 1 && s.C >= 1, ValueError, op, ": input shape ", shape_str(x_shape), " has an empty dimension");
  VGG_CHECK(kernel <= s.H && kernel <= s.W, ValueError, op, ": kernel_size ", kernel, " is larger than the input's ",
            s.H, "x", s.W, " spatial size (input ", shape_str(x_shape), ")");
  s.P = (s.H - kernel) / stride + 1;
  s.Q = (s.W - kernel) / stride + 1;
  return s;
}

void check_grad(const char* op, const Tensor& dy, const Pool2dShape& s) {
  check_float(op, "grad_output", dy);
  check_shape(op, "grad_output", dy, {s.N, s.P, s.Q, s.C});
}

}  // namespace

std::tuple<Tensor, Tensor> max_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride) {
  const char* op = "max_pool2d";
  check_float(op, "input", x);
  const Pool2dShape s = pool_geometry(op, x.shape(), kernel, stride);
  VGG_CHECK(s.H * s.W <= INT32_MAX, ValueError, op, ": input plane ", s.H, "x", s.W, " is too large");
  Tensor y = Tensor::empty({s.N, s.P, s.Q, s.C}, x.dtype(), x.device());
  Tensor argmax = Tensor::empty({s.N, s.P, s.Q, s.C}, DType::Int32, x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), max_pool2d_forward, x.data<T>(), y.data<T>(), argmax.data<int32_t>(), s);
  return {y, argmax};
}

Tensor max_pool2d_backward(const Tensor& dy, const Tensor& argmax, const Shape& x_shape, int64_t kernel,
                           int64_t stride) {
  const char* op = "max_pool2d_backward";
  const Pool2dShape s = pool_geometry(op, x_shape, kernel, stride);
  check_grad(op, dy, s);
  VGG_CHECK(argmax.dtype() == DType::Int32 && argmax.shape() == dy.shape() && argmax.device() == dy.device(),
            ValueError, op, ": argmax must be the int32 indices from max_pool2d_forward, shape ",
            shape_str(dy.shape()));
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  VGG_RUN_KERNEL(dy.device(), dy.dtype(), max_pool2d_backward, dy.data<T>(), argmax.data<int32_t>(), dx.data<T>(), s);
  return dx;
}

Tensor avg_pool2d_forward(const Tensor& x, int64_t kernel, int64_t stride) {
  const char* op = "avg_pool2d";
  check_float(op, "input", x);
  const Pool2dShape s = pool_geometry(op, x.shape(), kernel, stride);
  Tensor y = Tensor::empty({s.N, s.P, s.Q, s.C}, x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), avg_pool2d_forward, x.data<T>(), y.data<T>(), s);
  return y;
}

Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, int64_t kernel, int64_t stride) {
  const char* op = "avg_pool2d_backward";
  const Pool2dShape s = pool_geometry(op, x_shape, kernel, stride);
  check_grad(op, dy, s);
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  VGG_RUN_KERNEL(dy.device(), dy.dtype(), avg_pool2d_backward, dy.data<T>(), dx.data<T>(), s);
  return dx;
}

Tensor global_avg_pool_forward(const Tensor& x) {
  const char* op = "global_avg_pool";
  check_float(op, "input", x);
  check_rank(op, "input", x, 4, "NHWC (N, H, W, C)");
  const int64_t N = x.size(0), HW = x.size(1) * x.size(2), C = x.size(3);
  VGG_CHECK(HW >= 1, ValueError, op, ": input ", shape_str(x.shape()), " has no pixels");
  Tensor y = Tensor::empty({N, C}, x.dtype(), x.device());
  VGG_RUN_KERNEL(x.device(), x.dtype(), global_avg_pool_forward, x.data<T>(), y.data<T>(), N, HW, C);
  return y;
}

Tensor global_avg_pool_backward(const Tensor& dy, const Shape& x_shape) {
  const char* op = "global_avg_pool_backward";
  check_float(op, "grad_output", dy);
  VGG_CHECK(x_shape.size() == 4 && x_shape[1] * x_shape[2] >= 1, ValueError, op, ": bad input shape ",
            shape_str(x_shape));
  const int64_t N = x_shape[0], HW = x_shape[1] * x_shape[2], C = x_shape[3];
  check_shape(op, "grad_output", dy, {N, C});
  Tensor dx = Tensor::empty(x_shape, dy.dtype(), dy.device());
  VGG_RUN_KERNEL(dy.device(), dy.dtype(), global_avg_pool_backward, dy.data<T>(), dx.data<T>(), N, HW, C);
  return dx;
}

}  // namespace vgg::ops
