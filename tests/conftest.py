"""Shared fixtures: every op test runs once per (device, dtype) this build supports.

Devices come from vc.devices() (cpu, sim when built, cuda:N when a GPU is visible). cpu runs float32 and
float64; sim and cuda are float32 only (float64 there must raise TypeError, see test_errors.py).
sim is a slow CPU emulator of the CUDA kernels, so tests give it small shapes (N<=2, H,W<=9, C,K<=13),
and every sim test runs under each schedule in SIM_SCHEDULES.
"""
import contextlib
import pathlib
import sys

import numpy as np
import pytest

# The helpers (reference.py, gradcheck.py) live beside the tests; importlib import mode does not put this
# folder on sys.path, so do it here (conftest is imported before any test module).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import vggcore as vc  # noqa: E402

DEVICES = list(vc.devices())
GPU_DEVICES = [d for d in DEVICES if d != "cpu"]

# Kernels on the emulator run in several thread orders: a missing barrier passes in linear order and fails in
# reverse or random order (docs/architecture.md). Every sim test therefore runs once per schedule.
SIM_SCHEDULES = ["linear", "reverse", "random:7"]


# The emulator's access hooks (VGG_SIM_HOOKS) carry its races, uninit and bounds checks and the interleave
# schedule. An AddressSanitizer build (VGG_SIM_ASAN, VGG_HOST_SANITIZE) has none, and ASan aborts the process on the
# overruns some tests make on purpose to see the emulator report them: those tests skip themselves there.
SIM_ACCESS_HOOKS = "sim" in vc.devices() and vc._C.sim_access_checks_built()
needs_sim_access_hooks = pytest.mark.skipif(
    not SIM_ACCESS_HOOKS, reason="tests the emulator's own checks: needs its access hooks (not built with ASan)")


def device_dtypes(device):
    return ("float32", "float64") if device == "cpu" else ("float32",)


DEVICE_DTYPES = [(d, t) for d in DEVICES for t in device_dtypes(d)]
# (device, dtype, schedule): every supported pair, sim once per schedule (schedule None elsewhere).
DEVICE_DTYPE_SCHEDULES = [(d, t, s) for d, t in DEVICE_DTYPES for s in (SIM_SCHEDULES if d == "sim" else [None])]


def schedule_marks(schedule):
    """Marks for a pytest.param that must run under an emulator schedule (applied by _apply_sim_schedule)."""
    return [pytest.mark.sim_schedule(schedule)] if schedule else []


def schedule_id(device, schedule):
    return f"{device}-{schedule}" if schedule else device


def _with_schedules(devices, dtype_of=None):
    """pytest params (device[, dtype]), sim once per schedule, with ids such as sim-reverse-float32."""
    params = []
    for device in devices:
        for schedule in SIM_SCHEDULES if device == "sim" else [None]:
            for dtype in dtype_of(device) if dtype_of else [None]:
                value = (device, dtype) if dtype_of else device
                ident = schedule_id(device, schedule) + (f"-{dtype}" if dtype else "")
                params.append(pytest.param(value, id=ident, marks=schedule_marks(schedule)))
    return params


@contextlib.contextmanager
def _sim_setting(name, value):
    """Sets the emulator's ``name`` setting (schedule or checks) to ``value`` for the block, then restores it;
    nothing when value is None."""
    if value is None:
        yield
        return
    get, put = getattr(vc._C, f"sim_get_{name}"), getattr(vc._C, f"sim_set_{name}")
    previous = get()
    put(value)
    try:
        yield
    finally:
        put(previous)


def sim_schedule(schedule):
    """The emulator's thread order (sim_set_schedule) for the block."""
    return _sim_setting("schedule", schedule)


@pytest.fixture
def every_sim_check():
    """A test with every emulator check on (races, uninit, bounds, ...): pytest.mark.usefixtures("every_sim_check")."""
    with _sim_setting("checks", "all"):
        yield


@pytest.fixture
def linear_sim_schedule():
    """A test pinned to the emulator's linear thread order, whatever its sim_schedule mark."""
    with sim_schedule("linear"):
        yield


@pytest.fixture(autouse=True)
def _apply_sim_schedule(request):
    marker = request.node.get_closest_marker("sim_schedule")
    with sim_schedule(marker.args[0] if marker else None):
        yield


def is_small_device(device):
    """Devices that get only the small shapes (the emulator)."""
    return device == "sim"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")
    config.addinivalue_line("markers", "sim_schedule(name): run under this SIMT emulator schedule")


@pytest.fixture(params=_with_schedules(DEVICES))
def device(request):
    return request.param


@pytest.fixture(params=_with_schedules(GPU_DEVICES)
                or [pytest.param(None, marks=pytest.mark.skip(reason="no sim/cuda device"))])
def gpu_device(request):
    """Every device other than cpu (sim, cuda:N)."""
    return request.param


@pytest.fixture(params=_with_schedules(DEVICES, device_dtypes))
def device_dtype(request):
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20240517)
