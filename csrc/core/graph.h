// Graph capture and replay of device work (Python: vggcore.Graph, vggcore/graph.py).
//
// begin(device) starts recording the work this host thread queues on `device`: cuda captures the device's stream
// (cudaStreamBeginCapture, thread-local mode) and sim records each launch, device-to-device copy and memset
// (csrc/simt/memory.h). Nothing runs while capturing; end() finishes the graph and replay() runs it, in order,
// as often as wanted. Allocations made during the capture come from the graph's memory pool, and every block
// freed during it (or later, when Python drops a tensor the capture made) goes back to that pool, never to the
// general cache, so eager work after the capture is never handed memory a replay writes. The pool is released
// with the last graph that uses it: begin(device, share) captures into the pool of `share`, a graph already
// captured on the device, so that the second capture reuses the blocks the first one's capture freed (the two
// must then be replayed in the order they were captured: a replay of the first may overwrite what the second
// left in them).
//
// Work the host would have to wait for cannot be captured: a device-to-host read, a host-to-device copy, emptying
// the allocator cache, synchronising. refuse_during_capture() ends the capture cleanly (the graph is "failed")
// and throws std::runtime_error (Python RuntimeError) naming the op; the device stays usable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace vgg {

class Graph {
 public:
  enum class State { empty, capturing, ready, failed };

  Graph() = default;
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // ValueError for the cpu (nothing to capture: its ops run on the host at once); RuntimeError when this graph
  // was already captured or another capture is in progress on the device.
  // `share`: a ready graph on the same device whose pool this capture uses too (ValueError otherwise).
  void begin(const Device& device, const Graph* share = nullptr);
  void end();              // RuntimeError unless capturing; an abort() before it leaves the graph failed
  void abort() noexcept;   // ends the capture and discards it (state failed)
  void replay();           // RuntimeError unless ready

  State state() const { return state_; }
  const char* state_name() const;
  const Device& device() const { return device_; }
  size_t recorded_steps() const { return steps_.size(); }  // sim only: launches, copies and memsets recorded

 private:
  void release() noexcept;

  State state_ = State::empty;
  Device device_{};
  struct Pool;                                 // a memory pool's id, released when the last graph lets go
  std::shared_ptr<Pool> pool_;                 // sim and cuda: the graph's memory pool
  std::vector<std::function<void()>> steps_;  // sim: the recorded work
  void* exec_ = nullptr;                       // cuda: the instantiated cudaGraphExec_t
};

// Is a capture in progress on `device`?
bool capturing(const Device& device);
bool capturing_any();
// If a capture is in progress on `device`, aborts it and throws std::runtime_error("graph capture: " + what).
void refuse_during_capture(const Device& device, const std::string& what);
// The same for every device (emptying the cache, synchronising all).
void refuse_during_any_capture(const std::string& what);

// dst (any device but cpu) <- `bytes` of host memory, in place. Refused while capturing on dst's device.
void copy_host_into(Tensor& dst, const void* src, size_t bytes, const char* op);
// dst <- src, in place, both on one device (sim or cuda): recorded while capturing, like a kernel.
void copy_device_into(Tensor& dst, const Tensor& src, const char* op);
// Sets `bytes` bytes at `ptr` of a sim allocation to zero, recorded while capturing (Tensor::zeros on sim).
void sim_memset_zero(void* ptr, size_t bytes);

}  // namespace vgg
