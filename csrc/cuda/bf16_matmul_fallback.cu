// TEMPORARY bfloat16 conv2d and linear: widen the bfloat16 operands to float32 (exact), run the float32 CUDA-core
// kernels (float32 accumulation) and round the output to bfloat16 once. The result is what a tensor-core kernel
// with float32 accumulators computes, up to float32 summation order, at the float32 kernels' speed plus three
// conversion passes; it lets every bfloat16 op of a VGG step run on sim and cuda until the tensor-core kernels
// (same entry points, declared in gpu_kernels.h) replace this whole file.
#include <cstdint>

#include "common.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

// A float32 copy of n bfloat16 elements in scratch memory (none for a null pointer, e.g. an absent bias).
class Widened {
 public:
  Widened(const uint16_t* src, int64_t n)
      : buffer_(src ? static_cast<size_t>(n) * sizeof(float) : 0) {
    if (src) cast(src, buffer_.as<float>(), n);
  }
  const float* get() const { return buffer_.as<float>(); }

 private:
  Workspace buffer_;
};

class Narrowed {  // float32 scratch for an output, rounded into the bfloat16 destination by finish()
 public:
  Narrowed(uint16_t* dst, int64_t n) : dst_(dst), n_(n), buffer_(static_cast<size_t>(n) * sizeof(float)) {}
  float* get() const { return buffer_.as<float>(); }
  void finish() const { cast(buffer_.as<float>(), dst_, n_); }

 private:
  uint16_t* dst_;
  int64_t n_;
  Workspace buffer_;
};

}  // namespace

void conv2d_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y,
                         const Conv2dShape& s) {
  const Widened xf(x, s.N * s.H * s.W * s.C), wf(w, s.K * s.R * s.S * s.C), bf(bias, s.K);
  const Narrowed yf(y, s.N * s.P * s.Q * s.K);
  conv2d_forward(xf.get(), wf.get(), bias ? bf.get() : nullptr, yf.get(), s);
  yf.finish();
}

void conv2d_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, const Conv2dShape& s) {
  const Widened dyf(dy, s.N * s.P * s.Q * s.K), wf(w, s.K * s.R * s.S * s.C);
  const Narrowed dxf(dx, s.N * s.H * s.W * s.C);
  conv2d_backward_data(dyf.get(), wf.get(), dxf.get(), s);
  dxf.finish();
}

void conv2d_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, const Conv2dShape& s) {
  const Widened xf(x, s.N * s.H * s.W * s.C), dyf(dy, s.N * s.P * s.Q * s.K);
  const Narrowed dwf(dw, s.K * s.R * s.S * s.C);
  conv2d_backward_weight(xf.get(), dyf.get(), dwf.get(), s);
  dwf.finish();
}

void linear_forward_bf16(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
                         int64_t OUT, int64_t IN) {
  const Widened xf(x, M * IN), wf(w, OUT * IN), bf(bias, OUT);
  const Narrowed yf(y, M * OUT);
  linear_forward(xf.get(), wf.get(), bias ? bf.get() : nullptr, yf.get(), M, OUT, IN);
  yf.finish();
}

void linear_backward_data_bf16(const uint16_t* dy, const uint16_t* w, uint16_t* dx, int64_t M, int64_t OUT,
                               int64_t IN) {
  const Widened dyf(dy, M * OUT), wf(w, OUT * IN);
  const Narrowed dxf(dx, M * IN);
  linear_backward_data(dyf.get(), wf.get(), dxf.get(), M, OUT, IN);
  dxf.finish();
}

void linear_backward_weight_bf16(const uint16_t* x, const uint16_t* dy, uint16_t* dw, int64_t M, int64_t OUT,
                                 int64_t IN) {
  const Widened xf(x, M * IN), dyf(dy, M * OUT);
  const Narrowed dwf(dw, OUT * IN);
  linear_backward_weight(xf.get(), dyf.get(), dwf.get(), M, OUT, IN);
  dwf.finish();
}

}  // namespace vgg::VGG_GPU_NS
