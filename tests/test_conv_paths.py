"""Every CPU convolution path, forced one at a time with VGG_CONV_ALGO (read by the library on each call):
gemm (implicit GEMM), winograd4 (F(4x4,3x3)), winograd2 (F(2x2,3x3)), direct (the reference loops of
csrc/cpu/conv_reference.cpp) and auto (the per-layer heuristic).
Winograd applies to 3x3 stride-1 layers, in all three passes (forward, backward-data and backward-weight:
a forced winograd4/winograd2 runs the weight gradient by F(4,3)/F(2,3) too); forcing it elsewhere leaves the
GEMM in charge, which the odd shapes below also exercise. Under auto, the VGG layers below take F(4,3)
for forward and backward-weight.

Checks against the NumPy float64 reference (tests/reference.py, itself checked against PyTorch):
- odd shapes (batch 1, C = 3 and 17, H != W odd, K = 5 and 65, pad 0..3), float32 and float64, forward and
  both gradients, |got - ref| <= tol * max(|ref|, 1) with tol 1e-5 (float32) / 1e-10 (float64);
- two VGG-16 layer shapes at batch 1 with realistic inputs (ReLU'd activations, He-scaled weights): relative
  error max|got - ref| / max|ref| below 1e-4 in float32 (the accuracy bound set for F(4,3)).
F(4,3) in float32 gets 1e-4 instead of 1e-5 on the odd shapes (about 2e-5 seen with |values| <= 1 there).
"""
import functools

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

import reference as ref
from gradcheck import assert_close

ALGOS = ["gemm", "winograd4", "winograd2", "direct", "auto"]
# The VGG-layer check times the fast paths; the direct loops (1 GFLOP/s) would add ~20 s for nothing they do not
# show on the odd shapes.
FAST_ALGOS = [a for a in ALGOS if a != "direct"]


@pytest.fixture
def algo(request, monkeypatch):
    monkeypatch.setenv("VGG_CONV_ALGO", request.param)
    return request.param


# (N, H, W, C, K, kernel, pad)
ODD = [
    (1, 7, 5, 3, 5, 3, 1),
    (1, 9, 11, 17, 65, 3, 1),
    (2, 13, 7, 17, 5, 3, 0),
    (1, 6, 9, 3, 65, 3, 2),
    (1, 5, 3, 17, 5, 3, 3),     # padding wider than the filter: backward-data crops
    (1, 1, 1, 3, 5, 3, 1),      # one output pixel
    (2, 11, 9, 17, 65, 1, 0),   # not 3x3: always the GEMM
]


@pytest.mark.parametrize("algo", ALGOS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ODD, ids=["N{}H{}W{}C{}K{}k{}p{}".format(*c) for c in ODD])
def test_conv_path_odd_shapes(algo, dtype, case):
    N, H, W, C, K, k, pad = case
    rng = np.random.default_rng(sum(case))
    npdt = np.float32 if dtype == "float32" else np.float64
    x = rng.uniform(-1, 1, (N, H, W, C)).astype(npdt)
    w = rng.uniform(-0.5, 0.5, (K, k, k, C)).astype(npdt)
    b = rng.uniform(-1, 1, K).astype(npdt)
    # F(4,3)'s transforms (constants up to 8 and 1/24) lose about two more bits in float32 than a direct sum;
    # auto never picks it for layers this small
    tol = (1e-4 if algo == "winograd4" else 1e-5) if dtype == "float32" else 1e-10
    xt, wt, bt = (vc.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride=1, padding=pad)
    assert_close(y, ref.conv2d(x, w, b, 1, pad), tol, f"{algo} forward")
    dy = rng.uniform(-1, 1, y.shape).astype(npdt)
    y.backward(vc.tensor(dy))
    dx, dw, db = ref.conv2d_backward(x, w, dy, 1, pad)
    assert_close(xt.grad, dx, tol, f"{algo} grad x")
    assert_close(wt.grad, dw, tol, f"{algo} grad weight")
    assert_close(bt.grad, db, tol, f"{algo} grad bias")


# VGG-16 layers at batch 1: (name, size, C, K)
VGG_LAYERS = [("conv3_2", 56, 256, 256), ("conv4_2", 28, 512, 512)]


@functools.lru_cache(maxsize=None)
def vgg_layer_case(layer):
    """Inputs and float64 reference results for one layer, shared by the four paths."""
    name, size, C, K = layer
    rng = np.random.default_rng(C + K)
    x = np.maximum(rng.standard_normal((1, size, size, C)), 0).astype(np.float32)  # post-ReLU activations
    w = (rng.standard_normal((K, 3, 3, C)) * np.sqrt(2.0 / (9 * C))).astype(np.float32)
    dy = rng.standard_normal((1, size, size, K)).astype(np.float32)
    dx, dw, _ = ref.conv2d_backward(x, w, dy, 1, 1)
    return x, w, dy, ref.conv2d(x, w, None, 1, 1), dx, dw


@pytest.mark.parametrize("algo", FAST_ALGOS, indirect=True)
@pytest.mark.parametrize("layer", VGG_LAYERS, ids=[l[0] for l in VGG_LAYERS])
def test_conv_path_vgg_layer_accuracy(algo, layer):
    name = layer[0]
    x, w, dy, ref, dx, dw = vgg_layer_case(layer)
    xt, wt = vc.tensor(x, requires_grad=True), vc.tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, stride=1, padding=1)
    y.backward(vc.tensor(dy))
    for what, got, expected in [("forward", y, ref), ("grad x", xt.grad, dx), ("grad weight", wt.grad, dw)]:
        g = np.asarray(got.numpy(), dtype=np.float64)
        rel = np.abs(g - expected).max() / np.abs(expected).max()
        assert rel < 1e-4, f"{name} {algo} {what}: relative error {rel:.3g}"
