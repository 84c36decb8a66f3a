#include "async_copy.h"

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "errors.h"

#ifdef VGG_WITH_CUDA
#include "../cuda/runtime.h"
#endif

namespace vgg {
namespace {

constexpr size_t kPageBytes = 4096;

struct PinnedBlock {
  size_t bytes = 0;
  bool from_cuda = false;     // cudaHostAlloc'd (else aligned_alloc)
  uint64_t last_ticket = 0;   // the last copy issued from it (0: none)
};

// A copy not yet known to be complete.
struct Copy {
  Device device;
  std::shared_ptr<Storage> dst;  // kept alive until the copy can no longer touch it (see retire)
  void* dst_data = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
  uint64_t src_hash = 0;         // sim: the source's contents at issue
  void* event = nullptr;         // cuda: recorded on the copy stream after the copy
};

// Leaked on purpose (as the device state of csrc/cuda/runtime.cu): pinned tensors may be freed by Python after
// static destructors have run.
struct State {
  std::mutex mutex;
  std::map<uintptr_t, PinnedBlock> blocks;  // base address -> block
  std::map<uint64_t, Copy> copies;          // ticket -> copy, in issue order
  uint64_t next_ticket = 1;
  std::string deferred_error;               // sim: a check that failed where it could not throw (pinned_free)
};

State& state() {
  static State* s = new State();
  return *s;
}

// 64-bit FNV-1a over 8-byte words (and the tail bytes): cheap enough for a batch, and any change shows.
uint64_t content_hash(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word;
    std::memcpy(&word, p + i, 8);
    h = (h ^ word) * 1099511628211ull;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// The block containing [ptr, ptr + bytes), or blocks.end(). Caller holds the mutex.
std::map<uintptr_t, PinnedBlock>::iterator find_block(State& s, const void* ptr, size_t bytes) {
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  auto it = s.blocks.upper_bound(addr);
  if (it == s.blocks.begin()) return s.blocks.end();
  --it;
  if (addr + bytes > it->first + it->second.bytes) return s.blocks.end();
  return it;
}

// sim: performs the copy now, as the copy stream would have by the time anything waits on it. A source whose
// contents changed since issue was written by the host while its copy was in flight: on a real GPU the copy reads
// a mixture of the old and the new batch. Returns the error message, empty when none. Caller holds the mutex.
std::string perform_sim_copy(uint64_t ticket, const Copy& c) {
  if (content_hash(c.src, c.bytes) != c.src_hash)
    return cat("asynchronous host-to-device copy #", ticket, " (", c.bytes, " bytes to ", c.device.str(),
               "): its pinned host source was written before the copy completed; a buffer may be reused only once "
               "its copy's event has completed (pinned_ready / pinned_wait)");
  std::memcpy(c.dst_data, c.src, c.bytes);
  return {};
}

// Performs the queued sim copies up to and including `upto`, in issue order (one copy stream). Caller holds the
// mutex. The first failed check is returned after every copy has been performed or dropped.
std::string drain_sim(State& s, uint64_t upto) {
  std::string error;
  for (auto it = s.copies.begin(); it != s.copies.end() && it->first <= upto;) {
    if (it->second.device.type != DeviceType::Sim) {
      ++it;
      continue;
    }
    std::string e = perform_sim_copy(it->first, it->second);
    if (error.empty()) error = std::move(e);
    it = s.copies.erase(it);
  }
  return error;
}

// drain_sim, throwing the first failed check. Caller holds the mutex.
void drain_sim_or_throw(State& s, uint64_t upto) {
  const std::string error = drain_sim(s, upto);
  if (!error.empty()) throw std::runtime_error(error);
}

// Copy `ticket` when it is a cuda copy that may still be in flight, else copies.end(): a ticket not found has
// completed, and a sim copy (with the sim copies before it) is performed here. The emulator's kernels run on the
// calling thread, in order, so performing the copies now is what any wait on the copy stream would see. Throws the
// first failed sim check. Caller holds the mutex.
std::map<uint64_t, Copy>::iterator pending_cuda_copy(State& s, uint64_t ticket) {
  const auto it = s.copies.find(ticket);
  if (it == s.copies.end() || it->second.device.type != DeviceType::Sim) return it;
  drain_sim_or_throw(s, ticket);
  return s.copies.end();
}

void raise_deferred(State& s) {
  if (s.deferred_error.empty()) return;
  std::string e = std::move(s.deferred_error);
  s.deferred_error.clear();
  throw std::runtime_error(e);
}

#ifdef VGG_WITH_CUDA
// Drops the cuda copies whose event has completed. Caller holds the mutex.
void retire_done(State& s) {
  for (auto it = s.copies.begin(); it != s.copies.end();) {
    if (it->second.device.type == DeviceType::CUDA && cuda::event_done(it->second.event)) {
      cuda::event_destroy(it->second.event);
      it = s.copies.erase(it);
    } else {
      ++it;
    }
  }
}
#endif

// Completes copy `ticket` (and, sim, the ones before it) with the host waiting. Caller holds the mutex.
void complete(State& s, uint64_t ticket) {
  const auto it = pending_cuda_copy(s, ticket);
  if (it == s.copies.end()) return;
#ifdef VGG_WITH_CUDA
  cuda::event_synchronize(it->second.event);
  cuda::event_destroy(it->second.event);
  s.copies.erase(it);
#endif
}

}  // namespace

void* pinned_alloc(size_t bytes) {
  const size_t rounded = (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
  const size_t size = rounded ? rounded : kPageBytes;  // a zero-byte block still gets a unique address
  void* ptr = nullptr;
  bool from_cuda = false;
#ifdef VGG_WITH_CUDA
  if (cuda::device_count() > 0) {
    try {
      ptr = cuda::host_alloc_pinned(size);
    } catch (const cuda::OutOfMemory& e) {
      throw MemoryError(e.what());
    }
    from_cuda = true;
  }
#endif
  if (ptr == nullptr) ptr = std::aligned_alloc(kPageBytes, size);
  if (ptr == nullptr) throw MemoryError(cat("out of host memory: could not allocate ", bytes, " pinned bytes"));
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.blocks[reinterpret_cast<uintptr_t>(ptr)] = PinnedBlock{size, from_cuda, 0};
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  State& s = state();
  bool from_cuda = false;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.blocks.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == s.blocks.end()) return;  // not ours: nothing sensible to do in a noexcept path
    from_cuda = it->second.from_cuda;
    const uint64_t last = it->second.last_ticket;
    s.blocks.erase(it);
    const auto copy = s.copies.find(last);
    if (copy != s.copies.end()) {
      if (copy->second.device.type == DeviceType::Sim) {
        std::string error = drain_sim(s, last);
        if (!error.empty() && s.deferred_error.empty()) s.deferred_error = std::move(error);
      } else {
#ifdef VGG_WITH_CUDA
        try {
          cuda::event_synchronize(copy->second.event);
        } catch (...) {
          // a failed device: the error resurfaces at the next CUDA call that can throw
        }
        cuda::event_destroy(copy->second.event);
        s.copies.erase(copy);
#endif
      }
    }
  }
#ifdef VGG_WITH_CUDA
  if (from_cuda) {
    cuda::host_free_pinned(ptr);
    return;
  }
#endif
  (void)from_cuda;
  std::free(ptr);
}

bool is_pinned(const void* ptr, size_t bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return find_block(s, ptr, bytes) != s.blocks.end();
}

Tensor copy_to_device_async(const char* op, const void* src, size_t bytes, const std::vector<int64_t>& shape,
                            DType dtype, const Device& device, uint64_t* ticket) {
  VGG_CHECK(device.type != DeviceType::CPU, ValueError, op,
            ": an asynchronous host-to-device copy needs a device (sim or cuda), got cpu");
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  const auto block = find_block(s, src, bytes);
  VGG_CHECK(block != s.blocks.end(), ValueError, op, ": non_blocking=True copies to ", device.str(),
            " only from page-locked (pinned) host memory, and the source of shape ", shape_str(shape),
            " is ordinary memory; allocate it with vggcore.pinned_empty / Tensor.pin_memory(), or use "
            "DataLoader(pin_memory=True), or pass non_blocking=False");
  Tensor out = Tensor::empty(shape, dtype, device);
  VGG_CHECK(out.nbytes() == bytes, ValueError, op, ": ", bytes, " source bytes for a ", dtype_name(dtype),
            " tensor of shape ", shape_str(shape), " (", out.nbytes(), " bytes)");
  const uint64_t id = s.next_ticket++;
  Copy c;
  c.device = device;
  c.dst = out.storage();
  c.dst_data = out.raw();
  c.src = src;
  c.bytes = bytes;
  if (device.type == DeviceType::Sim) {
    // Poison the destination with the emulator's NaN word (0x7FFFFFFF): until the copy is performed, a kernel
    // that reads it (compute that did not wait) sees NaN, not stale data that might pass.
    auto* p = static_cast<unsigned char*>(out.raw());
    for (size_t i = 0; i < bytes; ++i) p[i] = i % 4 == 3 ? 0x7F : 0xFF;
    c.src_hash = content_hash(src, bytes);
  } else {
#ifdef VGG_WITH_CUDA
    void* stream = cuda::copy_stream(device.index);
    // The destination block may have been freed by the host a moment ago with kernels still queued that use it:
    // the copy starts after the compute stream's work so far.
    cuda::stream_wait(device.index, stream, nullptr);
    cuda::copy_host_to_device_on(device.index, stream, out.raw(), src, bytes);
    c.event = cuda::event_record(device.index, stream);
#endif
  }
  s.copies.emplace(id, std::move(c));
  block->second.last_ticket = id;
  *ticket = id;
  return out;
}

void wait_on_device(uint64_t ticket) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  // sim: the compute stream waiting on the copy stream means the copies are performed before the next kernel.
  const auto it = pending_cuda_copy(s, ticket);
  if (it == s.copies.end()) return;
#ifdef VGG_WITH_CUDA
  cuda::stream_wait_event(it->second.device.index, nullptr, it->second.event);
  // From here the compute stream runs after the copy: the destination block may go back to the caching allocator
  // (its later users are queued on the compute stream). The event stays for pinned_ready.
  it->second.dst.reset();
  retire_done(s);
#endif
}

