// Self-test kernels for the tensor-core wrappers of csrc/cuda/mma.cuh on the emulator, bound into vggcore._C
// for tests/test_tc_emulation.py. Each kernel fills its fragments from whole matrices in global memory with the
// PTX ISA layouts (written out here independently of the emulator's tables), so a wrong table or a wrong wrapper
// shows as a wrong product against NumPy's.
#ifndef VGG_GPU_NS
#define VGG_GPU_NS sim
#endif

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/common.cuh"
#include "../cuda/mma.cuh"

namespace py = pybind11;

namespace vgg::sim::tc_selftest {

namespace mma = vgg::sim::mma;

// Problem p = blockIdx.x * 2 + warp: A (16x8), B (8x8), C, D (16x8), row-major. 64 threads per block (2 warps).
__global__ void mma_tf32_kernel(const float* A, const float* B, const float* C, float* D, bool round) {
  const int lane = threadIdx.x % 32, p = blockIdx.x * 2 + threadIdx.x / 32;
  const int g = lane >> 2, t = lane & 3;
  const float* a = A + p * 128;
  const float* b = B + p * 64;
  auto op = [&](float v) { return round ? mma::to_tf32(v) : mma::float_bits(v); };
  const uint32_t fa[4] = {op(a[g * 8 + t]), op(a[(g + 8) * 8 + t]), op(a[g * 8 + t + 4]), op(a[(g + 8) * 8 + t + 4])};
  const uint32_t fb[2] = {op(b[t * 8 + g]), op(b[(t + 4) * 8 + g])};
  const float* c = C + p * 128;
  const float fc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float fd[4];
  mma::mma_tf32(fd, fa, fb, fc);
  float* d = D + p * 128;
  d[g * 8 + 2 * t] = fd[0];
  d[g * 8 + 2 * t + 1] = fd[1];
  d[(g + 8) * 8 + 2 * t] = fd[2];
  d[(g + 8) * 8 + 2 * t + 1] = fd[3];
}

// Problem p: A (16x16 bf16), B (16x8 bf16), C, D (16x8 float), row-major.
__global__ void mma_bf16_kernel(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
  const int lane = threadIdx.x % 32, p = blockIdx.x * 2 + threadIdx.x / 32;
  const int g = lane >> 2, t = lane & 3;
  const uint16_t* a = A + p * 256;
  const uint16_t* b = B + p * 128;
  auto pair = [](uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); };
  const uint32_t fa[4] = {pair(a[g * 16 + 2 * t], a[g * 16 + 2 * t + 1]),
                          pair(a[(g + 8) * 16 + 2 * t], a[(g + 8) * 16 + 2 * t + 1]),
                          pair(a[g * 16 + 2 * t + 8], a[g * 16 + 2 * t + 9]),
                          pair(a[(g + 8) * 16 + 2 * t + 8], a[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t fb[2] = {pair(b[(2 * t) * 8 + g], b[(2 * t + 1) * 8 + g]),
                          pair(b[(2 * t + 8) * 8 + g], b[(2 * t + 9) * 8 + g])};
  const float* c = C + p * 128;
  const float fc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float fd[4];
  mma::mma_bf16(fd, fa, fb, fc);
  float* d = D + p * 128;
  d[g * 8 + 2 * t] = fd[0];
  d[g * 8 + 2 * t + 1] = fd[1];
  d[(g + 8) * 8 + 2 * t] = fd[2];
  d[(g + 8) * 8 + 2 * t + 1] = fd[3];
}

template <class T>
const T* data_of(const py::array_t<T, py::array::c_style | py::array::forcecast>& a, py::ssize_t want,
                 const char* name) {
  if (a.size() != want) throw std::invalid_argument(std::string("tc selftest: ") + name + " has the wrong size");
  return a.data();
}

py::array_t<float> mma_tf32(const py::array_t<float, py::array::c_style | py::array::forcecast>& A,
                            const py::array_t<float, py::array::c_style | py::array::forcecast>& B,
                            const py::array_t<float, py::array::c_style | py::array::forcecast>& C, bool round) {
  const py::ssize_t problems = A.size() / 128;
  if (problems < 2 || problems % 2 != 0) throw std::invalid_argument("tc selftest: an even number of problems");
  py::array_t<float> D({problems, py::ssize_t{16}, py::ssize_t{8}});
  VGG_LAUNCH(static_cast<unsigned>(problems / 2), 64, 0, mma_tf32_kernel)(
      data_of(A, problems * 128, "A"), data_of(B, problems * 64, "B"), data_of(C, problems * 128, "C"),
      D.mutable_data(), round);
  return D;
}

py::array_t<float> mma_bf16(const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& A,
                            const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& B,
                            const py::array_t<float, py::array::c_style | py::array::forcecast>& C) {
  const py::ssize_t problems = A.size() / 256;
  if (problems < 2 || problems % 2 != 0) throw std::invalid_argument("tc selftest: an even number of problems");
  py::array_t<float> D({problems, py::ssize_t{16}, py::ssize_t{8}});
  VGG_LAUNCH(static_cast<unsigned>(problems / 2), 64, 0, mma_bf16_kernel)(
      data_of(A, problems * 256, "A"), data_of(B, problems * 128, "B"), data_of(C, problems * 128, "C"),
      D.mutable_data());
  return D;
}

// Shared memory holds 4 matrices of 8x8 16-bit values, element (i, r, c) = 1000 * i + 10 * r + c, rows 48 bytes
// apart (24 elements), matrices 8 rows apart. Lane L passes the address of row L % 8 of matrix L / 8.
// out (32 lanes, COUNT registers).
template <int COUNT, bool TRANS>
__global__ void ldmatrix_kernel(uint32_t* out) {
  VGG_DYNAMIC_SHARED(uint16_t, s);
  constexpr int kLd = 24;
  const int lane = threadIdx.x;
  for (int e = lane; e < 4 * 8 * kLd; e += 32) {
    const int i = e / (8 * kLd), r = (e / kLd) % 8, c = e % kLd;
    s[e] = static_cast<uint16_t>(c < 8 ? 1000 * i + 10 * r + c : 0xFFFF);
  }
  __syncwarp();
  uint32_t regs[COUNT];
  mma::ldmatrix<COUNT, TRANS>(regs, s + ((lane / 8) % 4 * 8 + lane % 8) * kLd);
  for (int i = 0; i < COUNT; ++i) out[lane * COUNT + i] = regs[i];
}

std::vector<uint32_t> ldmatrix(int count, bool trans) {
  std::vector<uint32_t> out(32 * static_cast<size_t>(count));
  const size_t smem = 4 * 8 * 24 * sizeof(uint16_t);
  if (count == 1 && !trans) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<1, false>)(out.data());
  else if (count == 1) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<1, true>)(out.data());
  else if (count == 2 && !trans) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<2, false>)(out.data());
  else if (count == 2) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<2, true>)(out.data());
  else if (count == 4 && !trans) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<4, false>)(out.data());
  else if (count == 4) VGG_LAUNCH(1, 32, smem, ldmatrix_kernel<4, true>)(out.data());
  else throw std::invalid_argument("tc selftest: ldmatrix count must be 1, 2 or 4");
  return out;
}

