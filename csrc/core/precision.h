// Process-wide matmul settings of the GPU backends (cuda and sim).
//
// float32 matmul precision, as PyTorch's torch.set_float32_matmul_precision: "highest" (default) keeps float32
// conv2d/linear on the CUDA-core float32 kernels; "high" lets them run on TF32 tensor cores (10-bit mantissa
// operands, float32 accumulation). The cpu backend is exact float32 either way.
//
// The GPU GEMM plan override is a test-only knob (like the emulator's schedule): the emulator's small test shapes
// never reach the large tiles or split-K a GPU runs at VGG sizes, so tests force them.
#pragma once

#include <string>

namespace vgg {

enum class MatmulPrecision { Highest, High };

// Throws ValueError naming the argument for anything but "highest" or "high".
void set_float32_matmul_precision(const std::string& precision);
std::string get_float32_matmul_precision();
MatmulPrecision float32_matmul_precision();

struct GemmPlanOverride {
  bool forced = false;  // false: the automatic plan
  bool large = false;   // large tiles, else small
  int splits = 1;       // k splits
};

// "auto", "small", "large", "small:SPLITS" or "large:SPLITS" (SPLITS 1..999); ValueError otherwise.
void set_gpu_gemm_plan(const std::string& plan);
std::string get_gpu_gemm_plan();
GemmPlanOverride gpu_gemm_plan_override();

}  // namespace vgg
