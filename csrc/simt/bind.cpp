// The emulator's settings as Python functions (see bind.h); bind_simt is what vggcore._C calls.
#include "bind.h"

#include <pybind11/stl.h>

#include "simt.h"

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
}

}  // namespace simt

void bind_simt(py::module_& m) { simt::bind_settings(m); }
