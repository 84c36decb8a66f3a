// The reference convolution: direct loops over the definition, T = float or double, for reading beside the fast
// kernels (conv2d.cpp, winograd.cpp, csrc/cuda/conv2d.cu) and for checking them. Selected for every convolution by
// VGG_CONV_ALGO=direct (conv_algo.h). Every output element is one sum accumulated in double, in a fixed order, and
// written once: no blocking, no transforms, no vector code.
#pragma once

#include "../shapes.h"

namespace vgg::cpu {

// x (N,H,W,C), w (K,R,S,C), bias (K) or nullptr -> y (N,P,Q,K)
//   y[n,p,q,k] = bias[k] + sum_{r,s,c} x[n, p*stride_h - pad_h + r, q*stride_w - pad_w + s, c] * w[k,r,s,c]
template <typename T> void conv2d_forward_direct(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& s);
// dy (N,P,Q,K), w (K,R,S,C) -> dx (N,H,W,C)
//   dx[n,h,v,c] = sum over (r, s, k) with h + pad_h - r = p*stride_h and v + pad_w - s = q*stride_w
//                 of dy[n,p,q,k] * w[k,r,s,c]
template <typename T> void conv2d_backward_data_direct(const T* dy, const T* w, T* dx, const Conv2dShape& s);
// x (N,H,W,C), dy (N,P,Q,K) -> dw (K,R,S,C)
//   dw[k,r,s,c] = sum_{n,p,q} dy[n,p,q,k] * x[n, p*stride_h - pad_h + r, q*stride_w - pad_w + s, c]
template <typename T> void conv2d_backward_weight_direct(const T* x, const T* dy, T* dw, const Conv2dShape& s);

}  // namespace vgg::cpu
