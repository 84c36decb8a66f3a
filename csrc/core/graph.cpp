#include "graph.h"

#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "errors.h"
#ifdef VGG_WITH_SIM
#include "../simt/memory.h"  // the sim backend's recording and pools
#endif
#ifdef VGG_WITH_CUDA
#include "../cuda/runtime.h"  // stream capture and pools
#endif

namespace vgg {

namespace {

using DeviceKey = std::pair<int, int>;
DeviceKey key_of(const Device& d) { return {static_cast<int>(d.type), d.index}; }

// The capture in progress on each device. Leaked on purpose: Python may destroy graphs after static destructors.
struct Registry {
  std::mutex mutex;
  std::map<DeviceKey, Graph*> capturing;
};
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

Graph* capture_on(const Device& device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.capturing.find(key_of(device));
  return it == r.capturing.end() ? nullptr : it->second;
}

void forget_capture(const Device& device, const Graph* graph) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.capturing.find(key_of(device));
  if (it != r.capturing.end() && it->second == graph) r.capturing.erase(it);
}

}  // namespace

struct Graph::Pool {
  Device device;
  uint64_t id;
  ~Pool() {
#ifdef VGG_WITH_SIM
    if (device.type == DeviceType::Sim) simt::release_pool(id);
#endif
#ifdef VGG_WITH_CUDA
    if (device.type == DeviceType::CUDA) cuda::release_pool(device.index, id);
#endif
  }
};

Graph::~Graph() {
  abort();
  release();
}

const char* Graph::state_name() const {
  switch (state_) {
    case State::empty: return "empty";
    case State::capturing: return "capturing";
    case State::ready: return "ready";
    case State::failed: return "failed";
  }
  return "?";
}

void Graph::begin(const Device& device, const Graph* share) {
  VGG_CHECK(device.type != DeviceType::CPU, ValueError,
            "Graph.capture: device cpu cannot be captured (its ops run on the host as they are called); use 'sim' "
            "or 'cuda'");
  if (share != nullptr) {
    VGG_CHECK(share != this, ValueError, "Graph.capture: pool= must be another graph, not the one being captured");
    VGG_CHECK(share->state_ == State::ready, ValueError, "Graph.capture: pool= must be a captured graph (ready), "
              "got one that is ", share->state_name());
    VGG_CHECK(share->device_ == device, ValueError, "Graph.capture: pool= is a graph of ", share->device_.str(),
              ", not of ", device.str(), " (a pool belongs to one device)");
  }
  if (state_ != State::empty)
    throw std::runtime_error(cat("Graph.capture: this graph is ", state_name(), "; a graph is captured once (make a "
                                 "new vggcore.Graph() for another capture)"));
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.capturing.count(key_of(device)))
      throw std::runtime_error(cat("Graph.capture: a capture is already in progress on ", device.str()));
    r.capturing[key_of(device)] = this;
  }
  try {
    const uint64_t shared_id = share != nullptr ? share->pool_->id : 0;
    uint64_t id = 0;
#ifdef VGG_WITH_SIM
    if (device.type == DeviceType::Sim) id = simt::begin_capture(shared_id);
#endif
#ifdef VGG_WITH_CUDA
    if (device.type == DeviceType::CUDA) id = cuda::capture_begin(device.index, shared_id);
#endif
    pool_ = share != nullptr ? share->pool_ : std::shared_ptr<Pool>(new Pool{device, id});
  } catch (...) {
    forget_capture(device, this);
    throw;
  }
  device_ = device;
  state_ = State::capturing;
}

void Graph::end() {
  if (state_ != State::capturing)
    throw std::runtime_error(cat("Graph.capture: the capture is not in progress (the graph is ", state_name(),
                                 state_ == State::failed ? ": an error ended the capture" : "", ")"));
  forget_capture(device_, this);
#ifdef VGG_WITH_SIM
  if (device_.type == DeviceType::Sim) steps_ = simt::end_capture();
#endif
#ifdef VGG_WITH_CUDA
  if (device_.type == DeviceType::CUDA) {
    try {
      exec_ = cuda::capture_end(device_.index);
    } catch (...) {
      state_ = State::failed;
      throw;
    }
  }
#endif
  state_ = State::ready;
}

void Graph::abort() noexcept {
  if (state_ != State::capturing) return;
  forget_capture(device_, this);
#ifdef VGG_WITH_SIM
  if (device_.type == DeviceType::Sim) (void)simt::end_capture();
#endif
#ifdef VGG_WITH_CUDA
  if (device_.type == DeviceType::CUDA) cuda::capture_abort(device_.index);
#endif
  steps_.clear();
  state_ = State::failed;
}

