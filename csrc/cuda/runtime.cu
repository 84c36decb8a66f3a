// Host-side CUDA runtime services for device "cuda:N" (declared in runtime.h and common.cuh): device queries,
// a caching allocator per device, one stream per device, copies, and the per-host-thread current device.
// nvcc only. Every CUDA call is checked; errors become C++ exceptions, never aborts.
//
// Ordering model: all of vggcore's work on a device runs on that device's one non-blocking stream, so a block
// freed by the host (tensor destructor, Workspace scope exit) can be handed to the next request at once: any
// kernel that uses it later is queued after every kernel that used it before. Work on the other two streams
// keeps that true: the side stream's users wait before freeing (stream_wait), and an asynchronous host-to-device
// copy (copy_stream, csrc/core/async_copy.cpp) starts after the compute stream's work so far and is waited on by
// the compute stream before its destination is read or freed.
//
// The per-device state is created on first use and deliberately never destroyed: at process exit the CUDA
// runtime may already be torn down, and the driver reclaims the memory anyway.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.cuh"
#include "runtime.h"

namespace vgg::cuda {
namespace {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status) + " (" + cudaGetErrorName(status) +
                           ") in " + call + " at " + file + ":" + std::to_string(line));
}

#define VGG_CUDA_CHECK(call)                                                              \
  do {                                                                                    \
    const cudaError_t vgg_status_ = (call);                                               \
    if (vgg_status_ != cudaSuccess) throw_cuda_error(vgg_status_, #call, __FILE__, __LINE__); \
  } while (0)

// ---- size classes -------------------------------------------------------------------------------------------
// Below 1 MiB, multiples of 512 bytes; above, 8 classes per power of two (at most 12.5% slack). A freed block
// goes back to the bin of its class and serves any later request of the same class.
size_t size_class(size_t bytes) {
  constexpr size_t kSmallStep = 512, kSmallLimit = size_t{1} << 20;
  if (bytes <= kSmallLimit) return (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  size_t top = kSmallLimit;
  while (top < bytes) top <<= 1;        // bytes in (top/2, top]
  const size_t step = (top >> 1) / 8;   // 8 classes between top/2 and top
  return (bytes + step - 1) / step * step;
}

struct DeviceState {
  std::mutex mutex;
  cudaStream_t stream = nullptr;
  cudaStream_t side_stream = nullptr;  // for work that overlaps the kernels (see side_stream)
  cudaStream_t copy_stream = nullptr;  // for host-to-device copies that overlap the kernels (see copy_stream)
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // size class -> cached blocks
  std::unordered_map<void*, size_t> live_blocks;               // handed-out block -> size class
  size_t cached_bytes = 0;
  std::string name;
  // Graph capture (capture_begin): the pool of the capture in progress (0: none); for each block a graph may
  // use, live or free, the pools holding it (the capture that made it and every capture open when it was freed:
  // a second graph can read what the first wrote); the free blocks held by one pool only, by size class (its
  // capture may reuse them); and the free blocks held by several (reused by none until one holder is left).
  uint64_t capture_pool = 0;
  std::unordered_map<void*, std::vector<uint64_t>> pool_holders;
  std::unordered_map<uint64_t, std::unordered_map<size_t, std::vector<void*>>> pool_free;
  std::unordered_map<void*, size_t> held_free;
};

int g_device_count = 0;
std::vector<DeviceState*>* g_devices = nullptr;  // leaked on purpose (see the header comment)
std::once_flag g_init_once;

thread_local int t_current_device = 0;

void init_devices() {
  std::call_once(g_init_once, [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: clear the error, report 0 devices
      count = 0;
    }
    g_device_count = count;
    g_devices = new std::vector<DeviceState*>();
    for (int d = 0; d < count; ++d) g_devices->push_back(new DeviceState());
  });
}

DeviceState& state(int device) {
  init_devices();
  if (device < 0 || device >= g_device_count)
    throw std::runtime_error("vggcore: no CUDA device " + std::to_string(device) + " (" +
                             std::to_string(g_device_count) + " visible)");
  return *(*g_devices)[device];
}

// Makes `device` the CUDA runtime's current device for the scope, restoring the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    VGG_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) VGG_CUDA_CHECK(cudaSetDevice(device));
    changed_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// The device's stream, created on first use. Caller holds st.mutex.
cudaStream_t stream_locked(int device, DeviceState& st) {
  if (st.stream == nullptr) {
    DeviceGuard guard(device);
    VGG_CUDA_CHECK(cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking));
  }
  return st.stream;
}