// 64 threads; thread i copies src[8i .. 8i+3] (its first group) and src[8i+4 .. 8i+7] (its second group) into
// shared memory with src-size (i % 5) * 4 bytes for the first copy (zero-fill for the rest) and 16 for the second,
// then, by `mode`: 0 waits for both groups, 1 waits for all but the most recent group, 2 never waits. After a
// barrier each thread writes back the 8 floats of its right-hand neighbour (so a copy is read by another thread).
__global__ void cp_async_kernel(const float* src, float* out, int mode) {
  VGG_DYNAMIC_SHARED(float, s);
  const int i = threadIdx.x;
  mma::cp_async<16>(s + 8 * i, src + 8 * i, (i % 5) * 4);
  mma::cp_async_commit();
  mma::cp_async<16>(s + 8 * i + 4, src + 8 * i + 4, 16);
  mma::cp_async_commit();
  if (mode == 0) mma::cp_async_wait<0>();
  else if (mode == 1) mma::cp_async_wait<1>();
  __syncthreads();
  const int j = (i + 1) % blockDim.x;
  for (int e = 0; e < 8; ++e) out[8 * i + e] = s[8 * j + e];
}

std::vector<uint32_t> cp_async(const std::string& mode) {
  const int m = mode == "wait_all" ? 0 : mode == "wait_older" ? 1 : mode == "no_wait" ? 2 : -1;
  if (m < 0) throw std::invalid_argument("tc selftest: cp_async mode is wait_all, wait_older or no_wait");
  std::vector<float> src(64 * 8), out(64 * 8);
  for (size_t e = 0; e < src.size(); ++e) src[e] = static_cast<float>(e + 1);
  VGG_LAUNCH(1, 64, 64 * 8 * sizeof(float), cp_async_kernel)(src.data(), out.data(), m);
  std::vector<uint32_t> bits(out.size());
  std::memcpy(bits.data(), out.data(), out.size() * sizeof(float));
  return bits;
}

}  // namespace vgg::sim::tc_selftest

void bind_tc_selftest(py::module_& m) {
  namespace st = vgg::sim::tc_selftest;
  m.def("tc_selftest_mma_tf32", &st::mma_tf32, py::arg("A"), py::arg("B"), py::arg("C"), py::arg("round"),
        "D (P,16,8) = A (P,16,8) @ B (P,8,8) + C through mma.m16n8k8.tf32 on sim (round: cvt.rna first); P even.");
  m.def("tc_selftest_mma_bf16", &st::mma_bf16, py::arg("A"), py::arg("B"), py::arg("C"),
        "D (P,16,8) = A (P,16,16 bf16 bits) @ B (P,16,8 bf16 bits) + C through mma.m16n8k16.bf16 on sim; P even.");
  m.def("tc_selftest_ldmatrix", &st::ldmatrix, py::arg("count"), py::arg("trans"),
        "32 x count registers from ldmatrix of 4 8x8 matrices, element (i, r, c) = 1000i + 10r + c.");
  m.def("tc_selftest_cp_async", &st::cp_async, py::arg("mode"),
        "Float bits read back after cp.async copies of src[e] = e + 1 ('wait_all', 'wait_older', 'no_wait').");
  m.def("tc_async_poison", [] { return simt::tc::kAsyncPoison; }, "The bit pattern of a cp.async still in flight.");
}
