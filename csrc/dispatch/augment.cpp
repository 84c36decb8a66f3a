// augment_crops: validation of the packed images and their plans, and backend dispatch (maths in augment.h).
#include <cmath>
#include <vector>

#include "../augment.h"
#include "../ops.h"
#include "dispatch.h"

namespace vgg::ops {

using namespace vgg::detail;

namespace {

constexpr const char* kOp = "augment_crops";
constexpr int64_t kPlanColumns = 11;
// Image sides: the kernels' float32 coordinates keep steps of at most 1/8 pixel below 2**20.
constexpr int64_t kMaxSide = int64_t{1} << 20;
// The crop: crop * crop output pixels of an image fit the kernels' 32-bit pixel coordinates with room to spare.
constexpr int64_t kMaxCrop = int64_t{1} << 15;

bool is_integer(double v) { return std::isfinite(v) && v == std::floor(v); }

void check_settings(int64_t crop, double input_scale) {
  VGG_CHECK(crop >= 1 && crop <= kMaxCrop, ValueError, kOp, ": crop must be in [1, ", kMaxCrop, "], got ", crop);
  VGG_CHECK(std::isfinite(input_scale), ValueError, kOp, ": input_scale must be finite, got ", input_scale);
}

// The plans (N, 11) float64 rows -> the kernels' structs; every region inside its image, every image inside the
// `image_bytes` bytes of the packed buffer.
std::vector<AugmentImage> read_plans(const double* rows, int64_t N, int64_t crop, int64_t image_bytes) {
  std::vector<AugmentImage> plans(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    const double* r = rows + n * kPlanColumns;
    const double offset = r[0], height = r[1], width = r[2], flip = r[7];
    VGG_CHECK(is_integer(offset) && is_integer(height) && is_integer(width), ValueError, kOp, ": plans[", n,
              "]: offset, height and width must be integers, got ", offset, ", ", height, ", ", width);
    VGG_CHECK(height >= 1 && width >= 1 && height <= kMaxSide && width <= kMaxSide, ValueError, kOp, ": plans[", n,
              "]: image size ", height, "x", width, " (height x width) must be in [1, ", kMaxSide, "] per side");
    VGG_CHECK(offset >= 0, ValueError, kOp, ": plans[", n, "]: offset must be >= 0, got ", offset);
    const int64_t h = static_cast<int64_t>(height), w = static_cast<int64_t>(width);
    const int64_t off = static_cast<int64_t>(offset);  // offset < 2**53 as an exact double; the sum cannot overflow
    VGG_CHECK(off + h * w * 3 <= image_bytes, ValueError, kOp, ": plans[", n, "]: the ", h, "x", w,
              "x3 image at offset ", off, " ends at byte ", off + h * w * 3, ", past the images buffer of ",
              image_bytes, " bytes");
    VGG_CHECK(flip == 0.0 || flip == 1.0, ValueError, kOp, ": plans[", n, "]: flip must be 0 or 1, got ", flip);
    // Pillow reads a resize box in single precision; so does this op.
    const float x0 = static_cast<float>(r[3]), y0 = static_cast<float>(r[4]);
    const float x1 = static_cast<float>(r[5]), y1 = static_cast<float>(r[6]);
    VGG_CHECK(std::isfinite(x0) && std::isfinite(y0) && std::isfinite(x1) && std::isfinite(y1) && x0 >= 0.0f &&
                  y0 >= 0.0f && x1 > x0 && y1 > y0 && x1 <= static_cast<float>(w) && y1 <= static_cast<float>(h),
              ValueError, kOp, ": plans[", n, "]: region (x0, y0, x1, y1) = (", r[3], ", ", r[4], ", ", r[5], ", ",
              r[6], ") must satisfy 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height of the ", h, "x", w,
              " (height x width) image");
    AugmentImage& p = plans[static_cast<size_t>(n)];
    p.offset = off;
    p.height = static_cast<int32_t>(h);
    p.width = static_cast<int32_t>(w);
    p.x0 = x0;
    p.y0 = y0;
    p.scale_x = (x1 - x0) / static_cast<float>(crop);
    p.scale_y = (y1 - y0) / static_cast<float>(crop);
    for (int c = 0; c < 3; ++c) {
      p.shift[c] = static_cast<float>(r[8 + c]);
      VGG_CHECK(std::isfinite(p.shift[c]), ValueError, kOp, ": plans[", n, "]: shift[", c, "] must be finite, got ",
                r[8 + c]);
    }
    p.flip = flip == 1.0 ? 1 : 0;
  }
  return plans;
}

void check_plans_tensor(const Tensor& plans) {
  VGG_CHECK(plans.defined(), TypeError, kOp, ": plans is not a tensor");
  VGG_CHECK(plans.dtype() == DType::Float64, TypeError, kOp, ": plans must be float64, got ", describe(plans));
  VGG_CHECK(plans.device().type == DeviceType::CPU, ValueError, kOp,
            ": plans must be on the cpu (they are checked there and uploaded by the op), got ", describe(plans));
  VGG_CHECK(plans.dim() == 2 && plans.size(1) == kPlanColumns, ValueError, kOp, ": plans must have shape (N, ",
            kPlanColumns, "): offset, height, width, x0, y0, x1, y1, flip, shift_r, shift_g, shift_b; got ",
            shape_str(plans.shape()));
}

}  // namespace

Tensor augment_crops(const Tensor& images, const Tensor& plans, int64_t crop, double input_scale, DType dtype) {
  VGG_CHECK(images.defined(), TypeError, kOp, ": images is not a tensor");
  VGG_CHECK(images.dtype() == DType::UInt8, TypeError, kOp, ": images must be uint8 (packed decoded RGB pixels), got ",
            describe(images));
  check_rank(kOp, "images", images, 1, "(bytes,)");
  check_plans_tensor(plans);
  check_settings(crop, input_scale);
  const Device device = images.device();
  VGG_CHECK(dtype == DType::Float32 || dtype == DType::BFloat16, TypeError, kOp,
            ": dtype must be float32 or bfloat16, got ", dtype_name(dtype));
  VGG_CHECK(dtype == DType::Float32 || device.type != DeviceType::CPU, TypeError, kOp,
            ": dtype bfloat16 runs on sim and cuda; the cpu writes float32");
  const int64_t N = plans.size(0);
  const std::vector<AugmentImage> table = read_plans(plans.data<double>(), N, crop, images.numel());
  Tensor out = Tensor::empty({N, crop, crop, 3}, dtype, device);
  if (N == 0) return out;
  const float scale = static_cast<float>(input_scale);
  if (device.type == DeviceType::CPU) {
    cpu::augment_crops(images.data<uint8_t>(), table.data(), out.data<float>(), N, crop, scale);
    return out;
  }
  const Tensor uploaded = Tensor::from_host(table.data(), {static_cast<int64_t>(table.size() * sizeof(AugmentImage))},
                                            DType::UInt8, device);
  const auto* on_device = reinterpret_cast<const AugmentImage*>(uploaded.data<uint8_t>());
  if (dtype == DType::BFloat16)
    VGG_RUN_GPU(device, augment_crops, images.data<uint8_t>(), on_device, out.data<uint16_t>(), N, crop, scale);
  else
    VGG_RUN_GPU(device, augment_crops, images.data<uint8_t>(), on_device, out.data<float>(), N, crop, scale);
  return out;
}

void augment_crops_host(const uint8_t* images, int64_t image_bytes, const double* plans, int64_t N, int64_t crop,
                        double input_scale, float* out) {
  check_settings(crop, input_scale);
  const std::vector<AugmentImage> table = read_plans(plans, N, crop, image_bytes);
  if (N > 0) cpu::augment_crops(images, table.data(), out, N, crop, static_cast<float>(input_scale));
}

}  // namespace vgg::ops
