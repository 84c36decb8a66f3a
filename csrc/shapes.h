// Problem descriptions shared by every backend (cpu, sim, cuda).
//
// Dispatch (csrc/dispatch/) validates user arguments once and fills these structs; kernels trust them.
// All activations are NHWC and contiguous; conv weights are (K, R, S, C).
#pragma once

#include <cstdint>

namespace vgg {

// x (N, H, W, C) * w (K, R, S, C) -> y (N, P, Q, K)
// P = (H + 2*pad_h - R) / stride_h + 1, Q = (W + 2*pad_w - S) / stride_w + 1.
// The one convolution geometry of every backend: dispatch fills it once from the op's arguments (conv2d's
// stride and padding are the same along both axes), the CPU and GPU kernels read it, the backward passes get the
// forward's (bound to Python as _C.Conv2dShape). Separate axes and negative padding (cropping) exist for the CPU
// backend's internal convolutions only: its backward-data of an R != S filter is a forward convolution with a
// different padding along each axis, negative when pad > R - 1. The GPU kernels read it through the int32 view
// gemm::ConvGeometryOf (csrc/cuda/gemm_loaders.cuh), made in one place (csrc/cuda/conv2d.cu).
struct Conv2dShape {
  int64_t N, H, W, C;         // input
  int64_t K, R, S;            // filters: K outputs of R x S x C
  int64_t stride_h, stride_w; // >= 1
  int64_t pad_h, pad_w;       // zero padding on each side (>= 0 from dispatch)
  int64_t P, Q;               // output height and width
};

// Pooling over R x S windows, no padding, floor mode: x (N, H, W, C) -> y (N, P, Q, C)
// P = (H - R) / stride + 1, Q = (W - S) / stride + 1.
struct Pool2dShape {
  int64_t N, H, W, C;
  int64_t R, S;
  int64_t stride;
  int64_t P, Q;
};

// Local response normalisation across channels (PyTorch's convention):
//   scale[i] = k + alpha / size * sum_{j in window(i)} x[j]^2,  y[i] = x[i] * scale[i]^-beta
// window(c) = channels c - size/2 .. c + (size-1)/2, clipped to [0, C); the divisor is always `size`.
struct LrnShape {
  int64_t rows;  // N * H * W
  int64_t C;
  int64_t size;
  double alpha, beta, k;
};

}  // namespace vgg
