// Which algorithm the CPU convolution uses: the environment variable VGG_CONV_ALGO, read on every call so that
// tests and benchmarks can switch it inside one process.
//
//   auto (or unset)  the per-layer heuristic: Winograd for large 3x3 stride-1 float layers (winograd.h), the direct
//                    AVX-512 kernels for the first layer's gradients (conv_small_channels.h), the implicit GEMM else
//   gemm             the implicit GEMM of conv2d.cpp for every convolution
//   winograd4        F(4x4, 3x3) for every 3x3 stride-1 convolution, the implicit GEMM for the others
//   winograd2        F(2x2, 3x3) likewise
//   direct           the direct loops of conv_reference.h for every convolution (slow; the readable reference)
// Any other value is refused with a ValueError naming the variable and these values.
#pragma once

namespace vgg::cpu {

enum class ConvAlgo { automatic, gemm, winograd4, winograd2, direct };
ConvAlgo conv_algo_setting();

}  // namespace vgg::cpu
