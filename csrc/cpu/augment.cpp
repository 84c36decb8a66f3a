// The augmentation op's CPU twin: decoded uint8 RGB images -> crops (N, crop, crop, 3) float32, with the maths of
// csrc/augment.h (the CUDA kernel csrc/cuda/augment.cu computes the same taps and sums in the same order, so
// without FMA contraction the two agree bit for bit).
//
// Straight separable resampling per image: tap tables for the crop's rows and columns, a horizontal pass of the
// source rows the vertical taps touch into a float buffer (rows x crop x 3), then the vertical pass, the shift
// and the scale. A plan that resamples nothing (one source pixel per output pixel at integer offsets: the
// weights are exactly 1 and 0) is a plain crop: copied and converted in one pass, the same values.
// Images are spread over OpenMP threads; Ctrl-C is checked between images.
#include <cmath>
#include <cstdint>
#include <vector>

#include "../augment.h"
#include "../core/interrupt.h"
#include "cpu_kernels.h"

namespace vgg::cpu {

namespace {

// The normalised taps of every output coordinate of one axis: weights[i * width + k], k < taps[i].count.
struct AxisTable {
  std::vector<AugmentTaps> taps;
  std::vector<float> weights;
  int32_t width = 0;  // the most taps of any coordinate
};

AxisTable axis_table(int32_t crop, float start, float scale, int32_t size) {
  AxisTable t;
  t.taps.resize(crop);
  std::vector<float> norms(crop);
  for (int32_t i = 0; i < crop; ++i) {
    t.taps[i] = augment_taps(i, start, scale, size, &norms[i]);
    if (t.taps[i].count > t.width) t.width = t.taps[i].count;
  }
  t.weights.assign(static_cast<size_t>(crop) * t.width, 0.0f);
  for (int32_t i = 0; i < crop; ++i)
    for (int32_t k = 0; k < t.taps[i].count; ++k)
      t.weights[static_cast<size_t>(i) * t.width + k] = augment_normalised(t.taps[i], k, norms[i]);
  return t;
}

// One source pixel per output pixel, at an integer offset: no resampling.
bool is_plain_crop(float start, float scale) { return scale == 1.0f && start == std::floor(start); }

void plain_crop(const uint8_t* src, const AugmentImage& im, float* dst, int32_t crop, float input_scale) {
  const int64_t x0 = static_cast<int64_t>(im.x0), y0 = static_cast<int64_t>(im.y0);
  const float s0 = im.shift[0], s1 = im.shift[1], s2 = im.shift[2];
  for (int32_t y = 0; y < crop; ++y) {
    const uint8_t* row = src + ((y0 + y) * im.width + x0) * 3;
    float* out = dst + static_cast<int64_t>(y) * crop * 3;
    if (im.flip) {
      for (int32_t x = 0; x < crop; ++x) {
        const uint8_t* p = row + (crop - 1 - x) * 3;
        out[x * 3 + 0] = (static_cast<float>(p[0]) - s0) * input_scale;
        out[x * 3 + 1] = (static_cast<float>(p[1]) - s1) * input_scale;
        out[x * 3 + 2] = (static_cast<float>(p[2]) - s2) * input_scale;
      }
    } else {
      for (int32_t x = 0; x < crop; ++x) {
        out[x * 3 + 0] = (static_cast<float>(row[x * 3 + 0]) - s0) * input_scale;
        out[x * 3 + 1] = (static_cast<float>(row[x * 3 + 1]) - s1) * input_scale;
        out[x * 3 + 2] = (static_cast<float>(row[x * 3 + 2]) - s2) * input_scale;
      }
    }
  }
}

// This thread's accumulator row of the vertical pass (crop * 3 floats).
std::vector<float>& rows_acc(int64_t floats) {
  thread_local std::vector<float> acc;
  if (static_cast<int64_t>(acc.size()) < floats) acc.resize(static_cast<size_t>(floats));
  return acc;
}

void resample_crop(const uint8_t* src, const AugmentImage& im, float* dst, int32_t crop, float input_scale,
                   std::vector<float>& rows) {
  const AxisTable tx = axis_table(crop, im.x0, im.scale_x, im.width);
  const AxisTable ty = axis_table(crop, im.y0, im.scale_y, im.height);
  // The source rows any output row reads: [first, last); first/last taps are monotonic in the output row.
  int32_t first = im.height, last = 0;
  for (const AugmentTaps& t : ty.taps) {
    if (t.count == 0) continue;
    first = t.first < first ? t.first : first;
    last = t.first + t.count > last ? t.first + t.count : last;
  }
  const int64_t row_floats = static_cast<int64_t>(crop) * 3;
  if (last > first) rows.resize(static_cast<size_t>(last - first) * row_floats);
  // Horizontal pass: rows (last - first, crop, 3) float.
  for (int32_t r = first; r < last; ++r) {
    const uint8_t* in = src + static_cast<int64_t>(r) * im.width * 3;
    float* h = rows.data() + (r - first) * row_floats;
    for (int32_t x = 0; x < crop; ++x) {
      const AugmentTaps& t = tx.taps[x];
      const float* w = tx.weights.data() + static_cast<size_t>(x) * tx.width;
      const uint8_t* p = in + static_cast<int64_t>(t.first) * 3;
      float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f;
      for (int32_t k = 0; k < t.count; ++k) {
        a0 += w[k] * static_cast<float>(p[k * 3 + 0]);
        a1 += w[k] * static_cast<float>(p[k * 3 + 1]);
        a2 += w[k] * static_cast<float>(p[k * 3 + 2]);
      }
      h[x * 3 + 0] = a0, h[x * 3 + 1] = a1, h[x * 3 + 2] = a2;
    }
  }
  // Vertical pass, shift, scale and mirror: dst (crop, crop, 3). The taps run outermost so that the inner loop
  // streams whole rows (vectorised); each element still sums its taps in k order, as the CUDA kernel does.
  std::vector<float>& acc = rows_acc(row_floats);
  for (int32_t y = 0; y < crop; ++y) {
    const AugmentTaps& t = ty.taps[y];
    const float* w = ty.weights.data() + static_cast<size_t>(y) * ty.width;
    float* a = acc.data();
    for (int64_t i = 0; i < row_floats; ++i) a[i] = 0.0f;
    for (int32_t k = 0; k < t.count; ++k) {
      const float* h = rows.data() + (t.first + k - first) * row_floats;
      const float wk = w[k];
      for (int64_t i = 0; i < row_floats; ++i) a[i] += wk * h[i];
    }
    float* out = dst + static_cast<int64_t>(y) * row_floats;
    for (int32_t x = 0; x < crop; ++x) {
      const int32_t ox = im.flip ? crop - 1 - x : x;
      for (int c = 0; c < 3; ++c) out[ox * 3 + c] = (a[x * 3 + c] - im.shift[c]) * input_scale;
    }
  }
}

}  // namespace

// images: packed uint8 pixels; plans (N) validated by dispatch -> out (N, crop, crop, 3)
void augment_crops(const uint8_t* images, const AugmentImage* plans, float* out, int64_t N, int64_t crop,
                   float input_scale) {
  const int32_t c = static_cast<int32_t>(crop);
  const int64_t per_image = crop * crop * 3;
#pragma omp parallel if (N > 1)
  {
    std::vector<float> rows;  // this thread's horizontal-pass buffer, reused across its images
#pragma omp for schedule(dynamic)
    for (int64_t n = 0; n < N; ++n) {
      if (interrupt_pending()) continue;  // Ctrl-C: skip the remaining images, throw after the region
      const AugmentImage& im = plans[n];
      const uint8_t* src = images + im.offset;
      float* dst = out + n * per_image;
      if (is_plain_crop(im.x0, im.scale_x) && is_plain_crop(im.y0, im.scale_y))
        plain_crop(src, im, dst, c, input_scale);
      else
        resample_crop(src, im, dst, c, input_scale, rows);
    }
  }
  throw_if_interrupted();
}

}  // namespace vgg::cpu
