// Kernel lab: the GPU convolution data gradient, dx (N,H,W,C) from dy (N,P,Q,K) and w (K,R,S,C).
//
//   make conv_dgrad && ./conv_dgrad [N H W C K R S stride pad]  (default: VGG-16 conv3_1 at batch 8)
//
// Napkin math for the default: the same 14.8 GFLOP as the forward (GEMM M = N*H*W, N = C, Kdim = R*S*K), so
// 0.22 ms at the fp32 peak; dy is gathered through the filter taps, so the loads are less regular.
// Variants: the production entry point (automatic tile plan) and every plan forced, from the one table below.
#include "lab.cuh"

using namespace vgg::cuda;

static void planned(const lab::Conv2dShape& s, const lab::Buffers& b, lab::GemmPlan plan) {
  conv2d_detail::backward_data(b.y, b.w, b.out, s, plan);
}

static const lab::Variant kVariants[] = {
    {"production (automatic plan)", [](const lab::Conv2dShape& s, const lab::Buffers& b) { conv2d_backward_data(b.y, b.w, b.out, s); }},
    LAB_TILE_PLANS(planned, 4),
};

int main(int argc, char** argv) {
  const lab::Conv2dShape s = lab::parse_shape(argc, argv, {8, 56, 56, 128, 256, 3, 3, 1, 1, 56, 56});
  return lab::run_lab("conv2d backward data", lab::Pass::backward_data, s, kVariants, int(std::size(kVariants)));
}
