// Kernel lab: the GEMM of the fully connected layer, y (M, OUT) = x (M, IN) w^T + bias, w (OUT, IN).
//
//   make linear_gemm && ./linear_gemm [M IN OUT]                 (default: VGG's fc6 at batch 128)
//
// The problem is posed as a 1x1 convolution over M pixels (x (M,1,1,IN), w (OUT,1,1,IN)): the layouts are the
// same bytes, so the CPU reference and cuDNN (kernel 0) come from the convolution lab code unchanged.
// Napkin math for the default: 2*128*25088*4096 = 26.3 GFLOP, 0.39 ms at the fp32 peak; w alone is 411 MB, so at
// batch 128 the pass is still compute-bound (64 FLOP per weight byte), and memory-bound below batch ~16.
// Variants: the production entry point under the automatic plan, every plan forced, and TF32 tensor cores.
#include "lab.cuh"

using namespace vgg::cuda;

static void launch(const lab::Conv2dShape& s, const lab::Buffers& b) { linear_forward(b.x, b.w, b.bias, b.out, s.N, s.K, s.C); }

static const lab::Variant kVariants[] = {
    {"production (automatic plan)", "auto", "highest"},
    LAB_TILE_PLANS(4),
};

int main(int argc, char** argv) {
  if (argc != 1 && argc != 4) {
    std::fprintf(stderr, "usage: %s [M IN OUT]\n", argv[0]);
    return 2;
  }
  const int64_t M = argc == 4 ? std::atoll(argv[1]) : 128, IN = argc == 4 ? std::atoll(argv[2]) : 25088,
                OUT = argc == 4 ? std::atoll(argv[3]) : 4096;
  const lab::Conv2dShape s{M, 1, 1, IN, OUT, 1, 1, 1, 1, 0, 0, 1, 1};
  return lab::run_lab("linear forward (GEMM)", lab::Pass::forward, s, launch, kVariants, int(std::size(kVariants)));
}
