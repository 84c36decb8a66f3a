// Host-side CUDA runtime services used by the core (csrc/core/tensor.cpp) for device "cuda:N".
// Implemented in csrc/cuda/runtime.cu, compiled only when nvcc is found (VGG_WITH_CUDA). Plain C++ header:
// no CUDA types leak into the core. Every function checks its CUDA calls and throws:
//   vgg::cuda::OutOfMemory (-> Python MemoryError) when an allocation fails even after emptying the cache,
//   std::runtime_error for any other CUDA error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace vgg::cuda {

struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Number of usable GPUs; 0 when there is no driver or no device (never throws).
int device_count();
// "NVIDIA H100 80GB HBM3, sm_90, driver 13.0" style description, for `python -m vggcore info`.
const char* device_name(int device);

// Caching allocator: blocks are kept per device and reused by size; a failed cudaMalloc empties the cache
// and retries once before throwing OutOfMemory naming the request.
void* device_malloc(int device, size_t bytes);
void device_free(int device, void* ptr) noexcept;
void empty_cache();

// Copies are ordered on the device's stream. The device-to-host copy synchronises (the host reads it next).
void copy_host_to_device(int device, void* dst, const void* src, size_t bytes);
void copy_device_to_host(int device, void* dst, const void* src, size_t bytes);
void copy_device_to_device(int device, void* dst, const void* src, size_t bytes);
void synchronize(int device);

// Makes `device` current for the kernels launched on this host thread (cudaSetDevice + its stream).
void set_device(int device);
// set_device(device), then the device's stream as an opaque handle (a cudaStream_t) for libraries such as NCCL
// that enqueue their own work in order with vggcore's kernels.
void* stream_handle(int device);
// A second stream on `device` (created on first use) for work that overlaps vggcore's kernels, such as NCCL's
// gradient all-reduces. A block used on it must stay alive until the device's stream has waited for that work
// (stream_wait), which keeps the one-stream ordering of the caching allocator valid.
void* side_stream(int device);
// Work enqueued on `waiter` after this call starts only after all the work enqueued on `signaller` so far
// (nullptr stands for the device's stream). One event, recorded and waited on the device; the host never blocks.
void stream_wait(int device, void* waiter, void* signaller);

// ---- asynchronous host-to-device copies (csrc/core/async_copy.cpp builds on these) ----------------------------
// Page-locked host memory (cudaHostAlloc, portable to every device): a copy from it runs asynchronously, with the
// host free to go on at once. Throws OutOfMemory when the driver refuses. host_free_pinned waits for nothing: the
// caller makes sure no queued copy still reads the block.
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* ptr) noexcept;
// A third stream on `device` (created on first use), for host-to-device copies that overlap the kernels.
void* copy_stream(int device);
// Queues a copy of `bytes` from pinned host memory on `stream` (the host does not wait).
void copy_host_to_device_on(int device, void* stream, void* dst, const void* src, size_t bytes);
// Events, as opaque handles: recorded on a stream, waited on by another stream (device side) or by the host.
void* event_record(int device, void* stream);   // a new event recorded on `stream` (nullptr: the device's stream)
void stream_wait_event(int device, void* stream, void* event);  // nullptr stream: the device's stream
bool event_done(void* event);                   // cudaEventQuery: has the work before it completed?
void event_synchronize(void* event);            // the host blocks until it has
void event_destroy(void* event) noexcept;

// ---- graph capture (csrc/core/graph.cpp builds vgg::Graph on these) ---------------------------------------------
// capture_begin: the device's stream starts capturing (cudaStreamBeginCapture, thread-local mode) and a private
// memory pool opens: until the capture ends, device_malloc serves from it (cudaMalloc for a block it lacks, under
// the relaxed capture mode; RuntimeError when that fails, since the cache cannot be emptied during a capture),
// and device_free of any block returns it to it. A pool block stays out of the general cache until
// release_pool. Work on the side and copy streams is refused while capturing (RuntimeError naming it). Returns
// the pool's id: a new one, or `share` (the pool of a graph captured before, whose free blocks this capture may
// take; vgg::Graph releases a shared pool once, with its last graph).
uint64_t capture_begin(int device, uint64_t share = 0);
// Ends the capture and instantiates the graph: an opaque cudaGraphExec_t. Throws std::runtime_error.
void* capture_end(int device);
// Ends a capture that failed, discarding what it recorded and clearing the CUDA error; never throws.
void capture_abort(int device) noexcept;
// Launches the instantiated graph on the device's stream.
void graph_launch(int device, void* exec);
void graph_destroy(void* exec) noexcept;
// The graph is gone: the pool's free blocks go to the general cache, and its live blocks (tensors the capture
// made, still held) become ordinary blocks.
void release_pool(int device, uint64_t pool) noexcept;

}  // namespace vgg::cuda
