// Winograd convolution for 3x3 stride-1 filters on the CPU (Lavin & Gray, "Fast Algorithms for Convolutional
// Neural Networks", 2016), and the per-layer choice between it and the implicit GEMM of conv2d.cpp.
//
//   F(m x m, 3 x 3), m = 4 (6x6 input tiles, 36 products per 16 outputs) or m = 2 (4x4 tiles, 16 per 4):
//     y tile = A^T [ (G g G^T) (.) (B^T d B) ] A, summed over input channels
//   which becomes, for each of the (m+2)^2 tile positions xi, one GEMM
//     M[xi] (tiles, Cout) = V[xi] (tiles, Cin) * U[xi] (Cin, Cout)
//   on the packed GEMM of gemm.h, between an input transform (V = B^T d B) and an output transform (A^T M A),
//   both vectorised across channels (contiguous in NHWC). The filter transform U = G g G^T is done per call
//   and written straight into the GEMM's packed-B layout; it costs O(36 Cin Cout), small next to the GEMMs.
#pragma once

#include <cstdint>

#include "../shapes.h"
#include "conv_algo.h"

namespace vgg::cpu {

// A stride-1 3x3 convolution as Winograd sees it: x (N, H, W, Cin) zero-padded by ph rows and pw columns
// (negative = cropped) -> y (N, P, Q, Cout).
struct Winograd3x3 {
  int64_t N, H, W, Cin, Cout;
  int64_t ph, pw;
  int64_t P, Q;
};

// The tile size m (4 or 2) the current setting picks for this problem in type T, or 0 for the GEMM path.
template <typename T> int winograd_tile_choice(const Winograd3x3& g);

// y = conv(x, filters) [+ bias] by F(m x m, 3 x 3), m = 4 or 2. The filters are read from w in one of two ways:
//   flipped = false: w (Cout, 3, 3, Cin), the forward filters, g[o][i](r, s) = w[o, r, s, i];
//   flipped = true:  w (Cin, 3, 3, Cout), the forward filters of the layer whose data gradient this is:
//                    g[o][i](r, s) = w[i, 2-r, 2-s, o] (rotated 180 degrees, channels swapped).
// bias (Cout) or nullptr. Output overwritten.
template <typename T>
void winograd_conv3x3(const T* x, const T* w, bool flipped, const T* bias, T* y, const Winograd3x3& g, int m);

// Backward-weight of the same convolution: x (N, H, W, Cin), dy (N, P, Q, Cout) -> dw (Cout, 3, 3, Cin),
// overwritten. With D = A dY A^T (the output transform's transpose applied to each m x m tile of dy) and
// V = B^T d B (the forward's input transform):
//     dw[o][i] = G^T Z[o][i] G,   Z[xi] (Cout, Cin) = sum over tiles D[xi]^T (Cout, tiles) * V[xi] (tiles, Cin)
// (y = A^T (U (.) V) A with U = G g G^T makes dL/dU = (A dY A^T) (.) V, and dL/dg = G^T (dL/dU) G).
// The tiles are summed in fixed splits chosen from the shape alone, so dw is the same for any thread count.
template <typename T> void winograd_conv3x3_backward_weight(const T* x, const T* dy, T* dw, const Winograd3x3& g, int m);

// The tile size for backward-weight (2, 4, or 0 for the GEMM). Auto: the GEMM for double, narrow layers and
// few tiles; F(4x4, 3x3) on wide float layers with at least 128 6x6 tiles (relative error ~7e-6 against float64
// on VGG shapes, the GEMM's ~2.5e-7); F(2x2, 3x3) (~5e-7) on maps smaller than 4x4 with many tiles.
template <typename T> int winograd_weight_tile_choice(const Winograd3x3& g);

}  // namespace vgg::cpu
