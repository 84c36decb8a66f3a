"""The reference convolution (csrc/cpu/conv_reference.cpp), selected by VGG_CONV_ALGO=direct for every convolution,
and the check of that variable's value.

The direct loops sum in double, so a float32 result is the correctly rounded value of the exact sum of the float32
inputs' products: it is held to 1e-7 * max(|ref|, 1) (half an ulp is at most 6e-8 of that) against the float64
NumPy oracle, float64 to 1e-12; small-integer inputs must match the oracle bit for bit. The shapes cover what the
Winograd and small-channel paths never see: strides 2 and 3, filters with R != S, padding wider than the filter.
"""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

import reference as ref
from gradcheck import assert_close

TOL = {"float32": 1e-7, "float64": 1e-12}

# (N, H, W, C, K, R, S, stride, pad)
CASES = [
    (1, 7, 5, 3, 5, 3, 3, 1, 1),
    (2, 9, 11, 4, 6, 3, 3, 2, 1),
    (1, 8, 7, 3, 4, 2, 5, 3, 0),
    (2, 5, 6, 5, 3, 1, 3, 2, 2),
    (1, 3, 4, 2, 7, 3, 2, 1, 3),    # padding wider than the filter
    (1, 6, 6, 17, 9, 1, 1, 1, 0),   # 1x1
]
IDS = ["N{}H{}W{}C{}K{}R{}S{}s{}p{}".format(*c) for c in CASES]


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setenv("VGG_CONV_ALGO", "direct")


def run_conv(x, w, b, dy, stride, pad, dtype):
    xt, wt = vc.tensor(x, dtype=dtype, requires_grad=True), vc.tensor(w, dtype=dtype, requires_grad=True)
    bt = vc.tensor(b, dtype=dtype, requires_grad=True)
    y = F.conv2d(xt, wt, bt, stride=stride, padding=pad)
    y.backward(vc.tensor(dy, dtype=dtype))
    return y, xt.grad, wt.grad, bt.grad


def out_shape(case):
    N, H, W, C, K, R, S, stride, pad = case
    return (N, ref.conv_out_size(H, R, stride, pad), ref.conv_out_size(W, S, stride, pad), K)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_direct_conv_matches_the_numpy_oracle(direct, dtype, case):
    N, H, W, C, K, R, S, stride, pad = case
    rng = np.random.default_rng(sum(case))
    npdt = np.float32 if dtype == "float32" else np.float64
    # the oracle gets the values the kernel sees (rounded to dtype), in float64
    x, w, b = (rng.uniform(-1, 1, shape).astype(npdt).astype(np.float64) for shape in ((N, H, W, C), (K, R, S, C), K))
    dy = rng.uniform(-1, 1, out_shape(case)).astype(npdt).astype(np.float64)
    y, dx, dw, db = run_conv(x, w, b, dy, stride, pad, dtype)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, stride, pad)
    assert_close(y, ref.conv2d(x, w, b, stride, pad), TOL[dtype], "direct forward")
    assert_close(dx, rdx, TOL[dtype], "direct grad x")
    assert_close(dw, rdw, TOL[dtype], "direct grad weight")
    assert_close(db, rdb, TOL[dtype], "direct grad bias")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_direct_conv_is_exact_on_small_integers(direct, case):
    N, H, W, C, K, R, S, stride, pad = case
    rng = np.random.default_rng(1000 + sum(case))
    x, w, b = (rng.integers(-3, 4, shape).astype(np.float64) for shape in ((N, H, W, C), (K, R, S, C), K))
    dy = rng.integers(-3, 4, out_shape(case)).astype(np.float64)
    y, dx, dw, _ = run_conv(x, w, b, dy, stride, pad, "float32")
    rdx, rdw, _ = ref.conv2d_backward(x, w, dy, stride, pad)
    np.testing.assert_array_equal(y.numpy(), ref.conv2d(x, w, b, stride, pad))
    np.testing.assert_array_equal(dx.numpy(), rdx)
    np.testing.assert_array_equal(dw.numpy(), rdw)


@pytest.mark.parametrize("value", ["winogard4", "GEMM", "direct "])
def test_misspelled_conv_algo_is_refused(monkeypatch, value):
    x, w = vc.tensor(np.ones((1, 4, 4, 2), np.float32)), vc.tensor(np.ones((3, 3, 3, 2), np.float32))
    monkeypatch.setenv("VGG_CONV_ALGO", value)
    with pytest.raises(ValueError, match=r"VGG_CONV_ALGO.*auto, gemm, winograd4, winograd2, direct"):
        F.conv2d(x, w, padding=1)
    # the process is fine, and every accepted spelling (empty = unset) runs
    for good in ["", "auto", "gemm", "winograd4", "winograd2", "direct"]:
        monkeypatch.setenv("VGG_CONV_ALGO", good)
        np.testing.assert_array_equal(F.conv2d(x, w, padding=1).numpy(), ref.conv2d(x.numpy(), w.numpy(), None, 1, 1))
