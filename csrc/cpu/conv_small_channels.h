// Direct AVX-512 kernels for the gradients of convolutions with few input channels (the first VGG layer, C = 3),
// where the implicit GEMM of conv2d.cpp is a poor fit: backward-weight is a very long GEMM only R*S*C columns
// wide, and backward-data has only C output columns against the micro-kernel's 32.
// Both return false, doing nothing, when they do not apply (not float, C > 4, the CPU or VGG_CPU_ISA below
// AVX-512); the caller then takes the GEMM. Results do not depend on the thread count.
#pragma once

#include "../shapes.h"

namespace vgg::cpu {

// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C), overwritten.
bool conv2d_backward_weight_small_channels(const float* x, const float* dy, float* dw, const Conv2dShape& s);
// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C), overwritten. Stride 1 only.
bool conv2d_backward_data_small_channels(const float* dy, const float* w, float* dx, const Conv2dShape& s);

}  // namespace vgg::cpu