cudaStream_t device_stream(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mutex);
  return stream_locked(device, st);
}

// Frees every cached block of the device after its queued work has finished. Caller holds st.mutex.
void release_cached_locked(int device, DeviceState& st) {
  if (st.free_blocks.empty()) return;
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& [size, blocks] : st.free_blocks) {
    for (void* p : blocks) VGG_CUDA_CHECK(cudaFree(p));
  }
  st.free_blocks.clear();
  st.cached_bytes = 0;
}

// ---- graph pools (see capture_begin in runtime.h) -----------------------------------------------------------
std::atomic<uint64_t> g_next_pool{1};

// A block for the capture in progress: the pool's own free blocks first, then the general cache's (their eager
// users were queued before the graph, on the same stream), then a new cudaMalloc, made under the relaxed capture
// mode (cudaMalloc is not stream work, but the thread-local mode would refuse it as potentially unsafe). Caller
// holds st.mutex.
void* pool_malloc_locked(int device, DeviceState& st, size_t bytes, size_t cls) {
  void* p = nullptr;
  for (auto* bins : {&st.pool_free[st.capture_pool], &st.free_blocks}) {
    auto bin = bins->find(cls);
    if (bin == bins->end() || bin->second.empty()) continue;
    p = bin->second.back();
    bin->second.pop_back();
    if (bins == &st.free_blocks) st.cached_bytes -= cls;
    break;
  }
  if (p == nullptr) {
    DeviceGuard guard(device);
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    VGG_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    const cudaError_t status = cudaMalloc(&p, cls);
    (void)cudaThreadExchangeStreamCaptureMode(&mode);  // back to the capture's own mode
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      throw std::runtime_error("graph capture: could not allocate " + std::to_string(bytes) + " bytes on cuda:" +
                               std::to_string(device) + " (" + cudaGetErrorString(status) +
                               "), and the cache cannot be emptied during a capture; capture with more free memory");
    }
  }
  st.live_blocks.emplace(p, cls);
  st.pool_holders[p] = {st.capture_pool};
  return p;
}

// A free block held by graphs: reusable by the capture of its one holder, or by none while several hold it.
// Caller holds st.mutex.
void park_held_locked(DeviceState& st, void* p, size_t cls, const std::vector<uint64_t>& pools) {
  if (pools.size() == 1)
    st.pool_free[pools.front()][cls].push_back(p);
  else
    st.held_free[p] = cls;
}

// A freed block that a graph holds, or any block freed during a capture (which then holds it too), stays with
// the graphs. Returns false for an ordinary block. Caller holds st.mutex.
bool pool_free_locked(DeviceState& st, void* p, size_t cls) {
  auto held = st.pool_holders.find(p);
  if (held == st.pool_holders.end()) {
    if (st.capture_pool == 0) return false;
    held = st.pool_holders.emplace(p, std::vector<uint64_t>{}).first;
  }
  std::vector<uint64_t>& pools = held->second;
  if (st.capture_pool != 0 && std::find(pools.begin(), pools.end(), st.capture_pool) == pools.end())
    pools.push_back(st.capture_pool);
  park_held_locked(st, p, cls, pools);
  return true;
}

// Only the device's stream is captured: work queued on another stream would run at capture time, outside the
// graph, and the graph would not wait for it. Caller holds st.mutex.
void refuse_other_stream_locked(int device, const DeviceState& st, const char* what) {
  if (st.capture_pool != 0)
    throw std::runtime_error(std::string("graph capture: work on ") + what + " of cuda:" + std::to_string(device) +
                             " is not captured (only the device's stream is); run it outside the capture");
}

