#include "tensor.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

#include <unistd.h>

#include "errors.h"

#include "async_copy.h"
#include "graph.h"

#ifdef VGG_WITH_CUDA
#include "../cuda/runtime.h"
#endif
#ifdef VGG_WITH_SIM
#include "../simt/memory.h"
#endif

namespace vgg {

namespace {

constexpr size_t kHostAlignment = 64;

std::string bytes_str(size_t bytes) {
  const double gib = static_cast<double>(bytes) / double(size_t(1) << 30);
  return cat(bytes, " bytes (", gib < 0.01 ? 0.0 : gib, " GiB)");
}

void* host_alloc(size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; a zero-byte tensor still gets a unique pointer.
  const size_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  void* ptr = std::aligned_alloc(kHostAlignment, rounded ? rounded : kHostAlignment);
  if (!ptr) throw MemoryError(cat("out of host memory: could not allocate ", bytes_str(bytes)));
  return ptr;
}

// Physical memory of this machine (0 if unknown). Linux overcommits, so a request larger than RAM "succeeds"
// and the process is later killed by the OOM killer while touching the pages; such requests are refused here.
size_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

// Freed large host blocks (cpu and sim tensors), kept for reuse by exact size. Training allocates the same
// shapes every step, and glibc hands blocks of 32 MiB and more back to the OS on free, so without this cache a
// VGG-A step at 32 px, batch 128 took ~26,000 page faults (~100 MB of fresh zeroed pages) per step. Small blocks
// go straight to malloc, which already reuses them. Leaked on purpose: Python may free tensors after static
// destructors have run.
class HostBlockCache {
 public:
  static HostBlockCache& instance() {
    static HostBlockCache* cache = new HostBlockCache();
    return *cache;
  }

  void* allocate(size_t bytes) {
    if (bytes < kMinCachedBytes) return host_alloc(bytes);
    const size_t size = rounded(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto bin = free_.find(size);
      if (bin != free_.end() && !bin->second.empty()) {
        void* ptr = bin->second.back();
        bin->second.pop_back();
        cached_bytes_ -= size;
        return ptr;
      }
    }
    return host_alloc(size);
  }

  void release(void* ptr, size_t bytes) noexcept {
    if (bytes < kMinCachedBytes) return std::free(ptr);
    const size_t size = rounded(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_bytes_ + size > kMaxCachedBytes) return std::free(ptr);
    try {
      free_[size].push_back(ptr);
      cached_bytes_ += size;
    } catch (...) {
      std::free(ptr);
    }
  }

  void clear() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, blocks] : free_)
      for (void* ptr : blocks) std::free(ptr);
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kMinCachedBytes = size_t{1} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;
  static size_t rounded(size_t bytes) { return (bytes + 4095) / 4096 * 4096; }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

// Bytes of `numel` elements, refusing shapes whose size overflows.
size_t checked_bytes(const std::vector<int64_t>& shape, DType dtype) {
  return static_cast<size_t>(checked_numel("tensor", shape)) * dtype_size(dtype);
}

}  // namespace

int64_t checked_numel(const char* op, const std::vector<int64_t>& shape) {
  // The product of the non-zero extents is bounded too, so a zero extent cannot hide absurd ones: kernels form
  // partial products such as H * W * C even when N is 0.
  bool empty = false;
  int64_t count = 1;
  for (int64_t extent : shape) {
    VGG_CHECK(extent >= 0, ValueError, op, ": negative dimension in shape ", shape_str(shape));
    if (extent == 0) {
      empty = true;
      continue;
    }
    VGG_CHECK(extent <= kMaxNumel && count <= kMaxNumel / extent, ValueError, op, ": shape ", shape_str(shape),
              " has more than 2**46 elements");
    count *= extent;
  }
  return empty ? 0 : count;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::BFloat16: return 2;
    case DType::UInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::BFloat16: return "bfloat16";
    case DType::UInt8: return "uint8";
  }
  return "?";
}

