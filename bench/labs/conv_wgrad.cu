// Kernel lab: the GPU convolution weight gradient, dw (K,R,S,C) from x (N,H,W,C) and dy (N,P,Q,K).
//
//   make conv_wgrad && ./conv_wgrad [N H W C K R S stride pad]  (default: VGG-16 conv3_1 at batch 8)
//
// Napkin math for the default: 14.8 GFLOP again, but the GEMM is short and deep (M = K = 256, N = R*S*C = 1152,
// Kdim = N*P*Q = 25088): only 18 large or 72 small output tiles, far from filling 132 SMs, hence split-K.
// Its sums run over 25088 products, so values reach ~100: the elementwise rule is relative there.
// Variants: the production entry point under the automatic plan, every plan forced, and TF32 tensor cores.
#include "lab.cuh"

using namespace vgg::cuda;

static void launch(const lab::Conv2dShape& s, const lab::Buffers& b) { conv2d_backward_weight(b.x, b.y, b.out, s); }

static const lab::Variant kVariants[] = {
    {"production (automatic plan)", "auto", "highest"},
    LAB_TILE_PLANS(8),
    {"small tiles, split-K 32", "small:32", "highest"},
    {"large tiles, split-K 32", "large:32", "highest"},
};

int main(int argc, char** argv) {
  const lab::Conv2dShape s = lab::parse_shape(argc, argv, {8, 56, 56, 128, 256, 3, 3, 1, 1, 1, 1, 56, 56});
  return lab::run_lab("conv2d backward weight", lab::Pass::backward_weight, s, launch, kVariants, int(std::size(kVariants)));
}
