"""Shared by the contract tests (tests/test_contract_*.py, one file per part of DESIGN.md section 2).

Those tests are written from the public contract, not from the implementation: everything NHWC, conv weights
(K, R, S, C), linear weights (out, in). PyTorch (CPU, float64) is their independent oracle where one is needed:
activations are permuted NHWC <-> NCHW and conv weights (K, R, S, C) <-> (K, C, R, S). Without PyTorch only the
tests that compare with it skip (``needs_torch``); everything else still runs.
Comparisons use the suite's one rule, gradcheck.assert_close: |got - ref| <= tol * max(|ref|, 1) elementwise,
tol from gradcheck.TOL (1e-5 float32, 1e-10 float64).
"""
import numpy as np
import pytest

import vggcore as vc

from gradcheck import TOL, assert_close, to_np  # noqa: F401  (re-exported for the contract tests)

try:
    import torch
    TF = torch.nn.functional
except ImportError:
    torch = TF = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the independent oracle) is not installed")

DEVICES = vc.devices()
# (device, dtype) pairs the contract promises: cpu float32/float64, sim/cuda float32.
CASES = [("cpu", "float32"), ("cpu", "float64")] + [(d, "float32") for d in DEVICES if d != "cpu"]
CASE_IDS = [f"{d}-{t}" for d, t in CASES]
SIM = [d for d in DEVICES if d != "cpu"]


def rng(seed=0):
    return np.random.default_rng(seed)


def npt(dtype):
    return np.float32 if dtype == "float32" else np.float64


def T(a, dtype="float64", device="cpu", requires_grad=False):
    return vc.tensor(np.asarray(a, dtype=npt(dtype)), dtype=dtype, device=device, requires_grad=requires_grad)


def tt(a):
    """numpy -> float64 torch tensor requiring grad (the reference is always computed in float64)."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def nchw(a):  # NHWC numpy -> NCHW torch (float64, leaf requiring grad)
    return tt(np.ascontiguousarray(np.asarray(a, dtype=np.float64).transpose(0, 3, 1, 2)))


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def krsc_to_kcrs(w):
    return np.ascontiguousarray(np.asarray(w, dtype=np.float64).transpose(0, 3, 1, 2))


def check_output(y, dtype, device):
    assert y.dtype == dtype, f"output dtype {y.dtype} != {dtype}"
    assert y.device == device, f"output device {y.device} != {device}"


def away_from_zero(a, eps=0.05):
    return np.where(a >= 0, a + eps, a - eps)


def x4(shape=(1, 5, 5, 3), dtype="float32", device="cpu"):
    return T(rng(70).standard_normal(shape), dtype, device)


def by_layer(model):
    """{layer name: [parameter arrays]} for the conv/fc layers of a model."""
    out = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        for q in parts:
            if q.startswith("conv") or q.startswith("fc"):
                out.setdefault(q, []).append(p.numpy().copy())
                break
    return out
