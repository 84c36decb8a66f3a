// Diagnostics of the tensor-core kernels. The fragment-layout probe (bench/tc_probe.py,
// tests/test_tc_emulation.py): what mma.sync and ldmatrix put in each lane, on the GPU (cuda) or in the
// emulator's model (sim), so a first GPU run confirms the emulator's tables.
// No include guard on purpose, as gpu_kernels.h: included once per backend with VGG_GPU_NS set to cuda or sim.
#include <cstdint>
#include <vector>

#ifndef VGG_GPU_NS
#error "define VGG_GPU_NS (cuda or sim) before including tc_probe.h"
#endif

namespace vgg::VGG_GPU_NS {

// kind 0: tf32 A (lane L's a[i] = 4L + i + 1, B = identity 8x8)   kind 1: tf32 B (b[i] = 2L + i + 1, A = [I; 0])
// kind 2: bf16 A, k < 8 (lane L's a[j] halves = 8L + 2j + h + 1, B(k, n) = [k == n])
// kind 3: bf16 A, k >= 8 (the same A, B(k, n) = [k == n + 8])     kind 4: bf16 B (b[j] halves = 4L + 2j + h + 1,
// A = identity 16x16)    kind 5: ldmatrix.x4, kind 6: ldmatrix.x4.trans over 4 8x8 matrices of 16-bit
// element (i, r, c) = 1000 i + 10 r + c.
// Returns 32 lanes x 4 words: the float bits of d[0..3] (kinds 0-4) or the 4 ldmatrix registers (5, 6).
std::vector<uint32_t> tc_probe(int kind);

// What the GEMM planner picks on this backend's device for C (M, N) = A (M, K) * B (K, N) with dense float4
// operands (linear forward's loaders): {large tiles, splits, SMs, blocks per SM large, blocks per SM small}.
// kind 0: the float32 CUDA-core kernel, 1: TF32, 2: BF16.
std::vector<int64_t> describe_gemm_plan(int kind, int64_t M, int64_t N, int64_t K);

}  // namespace vgg::VGG_GPU_NS
