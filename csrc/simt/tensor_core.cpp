// The emulator's tensor-core and cp.async models (see tensor_core.h). Fragment layouts from the PTX ISA
// (version 8.x), section 9.7.14.5 "Matrix multiply-accumulate operation using mma instruction":
//   9.7.14.5.7 "Matrix Fragments for mma.m16n8k8" (.tf32 A and B, float C/D),
//   9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type" (.bf16 A and B, float C/D),
// and 9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix". With g = lane >> 2 and t = lane & 3:
//   tf32 A (16x8):  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//   tf32 B (8x8):   b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   bf16 A (16x16): reg0 (g, 2t..2t+1)  reg1 (g+8, 2t..2t+1)  reg2 (g, 2t+8..2t+9)  reg3 (g+8, 2t+8..2t+9)
//   bf16 B (16x8):  reg0 (k=2t..2t+1, n=g)  reg1 (k=2t+8..2t+9, n=g)
//   C/D (16x8):     c0, c1 (g, 2t..2t+1)  c2, c3 (g+8, 2t..2t+1)
// (in a 32-bit register holding two 16-bit elements, the lower column or row index sits in bits 0-15).
#include "tensor_core.h"

#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "simt.h"

namespace simt::tc {
namespace {

constexpr int kMaxWarps = 32;

// Per warp, per lane: the operand pointers published for the current collective.
struct Published {
  const void* p[4];
};
Published g_table[kMaxWarps][32];

unsigned linear_thread() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

// Publishes this lane's pointers and waits for the whole warp; returns the warp's table row.
Published* publish(const void* p0, const void* p1, const void* p2, const void* p3) {
  const unsigned t = linear_thread();
  Published* row = g_table[t / 32];
  row[t % 32] = Published{{p0, p1, p2, p3}};
  ::simt::detail::warp_collective(SIMT_SITE_("tensor-core collective (publish)"), ::simt::detail::WarpOp::sync,
                                  0xffffffffu, 0, 0, 32);
  return row;
}

// Every lane has computed its result: the operands may change again.
void release() {
  ::simt::detail::warp_collective(SIMT_SITE_("tensor-core collective (release)"), ::simt::detail::WarpOp::sync,
                                  0xffffffffu, 0, 0, 32);
}

// What a tensor core reads of a tf32 operand register: sign, exponent and the top 10 mantissa bits.
double tf32_value(uint32_t bits) {
  float f;
  const uint32_t kept = bits & 0xFFFFE000u;
  std::memcpy(&f, &kept, 4);
  return f;
}

double bf16_value(uint32_t reg, int half) {
  const uint32_t bits = ((reg >> (16 * half)) & 0xFFFFu) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The 4 (row, col) positions of this lane's C/D fragment.
void cd_positions(unsigned lane, int (&row)[4], int (&col)[4]) {
  const int g = static_cast<int>(lane >> 2), t = static_cast<int>(lane & 3);
  for (int i = 0; i < 4; ++i) {
    row[i] = g + (i >= 2 ? 8 : 0);
    col[i] = 2 * t + (i & 1);
  }
}

}  // namespace

void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  const unsigned lane = linear_thread() % 32;
  const Published* all = publish(a, b, c, nullptr);
  // A (r, k): lane 4*(r%8) + k%4, register (r >= 8) + 2*(k >= 4). B (k, n): lane 4n + k%4, register (k >= 4).
  auto A = [&](int r, int k) {
    return tf32_value(static_cast<const uint32_t*>(all[4 * (r % 8) + k % 4].p[0])[(r >= 8) + 2 * (k >= 4)]);
  };
  auto B = [&](int k, int n) { return tf32_value(static_cast<const uint32_t*>(all[4 * n + k % 4].p[1])[k >= 4]); };
  int row[4], col[4];
  cd_positions(lane, row, col);
  float result[4];
  for (int i = 0; i < 4; ++i) {
    // Products of two tf32 values are exact in double, and so is the sum of 8 of them at these magnitudes:
    // one rounding to float32 at the end.
    double sum = c[i];
    for (int k = 0; k < 8; ++k) sum += A(row[i], k) * B(k, col[i]);
    result[i] = static_cast<float>(sum);
  }
  release();
  for (int i = 0; i < 4; ++i) d[i] = result[i];
}

void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  const unsigned lane = linear_thread() % 32;
  const Published* all = publish(a, b, c, nullptr);
  // A (r, k): lane 4*(r%8) + (k%8)/2, register (r >= 8) + 2*(k >= 8), half k%2.
  // B (k, n): lane 4n + (k%8)/2, register (k >= 8), half k%2.
  auto A = [&](int r, int k) {
    return bf16_value(static_cast<const uint32_t*>(all[4 * (r % 8) + (k % 8) / 2].p[0])[(r >= 8) + 2 * (k >= 8)],
                      k % 2);
  };
  auto B = [&](int k, int n) {
    return bf16_value(static_cast<const uint32_t*>(all[4 * n + (k % 8) / 2].p[1])[k >= 8], k % 2);
  };
  int row[4], col[4];
  cd_positions(lane, row, col);
  float result[4];
  for (int i = 0; i < 4; ++i) {
    double sum = c[i];
    for (int k = 0; k < 16; ++k) sum += A(row[i], k) * B(k, col[i]);
    result[i] = static_cast<float>(sum);
  }
  release();
  for (int i = 0; i < 4; ++i) d[i] = result[i];
}