DType parse_float_dtype(const std::string& name, const char* op) {
  if (name == "float32") return DType::Float32;
  if (name == "float64") return DType::Float64;
  if (name == "bfloat16") return DType::BFloat16;
  throw TypeError(cat(op, ": dtype must be \"float32\", \"float64\" or \"bfloat16\", got \"", name, "\""));
}

bool cuda_compiled() {
#ifdef VGG_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool sim_compiled() {
#ifdef VGG_WITH_SIM
  return true;
#else
  return false;
#endif
}

static int usable_gpus() {
#ifdef VGG_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::vector<std::string> available_devices() {
  std::vector<std::string> names{"cpu"};
  if (sim_compiled()) names.push_back("sim");
  for (int i = 0, n = usable_gpus(); i < n; ++i) names.push_back("cuda:" + std::to_string(i));
  return names;
}

Device Device::parse(const std::string& name) {
  if (name == "cpu") return {DeviceType::CPU, 0};
  if (name == "sim") {
    VGG_CHECK(sim_compiled(), ValueError, "device 'sim' is not available: this build has no SIMT emulator");
    return {DeviceType::Sim, 0};
  }
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (name.size() > 5) {
      const std::string digits = name.substr(5);
      VGG_CHECK(!digits.empty() && digits.size() < 4 && digits.find_first_not_of("0123456789") == std::string::npos,
                ValueError, "unknown device '", name, "': expected cpu, sim, cuda or cuda:N");
      index = std::stoi(digits);
    }
    VGG_CHECK(cuda_compiled(), ValueError, "device '", name,
              "' is not available: this build of vggcore was compiled without CUDA (no nvcc found)");
    const int count = usable_gpus();
    VGG_CHECK(index < count, ValueError, "device '", name, "' is not available: ", count,
              " usable CUDA device(s) on this machine");
    return {DeviceType::CUDA, index};
  }
  throw ValueError(cat("unknown device '", name, "': expected cpu, sim, cuda or cuda:N"));
}

std::string Device::str() const {
  switch (type) {
    case DeviceType::CPU: return "cpu";
    case DeviceType::Sim: return "sim";
    case DeviceType::CUDA: return "cuda:" + std::to_string(index);
  }
  return "?";
}

Storage::Storage(size_t bytes, Device device, bool pinned) : bytes_(bytes), device_(device), pinned_(pinned) {
  if (pinned) {
    VGG_CHECK(device.type == DeviceType::CPU, ValueError, "pinned memory is host memory: a cpu tensor, not ",
              device.str());
    data_ = pinned_alloc(bytes);
    return;
  }
#ifdef VGG_WITH_SIM
  // sim memory comes from the emulator: exact size, guard zones checked after every launch, poisoned (NaN) at
  // first, so that an overrun or a read of output no kernel wrote is seen (csrc/simt/memory.h).
  if (device.type == DeviceType::Sim) {
    data_ = simt::device_alloc(bytes, "tensor");
    return;
  }
#endif
  if (device.is_host_memory()) {
    data_ = HostBlockCache::instance().allocate(bytes);
  } else {
#ifdef VGG_WITH_CUDA
    data_ = cuda::device_malloc(device.index, bytes ? bytes : 1);
#else
    throw ValueError("vggcore was compiled without CUDA");
#endif
  }
}

Storage::~Storage() {
  if (pinned_) {
    pinned_free(data_);  // waits for a queued copy that still reads the block
    return;
  }
#ifdef VGG_WITH_SIM
  if (device_.type == DeviceType::Sim) {
    simt::device_free(data_);
    return;
  }
#endif
  if (device_.is_host_memory()) {
    HostBlockCache::instance().release(data_, bytes_);
  } else {
#ifdef VGG_WITH_CUDA
    cuda::device_free(device_.index, data_);
#endif
  }
}

