"""Shared fixtures: every op test runs once per (device, dtype) this build supports.

Devices come from vc.devices() (cpu, sim when built, cuda:N when a GPU is visible). cpu runs float32 and
float64; sim and cuda are float32 only (float64 there must raise TypeError, see test_errors.py).
sim is a slow CPU emulator of the CUDA kernels, so tests give it small shapes (N<=2, H,W<=9, C,K<=13).
"""
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


def device_dtypes(device):
    return ("float32", "float64") if device == "cpu" else ("float32",)


DEVICE_DTYPES = [(d, t) for d in DEVICES for t in device_dtypes(d)]


def is_small_device(device):
    """Devices that get only the small shapes (the emulator)."""
    return device == "sim"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (still run in CI)")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=GPU_DEVICES or [pytest.param(None, marks=pytest.mark.skip(reason="no sim/cuda device"))])
def gpu_device(request):
    """Every device other than cpu (sim, cuda:N)."""
    return request.param


@pytest.fixture(params=DEVICE_DTYPES, ids=[f"{d}-{t}" for d, t in DEVICE_DTYPES])
def device_dtype(request):
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20240517)
