// Counter-based random numbers shared by every backend, so dropout draws the same mask on cpu, sim and cuda.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the generator of
// cuRAND and PyTorch. Element i of a dropout call with seed s uses counter (low and high words of i / 4, 0, 0), key (s low, s high),
// and output word i % 4; it is kept when its top 24 bits, read as u in [0, 1), satisfy u >= p.
// Pure integer arithmetic, so every device computes the same bits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(VGG_SIMT)
#define VGG_HOST_DEVICE __host__ __device__
#else
#define VGG_HOST_DEVICE
#endif

namespace vgg {

struct Philox4 {
  uint32_t v[4];
};

VGG_HOST_DEVICE inline uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

VGG_HOST_DEVICE inline Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;     // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;   // key schedule increments
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, counter.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, counter.v[2], &hi1);
    counter = Philox4{{hi1 ^ counter.v[1] ^ key0, lo1, hi0 ^ counter.v[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// The uniform in [0, 1) that element `index` of a call seeded with `seed` draws (24-bit resolution,
// exactly representable in float32).
VGG_HOST_DEVICE inline float dropout_uniform(uint64_t seed, uint64_t index) {
  const uint64_t block = index >> 2;
  const Philox4 counter{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}};
  const Philox4 bits = philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return static_cast<float>(bits.v[index & 3] >> 8) * (1.0f / 16777216.0f);
}

VGG_HOST_DEVICE inline bool dropout_keep(uint64_t seed, uint64_t index, double p) {
  return static_cast<double>(dropout_uniform(seed, index)) >= p;
}

}  // namespace vgg