void refuse_other_stream(int device, const char* what) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mutex);
  refuse_other_stream_locked(device, st, what);
}

}  // namespace

int device_count() {
  try {
    init_devices();
  } catch (...) {
    return 0;
  }
  return g_device_count;
}

const char* device_name(int device) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mutex);
  if (st.name.empty()) {
    cudaDeviceProp prop{};
    VGG_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    int driver = 0;
    VGG_CUDA_CHECK(cudaDriverGetVersion(&driver));
    st.name = std::string(prop.name) + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
              ", driver " + std::to_string(driver / 1000) + "." + std::to_string((driver % 1000) / 10);
  }
  return st.name.c_str();
}

void* device_malloc(int device, size_t bytes) {
  if (bytes == 0) return nullptr;
  DeviceState& st = state(device);
  const size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(st.mutex);
  if (st.capture_pool != 0) return pool_malloc_locked(device, st, bytes, cls);
  auto bin = st.free_blocks.find(cls);
  if (bin != st.free_blocks.end() && !bin->second.empty()) {
    void* p = bin->second.back();
    bin->second.pop_back();
    st.cached_bytes -= cls;
    st.live_blocks.emplace(p, cls);
    return p;
  }
  DeviceGuard guard(device);
  void* p = nullptr;
  cudaError_t status = cudaMalloc(&p, cls);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear, then retry once with the cache emptied
    release_cached_locked(device, st);
    status = cudaMalloc(&p, cls);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) (void)cudaGetLastError();
      throw OutOfMemory("vggcore: CUDA out of memory on cuda:" + std::to_string(device) + ": tried to allocate " +
                        std::to_string(bytes) + " bytes (" + std::to_string(free_bytes) + " free of " +
                        std::to_string(total_bytes) + ")");
    }
  }
  if (status != cudaSuccess) throw_cuda_error(status, "cudaMalloc(&p, cls)", __FILE__, __LINE__);
  st.live_blocks.emplace(p, cls);
  return p;
}

void device_free(int device, void* ptr) noexcept {
  if (ptr == nullptr) return;
  try {
    init_devices();  // already done by the device_malloc that produced ptr; this makes the state visible here
  } catch (...) {
    return;
  }
  if (device < 0 || device >= g_device_count) return;
  DeviceState& st = *(*g_devices)[device];
  std::lock_guard<std::mutex> lock(st.mutex);
  auto it = st.live_blocks.find(ptr);
  if (it == st.live_blocks.end()) return;  // not ours: nothing sensible to do in a noexcept path
  try {
    if (pool_free_locked(st, ptr, it->second)) {
      st.live_blocks.erase(it);
      return;
    }
    st.free_blocks[it->second].push_back(ptr);
    st.cached_bytes += it->second;
  } catch (...) {
    (void)cudaFree(ptr);  // bookkeeping failed (out of host memory): give the block back to the driver
  }
  st.live_blocks.erase(it);
}

void empty_cache() {
  init_devices();
  for (int d = 0; d < g_device_count; ++d) {
    DeviceState& st = *(*g_devices)[d];
    std::lock_guard<std::mutex> lock(st.mutex);
    release_cached_locked(d, st);
  }
}

void copy_host_to_device(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t stream = device_stream(device);
  DeviceGuard guard(device);
  // From pageable host memory this returns once src has been staged, so the caller may reuse src at once.
  VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
}

void copy_device_to_host(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t stream = device_stream(device);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  VGG_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host reads dst next
}

