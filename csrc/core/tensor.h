// The engine's tensor: a shape, a dtype and a device over shared, contiguous, row-major storage.
//
// Storage is owned by a shared_ptr so that reshape() and Python views share memory; it is freed through the
// device's allocator (host memory for cpu and sim, the caching allocator for cuda). Host allocations are
// 64-byte aligned so vector kernels may use aligned loads on the first element.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vgg {

// BFloat16 is stored as uint16_t bit patterns (core/bfloat16.h has the conversions); sim and cuda compute with it,
// the cpu only stores, converts and moves it.
enum class DType { Float32, Float64, Int32, Int64, BFloat16, UInt8 };  // UInt8: decoded pixels (augment_crops)
size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", "float64", "int32", "int64", "bfloat16", "uint8"
// The floating dtype named "float32", "float64" or "bfloat16"; TypeError naming `op` otherwise.
DType parse_float_dtype(const std::string& name, const char* op);

enum class DeviceType { CPU, Sim, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;  // GPU ordinal for CUDA; 0 otherwise

  // "cpu", "sim", "cuda" (= "cuda:0"), "cuda:N". Throws ValueError for an unknown or absent device.
  static Device parse(const std::string& name);
  std::string str() const;
  bool is_host_memory() const { return type != DeviceType::CUDA; }
  bool operator==(const Device& other) const { return type == other.type && index == other.index; }
  bool operator!=(const Device& other) const { return !(*this == other); }
};

// Shapes hold at most 2**46 elements (far beyond any memory), so products of extents and byte counts never wrap.
constexpr int64_t kMaxNumel = int64_t{1} << 46;
// The element count of `shape`: ValueError naming `op` for a negative extent or more than kMaxNumel elements.
int64_t checked_numel(const char* op, const std::vector<int64_t>& shape);

// What this build and machine can run: "cpu", then "sim" if built, then "cuda:N" per usable GPU.
std::vector<std::string> available_devices();
bool cuda_compiled();
bool sim_compiled();
// Returns the host block cache (freed cpu/sim tensor memory kept for reuse, at most 1 GiB) to the system.
void empty_host_cache();

class Storage {
 public:
  // pinned: page-locked host memory for a cpu tensor (core/async_copy.h), the source of asynchronous copies.
  Storage(size_t bytes, Device device, bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  const Device& device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  bool pinned_ = false;
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised contents.
  static Tensor empty(const std::vector<int64_t>& shape, DType dtype, Device device);
  static Tensor zeros(const std::vector<int64_t>& shape, DType dtype, Device device);
  // A cpu tensor in page-locked host memory (uninitialised): the source of asynchronous host-to-device copies.
  static Tensor empty_pinned(const std::vector<int64_t>& shape, DType dtype);
  // Copies `numel * dtype_size` bytes from host memory.
  static Tensor from_host(const void* src, const std::vector<int64_t>& shape, DType dtype, Device device);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  int64_t size(int64_t axis) const { return shape_.at(axis < 0 ? axis + dim() : axis); }
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  const Device& device() const { return storage_->device(); }
  bool defined() const { return static_cast<bool>(storage_); }
  bool is_pinned() const { return storage_ && storage_->pinned(); }
  // The shared storage, for work that must keep it alive until the device is done with it (an async copy).
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() const { return storage_ ? storage_->data() : nullptr; }
  template <typename T> T* data() const { return static_cast<T*>(raw()); }

  // A tensor with the same storage and a new shape of equal numel (ValueError otherwise).
  Tensor reshape(const std::vector<int64_t>& shape) const;
  // A copy on `device` (a new storage even when the device is the same).
  Tensor to(const Device& device) const;
  // Copies the contents into host memory at dst (synchronises with the device).
  void copy_to_host(void* dst) const;
  // Copies `bytes` bytes from host memory into this tensor's storage from byte `offset` on (ValueError past its
  // end); on cuda ordered on the device's stream, with src free for reuse on return.
  void write_from_host(int64_t offset, const void* src, size_t bytes) const;

 private:
  std::shared_ptr<Storage> storage_;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::Float32;
};

}  // namespace vgg
