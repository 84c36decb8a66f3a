// What every kernel lab shares (llm.c dev/cuda style): the production kernels, a CPU reference, validation of every
// variant, CUDA-event timing with the L2 cache flushed between runs, and cuDNN as kernel 0.
//
// A lab is one .cu file per GPU pass (conv_fwd.cu, conv_dgrad.cu, conv_wgrad.cu, linear_gemm.cu). It lists its
// variants in one table (name, launcher), so a new kernel is one line; main() calls run_lab(), which
//   1. builds the problem from the command line (defaults: a VGG-16 layer at a modest batch),
//   2. computes the float64 reference on the CPU with the production direct loops (csrc/cpu/conv_reference.cpp),
//   3. runs every variant once and checks |out - ref| <= tol * max(|ref|, 1) elementwise (the test suite's rule),
//   4. times the variants that passed, and cuDNN, with CUDA events: warm-up, then the mean of `reps` runs, each
//      after a write of twice the L2 cache so that no run reads what the previous one left there,
//   5. prints ms, TFLOP/s (2*N*P*Q*K*R*S*C per pass) and the time ratio to cuDNN.
// Exit status: 0 all variants valid, 1 a variant failed validation, 2 a CUDA or cuDNN error.
//
// The production kernels come from lab_kernels.o (lab_kernels.cu, compiled once for every lab): each lab calls
// their entry points (csrc/cuda/gpu_kernels.h, namespace vgg::cuda) and the plan and precision setters.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/precision.h"
#include "cpu/conv_reference.h"
#include "cuda/gpu_kernels.h"
#include "shapes.h"

#ifdef VGG_LAB_CUDNN
#include <cudnn.h>
#endif

#define LAB_CUDA(call)                                                                                       \
  do {                                                                                                       \
    const cudaError_t lab_status_ = (call);                                                                  \
    if (lab_status_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(lab_status_)); \
      std::exit(2);                                                                                          \
    }                                                                                                        \
  } while (0)

