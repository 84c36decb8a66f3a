// The emulator's settings as Python functions (see bind.h); bind_simt is what vggcore._C calls.
#include "bind.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "simt.h"
#ifdef VGG_SIM_KERNEL_BINDINGS
#include "../cuda/gpu_kernels.h"
#include "memory.h"
#endif

namespace py = pybind11;

namespace simt {

void bind_settings(py::module_& m) {
  m.def("sim_set_schedule", &simt::set_schedule, py::arg("schedule"),
        "Order of the SIMT emulator's threads and blocks: 'linear', 'reverse' or 'random:SEED'.");
  m.def("sim_get_schedule", &simt::get_schedule, "The SIMT emulator's current schedule.");
  m.def("sim_set_checks", &simt::set_checks, py::arg("checks"),
        "The emulator's costly checks, comma-separated: 'races', 'uninit', 'bounds', 'all' or '' (default: "
        "VGG_SIM_CHECKS).");
  m.def("sim_get_checks", &simt::get_checks, "The emulator's checks that are on, comma-separated ('' for none).");
  m.def("sim_access_checks_built", [] {
#ifdef VGG_SIM_ACCESS_HOOKS
        return true;
#else
        return false;
#endif
      }, "Whether the sim kernels were built with the access hooks that the races, uninit and bounds checks and the "
         "interleave schedule need (VGG_SIM_HOOKS; an AddressSanitizer build has none).");
}

}  // namespace simt

#ifdef VGG_SIM_KERNEL_BINDINGS
namespace {

// A float buffer of the sim device whose data start `offset` floats past a 64-byte boundary (a tensor view's
// alignment, which the Python API never produces: every tensor starts 64-byte aligned).
struct OffsetBuffer {
  float* base;
  float* data;
  OffsetBuffer(int64_t n, int64_t offset, const float* init)
      : base(static_cast<float*>(simt::device_alloc(static_cast<size_t>(n + offset) * sizeof(float), "offset buffer"))),
        data(base + offset) {
    if (init) {
      std::memset(base, 0, static_cast<size_t>(offset) * sizeof(float));
      std::memcpy(data, init, static_cast<size_t>(n) * sizeof(float));
      simt::mark_host_written(base);
    }
  }
  ~OffsetBuffer() { simt::device_free(base); }
  OffsetBuffer(const OffsetBuffer&) = delete;
  OffsetBuffer& operator=(const OffsetBuffer&) = delete;
};

// Test only: one elementwise kernel (relu, add, fill, dropout with p = 0.5, seed 1234 and Philox offset rng_offset) or
// two SGD steps with momentum, on sim buffers at an element offset, so that the launchers' alignment tests (the
// float4 body on 16-byte aligned pointers only) run.
py::array_t<float> offset_call(const std::string& op, py::array_t<float, py::array::c_style | py::array::forcecast> a,
                               py::array_t<float, py::array::c_style | py::array::forcecast> b, int64_t offset,
                               uint64_t rng_offset) {
  const int64_t n = a.size();
  if (offset < 0 || offset > 15)
    throw py::value_error("sim_offset_call: offset must be in [0, 15], got " + std::to_string(offset));
  if (b.size() != n)
    throw py::value_error("sim_offset_call: a and b must have one size, got " + std::to_string(n) + " and " +
                          std::to_string(b.size()));
  OffsetBuffer x(n, offset, a.data()), y(n, offset, b.data()), out(n, offset, nullptr);
  const float* res = out.data;
  if (op == "relu") {
    vgg::sim::relu_forward(x.data, out.data, n);
  } else if (op == "add") {
    vgg::sim::add(x.data, y.data, out.data, n);
  } else if (op == "fill") {
    vgg::sim::fill(out.data, n > 0 ? a.data()[0] : 0.0, n);
  } else if (op == "dropout") {
    vgg::sim::dropout(x.data, out.data, n, 0.5, 1234, rng_offset);
  } else if (op == "sgd") {  // param x, grad y; the result is the parameter after two steps
    OffsetBuffer buf(n, offset, nullptr);
    vgg::SgdConfig cfg{0.5, 0.5, 0.0, false, true};
    vgg::sim::sgd_update(x.data, y.data, buf.data, n, cfg);
    cfg.first_step = false;
    vgg::sim::sgd_update(x.data, y.data, buf.data, n, cfg);
    res = x.data;
  } else {
    throw py::value_error("sim_offset_call: op must be relu, add, fill, dropout or sgd, got '" + op + "'");
  }
  py::array_t<float> result(n);
  std::memcpy(result.mutable_data(), res, static_cast<size_t>(n) * sizeof(float));
  return result;
}

}  // namespace
#endif

void bind_simt(py::module_& m) {
  simt::bind_settings(m);
#ifdef VGG_SIM_KERNEL_BINDINGS
  m.def("sim_offset_call", &offset_call, py::arg("op"), py::arg("a"), py::arg("b"), py::arg("offset"),
        py::arg("rng_offset") = 0,
        "Test only: a sim elementwise kernel or SGD step on buffers `offset` floats past a 64-byte boundary.");
#endif
}