void Graph::replay() {
  if (state_ != State::ready)
    throw std::runtime_error(cat("Graph.replay: the graph is ", state_name(),
                                 state_ == State::failed ? " (an error ended its capture)" : "",
                                 "; only a completed capture can be replayed"));
  VGG_CHECK(!capturing(device_), ValueError, "Graph.replay: a capture is in progress on ", device_.str(),
            "; replay outside it");
#ifdef VGG_WITH_SIM
  if (device_.type == DeviceType::Sim)
    for (auto& step : steps_) step();
#endif
#ifdef VGG_WITH_CUDA
  if (device_.type == DeviceType::CUDA) cuda::graph_launch(device_.index, exec_);
#endif
}

void Graph::release() noexcept {
#ifdef VGG_WITH_CUDA
  if (device_.type == DeviceType::CUDA && exec_ != nullptr) cuda::graph_destroy(exec_);
#endif
  steps_.clear();  // the recorded arguments point into the pool: drop them before it goes
  exec_ = nullptr;
  pool_.reset();   // the pool itself goes with the last graph that uses it
}

bool capturing(const Device& device) { return capture_on(device) != nullptr; }

bool capturing_any() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return !r.capturing.empty();
}

void refuse_during_capture(const Device& device, const std::string& what) {
  Graph* graph = capture_on(device);
  if (graph == nullptr) return;
  graph->abort();
  throw std::runtime_error("graph capture: " + what + " (the capture on " + device.str() +
                           " was ended; the graph cannot be replayed)");
}

void refuse_during_any_capture(const std::string& what) {
  std::vector<Graph*> graphs;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    for (auto& [key, graph] : r.capturing) graphs.push_back(graph);
  }
  if (graphs.empty()) return;
  const std::string device = graphs.front()->device().str();
  for (Graph* graph : graphs) graph->abort();
  throw std::runtime_error("graph capture: " + what + " (the capture on " + device +
                           " was ended; the graph cannot be replayed)");
}

void copy_host_into(Tensor& dst, const void* src, size_t bytes, const char* op) {
  VGG_CHECK(dst.defined() && dst.device().type != DeviceType::CPU, ValueError, op,
            ": the destination must be a sim or cuda tensor");
  VGG_CHECK(bytes == dst.nbytes(), ValueError, op, ": ", bytes, " bytes of data for a destination of ", dst.nbytes(),
            " bytes, shape ", shape_str(dst.shape()), " ", dtype_name(dst.dtype()));
  refuse_during_capture(dst.device(), cat(op, ": a host-to-device copy cannot be captured (the host memory is read "
                                              "once, at the copy); fill the graph's input tensors before replay"));
  dst.write_from_host(0, src, bytes);
}

void copy_device_into(Tensor& dst, const Tensor& src, const char* op) {
  VGG_CHECK(dst.defined() && src.defined(), TypeError, op, ": needs two tensors");
  VGG_CHECK(dst.device() == src.device() && dst.device().type != DeviceType::CPU, ValueError, op,
            ": both tensors must be on one sim or cuda device, got ", src.device().str(), " -> ", dst.device().str());
  VGG_CHECK(dst.dtype() == src.dtype() && dst.shape() == src.shape(), ValueError, op, ": source ",
            shape_str(src.shape()), " ", dtype_name(src.dtype()), " does not match destination ",
            shape_str(dst.shape()), " ", dtype_name(dst.dtype()));
  if (dst.nbytes() == 0 || dst.raw() == src.raw()) return;
#ifdef VGG_WITH_SIM
  if (dst.device().type == DeviceType::Sim) {
    void* d = dst.raw();
    const void* s = src.raw();
    const size_t n = dst.nbytes();
    simt::record_or_run([d, s, n] {
      std::memcpy(d, s, n);
      simt::mark_host_written(d);
    });
    return;
  }
#endif
#ifdef VGG_WITH_CUDA
  cuda::copy_device_to_device(dst.device().index, dst.raw(), src.raw(), dst.nbytes());
#endif
}

void sim_memset_zero(void* ptr, size_t bytes) {
#ifdef VGG_WITH_SIM
  simt::record_or_run([ptr, bytes] { std::memset(ptr, 0, bytes); });
#else
  std::memset(ptr, 0, bytes);
#endif
}

}  // namespace vgg
