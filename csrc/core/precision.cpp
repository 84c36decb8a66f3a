#include "precision.h"

#include <atomic>
#include <mutex>

#include "errors.h"

namespace vgg {
namespace {

std::atomic<MatmulPrecision> g_precision{MatmulPrecision::Highest};

std::mutex g_plan_mutex;
GemmPlanOverride g_plan;
std::string g_plan_text = "auto";

}  // namespace

void set_float32_matmul_precision(const std::string& precision) {
  if (precision == "highest") g_precision = MatmulPrecision::Highest;
  else if (precision == "high") g_precision = MatmulPrecision::High;
  else
    throw ValueError("set_float32_matmul_precision: precision must be 'highest' or 'high', got '" + precision + "'");
}

std::string get_float32_matmul_precision() {
  return float32_matmul_precision() == MatmulPrecision::High ? "high" : "highest";
}

MatmulPrecision float32_matmul_precision() { return g_precision.load(); }

void set_gpu_gemm_plan(const std::string& plan) {
  GemmPlanOverride parsed;
  if (plan != "auto") {
    const size_t colon = plan.find(':');
    const std::string tiles = plan.substr(0, colon);
    if (tiles != "small" && tiles != "large")
      throw ValueError("set_gpu_gemm_plan: plan must be auto, small, large, small:SPLITS or large:SPLITS, got '" +
                       plan + "'");
    parsed.forced = true;
    parsed.large = tiles == "large";
    if (colon != std::string::npos) {
      const std::string digits = plan.substr(colon + 1);
      if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos ||
          std::stoi(digits) < 1)
        throw ValueError("set_gpu_gemm_plan: SPLITS in plan '" + plan + "' must be an integer from 1 to 999");
      parsed.splits = std::stoi(digits);
    }
  }
  std::lock_guard<std::mutex> lock(g_plan_mutex);
  g_plan = parsed;
  g_plan_text = plan;
}

std::string get_gpu_gemm_plan() {
  std::lock_guard<std::mutex> lock(g_plan_mutex);
  return g_plan_text;
}

GemmPlanOverride gpu_gemm_plan_override() {
  std::lock_guard<std::mutex> lock(g_plan_mutex);
  return g_plan;
}

}  // namespace vgg
