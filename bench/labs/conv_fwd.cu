// Kernel lab: the GPU convolution forward pass, y (N,P,Q,K) = conv(x (N,H,W,C), w (K,R,S,C)) + bias (K).
//
//   make conv_fwd && ./conv_fwd [N H W C K R S stride pad]      (default: VGG-16 conv3_1 at batch 8)
//
// Napkin math for the default: 2*8*56*56*256*9*128 = 14.8 GFLOP against ~37 MB of operands, so the pass is
// compute-bound: at the H200's 66.9 TFLOP/s fp32 peak it would take 0.22 ms.
// Variants: the production entry point under the automatic plan, every plan forced, and TF32 tensor cores.
#include "lab.cuh"

using namespace vgg::cuda;

static void launch(const lab::Conv2dShape& s, const lab::Buffers& b) { conv2d_forward(b.x, b.w, b.bias, b.out, s); }

static const lab::Variant kVariants[] = {
    {"production (automatic plan)", "auto", "highest"},
    LAB_TILE_PLANS(4),
};

int main(int argc, char** argv) {
  const lab::Conv2dShape s = lab::parse_shape(argc, argv, {8, 56, 56, 128, 256, 3, 3, 1, 1, 1, 1, 56, 56});
  return lab::run_lab("conv2d forward", lab::Pass::forward, s, launch, kVariants, int(std::size(kVariants)));
}
