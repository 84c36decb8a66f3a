// pybind11 bindings: vggcore._C. Bindings only; every op is declared in ops.h and implemented in dispatch/.
// Compute releases the GIL; C++ exceptions become Python ones (ValueError, TypeError, MemoryError, RuntimeError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/async_copy.h"
#include "core/errors.h"
#include "core/graph.h"
#include "core/interrupt.h"
#include "core/tensor.h"
#include "ops.h"

#ifdef VGG_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace py = pybind11;
using vgg::DType;
using vgg::Tensor;

#ifdef VGG_WITH_SIM
void bind_simt(py::module_& m);  // csrc/simt/selftest.cpp
void bind_tc_selftest(py::module_& m);  // csrc/simt/tc_selftest.cpp
#endif

void bind_tc_testing(py::module_& m);  // csrc/dispatch/tc_testing.cpp

namespace {

// numpy's equivalence test (PyArray_EquivTypes), not object identity: np.dtype("=f4") is float32 too.
DType dtype_of(const py::array& array) {
  if (py::isinstance<py::array_t<float>>(array)) return DType::Float32;
  if (py::isinstance<py::array_t<double>>(array)) return DType::Float64;
  if (py::isinstance<py::array_t<int64_t>>(array)) return DType::Int64;
  if (py::isinstance<py::array_t<int32_t>>(array)) return DType::Int32;
  if (py::isinstance<py::array_t<uint8_t>>(array)) return DType::UInt8;
  throw vgg::TypeError("tensor: unsupported numpy dtype " + py::str(array.dtype()).cast<std::string>() +
                       " (expected float32, float64, int32, int64 or uint8)");
}

// numpy has no bfloat16: a bfloat16 tensor reads out as float32 (exact, every bfloat16 is a float32).
py::dtype numpy_dtype(DType dtype) {
  switch (dtype) {
    case DType::Float32:
    case DType::BFloat16: return py::dtype::of<float>();
    case DType::Float64: return py::dtype::of<double>();
    case DType::Int32: return py::dtype::of<int32_t>();
    case DType::Int64: return py::dtype::of<int64_t>();
    case DType::UInt8: return py::dtype::of<uint8_t>();
  }
  throw vgg::TypeError("unknown dtype");
}

Tensor from_numpy(const py::array& source, const std::string& device) {
  const vgg::Device target = vgg::Device::parse(device);
  const DType dtype = dtype_of(source);
  // A C-contiguous copy of the caller's array (forcecast keeps the dtype; only the layout may change).
  const py::array array = py::array::ensure(source, py::array::c_style);
  if (!array) throw vgg::TypeError("tensor: could not convert the data to a contiguous array");
  const std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
  const void* src = array.data();
  py::gil_scoped_release release;
  return Tensor::from_host(src, shape, dtype, target);
}

// A numpy array over the memory of a cpu tensor (no copy); the array keeps the tensor's storage alive.
py::array host_view(const Tensor& t) {
  if (t.device().type != vgg::DeviceType::CPU || t.dtype() == DType::BFloat16)
    throw vgg::TypeError("host_view: needs a cpu tensor of float32, float64, int32 or int64, got " +
                         std::string(vgg::dtype_name(t.dtype())) + " on " + t.device().str());
  return py::array(numpy_dtype(t.dtype()), std::vector<py::ssize_t>(t.shape().begin(), t.shape().end()), t.raw(),
                   py::cast(t));
}

DType host_dtype(const std::string& name, const char* op) {
  if (name == "float32") return DType::Float32;
  if (name == "float64") return DType::Float64;
  if (name == "int32") return DType::Int32;
  if (name == "int64") return DType::Int64;
  throw vgg::TypeError(std::string(op) + ": dtype must be float32, float64, int32 or int64, got \"" + name + "\"");
}

// The contiguous memory of a numpy array, without a copy (a copy would not be the pinned memory the caller made).
const void* array_memory(const py::array& array, const char* op) {
  if (!(array.flags() & py::array::c_style))
    throw vgg::ValueError(std::string(op) + ": the source array must be C-contiguous (a pinned buffer or a leading "
                          "slice of one), got strides that are not");
  return array.data();
}

// Starts an asynchronous copy of pinned host data (a numpy array over pinned memory, or a pinned cpu tensor) to
// `device`; returns (tensor, ticket).
py::tuple copy_async(const py::object& source, const std::string& device) {
  const vgg::Device target = vgg::Device::parse(device);
  vgg::refuse_during_capture(target, "copy_async: a host-to-device copy cannot be captured (the host memory is read "
                                     "once, at the copy); copy before the capture or between replays");
  Tensor out;
  uint64_t ticket = 0;
  if (py::isinstance<Tensor>(source)) {
    const Tensor& t = source.cast<const Tensor&>();
    if (t.device().type != vgg::DeviceType::CPU)
      throw vgg::ValueError("copy_async: the source must be in host memory (a pinned cpu tensor), got a tensor on " +
                            t.device().str());
    py::gil_scoped_release release;
    out = vgg::copy_to_device_async("copy_async", t.raw(), t.nbytes(), t.shape(), t.dtype(), target, &ticket);
  } else {
    const py::array array = py::array::ensure(source);
    if (!array) throw vgg::TypeError("copy_async: the source must be a numpy array or a pinned cpu tensor");
    const DType dtype = dtype_of(array);
    const void* src = array_memory(array, "copy_async");
    const std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
    py::gil_scoped_release release;
    out = vgg::copy_to_device_async("copy_async", src, static_cast<size_t>(array.nbytes()), shape, dtype, target,
                                    &ticket);
  }
  return py::make_tuple(out, ticket);
}

py::array to_numpy(const Tensor& t) {
  py::array out(numpy_dtype(t.dtype()), std::vector<py::ssize_t>(t.shape().begin(), t.shape().end()));
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (t.dtype() == DType::BFloat16)
      vgg::ops::cast(t, DType::Float32).copy_to_host(dst);
    else
      t.copy_to_host(dst);
  }
  return out;
}

