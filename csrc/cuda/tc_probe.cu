// The fragment-layout probe (tc_probe.h): one warp, fragments filled with per-lane codes, the other operand an
// identity matrix built from the documented layout, so each output element names the lane and register the
// hardware (or the emulator) took it from.
#include <cstring>
#include <stdexcept>

#include "common.cuh"
#include "mma.cuh"
#include "tc_probe.h"

namespace vgg::VGG_GPU_NS {
namespace tc_probe_detail {

__device__ __forceinline__ uint32_t bf16_pair(float lo, float hi) {
  return static_cast<uint32_t>(mma::to_bf16(lo)) | (static_cast<uint32_t>(mma::to_bf16(hi)) << 16);
}

// out (32 lanes x 4 words).
__global__ void VGG_LAUNCH_BOUNDS(32) probe_kernel(int kind, uint32_t* out) {
  VGG_DYNAMIC_SHARED(uint16_t, s);  // 4 matrices x 8 rows x 24 elements (ldmatrix kinds)
  const int lane = static_cast<int>(threadIdx.x);
  const int g = lane >> 2, t = lane & 3;
  uint32_t words[4] = {0, 0, 0, 0};
  const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float d[4];
  if (kind == 0 || kind == 1) {
    uint32_t a[4], b[2];
    for (int i = 0; i < 4; ++i) {
      // A = [I; 0] (16x8): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
      const int r = g + ((i & 1) ? 8 : 0), k = t + ((i & 2) ? 4 : 0);
      a[i] = kind == 0 ? mma::float_bits(static_cast<float>(4 * lane + i + 1)) : mma::float_bits(r == k ? 1.0f : 0.0f);
    }
    for (int i = 0; i < 2; ++i) {
      const int k = t + 4 * i, n = g;  // b0 (t, g), b1 (t+4, g)
      b[i] = kind == 1 ? mma::float_bits(static_cast<float>(2 * lane + i + 1)) : mma::float_bits(k == n ? 1.0f : 0.0f);
    }
    mma::mma_tf32(d, a, b, zero);
    for (int i = 0; i < 4; ++i) words[i] = mma::float_bits(d[i]);
  } else if (kind >= 2 && kind <= 4) {
    uint32_t a[4], b[2];
    for (int j = 0; j < 4; ++j) {
      // a0 (g, 2t..), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
      const int r = g + ((j & 1) ? 8 : 0), k = 2 * t + ((j & 2) ? 8 : 0);
      a[j] = kind == 4 ? bf16_pair(r == k ? 1.0f : 0.0f, r == k + 1 ? 1.0f : 0.0f)
                       : bf16_pair(static_cast<float>(8 * lane + 2 * j + 1), static_cast<float>(8 * lane + 2 * j + 2));
    }
    for (int j = 0; j < 2; ++j) {
      const int k = 2 * t + 8 * j, n = g;  // b0 (k = 2t.., n = g), b1 (k = 2t+8.., n = g)
      const int shift = kind == 3 ? 8 : 0;
      b[j] = kind == 4 ? bf16_pair(static_cast<float>(4 * lane + 2 * j + 1), static_cast<float>(4 * lane + 2 * j + 2))
                       : bf16_pair(k == n + shift ? 1.0f : 0.0f, k + 1 == n + shift ? 1.0f : 0.0f);
    }
    mma::mma_bf16(d, a, b, zero);
    for (int i = 0; i < 4; ++i) words[i] = mma::float_bits(d[i]);
  } else {
    constexpr int kLd = 24;
    for (int e = lane; e < 4 * 8 * kLd; e += 32) {
      const int i = e / (8 * kLd), r = (e / kLd) % 8, c = e % kLd;
      s[e] = static_cast<uint16_t>(c < 8 ? 1000 * i + 10 * r + c : 0xFFFF);
    }
    __syncwarp();
    uint32_t regs[4];
    const uint16_t* row = s + ((lane / 8) * 8 + lane % 8) * kLd;
    if (kind == 5) mma::ldmatrix<4, false>(regs, row);
    else mma::ldmatrix<4, true>(regs, row);
    for (int i = 0; i < 4; ++i) words[i] = regs[i];
  }
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = words[i];
}

}  // namespace tc_probe_detail

std::vector<uint32_t> tc_probe(int kind) {
  if (kind < 0 || kind > 6) throw std::invalid_argument("tc_probe: kind must be 0..6");
  std::vector<uint32_t> host(32 * 4);
  Workspace buffer(host.size() * sizeof(uint32_t));
  VGG_LAUNCH(1, 32, 4 * 8 * 24 * sizeof(uint16_t), tc_probe_detail::probe_kernel)(kind, buffer.as<uint32_t>());
  VGG_CHECK_LAUNCH("tc_probe");
#if defined(__CUDACC__)
  cudaError_t status = cudaStreamSynchronize(current_stream());
  if (status == cudaSuccess)
    status = cudaMemcpy(host.data(), buffer.as<uint32_t>(), host.size() * sizeof(uint32_t), cudaMemcpyDeviceToHost);
  if (status != cudaSuccess) throw std::runtime_error(std::string("tc_probe: ") + cudaGetErrorString(status));
#else
  std::memcpy(host.data(), buffer.as<uint32_t>(), host.size() * sizeof(uint32_t));
#endif
  return host;
}

}  // namespace vgg::VGG_GPU_NS