int64_t Tensor::numel() const {
  // Every shape was checked by checked_numel when the tensor was made or reshaped, so this cannot overflow.
  int64_t count = 1;
  for (int64_t extent : shape_) count *= extent;
  return count;
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  VGG_CHECK(dtype != DType::Float64 || device.type == DeviceType::CPU, TypeError, "tensor: device ", device.str(),
            " holds float32 and bfloat16 only (its kernels run those): pass dtype=\"float32\"; float64 is for the cpu");
  const size_t bytes = checked_bytes(shape, dtype);
  if (device.is_host_memory()) {
    const size_t ram = physical_memory_bytes();
    VGG_CHECK(ram == 0 || bytes <= ram, MemoryError, "tensor: shape ", shape_str(shape), " ", dtype_name(dtype),
              " needs ", bytes_str(bytes), ", more than this machine's memory, ", bytes_str(ram));
  }
  Tensor t;
  t.storage_ = std::make_shared<Storage>(bytes, device);
  t.shape_ = shape;
  t.dtype_ = dtype;
#ifdef VGG_WITH_SIM
  if (device.type == DeviceType::Sim)
    simt::set_allocation_label(t.raw(), cat(dtype_name(dtype), " tensor ", shape_str(shape)));
#endif
  return t;
}

Tensor Tensor::empty_pinned(const std::vector<int64_t>& shape, DType dtype) {
  const size_t bytes = checked_bytes(shape, dtype);
  const size_t ram = physical_memory_bytes();
  VGG_CHECK(ram == 0 || bytes <= ram, MemoryError, "pinned tensor: shape ", shape_str(shape), " ", dtype_name(dtype),
            " needs ", bytes_str(bytes), ", more than this machine's memory, ", bytes_str(ram));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(bytes, Device{DeviceType::CPU, 0}, true);
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::from_host(const void* src, const std::vector<int64_t>& shape, DType dtype, Device device) {
  if (device.type != DeviceType::CPU)
    refuse_during_capture(device, cat("a host-to-device copy of ", shape_str(shape), " ", dtype_name(dtype),
                                      " cannot be captured (the host memory is read once, at the copy); copy "
                                      "inputs into the graph's tensors before replay"));
  Tensor t = empty(shape, dtype, device);
  if (t.nbytes() == 0) return t;
  if (device.is_host_memory()) {
    std::memcpy(t.raw(), src, t.nbytes());
#ifdef VGG_WITH_SIM
    if (device.type == DeviceType::Sim) simt::mark_host_written(t.raw());
#endif
  } else {
#ifdef VGG_WITH_CUDA
    cuda::copy_host_to_device(device.index, t.raw(), src, t.nbytes());
    // From pageable memory the copy returns once src is staged; from pinned memory it is truly asynchronous, and
    // this copy promises the caller that src may be reused at once (non_blocking=True is the asynchronous one).
    if (vgg::is_pinned(src, t.nbytes())) cuda::synchronize(device.index);
#endif
  }
  return t;
}

Tensor Tensor::zeros(const std::vector<int64_t>& shape, DType dtype, Device device) {
  if (device.is_host_memory()) {
    Tensor t = empty(shape, dtype, device);
    if (device.type == DeviceType::Sim)
      sim_memset_zero(t.raw(), t.nbytes());  // a device memset: recorded while capturing
    else
      std::memset(t.raw(), 0, t.nbytes());
    return t;
  }
  const std::vector<unsigned char> host(checked_bytes(shape, dtype), 0);
  return from_host(host.data(), shape, dtype, device);
}

Tensor Tensor::reshape(const std::vector<int64_t>& shape) const {
  std::vector<int64_t> resolved = shape, known_extents;
  int64_t inferred_axis = -1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      VGG_CHECK(inferred_axis < 0, ValueError, "reshape: only one dimension can be -1, got ", shape_str(shape));
      inferred_axis = static_cast<int64_t>(i);
    } else {
      VGG_CHECK(resolved[i] >= 0, ValueError, "reshape: invalid dimension in ", shape_str(shape));
      known_extents.push_back(resolved[i]);
    }
  }
  // Checked, so a product that wraps (2**32 * 2**32 = 0 mod 2**64) cannot pass for a small element count.
  int64_t known = checked_numel("reshape", known_extents);
  if (inferred_axis >= 0) {
    VGG_CHECK(known != 0 && numel() % known == 0, ValueError, "reshape: cannot reshape a tensor of shape ",
              shape_str(shape_), " into ", shape_str(shape));
    resolved[inferred_axis] = numel() / known;
    known *= resolved[inferred_axis];
  }
  VGG_CHECK(known == numel(), ValueError, "reshape: cannot reshape a tensor of shape ", shape_str(shape_),
            " (", numel(), " elements) into ", shape_str(shape));
  Tensor view = *this;
  view.shape_ = resolved;
  return view;
}