// Ctrl-C during compute (core/interrupt.h): made before the GIL is released and destroyed after it is taken
// back. A SIGINT that arrived too late for any kernel to notice is handed to Python as a pending signal, so the
// KeyboardInterrupt still comes, right after the op.
struct InterruptGuard {
  vgg::InterruptScope scope;
  ~InterruptGuard() {
    if (scope.take_unconsumed()) PyErr_SetInterrupt();
  }
};

py::tuple shape_tuple(const Tensor& t) {
  py::tuple out(t.shape().size());
  for (size_t i = 0; i < t.shape().size(); ++i) out[i] = t.shape()[i];
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vggcore's C++ engine: tensors on cpu/sim/cuda and one function per kernel (forward and backward)";

  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const vgg::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const vgg::MemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const vgg::Interrupted& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const std::bad_alloc&) {
      // A container inside an op ran out of memory (tensors themselves throw vgg::MemoryError with the size).
      PyErr_SetString(PyExc_MemoryError, "out of host memory inside a vggcore op (std::bad_alloc)");
#ifdef VGG_WITH_CUDA
    } catch (const vgg::cuda::OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
#endif
    }
  });

  py::class_<Tensor>(m, "Tensor", "Contiguous NHWC storage on one device; autograd lives in vggcore.Tensor")
      .def_static("from_numpy", &from_numpy, py::arg("array"), py::arg("device") = "cpu",
                  "Copies a numpy array (float32, float64, int32, int64) onto a device")
      .def("numpy", &to_numpy,
           "Copies the contents into a new numpy array (synchronises); bfloat16 reads out as float32 (exact)")
      .def_property_readonly("shape", &shape_tuple)
      .def_property_readonly("dtype", [](const Tensor& t) { return vgg::dtype_name(t.dtype()); })
      .def_property_readonly("device", [](const Tensor& t) { return t.device().str(); })
      .def_property_readonly("numel", &Tensor::numel)
      .def_property_readonly("nbytes", &Tensor::nbytes, "Bytes of storage: numel * 2 (bfloat16), 4 or 8")
      .def("to", [](const Tensor& t, const std::string& device) { return t.to(vgg::Device::parse(device)); },
           py::arg("device"), py::call_guard<py::gil_scoped_release>())
      .def("reshape", &Tensor::reshape, py::arg("shape"), "A view with a new shape (shares storage)")
      .def("same_storage", [](const Tensor& a, const Tensor& b) { return a.raw() == b.raw(); })
      .def_static("empty_pinned", [](const std::vector<int64_t>& shape, const std::string& dtype) {
            return Tensor::empty_pinned(shape, host_dtype(dtype, "empty_pinned"));
          }, py::arg("shape"), py::arg("dtype") = "float32",
          "An uninitialised cpu tensor in page-locked host memory (the source of asynchronous copies)")
      .def_property_readonly("is_pinned", &Tensor::is_pinned)
      .def("host_view", &host_view, "A numpy array over this cpu tensor's memory (shares it)")
      .def_property_readonly("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); },
                             "Address of the first element (for collectives such as NCCL that write in place)");

  m.def("devices", &vgg::available_devices, "What this build and machine can run: cpu, sim, cuda:N");
  m.def("cuda_compiled", &vgg::cuda_compiled);
  m.def("sim_compiled", &vgg::sim_compiled);
  m.def("cuda_device_name", [](int device) -> std::string {
#ifdef VGG_WITH_CUDA
    return vgg::cuda::device_name(device);
#else
    (void)device;
    return "";
#endif
  });
  m.def("cuda_stream", [](int device) -> uintptr_t {
#ifdef VGG_WITH_CUDA
        return reinterpret_cast<uintptr_t>(vgg::cuda::stream_handle(device));
#else
        (void)device;
        throw std::invalid_argument("cuda_stream: this build of vggcore has no CUDA backend");
#endif
      }, py::arg("device"), "Makes cuda:device current on this thread and returns the handle of its stream");
  m.def("cuda_side_stream", [](int device) -> uintptr_t {
#ifdef VGG_WITH_CUDA
        return reinterpret_cast<uintptr_t>(vgg::cuda::side_stream(device));
#else
        (void)device;
        throw std::invalid_argument("cuda_side_stream: this build of vggcore has no CUDA backend");
#endif
      }, py::arg("device"), "A second stream on cuda:device for work that overlaps vggcore's kernels");
  m.def("cuda_stream_wait", [](int device, uintptr_t waiter, uintptr_t signaller) {
#ifdef VGG_WITH_CUDA
        vgg::cuda::stream_wait(device, reinterpret_cast<void*>(waiter), reinterpret_cast<void*>(signaller));
#else
        (void)device, (void)waiter, (void)signaller;
        throw std::invalid_argument("cuda_stream_wait: this build of vggcore has no CUDA backend");
#endif
      }, py::arg("device"), py::arg("waiter"), py::arg("signaller"),
        "Later work on stream `waiter` waits for the work queued so far on `signaller` (0: the device's stream)");
  m.def("pinned_empty", [](const std::vector<int64_t>& shape, const std::string& dtype) {
        return host_view(Tensor::empty_pinned(shape, host_dtype(dtype, "pinned_empty")));
      }, py::arg("shape"), py::arg("dtype") = "float32",
      "An uninitialised numpy array in page-locked host memory, owned by a pinned cpu tensor");
  m.def("is_pinned", [](const py::array& a) { return a.nbytes() > 0 && vgg::is_pinned(a.data(), a.nbytes()); },
        py::arg("array"), "Whether the array's memory lies in one pinned block");
  m.def("copy_async", &copy_async, py::arg("source"), py::arg("device"),
        "Starts copying pinned host data to device on its copy stream: (tensor, ticket). Order it before the "
        "compute that reads the tensor with wait_copy(ticket)");
  m.def("wait_copy", [](uint64_t ticket) {
        vgg::refuse_during_any_capture("wait_copy: an asynchronous copy's completion cannot be waited for in a "
                                       "capture (it is not part of the graph); wait before capturing");
        vgg::wait_on_device(ticket);
      }, py::arg("ticket"),
        "The device's compute stream waits for the copy (the host does not block)",
        py::call_guard<py::gil_scoped_release>());
  m.def("copy_done", &vgg::copy_done, py::arg("ticket"), "Has the copy completed (its source may be reused)?");
  m.def("host_wait_copy", &vgg::host_wait, py::arg("ticket"), "The host blocks until the copy has completed",
        py::call_guard<py::gil_scoped_release>());
  m.def("pinned_ready", [](const py::array& a) { return vgg::pinned_ready(a.data()); }, py::arg("array"),
        "Has the last copy reading this pinned array's block completed (may the host write it)?");
  m.def("pinned_wait", [](const py::array& a) {
        const void* p = a.data();
        py::gil_scoped_release release;
        vgg::pinned_wait(p);
      }, py::arg("array"), "The host blocks until the last copy reading this pinned array's block has completed");
  m.def("pending_copies", &vgg::pending_copies, "Asynchronous copies not yet known to be complete");
  m.def("synchronize", [](const std::string& device) {
        const vgg::Device d = vgg::Device::parse(device);
        vgg::refuse_during_capture(d, "synchronize waits on the host for the device; call it after replay");
        vgg::synchronize_copies(d);
#ifdef VGG_WITH_CUDA
        if (d.type == vgg::DeviceType::CUDA) vgg::cuda::synchronize(d.index);
#endif
        (void)d;
      }, py::arg("device"),
      "Waits for the device's queued work, asynchronous copies included (sim runs kernels synchronously; its "
      "queued copies are performed)",
      py::call_guard<py::gil_scoped_release>());
  m.def("empty_cache", [] {
        vgg::refuse_during_any_capture("empty_cache synchronises with the device; empty it outside the capture");
        vgg::empty_host_cache();
#ifdef VGG_WITH_CUDA
        vgg::cuda::empty_cache();
#endif
      }, "Returns the cached free blocks (host memory of cpu/sim tensors, and CUDA memory) to the system");
  m.def("empty_bytes", [](int64_t nbytes, const std::string& device) {
        return Tensor::empty({nbytes}, DType::UInt8, vgg::Device::parse(device));
      }, py::arg("nbytes"), py::arg("device"),
      "An uninitialised (nbytes,) uint8 tensor on a device, filled piece by piece (write_bytes, a device decoder)");
  m.def("write_bytes", [](const Tensor& dst, int64_t offset, const py::array& src) {
        if (dst.dtype() != DType::UInt8 || dst.dim() != 1 || py::str(src.dtype()).cast<std::string>() != "uint8")
          throw vgg::TypeError("write_bytes: needs a (bytes,) uint8 tensor and a uint8 array, got a " +
                               std::string(vgg::dtype_name(dst.dtype())) + " tensor and a " +
                               py::str(src.dtype()).cast<std::string>() + " array");
        const py::array array = py::array::ensure(src, py::array::c_style);
        const void* data = array.data();
        const size_t bytes = static_cast<size_t>(array.nbytes());
        py::gil_scoped_release release;
        dst.write_from_host(offset, data, bytes);
      }, py::arg("dst"), py::arg("offset"), py::arg("src"),
      "Copies a uint8 array into a (bytes,) uint8 tensor from byte offset on (on cuda, on the device's stream)");
  m.def("full", [](const std::vector<int64_t>& shape, double value, const std::string& dtype,
                   const std::string& device) {
        return vgg::ops::full(shape, value, vgg::parse_float_dtype(dtype, "full"), vgg::Device::parse(device));
      }, py::arg("shape"), py::arg("value"), py::arg("dtype"), py::arg("device"));
  m.def("cast", [](const Tensor& x, const std::string& dtype) {
        const DType d = vgg::parse_float_dtype(dtype, "cast");
        py::gil_scoped_release release;
        return vgg::ops::cast(x, d);
      }, py::arg("x"), py::arg("dtype"),
      "x in dtype float32, float64 (cpu) or bfloat16, rounded to nearest even when narrowing; x itself if unchanged");

  using namespace vgg::ops;
  const auto release = py::call_guard<InterruptGuard, py::gil_scoped_release>();
  // Made only by conv2d_forward_with_shape (no constructor): a Conv2dShape in Python is one dispatch checked.
  py::class_<vgg::Conv2dShape>(m, "Conv2dShape", "conv2d's validated geometry, as the forward checked it")
      .def_readonly("N", &vgg::Conv2dShape::N).def_readonly("H", &vgg::Conv2dShape::H)
      .def_readonly("W", &vgg::Conv2dShape::W).def_readonly("C", &vgg::Conv2dShape::C)
      .def_readonly("K", &vgg::Conv2dShape::K).def_readonly("R", &vgg::Conv2dShape::R)
      .def_readonly("S", &vgg::Conv2dShape::S).def_readonly("P", &vgg::Conv2dShape::P)
      .def_readonly("Q", &vgg::Conv2dShape::Q).def_readonly("stride_h", &vgg::Conv2dShape::stride_h)
      .def_readonly("stride_w", &vgg::Conv2dShape::stride_w).def_readonly("pad_h", &vgg::Conv2dShape::pad_h)
      .def_readonly("pad_w", &vgg::Conv2dShape::pad_w)
      .def("__repr__", [](const vgg::Conv2dShape& s) {
        return vgg::cat("Conv2dShape(x (", s.N, ", ", s.H, ", ", s.W, ", ", s.C, "), w (", s.K, ", ", s.R, ", ", s.S,
                        ", ", s.C, "), stride ", s.stride_h, ", pad ", s.pad_h, " -> y (", s.N, ", ", s.P, ", ", s.Q,
                        ", ", s.K, "))");
      });
  m.def("conv2d_forward", &conv2d_forward, "x (N,H,W,C), w (K,R,S,C), bias (K) -> y (N,P,Q,K)", py::arg("x"),
        py::arg("w"), py::arg("bias"), py::arg("stride"), py::arg("pad"), release);
  m.def("conv2d_forward_with_shape", &conv2d_forward_with_shape,
        "x (N,H,W,C), w (K,R,S,C), bias (K) -> (y (N,P,Q,K), the Conv2dShape it validated, for the backward passes)",
        py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("stride"), py::arg("pad"), release);
  m.def("conv2d_backward_data", py::overload_cast<const Tensor&, const Tensor&, const vgg::Conv2dShape&>(
            &conv2d_backward_data), "dy (N,P,Q,K), w -> dx (N,H,W,C), shape as conv2d_forward_with_shape returned it",
        py::arg("dy"), py::arg("w"), py::arg("shape"), release);
  m.def("conv2d_backward_data", py::overload_cast<const Tensor&, const Tensor&, const Shape&, int64_t, int64_t>(
            &conv2d_backward_data), "dy (N,P,Q,K), w -> dx (x_shape)", py::arg("dy"), py::arg("w"),
        py::arg("x_shape"), py::arg("stride"), py::arg("pad"), release);
  m.def("conv2d_backward_weight", py::overload_cast<const Tensor&, const Tensor&, const vgg::Conv2dShape&>(
            &conv2d_backward_weight), "x, dy -> dw (K,R,S,C), shape as conv2d_forward_with_shape returned it",
        py::arg("x"), py::arg("dy"), py::arg("shape"), release);
  m.def("conv2d_backward_weight", py::overload_cast<const Tensor&, const Tensor&, const Shape&, int64_t, int64_t>(
            &conv2d_backward_weight), "x, dy -> dw (w_shape)", py::arg("x"), py::arg("dy"), py::arg("w_shape"),
        py::arg("stride"), py::arg("pad"), release);
  m.def("bias_backward", &bias_backward, "dy (..., K) -> db (K)", py::arg("dy"), release);
  m.def("linear_forward", &linear_forward, "x (..., IN), w (OUT, IN), bias (OUT) -> y (..., OUT)", py::arg("x"),
        py::arg("w"), py::arg("bias"), release);
  m.def("linear_backward_data", &linear_backward_data, "dy (..., OUT), w (OUT, IN) -> dx (..., IN)", py::arg("dy"),
        py::arg("w"), release);
  m.def("linear_backward_weight", &linear_backward_weight, "x (..., IN), dy (..., OUT) -> dw (OUT, IN)",
        py::arg("x"), py::arg("dy"), release);
  m.def("relu_forward", &relu_forward, py::arg("x"), release);
  m.def("relu_backward", &relu_backward, py::arg("x"), py::arg("dy"), release);
  m.def("dropout", &dropout, "Inverted dropout with a Philox mask keyed by seed; element i draws index offset + i",
        py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0, release);
  m.def("dropout_device_seed", &dropout_device_seed,
        "dropout with the seed read by the kernel from a 1-element int64 tensor on x's device (graph replay)",
        py::arg("x"), py::arg("p"), py::arg("device_seed"), py::arg("offset") = 0, release);
  m.def("add", &add, py::arg("a"), py::arg("b"), release);
  m.def("scale", &scale, py::arg("x"), py::arg("alpha"), release);
  m.def("max_pool2d_forward", &max_pool2d_forward, "x (N,H,W,C) -> (y, argmax int32)", py::arg("x"),
        py::arg("kernel"), py::arg("stride"), release);
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("dy"), py::arg("argmax"), py::arg("x_shape"),
        py::arg("kernel"), py::arg("stride"), release);
  m.def("avg_pool2d_forward", &avg_pool2d_forward, py::arg("x"), py::arg("kernel"), py::arg("stride"), release);
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("dy"), py::arg("x_shape"), py::arg("kernel"),
        py::arg("stride"), release);
  m.def("global_avg_pool_forward", &global_avg_pool_forward, "x (N,H,W,C) -> y (N,C)", py::arg("x"), release);
  m.def("global_avg_pool_backward", &global_avg_pool_backward, py::arg("dy"), py::arg("x_shape"), release);
  m.def("lrn_forward", &lrn_forward, "x (..., C) -> (y, scale)", py::arg("x"), py::arg("size"), py::arg("alpha"),
        py::arg("beta"), py::arg("k"), release);
  m.def("lrn_backward", &lrn_backward, py::arg("x"), py::arg("y"), py::arg("scale"), py::arg("dy"), py::arg("size"),
        py::arg("alpha"), py::arg("beta"), py::arg("k"), release);
  m.def("softmax_forward", &softmax_forward, py::arg("x"), release);
  m.def("softmax_backward", &softmax_backward, py::arg("y"), py::arg("dy"), release);
  m.def("log_softmax_forward", &log_softmax_forward, py::arg("x"), release);
  m.def("log_softmax_backward", &log_softmax_backward, py::arg("y"), py::arg("dy"), release);
  m.def("cross_entropy_forward", &cross_entropy_forward,
        "logits (N, classes), target (N) int64 -> (loss, logp, labels: the checked target on the logits' device)",
        py::arg("logits"), py::arg("target"), release);
  m.def("cross_entropy_backward", &cross_entropy_backward, "logp, labels (as the forward returned them), dloss -> dlogits",
        py::arg("logp"), py::arg("labels"), py::arg("dloss"), release);
  m.def("sgd_update", &sgd_update, "In-place SGD step (PyTorch's rule)", py::arg("param"), py::arg("grad"),
        py::arg("momentum_buffer"), py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"), py::arg("nesterov"),
        py::arg("first_step"), py::arg("device_hyper") = std::nullopt, release);

  // ---- graph capture and replay (core/graph.h; the Python API is vggcore.Graph) -----------------------------
  py::class_<vgg::Graph>(m, "Graph", "Captured device work (sim or cuda), replayed in order; see vggcore.Graph")
      .def(py::init<>())
      .def("begin", [](vgg::Graph& g, const std::string& device, const vgg::Graph* share) {
             g.begin(vgg::Device::parse(device), share);
           }, py::arg("device"), py::arg("share") = nullptr)
      .def("end", &vgg::Graph::end)
      .def("abort", &vgg::Graph::abort)
      .def("replay", &vgg::Graph::replay, release)
      .def_property_readonly("state", &vgg::Graph::state_name)
      .def_property_readonly("device", [](const vgg::Graph& g) { return g.device().str(); })
      .def_property_readonly("recorded_steps", &vgg::Graph::recorded_steps);
  m.def("int64_empty", [](const std::vector<int64_t>& shape, const std::string& device) {
        return Tensor::empty(shape, DType::Int64, vgg::Device::parse(device));
      }, py::arg("shape"), py::arg("device"), "An uninitialised int64 tensor (labels, a graph's device scalars)");
  m.def("capturing", [](const std::string& device) { return vgg::capturing(vgg::Device::parse(device)); },
        py::arg("device"), "Is a graph capture in progress on the device?");
  m.def("copy_into", [](Tensor& dst, const py::array& source) {
        const py::array array = py::array::ensure(source, py::array::c_style);
        if (!array) throw vgg::TypeError("copy_into: the source must be a numpy array");
        VGG_CHECK(dst.dtype() != DType::BFloat16 && dtype_of(array) == dst.dtype(), vgg::TypeError,
                  "copy_into: the source is ", py::str(array.dtype()).cast<std::string>(), ", the destination ",
                  vgg::dtype_name(dst.dtype()));
        const std::vector<int64_t> shape(array.shape(), array.shape() + array.ndim());
        VGG_CHECK(shape == dst.shape(), vgg::ValueError, "copy_into: the source has shape ", vgg::shape_str(shape),
                  ", the destination ", vgg::shape_str(dst.shape()));
        const void* src = array.data();
        const size_t bytes = static_cast<size_t>(array.nbytes());
        py::gil_scoped_release unlocked;
        vgg::copy_host_into(dst, src, bytes, "copy_into");
      }, py::arg("dst"), py::arg("source"), "dst (a sim or cuda tensor) <- a numpy array of its shape and dtype");
  m.def("copy_into", [](Tensor& dst, const Tensor& source) {
        py::gil_scoped_release unlocked;
        vgg::copy_device_into(dst, source, "copy_into");
      }, py::arg("dst"), py::arg("source"), "dst <- source, both on one sim or cuda device (recorded when capturing)");

  m.def("augment_crops", [](const Tensor& images, const Tensor& plans, int64_t crop, double input_scale,
                            const std::string& dtype) {
        const DType d = vgg::parse_float_dtype(dtype, "augment_crops");
        InterruptGuard guard;
        py::gil_scoped_release unlocked;
        return augment_crops(images, plans, crop, input_scale, d);
      }, py::arg("images"), py::arg("plans"), py::arg("crop"), py::arg("input_scale"), py::arg("dtype") = "float32",
      "images (bytes) uint8 packed decoded RGB, plans (N, 11) float64 on the cpu -> (N, crop, crop, 3) crops");
  m.def("augment_crops_host", [](const py::array& images, const py::array& plans, int64_t crop, double input_scale,
                                 py::array& out) {
        const char* op = "augment_crops";
        const auto c_contiguous = py::array::c_style;
        VGG_CHECK(py::isinstance<py::array_t<uint8_t>>(images) && (images.flags() & c_contiguous), vgg::TypeError, op,
                  ": images must be a C-contiguous uint8 array, got dtype ", py::str(images.dtype()).cast<std::string>());
        VGG_CHECK(py::isinstance<py::array_t<double>>(plans) && (plans.flags() & c_contiguous) && plans.ndim() == 2 &&
                      plans.shape(1) == 11,
                  vgg::TypeError, op, ": plans must be a C-contiguous float64 array of shape (N, 11)");
        const int64_t N = plans.shape(0);
        VGG_CHECK(py::isinstance<py::array_t<float>>(out) && (out.flags() & c_contiguous) && out.writeable(),
                  vgg::TypeError, op, ": out must be a writeable C-contiguous float32 array");
        const std::vector<int64_t> out_shape(out.shape(), out.shape() + out.ndim());
        VGG_CHECK(out_shape == (std::vector<int64_t>{N, crop, crop, 3}), vgg::ValueError, op, ": out must have shape ",
                  vgg::shape_str({N, crop, crop, 3}), ", got ", vgg::shape_str(out_shape));
        const auto* src = static_cast<const uint8_t*>(images.data());
        const auto* rows = static_cast<const double*>(plans.data());
        auto* dst = static_cast<float*>(out.mutable_data());
        const int64_t nbytes = images.size();
        InterruptGuard guard;
        py::gil_scoped_release unlocked;
        augment_crops_host(src, nbytes, rows, N, crop, input_scale, dst);
      }, py::arg("images"), py::arg("plans"), py::arg("crop"), py::arg("input_scale"), py::arg("out"),
      "augment_crops on the cpu from and into numpy arrays (no copies): out (N, crop, crop, 3) float32");

  bind_tc_testing(m);
#ifdef VGG_WITH_SIM
  bind_simt(m);
  bind_tc_selftest(m);
#endif
}