void copy_device_to_device(int device, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  const cudaStream_t stream = device_stream(device);
  // src may live on another GPU (tensor.to("cuda:1")): its producer ran on that device's stream, and its block
  // may be reused there as soon as the caller frees it, so a cross-device copy waits on both sides.
  cudaPointerAttributes attr{};
  VGG_CUDA_CHECK(cudaPointerGetAttributes(&attr, src));
  const bool cross_device = attr.type == cudaMemoryTypeDevice && attr.device != device;
  if (cross_device) synchronize(attr.device);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  if (cross_device) VGG_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void synchronize(int device) {
  const cudaStream_t stream = device_stream(device);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void set_device(int device) {
  state(device);  // validates the index
  VGG_CUDA_CHECK(cudaSetDevice(device));
  t_current_device = device;
  (void)device_stream(device);
}

cudaStream_t current_stream() { return device_stream(t_current_device); }

void* stream_handle(int device) {
  set_device(device);
  return static_cast<void*>(device_stream(device));
}

namespace {
// The non-blocking stream of `device` held in member `slot` of its state, created at its first use. `what` names
// the stream's use for refuse_other_stream_locked.
void* lazy_stream(int device, cudaStream_t DeviceState::*slot, const char* what) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mutex);
  refuse_other_stream_locked(device, st, what);
  if (st.*slot == nullptr) {
    DeviceGuard guard(device);
    VGG_CUDA_CHECK(cudaStreamCreateWithFlags(&(st.*slot), cudaStreamNonBlocking));
  }
  return static_cast<void*>(st.*slot);
}
}  // namespace

void* side_stream(int device) {
  return lazy_stream(device, &DeviceState::side_stream,
                     "the side stream (overlapping work such as NCCL's all-reduces)");
}

void stream_wait(int device, void* waiter, void* signaller) {
  refuse_other_stream(device, "a wait between streams (the side stream's work)");
  const cudaStream_t main = device_stream(device);
  const cudaStream_t wait_on = waiter != nullptr ? static_cast<cudaStream_t>(waiter) : main;
  const cudaStream_t signal = signaller != nullptr ? static_cast<cudaStream_t>(signaller) : main;
  DeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  VGG_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  cudaError_t status = cudaEventRecord(event, signal);
  if (status == cudaSuccess) status = cudaStreamWaitEvent(wait_on, event, 0);
  // Destroying a recorded event is safe: its resources are released once the wait it serves has completed.
  const cudaError_t destroyed = cudaEventDestroy(event);
  VGG_CUDA_CHECK(status);
  VGG_CUDA_CHECK(destroyed);
}

void* host_alloc_pinned(size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    throw OutOfMemory("vggcore: could not allocate " + std::to_string(bytes) + " bytes of page-locked host memory");
  }
  if (status != cudaSuccess) throw_cuda_error(status, "cudaHostAlloc", __FILE__, __LINE__);
  return p;
}

void host_free_pinned(void* ptr) noexcept {
  if (ptr != nullptr) (void)cudaFreeHost(ptr);
}

void* copy_stream(int device) {
  return lazy_stream(device, &DeviceState::copy_stream, "the copy stream (asynchronous host-to-device copies)");
}

void copy_host_to_device_on(int device, void* stream, void* dst, const void* src, size_t bytes) {
  refuse_other_stream(device, "the copy stream (asynchronous host-to-device copies)");
  if (bytes == 0) return;
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

void* event_record(int device, void* stream) {
  refuse_other_stream(device, "an event (the copy stream's ordering)");
  const cudaStream_t on = stream != nullptr ? static_cast<cudaStream_t>(stream) : device_stream(device);
  DeviceGuard guard(device);
  cudaEvent_t event = nullptr;
  VGG_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t status = cudaEventRecord(event, on);
  if (status != cudaSuccess) {
    (void)cudaEventDestroy(event);
    throw_cuda_error(status, "cudaEventRecord", __FILE__, __LINE__);
  }
  return static_cast<void*>(event);
}

void stream_wait_event(int device, void* stream, void* event) {
  refuse_other_stream(device, "a wait on an event (a copy's completion)");
  const cudaStream_t on = stream != nullptr ? static_cast<cudaStream_t>(stream) : device_stream(device);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaStreamWaitEvent(on, static_cast<cudaEvent_t>(event), 0));
}

bool event_done(void* event) {
  const cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  VGG_CUDA_CHECK(status);
  return true;
}

void event_synchronize(void* event) { VGG_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event))); }

void event_destroy(void* event) noexcept {
  if (event != nullptr) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}

