// Kernel lab: the GPU convolution data gradient, dx (N,H,W,C) from dy (N,P,Q,K) and w (K,R,S,C).
//
//   make conv_dgrad && ./conv_dgrad [N H W C K R S stride pad]  (default: VGG-16 conv3_1 at batch 8)
//
// Napkin math for the default: the same 14.8 GFLOP as the forward (GEMM M = N*H*W, N = C, Kdim = R*S*K), so
// 0.22 ms at the fp32 peak; dy is gathered through the filter taps, so the loads are less regular.
// Variants: the production entry point under the automatic plan, every plan forced, and TF32 tensor cores.
#include "lab.cuh"

using namespace vgg::cuda;

static void launch(const lab::Conv2dShape& s, const lab::Buffers& b) { conv2d_backward_data(b.y, b.w, b.out, s); }

static const lab::Variant kVariants[] = {
    {"production (automatic plan)", "auto", "highest"},
    LAB_TILE_PLANS(4),
};

int main(int argc, char** argv) {
  const lab::Conv2dShape s = lab::parse_shape(argc, argv, {8, 56, 56, 128, 256, 3, 3, 1, 1, 1, 1, 56, 56});
  return lab::run_lab("conv2d backward data", lab::Pass::backward_data, s, launch, kVariants, int(std::size(kVariants)));
}