namespace lab {

using vgg::Conv2dShape;

enum class Pass { forward, backward_data, backward_weight };

// The device buffers of one problem; which are inputs and which is the output depends on the pass.
struct Buffers {
  float *x, *w, *bias, *y;  // x (N,H,W,C), w (K,R,S,C), bias (K), y (N,P,Q,K): y is dy for the backward passes
  float* out;               // forward: y's buffer; backward-data: dx (N,H,W,C); backward-weight: dw (K,R,S,C)
};

// The pass as the library runs it: the production entry point, asynchronous on the default stream.
using Launcher = void (*)(const Conv2dShape& s, const Buffers& b);

// A variant: the production pass under one setting of the GPU GEMM's test-only plan override
// (vgg::set_gpu_gemm_plan: "auto", "small", "large", "small:SPLITS", "large:SPLITS") and of the float32 matmul
// precision ("highest": CUDA cores; "high": TF32 tensor cores). A kernel that arrives through the planner is one
// more row.
struct Variant {
  const char* name;
  const char* plan;
  const char* precision;
};

// The rows every lab's table starts from: small and large tiles, without and with SPLITS-way split-K, on the CUDA
// cores and on TF32 tensor cores.
#define LAB_TILE_PLANS(SPLITS)                                                       \
  {"small tiles", "small", "highest"},                                               \
  {"large tiles", "large", "highest"},                                               \
  {"small tiles, split-K " #SPLITS, "small:" #SPLITS, "highest"},                    \
  {"large tiles, split-K " #SPLITS, "large:" #SPLITS, "highest"},                    \
  {"TF32 tensor cores, automatic plan", "auto", "high"},                             \
  {"TF32 small tiles, split-K " #SPLITS, "small:" #SPLITS, "high"},                  \
  {"TF32 large tiles, split-K " #SPLITS, "large:" #SPLITS, "high"}

inline void select(const Variant& v) {
  vgg::set_gpu_gemm_plan(v.plan);
  vgg::set_float32_matmul_precision(v.precision);
}

inline Conv2dShape parse_shape(int argc, char** argv, const Conv2dShape& fallback) {
  // N H W C K R S stride pad (R = S given once as R when only 8 numbers follow)
  if (argc == 1) return fallback;
  if (argc != 10) {
    std::fprintf(stderr, "usage: %s [N H W C K R S stride pad]\n", argv[0]);
    std::exit(2);
  }
  Conv2dShape s{};
  int64_t* fields[] = {&s.N, &s.H, &s.W, &s.C, &s.K, &s.R, &s.S, &s.stride_h, &s.pad_h};
  for (int i = 0; i < 9; ++i) *fields[i] = std::atoll(argv[i + 1]);
  s.stride_w = s.stride_h;  // conv2d's stride and padding are one number each, as in the Python API
  s.pad_w = s.pad_h;
  s.P = (s.H + 2 * s.pad_h - s.R) / s.stride_h + 1;
  s.Q = (s.W + 2 * s.pad_w - s.S) / s.stride_w + 1;
  return s;
}

inline std::vector<double> random_values(size_t n, uint32_t seed, double scale) {
  // Rounded to float here, so the float64 reference sees exactly the values the GPU does.
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<double> v(n);
  for (auto& e : v) e = static_cast<double>(static_cast<float>(u(gen)));
  return v;
}

inline float* upload(const std::vector<double>& v) {
  std::vector<float> f(v.begin(), v.end());
  float* d = nullptr;
  LAB_CUDA(cudaMalloc(&d, std::max<size_t>(f.size(), 1) * sizeof(float)));
  LAB_CUDA(cudaMemcpy(d, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

// |got - ref| <= tol * max(|ref|, 1) for every element; prints the worst element.
inline bool validate(const char* name, const float* d_out, const std::vector<double>& ref, double tol) {
  std::vector<float> got(ref.size());
  LAB_CUDA(cudaDeviceSynchronize());
  LAB_CUDA(cudaMemcpy(got.data(), d_out, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]) / std::max(std::fabs(ref[i]), 1.0);
    if (!(err <= worst)) worst = err, at = i;  // NaN is the worst
  }
  const bool ok = worst <= tol;
  std::printf("  %-28s %s  max error %.2e at %zu (got %.7g, ref %.7g)\n", name, ok ? "ok  " : "FAIL", worst, at,
              double(got[at]), ref[at]);
  return ok;
}

// Mean milliseconds of `reps` runs of fn after `warmup` runs; the L2 cache is overwritten before each timed run.
template <typename Fn> float time_ms(Fn fn, int warmup = 3, int reps = 20) {
  int l2 = 0;
  LAB_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
  void* flush = nullptr;
  LAB_CUDA(cudaMalloc(&flush, 2 * size_t(l2)));
  cudaEvent_t start, stop;
  LAB_CUDA(cudaEventCreate(&start));
  LAB_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) fn();
  float total = 0.0f;
  for (int i = 0; i < reps; ++i) {
    LAB_CUDA(cudaMemsetAsync(flush, i, 2 * size_t(l2), 0));
    LAB_CUDA(cudaEventRecord(start, 0));
    fn();
    LAB_CUDA(cudaEventRecord(stop, 0));
    LAB_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    LAB_CUDA(cudaEventElapsedTime(&ms, start, stop));
    total += ms;
  }
  LAB_CUDA(cudaGetLastError());
  LAB_CUDA(cudaEventDestroy(start));
  LAB_CUDA(cudaEventDestroy(stop));
  LAB_CUDA(cudaFree(flush));
  return total / reps;
}

#ifdef VGG_LAB_CUDNN
#define LAB_CUDNN(call)                                                                                      \
  do {                                                                                                       \
    const cudnnStatus_t lab_status_ = (call);                                                                \
    if (lab_status_ != CUDNN_STATUS_SUCCESS) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudnnGetErrorString(lab_status_)); \
      std::exit(2);                                                                                          \
    }                                                                                                        \
  } while (0)

// cuDNN on the same NHWC/KRSC buffers, fp32 with TF32 off (CUDNN_FMA_MATH), the fastest algorithm cuDNN's own
// search finds for this pass (as torch.backends.cudnn.benchmark would), with its workspace allocated once.
class Cudnn {
 public:
  Cudnn(const Conv2dShape& s, Pass pass) : pass_(pass) {
    LAB_CUDNN(cudnnCreate(&handle_));
    LAB_CUDNN(cudnnCreateTensorDescriptor(&x_));
    LAB_CUDNN(cudnnCreateTensorDescriptor(&y_));
    LAB_CUDNN(cudnnCreateFilterDescriptor(&w_));
    LAB_CUDNN(cudnnCreateConvolutionDescriptor(&conv_));
    LAB_CUDNN(cudnnSetTensor4dDescriptor(x_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, int(s.N), int(s.C), int(s.H), int(s.W)));
    LAB_CUDNN(cudnnSetTensor4dDescriptor(y_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, int(s.N), int(s.K), int(s.P), int(s.Q)));
    LAB_CUDNN(cudnnSetFilter4dDescriptor(w_, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, int(s.K), int(s.C), int(s.R), int(s.S)));
    LAB_CUDNN(cudnnSetConvolution2dDescriptor(conv_, int(s.pad_h), int(s.pad_w), int(s.stride_h), int(s.stride_w), 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    LAB_CUDNN(cudnnSetConvolutionMathType(conv_, CUDNN_FMA_MATH));
    int found = 0;
    if (pass == Pass::forward) {
      cudnnConvolutionFwdAlgoPerf_t perf[8];
      LAB_CUDNN(cudnnFindConvolutionForwardAlgorithm(handle_, x_, w_, conv_, y_, 8, &found, perf));
      pick(perf, found, fwd_);
    } else if (pass == Pass::backward_data) {
      cudnnConvolutionBwdDataAlgoPerf_t perf[8];
      LAB_CUDNN(cudnnFindConvolutionBackwardDataAlgorithm(handle_, w_, y_, conv_, x_, 8, &found, perf));
      pick(perf, found, bwd_data_);
    } else {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
      LAB_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithm(handle_, x_, y_, conv_, w_, 8, &found, perf));
      pick(perf, found, bwd_filter_);
    }
    if (ws_bytes_) LAB_CUDA(cudaMalloc(&ws_, ws_bytes_));
  }
  ~Cudnn() {
    cudaFree(ws_);
    cudnnDestroyConvolutionDescriptor(conv_);
    cudnnDestroyFilterDescriptor(w_);
    cudnnDestroyTensorDescriptor(y_);
    cudnnDestroyTensorDescriptor(x_);
    cudnnDestroy(handle_);
  }
  void run(const Buffers& b) const {
    const float one = 1.0f, zero = 0.0f;
    if (pass_ == Pass::forward)
      LAB_CUDNN(cudnnConvolutionForward(handle_, &one, x_, b.x, w_, b.w, conv_, fwd_, ws_, ws_bytes_, &zero, y_, b.out));
    else if (pass_ == Pass::backward_data)
      LAB_CUDNN(cudnnConvolutionBackwardData(handle_, &one, w_, b.w, y_, b.y, conv_, bwd_data_, ws_, ws_bytes_, &zero,
                                             x_, b.out));
    else
      LAB_CUDNN(cudnnConvolutionBackwardFilter(handle_, &one, x_, b.x, y_, b.y, conv_, bwd_filter_, ws_, ws_bytes_,
                                               &zero, w_, b.out));
  }

 private:
  // The fastest successful result in FMA (no TF32) math; cuDNN sorts them by time.
  template <typename Perf, typename Algo> void pick(const Perf* perf, int found, Algo& algo) {
    for (int i = 0; i < found; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].mathType == CUDNN_FMA_MATH) {
        algo = perf[i].algo;
        ws_bytes_ = perf[i].memory;
        return;
      }
    std::fprintf(stderr, "cuDNN found no fp32 FMA algorithm for this problem\n");
    std::exit(2);
  }
  Pass pass_;
  cudnnHandle_t handle_{};
  cudnnTensorDescriptor_t x_{}, y_{};
  cudnnFilterDescriptor_t w_{};
  cudnnConvolutionDescriptor_t conv_{};
  cudnnConvolutionFwdAlgo_t fwd_{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_{};
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
};
#endif

// Validates and times every variant of one pass on shape s; returns the exit status.
// tol 1e-4 for float32 sums; the TF32 rows (10-bit mantissas) are held to 5e-3.
inline int run_lab(const char* title, Pass pass, const Conv2dShape& s, Launcher launch, const Variant* variants,
                   int count, double tol = 1e-4) {
  const size_t nx = s.N * s.H * s.W * s.C, nw = s.K * s.R * s.S * s.C, ny = s.N * s.P * s.Q * s.K;
  // Inputs of order one: x and dy uniform in [-1, 1], w scaled by 1/sqrt(R*S*C) as a trained layer's would be.
  const std::vector<double> x = random_values(nx, 1, 1.0), w = random_values(nw, 2, 1.0 / std::sqrt(double(s.R * s.S * s.C)));
  const std::vector<double> bias = random_values(s.K, 3, 1.0), dy = random_values(ny, 4, 1.0);
  std::vector<double> ref(pass == Pass::forward ? ny : pass == Pass::backward_data ? nx : nw);
  if (pass == Pass::forward) vgg::cpu::conv2d_forward_direct(x.data(), w.data(), bias.data(), ref.data(), s);
  else if (pass == Pass::backward_data) vgg::cpu::conv2d_backward_data_direct(dy.data(), w.data(), ref.data(), s);
  else vgg::cpu::conv2d_backward_weight_direct(x.data(), dy.data(), ref.data(), s);

  Buffers b{upload(x), upload(w), upload(bias), upload(dy), nullptr};
  LAB_CUDA(cudaMalloc(&b.out, ref.size() * sizeof(float)));
  const double flops = 2.0 * s.N * s.P * s.Q * s.K * s.R * s.S * s.C;
  cudaDeviceProp prop{};
  LAB_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s on %s: N=%lld H=%lld W=%lld C=%lld -> K=%lld, %lldx%lld stride %lld pad %lld (%.1f GFLOP)\n", title,
              prop.name, (long long)s.N, (long long)s.H, (long long)s.W, (long long)s.C, (long long)s.K,
              (long long)s.R, (long long)s.S, (long long)s.stride_h, (long long)s.pad_h, flops * 1e-9);

  std::printf("validation against the CPU float64 reference, |out - ref| <= tol * max(|ref|, 1):\n");
  std::vector<bool> valid(count);
  bool all_valid = true;
  for (int i = 0; i < count; ++i) {
    select(variants[i]);
    LAB_CUDA(cudaMemset(b.out, 0xff, ref.size() * sizeof(float)));  // NaN: a variant that writes nothing fails
    launch(s, b);
    LAB_CUDA(cudaGetLastError());
    const bool tf32 = std::string(variants[i].precision) == "high";
    valid[i] = validate(variants[i].name, b.out, ref, tf32 ? 5e-3 : tol);
    all_valid = all_valid && valid[i];
  }
  float vendor_ms = 0.0f;
#ifdef VGG_LAB_CUDNN
  const Cudnn cudnn(s, pass);
  cudnn.run(b);
  validate("kernel 0: cuDNN (fp32 FMA)", b.out, ref, tol);
  vendor_ms = time_ms([&] { cudnn.run(b); });
#else
  std::printf("  (built without cuDNN: no kernel 0; `make CUDNN=<dir with include/cudnn.h>` adds it)\n");
#endif

  std::printf("\n| kernel | ms | TFLOP/s | time / cuDNN |\n|---|---:|---:|---:|\n");
  if (vendor_ms > 0) std::printf("| 0: cuDNN | %.3f | %.2f | 1.00 |\n", vendor_ms, flops / vendor_ms * 1e-9);
  for (int i = 0; i < count; ++i) {
    if (!valid[i]) {
      std::printf("| %s | invalid | | |\n", variants[i].name);
      continue;
    }
    select(variants[i]);
    const float ms = time_ms([&] { launch(s, b); });
    if (vendor_ms > 0)
      std::printf("| %s | %.3f | %.2f | %.2f |\n", variants[i].name, ms, flops / ms * 1e-9, ms / vendor_ms);
    else
      std::printf("| %s | %.3f | %.2f | n/a |\n", variants[i].name, ms, flops / ms * 1e-9);
  }
  select({"", "auto", "highest"});
  for (float* p : {b.x, b.w, b.bias, b.y, b.out}) LAB_CUDA(cudaFree(p));
  return all_valid ? 0 : 1;
}

}  // namespace lab