bool copy_done(uint64_t ticket) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
#ifdef VGG_WITH_CUDA
  retire_done(s);
#endif
  return s.copies.find(ticket) == s.copies.end();
}

void host_wait(uint64_t ticket) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  complete(s, ticket);
}

bool pinned_ready(const void* ptr) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  const auto block = find_block(s, ptr, 0);
  if (block == s.blocks.end()) return true;
#ifdef VGG_WITH_CUDA
  retire_done(s);
#endif
  return s.copies.find(block->second.last_ticket) == s.copies.end();
}

void pinned_wait(const void* ptr) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  const auto block = find_block(s, ptr, 0);
  if (block != s.blocks.end()) complete(s, block->second.last_ticket);
}

void synchronize_copies(const Device& device) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  raise_deferred(s);
  if (device.type == DeviceType::Sim) {
    drain_sim_or_throw(s, ~uint64_t{0});
    return;
  }
#ifdef VGG_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    for (auto it = s.copies.begin(); it != s.copies.end();) {
      if (it->second.device == device) {
        cuda::event_synchronize(it->second.event);
        cuda::event_destroy(it->second.event);
        it = s.copies.erase(it);
      } else {
        ++it;
      }
    }
  }
#endif
}

size_t pending_copies() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
#ifdef VGG_WITH_CUDA
  retire_done(s);
#endif
  return s.copies.size();
}

}  // namespace vgg