void Tensor::copy_to_host(void* dst) const {
  if (device().type != DeviceType::CPU)
    refuse_during_capture(device(), cat("a device-to-host copy of ", shape_str(shape_), " ", dtype_name(dtype_),
                                        " (.numpy(), .item(), a check of its values) reads the device on the host; "
                                        "read it after replay"));
  if (nbytes() == 0) return;
  if (device().is_host_memory()) {
    std::memcpy(dst, raw(), nbytes());
  } else {
#ifdef VGG_WITH_CUDA
    cuda::copy_device_to_host(device().index, dst, raw(), nbytes());
#endif
  }
}

void Tensor::write_from_host(int64_t offset, const void* src, size_t bytes) const {
  VGG_CHECK(offset >= 0 && static_cast<size_t>(offset) <= nbytes() && bytes <= nbytes() - static_cast<size_t>(offset),
            ValueError, "write_from_host: ", bytes, " bytes at offset ", offset, " do not fit the tensor's ", nbytes(),
            " bytes");
  if (device().type != DeviceType::CPU)
    refuse_during_capture(device(), "write_from_host: a host-to-device copy cannot be captured (the host memory is "
                                    "read once, at the copy); write before the capture or between replays");
  if (bytes == 0) return;
  char* dst = static_cast<char*>(raw()) + offset;
  if (device().is_host_memory()) {
    std::memcpy(dst, src, bytes);
#ifdef VGG_WITH_SIM
    if (device().type == DeviceType::Sim) simt::mark_host_written(raw());
#endif
  } else {
#ifdef VGG_WITH_CUDA
    cuda::copy_host_to_device(device().index, dst, src, bytes);
    if (vgg::is_pinned(src, bytes)) cuda::synchronize(device().index);
#endif
  }
}

Tensor Tensor::to(const Device& target) const {
  if (target.type == DeviceType::Sim && device().type == DeviceType::Sim) {
    Tensor out = empty(shape_, dtype_, target);
    copy_device_into(out, *this, "to");  // recorded while capturing
    return out;
  }
  if (device().type == DeviceType::Sim && target.type == DeviceType::CPU) {
    Tensor out = empty(shape_, dtype_, target);
    copy_to_host(out.raw());
    return out;
  }
  if (target.is_host_memory() && device().is_host_memory()) return from_host(raw(), shape_, dtype_, target);
#ifdef VGG_WITH_CUDA
  if (!target.is_host_memory() && device() == target) {
    Tensor out = empty(shape_, dtype_, target);
    cuda::copy_device_to_device(target.index, out.raw(), raw(), nbytes());
    return out;
  }
  if (!target.is_host_memory() && device().is_host_memory()) return from_host(raw(), shape_, dtype_, target);
  // device to host, or between two GPUs: stage through host memory (rare; keeps one code path).
  std::vector<unsigned char> staging(nbytes());
  copy_to_host(staging.data());
  return from_host(staging.data(), shape_, dtype_, target);
#else
  throw ValueError(cat("to: cannot move a tensor to ", target.str(), ": vggcore was compiled without CUDA"));
#endif
}

void empty_host_cache() { HostBlockCache::instance().clear(); }

#ifdef VGG_WITH_SIM
// Scratch memory for the SIMT emulator's kernels (declared in csrc/cuda/common.cuh): checked like tensors.
namespace sim {
void* workspace_alloc(size_t bytes) { return simt::device_alloc(bytes, "workspace"); }
void workspace_free(void* ptr) noexcept { simt::device_free(ptr); }
}  // namespace sim
#endif

}  // namespace vgg
