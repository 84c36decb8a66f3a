// The augmentation op's problem description and its filter maths, shared by the CPU twin (csrc/cpu/augment.cpp)
// and the CUDA kernel (csrc/cuda/augment.cu, also built for sim), so every backend computes the same taps and
// weights from the same float32 values.
//
// One image of a batch: decoded uint8 RGB pixels (height, width, 3) at byte `offset` of a packed buffer, and its
// plan: a source region of that image (in its pixel coordinates, as floats) resampled to crop x crop, mirrored
// when `flip`, minus `shift` (per channel), times input_scale:
//   out[n, y, x, c] = (resample(img_n, region_n)[y, flip ? crop-1-x : x, c] - shift_n[c]) * input_scale
//
// resample is Pillow's BILINEAR resize with a box (libImaging/Resample.c, precompute_coeffs), separable:
//   scale = (x1 - x0) / crop, filter_scale = max(scale, 1), support = filter_scale (the triangle's support is 1)
//   output column i: centre = x0 + (i + 0.5) * scale, taps j in [int(centre - support + 0.5), int(centre + support
//   + 0.5)) clipped to [0, width), weights tri((j - centre + 0.5) / filter_scale) with tri(t) = max(0, 1 - |t|),
//   normalised to sum 1. Shrinking widens the triangle (antialiasing); enlarging keeps it one pixel wide.
// Pillow computes the weights in double, converts them to 22-bit fixed point and rounds to uint8 after each pass;
// this op computes them in float32 and keeps float32 between the passes and at the end (no rounding), which is why
// its values differ from Pillow's by up to about one level (docs in vggcore/data.py, measured in
// tests/test_augment.py).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VGG_AUG_FN __host__ __device__ __forceinline__
#else
#define VGG_AUG_FN inline
#endif

namespace vgg {

// Filled and validated by dispatch (csrc/dispatch/augment.cpp): the region lies inside the image, the pixels
// inside the buffer. 48 bytes, uploaded as an array to the device.
struct AugmentImage {
  int64_t offset;          // byte offset of pixel (0, 0) in the packed buffer; pixels (height, width, 3) row-major
  int32_t height, width;
  float x0, y0;            // the region's top-left corner in source pixels
  float scale_x, scale_y;  // region width / crop, region height / crop (source pixels per output pixel)
  float shift[3];
  int32_t flip;            // 1: mirror the output columns
};

// The taps of one output coordinate along one axis: source samples [first, first + count), weights
// augment_weight(t, k) for k < count, whose sum is `norm` (divide by it to normalise; 0 only if every weight is 0).
struct AugmentTaps {
  int32_t first, count;
  float centre;       // in source pixels
  float inv_scale;    // 1 / filter_scale
};

VGG_AUG_FN float augment_weight(const AugmentTaps& t, int32_t k) {
  float d = (static_cast<float>(t.first + k) - t.centre + 0.5f) * t.inv_scale;
  d = d < 0.0f ? -d : d;
  return d < 1.0f ? 1.0f - d : 0.0f;
}

// Output coordinate i of an axis whose region starts at `start` with `scale` source pixels per output pixel, in
// a source axis of `size` pixels; `norm` receives the weights' sum (accumulated in k order).
VGG_AUG_FN AugmentTaps augment_taps(int32_t i, float start, float scale, int32_t size, float* norm) {
  const float filter_scale = scale < 1.0f ? 1.0f : scale;
  const float support = filter_scale;  // bilinear: support 1, stretched by the shrink factor
  AugmentTaps t;
  t.centre = start + (static_cast<float>(i) + 0.5f) * scale;
  t.inv_scale = 1.0f / filter_scale;
  int32_t lo = static_cast<int32_t>(t.centre - support + 0.5f);  // truncation, as Pillow's (int) cast
  int32_t hi = static_cast<int32_t>(t.centre + support + 0.5f);
  lo = lo < 0 ? 0 : lo;
  hi = hi > size ? size : hi;
  t.first = lo;
  t.count = hi > lo ? hi - lo : 0;
  float sum = 0.0f;
  for (int32_t k = 0; k < t.count; ++k) sum += augment_weight(t, k);
  *norm = sum;
  return t;
}

// The normalised weight of tap k (Pillow leaves the weights at 0 when their sum is 0).
VGG_AUG_FN float augment_normalised(const AugmentTaps& t, int32_t k, float norm) {
  return norm != 0.0f ? augment_weight(t, k) / norm : 0.0f;
}

}  // namespace vgg