// Read once: the switch is for a debugging session, set before the process starts.
void after_launch(const std::string& op) {
  static const bool sync = [] {
    const char* env = std::getenv("VGG_CUDA_SYNC_LAUNCHES");
    return env && *env && std::string(env) != "0";
  }();
  if (!sync) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(current_stream(), &capture) != cudaSuccess) (void)cudaGetLastError();
  if (capture != cudaStreamCaptureStatusNone) return;  // a captured launch runs at replay: nothing to wait for yet
  const cudaError_t status = cudaStreamSynchronize(current_stream());
  if (status != cudaSuccess)
    throw std::runtime_error(op + ": CUDA kernel failed (reported at its launch by VGG_CUDA_SYNC_LAUNCHES): " +
                             cudaGetErrorString(status));
}

uint64_t capture_begin(int device, uint64_t share) {
  DeviceState& st = state(device);
  std::lock_guard<std::mutex> lock(st.mutex);
  if (st.capture_pool != 0)
    throw std::runtime_error("graph capture: a capture is already in progress on cuda:" + std::to_string(device));
  const cudaStream_t stream = stream_locked(device, st);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  st.capture_pool = share != 0 ? share : g_next_pool.fetch_add(1);
  return st.capture_pool;
}

void* capture_end(int device) {
  const cudaStream_t stream = device_stream(device);
  DeviceState& st = state(device);
  DeviceGuard guard(device);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  {
    std::lock_guard<std::mutex> lock(st.mutex);
    st.capture_pool = 0;
  }
  if (ended != cudaSuccess) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    throw_cuda_error(ended, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);  // the executable graph is independent of it
  VGG_CUDA_CHECK(made);
  return static_cast<void*>(exec);
}

void capture_abort(int device) noexcept {
  try {
    const cudaStream_t stream = device_stream(device);
    DeviceState& st = state(device);
    DeviceGuard guard(device);
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // an invalidated capture reports its error here; it does not outlive the capture
    std::lock_guard<std::mutex> lock(st.mutex);
    st.capture_pool = 0;
  } catch (...) {
  }
}

void graph_launch(int device, void* exec) {
  const cudaStream_t stream = device_stream(device);
  DeviceGuard guard(device);
  VGG_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), stream));
}

void graph_destroy(void* exec) noexcept {
  if (exec != nullptr) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

void release_pool(int device, uint64_t pool) noexcept {
  if (pool == 0) return;
  try {
    DeviceState& st = state(device);
    std::lock_guard<std::mutex> lock(st.mutex);
    // A replay still queued on the stream may use these blocks: the general cache serves them only to work
    // queued after it, on the same stream, so no wait is needed.
    const auto to_cache = [&st](void* p, size_t cls) {
      st.free_blocks[cls].push_back(p);
      st.cached_bytes += cls;
    };
    const auto own = st.pool_free.find(pool);  // held by this pool alone
    if (own != st.pool_free.end()) {
      for (auto& [cls, blocks] : own->second) {
        for (void* p : blocks) {
          to_cache(p, cls);
          st.pool_holders.erase(p);
        }
      }
      st.pool_free.erase(own);
    }
    for (auto it = st.pool_holders.begin(); it != st.pool_holders.end();) {
      std::vector<uint64_t>& pools = it->second;
      const auto held = std::find(pools.begin(), pools.end(), pool);
      if (held == pools.end()) {
        ++it;
        continue;
      }
      pools.erase(held);
      const auto free_block = st.held_free.find(it->first);
      if (free_block != st.held_free.end() && pools.size() <= 1) {
        if (pools.empty())
          to_cache(it->first, free_block->second);
        else
          park_held_locked(st, it->first, free_block->second, pools);
        st.held_free.erase(free_block);
      }
      // a live block no graph holds any more is an ordinary one
      it = pools.empty() ? st.pool_holders.erase(it) : std::next(it);
    }
  } catch (...) {
  }
}

// Kernel scratch (common.cuh): the current device's caching allocator, released right after the launches that
// use it (safe: everything runs on the one stream, see the header comment).
void* workspace_alloc(size_t bytes) { return device_malloc(t_current_device, bytes); }

void workspace_free(void* ptr) noexcept { device_free(t_current_device, ptr); }

}  // namespace vgg::cuda
