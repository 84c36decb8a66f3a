// Device-side augmentation: decoded uint8 RGB images of different sizes -> NHWC crops, resampled (bilinear,
// antialiased when shrinking), mirrored, colour-shifted and scaled. The maths is in csrc/augment.h, shared with
// the CPU twin csrc/cpu/augment.cpp.
//
// One kernel computes both resampling passes, each thread one output pixel (its 3 channels), recomputing its
// row's and column's filter taps itself. The alternative, a horizontal pass into a float intermediate of
// (region rows x crop x 3) per image and then a vertical pass, saves recomputing the taps but needs a workspace
// sized per image (the regions differ), a second launch and a round trip of the intermediate through memory. The
// training plans shrink by less than 2 (the loader decodes large JPEGs at a reduced DCT scale first), so a pixel
// has at most 5 x 5 taps, whose uint8 sources neighbouring threads share through L1; the taps cost a few dozen
// float operations. A pathological region (a whole large image to a few pixels) costs (2 * shrink + 1)^2 taps
// per pixel instead of 2 * (2 * shrink + 1): correct, just slow.
//
// Grid: x over the crop * crop output pixels (grid-stride), y over the images (grid-stride), 256 threads.
#include <cstdint>

#include "../augment.h"
#include "common.cuh"
#include "element_types.cuh"
#include "gpu_kernels.h"

namespace vgg::VGG_GPU_NS {
namespace {

constexpr int kAugmentThreads = 256;
constexpr int64_t kAugmentMaxPixelBlocks = 1024;
// Images per grid pass: with a 224 crop that is 196 x 32 blocks, several per SM of an H200; more images loop.
constexpr int64_t kAugmentMaxImageBlocks = 32;

// images: packed uint8 pixels; plans (N); out (N, crop, crop, 3) of T (float, or bfloat16 bits).
template <typename T>
__global__ void VGG_LAUNCH_BOUNDS(kAugmentThreads)
    augment_crops_kernel(const uint8_t* images, const AugmentImage* plans, T* out, int64_t N, int32_t crop,
                         float input_scale) {
  const int64_t pixels = static_cast<int64_t>(crop) * crop;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const AugmentImage im = plans[n];
    const uint8_t* src = images + im.offset;
    T* dst = out + n * pixels * 3;
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int32_t y = static_cast<int32_t>(p / crop);
      const int32_t x = static_cast<int32_t>(p % crop);
      float norm_y, norm_x;
      const AugmentTaps ty = augment_taps(y, im.y0, im.scale_y, im.height, &norm_y);
      const AugmentTaps tx = augment_taps(x, im.x0, im.scale_x, im.width, &norm_x);
      float acc[3] = {0.0f, 0.0f, 0.0f};
      for (int32_t ky = 0; ky < ty.count; ++ky) {
        const float wy = augment_normalised(ty, ky, norm_y);
        const uint8_t* row = src + (static_cast<int64_t>(ty.first + ky) * im.width + tx.first) * 3;
        float h[3] = {0.0f, 0.0f, 0.0f};  // the horizontal pass of this source row
        for (int32_t kx = 0; kx < tx.count; ++kx) {
          const float wx = augment_normalised(tx, kx, norm_x);
          h[0] += wx * static_cast<float>(row[kx * 3 + 0]);
          h[1] += wx * static_cast<float>(row[kx * 3 + 1]);
          h[2] += wx * static_cast<float>(row[kx * 3 + 2]);
        }
        acc[0] += wy * h[0];
        acc[1] += wy * h[1];
        acc[2] += wy * h[2];
      }
      const int32_t ox = im.flip ? crop - 1 - x : x;
      const int64_t o = (static_cast<int64_t>(y) * crop + ox) * 3;
      for (int c = 0; c < 3; ++c) store_element(dst, o + c, (acc[c] - im.shift[c]) * input_scale);
    }
  }
}

template <typename T>
void launch_augment_crops(const uint8_t* images, const AugmentImage* plans, T* out, int64_t N, int64_t crop,
                          float input_scale) {
  if (N == 0) return;
  const dim3 pixel_blocks = grid_stride_blocks(crop * crop, kAugmentThreads, kAugmentMaxPixelBlocks);
  const dim3 grid(pixel_blocks.x, static_cast<unsigned>(N < kAugmentMaxImageBlocks ? N : kAugmentMaxImageBlocks));
  VGG_LAUNCH(grid, dim3(kAugmentThreads), 0, augment_crops_kernel<T>)(images, plans, out, N,
                                                                      static_cast<int32_t>(crop), input_scale);
  VGG_CHECK_LAUNCH("augment_crops");
}

}  // namespace

void augment_crops(const uint8_t* images, const AugmentImage* plans, float* out, int64_t N, int64_t crop,
                   float input_scale) {
  launch_augment_crops(images, plans, out, N, crop, input_scale);
}

void augment_crops(const uint8_t* images, const AugmentImage* plans, uint16_t* out, int64_t N, int64_t crop,
                   float input_scale) {
  launch_augment_crops(images, plans, out, N, crop, input_scale);
}

}  // namespace vgg::VGG_GPU_NS