void ldmatrix(uint32_t* out, int count, bool trans, const void* row) {
  if (count != 1 && count != 2 && count != 4) ::simt::detail::trap("ldmatrix: .x1, .x2 or .x4 only");
  const unsigned lane = linear_thread() % 32;
  if (lane < 8u * static_cast<unsigned>(count) && reinterpret_cast<uintptr_t>(row) % 16 != 0)
    ::simt::detail::trap("ldmatrix: a row address is not 16-byte aligned");
  const Published* all = publish(row, nullptr, nullptr, nullptr);
  uint32_t result[4] = {0, 0, 0, 0};
  for (int i = 0; i < count; ++i) {
    auto rowp = [&](int r) { return static_cast<const unsigned char*>(all[8 * i + r].p[0]); };
    if (!trans) {  // row lane/4, 16-bit columns 2*(lane%4) and +1
      std::memcpy(&result[i], rowp(static_cast<int>(lane / 4)) + 4 * (lane % 4), 4);
    } else {  // the transpose: rows 2*(lane%4) and +1 of column lane/4
      uint16_t lo, hi;
      std::memcpy(&lo, rowp(static_cast<int>(2 * (lane % 4))) + 2 * (lane / 4), 2);
      std::memcpy(&hi, rowp(static_cast<int>(2 * (lane % 4) + 1)) + 2 * (lane / 4), 2);
      result[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
  release();
  for (int i = 0; i < count; ++i) out[i] = result[i];
}

// ---- cp.async --------------------------------------------------------------------------------------------------

namespace {

struct Copy {
  unsigned char* dst;
  unsigned char data[16];
  int bytes;
};

struct AsyncState {
  uint64_t block = ~uint64_t{0};   // simt::block_serial() of the block these copies belong to
  std::vector<Copy> open;          // issued, not yet committed
  std::deque<std::vector<Copy>> committed;  // oldest first
};

AsyncState g_async[1024];

AsyncState& async_state() {
  AsyncState& s = g_async[linear_thread()];
  if (s.block != ::simt::block_serial()) {  // copies a previous block left unwaited never land in this one
    s.block = ::simt::block_serial();
    s.open.clear();
    s.committed.clear();
  }
  return s;
}

// The copy lands: a store by the issuing thread as far as the checks are concerned.
void land(const std::vector<Copy>& group) {
  for (const Copy& c : group) {
    ::simt::detail::note_access(c.dst, static_cast<size_t>(c.bytes), true);
    std::memcpy(c.dst, c.data, static_cast<size_t>(c.bytes));
  }
}

bool covers(const std::vector<Copy>& group, const unsigned char* p) {
  for (const Copy& c : group)
    if (p >= c.dst && p < c.dst + c.bytes) return true;
  return false;
}

}  // namespace

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) ::simt::detail::trap("cp.async: cp-size must be 4, 8 or 16 bytes");
  if (src_bytes < 0 || src_bytes > bytes) ::simt::detail::trap("cp.async: src-size must be in [0, cp-size]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes != 0))
    ::simt::detail::trap("cp.async: source and destination must be aligned to cp-size");
  Copy c{static_cast<unsigned char*>(dst), {}, bytes};
  // The checks see the source read now and the destination written from now until the copy lands (the hardware
  // may write it at any point in between, so another thread touching it in that window is a race).
  if (src_bytes > 0) ::simt::detail::note_access(src, static_cast<size_t>(src_bytes), false);
  ::simt::detail::note_access(dst, static_cast<size_t>(bytes), true);
  if (src_bytes > 0) std::memcpy(c.data, src, static_cast<size_t>(src_bytes));
  std::memset(c.data + src_bytes, 0, static_cast<size_t>(bytes - src_bytes));
  for (int i = 0; i < bytes; i += 4) std::memcpy(c.dst + i, &kAsyncPoison, 4);
  async_state().open.push_back(c);
}

void cp_async_commit() {
  AsyncState& s = async_state();
  s.committed.push_back(std::move(s.open));
  s.open.clear();
}

int copy_in_flight(const void* p) {
  const auto* q = static_cast<const unsigned char*>(p);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  for (unsigned t = 0; t < threads && t < 1024; ++t) {
    const AsyncState& s = g_async[t];
    if (s.block != ::simt::block_serial()) continue;
    if (covers(s.open, q)) return static_cast<int>(t);
    for (const auto& group : s.committed)
      if (covers(group, q)) return static_cast<int>(t);
  }
  return -1;
}

void cp_async_wait(int pending) {
  if (pending < 0) ::simt::detail::trap("cp.async.wait_group: N must be >= 0");
  AsyncState& s = async_state();
  while (s.committed.size() > static_cast<size_t>(pending)) {
    land(s.committed.front());
    s.committed.pop_front();
  }
}

}  // namespace simt::tc
