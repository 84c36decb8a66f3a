// Python bindings of the SIMT emulator's settings (schedule, checks), shared by vggcore._C and the test-only
// vggcore._simt_selftest: each module holds its own copy of the engine, so each binds its own settings.
#pragma once

#include <pybind11/pybind11.h>

namespace simt {
void bind_settings(pybind11::module_& m);
}  // namespace simt
