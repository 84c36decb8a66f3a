"""Forward and backward of every op in vggcore.nn.functional against the NumPy float64 reference
(tests/reference.py), on every device and dtype; device parity against the float64 cpu result; exact
small-integer conv and linear; dropout semantics; and the reference itself checked against PyTorch.

Tolerance: |got - ref| <= tol * max(|ref|, 1) with tol 1e-5 for float32 and 1e-10 for float64, where the
reference is computed in float64 from the very values the device was given (inputs rounded to its dtype).
"""
import os

import numpy as np
import pytest

import vggcore.nn.functional as F

import reference as ref
from conftest import DEVICE_DTYPE_SCHEDULES, DEVICE_DTYPES, is_small_device, schedule_id, schedule_marks
from gradcheck import TOL, assert_close, rounded, seeded_dropout, to_np, vt


def U(rng, shape, scale=1.0):
    return rng.uniform(-scale, scale, size=shape)


def distinct(rng, shape):
    """Distinct values (a scaled random permutation) so max-pool has no ties: gaps of 2/n."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * (2.0 / n)


def params_for(cases, ids):
    """(device, dtype, case) for every supported pair; the emulator only gets cases flagged small."""
    out = []
    for dev, dt, schedule in DEVICE_DTYPE_SCHEDULES:
        for case, cid in zip(cases, ids):
            if is_small_device(dev) and not case[-1]:
                continue
            out.append(pytest.param(dev, dt, case, id=f"{schedule_id(dev, schedule)}-{dt}-{cid}",
                                    marks=schedule_marks(schedule)))
    return out


def check_result(y, expected, dev, dt, what):
    assert y.dtype == dt, f"{what}: dtype {y.dtype} != {dt}"
    assert y.device == dev, f"{what}: device {y.device} != {dev}"
    assert tuple(y.shape) == expected.shape, f"{what}: shape {tuple(y.shape)} != {expected.shape}"
    assert_close(y, expected, TOL[dt], what)


# ---- conv2d -------------------------------------------------------------------------------------------
# (N, H, W, C, K, kernel, stride, pad, bias, small)
CONV = [
    (1, 7, 5, 3, 5, 3, 1, 1, True, True),
    (2, 9, 6, 3, 13, 3, 2, 1, False, True),
    (2, 7, 5, 4, 5, 1, 1, 0, True, True),
    (1, 7, 5, 3, 5, 1, 2, 0, False, True),
    (1, 9, 6, 5, 7, 5, 1, 2, True, True),
    (2, 8, 7, 3, 5, 5, 2, 0, True, True),
    (1, 9, 9, 3, 4, 7, 1, 2, False, True),
    (1, 7, 5, 13, 13, 3, 1, 0, True, True),
    (2, 6, 9, 3, 1, 3, 2, 2, True, True),
    (2, 9, 9, 13, 13, 3, 1, 1, True, True),   # N*P*Q = 162 and C*R*S = 117: past one tile on the emulator
    (2, 9, 8, 8, 13, 1, 1, 0, False, True),
    (2, 17, 13, 16, 65, 3, 1, 1, True, False),
    (1, 35, 29, 3, 13, 11, 4, 0, True, False),
    (1, 31, 27, 3, 17, 11, 4, 2, False, False),
    (2, 14, 14, 64, 65, 3, 2, 1, True, False),
    (3, 12, 10, 8, 32, 3, 1, 1, True, False),
    (2, 11, 9, 32, 65, 1, 1, 0, True, False),
    (1, 13, 11, 7, 13, 7, 2, 3, True, False),
]
CONV_IDS = ["N{}H{}W{}C{}K{}k{}s{}p{}{}".format(*c[:8], "b" if c[8] else "") for c in CONV]


# The gradients through Winograd (F(4x4,3x3) above all) round more than a direct sum: Winograd's float32 error is
# bounded at 1e-4. test_cpu_variants.py forces the Winograd paths onto every shape here and sets
# VGG_TEST_WINOGRAD_WGRAD_TOL (weight gradient, F(4,3) and F(2,3)) and VGG_TEST_WINOGRAD_DGRAD_TOL (data gradient,
# F(4,3) only) to 1e-4 for those runs only; otherwise (the automatic choice keeps these small shapes on the GEMM)
# the bound is the usual TOL.
WINOGRAD_WGRAD_TOL = float(os.environ.get("VGG_TEST_WINOGRAD_WGRAD_TOL", TOL["float32"]))
WINOGRAD_DGRAD_TOL = float(os.environ.get("VGG_TEST_WINOGRAD_DGRAD_TOL", TOL["float32"]))


@pytest.mark.parametrize("dev,dt,case", params_for(CONV, CONV_IDS))
def test_conv2d(dev, dt, case, rng):
    N, H, W, C, K, k, stride, pad, has_bias, _ = case
    x = rounded(U(rng, (N, H, W, C)), dt)
    w = rounded(U(rng, (K, k, k, C), 1.0 / np.sqrt(k * k * C)), dt)
    b = rounded(U(rng, (K,)), dt) if has_bias else None
    xt, wt = vt(x, dt, dev, True), vt(w, dt, dev, True)
    bt = vt(b, dt, dev, True) if has_bias else None
    y = F.conv2d(xt, wt, bt, stride=stride, padding=pad)
    check_result(y, ref.conv2d(x, w, b, stride, pad), dev, dt, "conv2d forward")
    dy = rounded(U(rng, tuple(y.shape)), dt)
    y.backward(vt(dy, dt, dev))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad)
    cpu32 = (dev, dt) == ("cpu", "float32")
    assert_close(xt.grad, dx, WINOGRAD_DGRAD_TOL if cpu32 else TOL[dt], "conv2d grad x")
    wgrad_tol = WINOGRAD_WGRAD_TOL if cpu32 else TOL[dt]
    assert_close(wt.grad, dw, wgrad_tol, "conv2d grad weight")
    if has_bias:
        assert_close(bt.grad, db, TOL[dt], "conv2d grad bias")


def test_conv2d_default_stride_and_padding(device_dtype, rng):
    dev, dt = device_dtype
    x, w = rounded(U(rng, (1, 6, 5, 3)), dt), rounded(U(rng, (2, 3, 3, 3)), dt)
    check_result(F.conv2d(vt(x, dt, dev), vt(w, dt, dev)), ref.conv2d(x, w), dev, dt, "conv2d defaults")


def test_conv2d_kernel_equal_to_padded_input(device_dtype, rng):
    dev, dt = device_dtype
    x, w = rounded(U(rng, (2, 3, 3, 3)), dt), rounded(U(rng, (4, 5, 5, 3)), dt)
    y = F.conv2d(vt(x, dt, dev), vt(w, dt, dev), padding=1)
    check_result(y, ref.conv2d(x, w, None, 1, 1), dev, dt, "conv2d 1x1 output")


# ---- exact small-integer conv and linear (float32 sums of small integers are exact) -------------------
INT_CONV = [(1, 7, 5, 3, 5, 3, 1, 1, True), (2, 9, 6, 4, 13, 3, 2, 0, True), (2, 5, 7, 3, 5, 1, 1, 0, False),
            (1, 9, 8, 13, 13, 5, 2, 2, True), (2, 9, 7, 13, 65, 3, 1, 1, False), (1, 23, 19, 3, 13, 11, 4, 2, True)]


@pytest.mark.parametrize("dev,dt,case", params_for(
    [c + (max(c[1], c[2]) <= 9 and c[4] <= 13,) for c in INT_CONV], [f"case{i}" for i in range(len(INT_CONV))]))
def test_conv2d_exact_integers(dev, dt, case, rng):
    N, H, W, C, K, k, stride, pad, has_bias, _ = case
    x = rng.integers(-3, 4, (N, H, W, C)).astype(np.float64)
    w = rng.integers(-3, 4, (K, k, k, C)).astype(np.float64)
    b = rng.integers(-3, 4, (K,)).astype(np.float64) if has_bias else None
    xt, wt = vt(x, dt, dev, True), vt(w, dt, dev, True)
    bt = vt(b, dt, dev, True) if has_bias else None
    y = F.conv2d(xt, wt, bt, stride=stride, padding=pad)
    np.testing.assert_array_equal(to_np(y), ref.conv2d(x, w, b, stride, pad), err_msg="conv2d forward")
    dy = rng.integers(-3, 4, tuple(y.shape)).astype(np.float64)
    y.backward(vt(dy, dt, dev))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad)
    np.testing.assert_array_equal(to_np(xt.grad), dx, err_msg="conv2d grad x")
    np.testing.assert_array_equal(to_np(wt.grad), dw, err_msg="conv2d grad weight")
    if has_bias:
        np.testing.assert_array_equal(to_np(bt.grad), db, err_msg="conv2d grad bias")


INT_LINEAR = [(1, 3, 5, True, True), (3, 13, 7, False, True), (5, 65, 33, True, False), (4, 300, 130, True, False)]


@pytest.mark.parametrize("dev,dt,case", params_for(INT_LINEAR, [f"case{i}" for i in range(len(INT_LINEAR))]))
def test_linear_exact_integers(dev, dt, case, rng):
    M, IN, OUT, has_bias, _ = case
    x = rng.integers(-3, 4, (M, IN)).astype(np.float64)
    w = rng.integers(-3, 4, (OUT, IN)).astype(np.float64)
    b = rng.integers(-3, 4, (OUT,)).astype(np.float64) if has_bias else None
    xt, wt = vt(x, dt, dev, True), vt(w, dt, dev, True)
    bt = vt(b, dt, dev, True) if has_bias else None
    y = F.linear(xt, wt, bt)
    np.testing.assert_array_equal(to_np(y), ref.linear(x, w, b), err_msg="linear forward")
    dy = rng.integers(-3, 4, (M, OUT)).astype(np.float64)
    y.backward(vt(dy, dt, dev))
    dx, dw, db = ref.linear_backward(x, w, dy)
    np.testing.assert_array_equal(to_np(xt.grad), dx, err_msg="linear grad x")
    np.testing.assert_array_equal(to_np(wt.grad), dw, err_msg="linear grad weight")
    if has_bias:
        np.testing.assert_array_equal(to_np(bt.grad), db, err_msg="linear grad bias")


# ---- linear ---------------------------------------------------------------------------------------------
LINEAR = [(1, 3, 5, True, True), (2, 13, 13, False, True), (9, 100, 13, True, True), (3, 7, 1, True, True),
          (1, 1, 1, True, True),
          (4, 65, 33, True, False), (2, 300, 65, False, False), (7, 129, 100, True, False)]


@pytest.mark.parametrize("dev,dt,case", params_for(LINEAR, ["M{}IN{}OUT{}{}".format(*c[:3], "b" if c[3] else "")
                                                            for c in LINEAR]))
def test_linear(dev, dt, case, rng):
    M, IN, OUT, has_bias, _ = case
    x = rounded(U(rng, (M, IN)), dt)
    w = rounded(U(rng, (OUT, IN), 1.0 / np.sqrt(IN)), dt)
    b = rounded(U(rng, (OUT,)), dt) if has_bias else None
    xt, wt = vt(x, dt, dev, True), vt(w, dt, dev, True)
    bt = vt(b, dt, dev, True) if has_bias else None
    y = F.linear(xt, wt, bt)
    check_result(y, ref.linear(x, w, b), dev, dt, "linear forward")
    dy = rounded(U(rng, (M, OUT)), dt)
    y.backward(vt(dy, dt, dev))
    dx, dw, db = ref.linear_backward(x, w, dy)
    assert_close(xt.grad, dx, TOL[dt], "linear grad x")
    assert_close(wt.grad, dw, TOL[dt], "linear grad weight")
    if has_bias:
        assert_close(bt.grad, db, TOL[dt], "linear grad bias")


# ---- relu ---------------------------------------------------------------------------------------------------
RELU = [((1, 7, 5, 3), True), ((2, 9, 6, 13), True), ((5,), True), ((3, 7), True), ((2, 33, 17, 65), False)]


@pytest.mark.parametrize("dev,dt,case", params_for(RELU, ["x".join(map(str, c[0])) for c in RELU]))
def test_relu(dev, dt, case, rng):
    shape = case[0]
    x = rounded(U(rng, shape), dt)
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink for the gradient
    xt = vt(x, dt, dev, True)
    y = F.relu(xt)
    check_result(y, ref.relu(x), dev, dt, "relu forward")
    dy = rounded(U(rng, shape), dt)
    y.backward(vt(dy, dt, dev))
    assert_close(xt.grad, ref.relu_backward(x, dy), TOL[dt], "relu grad")


def test_relu_zero_and_negative_zero(device_dtype):
    dev, dt = device_dtype
    y = to_np(F.relu(vt(np.array([0.0, -0.0, -1e-30, 1e-30, -5.0, 7.0]), dt, dev)))
    assert np.array_equal(y, rounded(np.array([0.0, 0.0, 0.0, 1e-30, 0.0, 7.0]), dt)), y


# ---- pooling ----------------------------------------------------------------------------------------------
# (N, H, W, C, kernel, stride, small)
POOL = [(1, 7, 5, 3, 2, 2, True), (2, 9, 6, 5, 3, 2, True), (2, 8, 8, 13, 2, 2, True), (1, 5, 9, 3, 3, 2, True),
        (1, 3, 3, 1, 3, 2, True), (2, 2, 2, 3, 2, 2, True), (1, 9, 7, 4, 3, 3, True), (1, 7, 6, 2, 2, 1, True),
        (2, 9, 9, 13, 3, 2, True),
        (2, 15, 13, 65, 2, 2, False), (2, 17, 11, 64, 3, 2, False), (1, 28, 28, 16, 2, 2, False)]
POOL_IDS = ["N{}H{}W{}C{}k{}s{}".format(*c[:6]) for c in POOL]


@pytest.mark.parametrize("dev,dt,case", params_for(POOL, POOL_IDS))
def test_max_pool2d(dev, dt, case, rng):
    N, H, W, C, k, s, _ = case
    x = rounded(distinct(rng, (N, H, W, C)), dt)
    xt = vt(x, dt, dev, True)
    y = F.max_pool2d(xt, kernel_size=k, stride=s)
    check_result(y, ref.max_pool2d(x, k, s), dev, dt, "max_pool2d forward")
    dy = rounded(U(rng, tuple(y.shape)), dt)
    y.backward(vt(dy, dt, dev))
    assert_close(xt.grad, ref.max_pool2d_backward(x, dy, k, s), TOL[dt], "max_pool2d grad")


@pytest.mark.parametrize("dev,dt,case", params_for(POOL, POOL_IDS))
def test_avg_pool2d(dev, dt, case, rng):
    N, H, W, C, k, s, _ = case
    x = rounded(U(rng, (N, H, W, C)), dt)
    xt = vt(x, dt, dev, True)
    y = F.avg_pool2d(xt, kernel_size=k, stride=s)
    check_result(y, ref.avg_pool2d(x, k, s), dev, dt, "avg_pool2d forward")
    dy = rounded(U(rng, tuple(y.shape)), dt)
    y.backward(vt(dy, dt, dev))
    assert_close(xt.grad, ref.avg_pool2d_backward(x, dy, k, s), TOL[dt], "avg_pool2d grad")


def test_pool_defaults_are_2x2_stride_2(device_dtype, rng):
    dev, dt = device_dtype
    x = rounded(distinct(rng, (1, 7, 5, 3)), dt)
    check_result(F.max_pool2d(vt(x, dt, dev)), ref.max_pool2d(x, 2, 2), dev, dt, "max_pool2d defaults")
    check_result(F.avg_pool2d(vt(x, dt, dev)), ref.avg_pool2d(x, 2, 2), dev, dt, "avg_pool2d defaults")


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_max_pool2d_ties_first_maximum_wins(device_dtype, k, s):
    """Ties go to the first maximum in row-major window order (PyTorch's rule); overlapping windows add up."""
    dev, dt = device_dtype
    x = np.zeros((1, 5, 5, 2))
    x[0, 0, 1, 1], x[0, 1, 0, 1] = 3.0, 3.0  # channel 1: tie inside the first window, first is (0, 1)
    xt = vt(x, dt, dev, True)
    y = F.max_pool2d(xt, kernel_size=k, stride=s)
    dy = np.arange(1, np.prod(tuple(y.shape)) + 1, dtype=np.float64).reshape(tuple(y.shape))
    y.backward(vt(dy, dt, dev))
    np.testing.assert_array_equal(to_np(y), ref.max_pool2d(x, k, s))
    np.testing.assert_array_equal(to_np(xt.grad), ref.max_pool2d_backward(x, dy, k, s),
                                  err_msg="max_pool2d backward must route ties to the first maximum")


# ---- global average pooling ----------------------------------------------------------------------------------
def test_global_avg_pool(device_dtype, rng):
    dev, dt = device_dtype
    x = rounded(U(rng, (2, 7, 5, 3)), dt)
    xt = vt(x, dt, dev, True)
    y = F.global_avg_pool2d(xt)
    assert tuple(y.shape) == (2, 3)
    assert_close(to_np(y).reshape(2, 3), ref.global_avg_pool(x), TOL[dt], "global avg pool forward")
    dy = rounded(U(rng, tuple(y.shape)), dt)
    y.backward(vt(dy, dt, dev))
    expected = np.broadcast_to(dy.reshape(2, 1, 1, 3) / 35.0, x.shape)
    assert_close(xt.grad, expected, TOL[dt], "global avg pool grad")


# ---- local response normalisation ----------------------------------------------------------------------------
# (shape, size, alpha, beta, k, small)
LRN = [((2, 3, 5, 7), 5, 0.5, 0.75, 2.0, True), ((1, 7, 5, 13), 3, 0.1, 0.6, 1.0, True),
       ((2, 3, 2, 7), 4, 0.3, 0.75, 1.0, True), ((1, 3, 3, 3), 5, 0.2, 0.75, 1.0, True),
       ((1, 2, 3, 5), 1, 0.2, 0.5, 1.0, True), ((2, 5, 3, 13), 5, 5e-4, 0.75, 2.0, True),
       ((2, 9, 7, 64), 5, 1e-2, 0.75, 2.0, False), ((1, 6, 5, 65), 7, 0.05, 0.9, 1.5, False)]


@pytest.mark.parametrize("dev,dt,case", params_for(LRN, ["{}_n{}_a{}_b{}_k{}".format("x".join(map(str, c[0])), *c[1:5])
                                                         for c in LRN]))
def test_local_response_norm(dev, dt, case, rng):
    shape, size, alpha, beta, k, _ = case
    x = rounded(U(rng, shape, 3.0), dt)
    xt = vt(x, dt, dev, True)
    y = F.local_response_norm(xt, size=size, alpha=alpha, beta=beta, k=k)
    check_result(y, ref.local_response_norm(x, size, alpha, beta, k), dev, dt, "local_response_norm forward")
    dy = rounded(U(rng, shape), dt)
    y.backward(vt(dy, dt, dev))
    assert_close(xt.grad, ref.local_response_norm_backward(x, dy, size, alpha, beta, k), TOL[dt],
                 "local_response_norm grad")


def test_local_response_norm_defaults(device_dtype, rng):
    dev, dt = device_dtype
    x = rounded(U(rng, (1, 3, 5, 7), 30.0), dt)
    check_result(F.local_response_norm(vt(x, dt, dev)), ref.local_response_norm(x, 5, 1e-4, 0.75, 1.0), dev, dt,
                 "local_response_norm defaults")


# ---- softmax, log_softmax, cross_entropy -----------------------------------------------------------------
SOFTMAX = [((1, 5), True), ((3, 13), True), ((3, 300), True), ((2, 1), True), ((2, 3, 7), True), ((4, 1000), False),
           ((2, 4097), False)]


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dev,dt,case", params_for(SOFTMAX, ["x".join(map(str, c[0])) for c in SOFTMAX]))
def test_softmax_family(dev, dt, case, name, rng):
    shape = case[0]
    x = rounded(U(rng, shape, 5.0), dt)
    xt = vt(x, dt, dev, True)
    y = getattr(F, name)(xt)
    check_result(y, getattr(ref, name)(x), dev, dt, f"{name} forward")
    dy = rounded(U(rng, shape), dt)
    y.backward(vt(dy, dt, dev))
    assert_close(xt.grad, getattr(ref, name + "_backward")(x, dy), TOL[dt], f"{name} grad")


CE = [((1, 5), True), ((4, 13), True), ((2, 2), True), ((9, 100), True), ((8, 1000), False), ((33, 10), False)]


@pytest.mark.parametrize("dev,dt,case", params_for(CE, ["x".join(map(str, c[0])) for c in CE]))
def test_cross_entropy(dev, dt, case, rng):
    (rows, cols), _ = case
    x = rounded(U(rng, (rows, cols), 5.0), dt)
    target = rng.integers(0, cols, rows).astype(np.int64)
    xt = vt(x, dt, dev, True)
    loss = F.cross_entropy(xt, target)
    assert loss.dtype == dt and loss.device == dev
    assert F.cross_entropy(vt(x, dt, dev), target.tolist()).item() == loss.item(), "labels as a python list"
    assert int(np.prod(tuple(loss.shape))) == 1, f"cross_entropy must return one value, shape {loss.shape}"
    expected = ref.cross_entropy(x, target)
    assert abs(loss.item() - expected) <= TOL[dt] * max(abs(expected), 1.0), (loss.item(), expected)
    loss.backward()
    assert_close(xt.grad, ref.cross_entropy_backward(x, target), TOL[dt], "cross_entropy grad")


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "cross_entropy"])
def test_softmax_family_stable_for_huge_logits(device_dtype, name, rng):
    dev, dt = device_dtype
    x = np.array([[1000.0, 1000.0, -1000.0, 999.0], [-1000.0, -1001.0, -1000.5, -3000.0],
                  [3000.0, -3000.0, 0.0, 2999.0]])
    x = rounded(np.concatenate([x, U(rng, (2, 4), 1000.0)]), dt)
    target = np.array([2, 3, 1, 0, 3], dtype=np.int64)
    xt = vt(x, dt, dev, True)
    if name == "cross_entropy":
        y = F.cross_entropy(xt, target)
        expected = np.array(ref.cross_entropy(x, target)).reshape(tuple(y.shape))
        y.backward()
        grad = ref.cross_entropy_backward(x, target)
    else:
        y = getattr(F, name)(xt)
        expected = getattr(ref, name)(x)
        dy = U(rng, x.shape)
        y.backward(vt(dy, dt, dev))
        grad = getattr(ref, name + "_backward")(x, dy)
    assert np.isfinite(to_np(y)).all(), f"{name} not finite for logits of magnitude 1000: {to_np(y)}"
    assert np.isfinite(to_np(xt.grad)).all(), f"{name} grad not finite for logits of magnitude 1000"
    assert_close(y, expected, TOL[dt], f"{name} forward, huge logits")
    assert_close(xt.grad, grad, TOL[dt], f"{name} grad, huge logits")


# ---- dropout ---------------------------------------------------------------------------------------------------
def test_dropout_p0_is_identity(device_dtype, rng):
    dev, dt = device_dtype
    x = rounded(U(rng, (2, 3, 5, 7)), dt)
    xt = vt(x, dt, dev, True)
    y = F.dropout(xt, p=0.0, training=True)
    np.testing.assert_array_equal(to_np(y), x)
    dy = rounded(U(rng, x.shape), dt)
    y.backward(vt(dy, dt, dev))
    np.testing.assert_array_equal(to_np(xt.grad), dy)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_dropout_eval_is_identity(device_dtype, p, rng):
    dev, dt = device_dtype
    x = rounded(U(rng, (2, 3, 5, 7)), dt)
    xt = vt(x, dt, dev, True)
    y = F.dropout(xt, p=p, training=False)
    np.testing.assert_array_equal(to_np(y), x)
    dy = rounded(U(rng, x.shape), dt)
    y.backward(vt(dy, dt, dev))
    np.testing.assert_array_equal(to_np(xt.grad), dy)


def test_dropout_p1_gives_zeros_or_is_rejected(device_dtype, rng):
    """p = 1 drops everything (PyTorch) or is refused as outside [0, 1); it must never divide by zero."""
    dev, dt = device_dtype
    x = vt(U(rng, (3, 5)), dt, dev)
    try:
        y = F.dropout(x, p=1.0, training=True)
    except (ValueError, TypeError) as e:
        assert "dropout" in str(e)
        return
    np.testing.assert_array_equal(to_np(y), np.zeros((3, 5)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_and_scaling(device, p, rng):
    dt = "float32"
    n = 2048 if is_small_device(device) else 200_000
    x = rounded(rng.uniform(0.5, 1.5, (n,)), dt)
    xt = vt(x, dt, device, True)
    y = to_np(F.dropout(xt, p=p, training=True)).astype(np.float64)
    kept = y != 0
    frac = kept.mean()
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(frac - (1 - p)) < 6 * sd, f"dropout p={p} on {device}: kept fraction {frac}, expected {1 - p}"
    assert_close(y[kept], x[kept] / (1 - p), 1e-6, f"dropout p={p} kept values must be x / (1 - p)")
    # backward uses the forward's mask and scale
    y2 = F.dropout(xt2 := vt(x, dt, device, True), p=p, training=True)
    dy = rounded(rng.uniform(0.5, 1.5, (n,)), dt)
    y2.backward(vt(dy, dt, device))
    mask2 = to_np(y2) != 0
    assert_close(to_np(xt2.grad), np.where(mask2, dy / (1 - p), 0.0), 1e-6, "dropout grad")


def test_dropout_fresh_mask_each_call(device, rng):
    x = vt(np.ones(4096), "float32", device)
    m1, m2 = to_np(F.dropout(x, p=0.5)) != 0, to_np(F.dropout(x, p=0.5)) != 0
    assert not np.array_equal(m1, m2), "two dropout calls in a row drew the same mask"


def test_dropout_default_p_is_half(rng):
    y = to_np(F.dropout(vt(np.ones(100_000), "float32", "cpu")))
    assert abs((y != 0).mean() - 0.5) < 0.01
    np.testing.assert_array_equal(np.unique(y), [0.0, 2.0])


def test_dropout_same_seed_same_mask_on_every_device(rng):
    drop = seeded_dropout(1234)
    x = rounded(rng.uniform(0.5, 1.5, (3, 5, 7, 11)), "float32")
    masks = {}
    for dev, dt in DEVICE_DTYPES:
        y = to_np(drop(vt(x, dt, dev), 0.3))
        masks[(dev, dt)] = y != 0
        assert_close(y[masks[(dev, dt)]], x[masks[(dev, dt)]] / 0.7, 1e-6, f"dropout on {dev} {dt}")
    first = masks[("cpu", "float32")]
    assert 0.5 < first.mean() < 0.9
    for key, m in masks.items():
        np.testing.assert_array_equal(m, first, err_msg=f"dropout mask on {key} differs from cpu float32")
    again = to_np(drop(vt(x, "float32", "cpu"), 0.3)) != 0
    np.testing.assert_array_equal(again, first, err_msg="same seed must give the same mask")
    other = to_np(seeded_dropout(4321)(vt(x, "float32", "cpu"), 0.3)) != 0
    assert not np.array_equal(other, first), "a different seed gave the same mask"


# ---- device parity: every op on sim/cuda (float32) against the cpu float64 result -----------------------------
def _ce_target(rows, cols):
    return (np.arange(rows) * 7 + 3) % cols


PARITY = {
    "conv2d": (lambda r: [U(r, (2, 7, 5, 3)), U(r, (5, 3, 3, 3), 0.2), U(r, (5,))],
               lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1)),
    "conv2d_stride2_pad2_k5": (lambda r: [U(r, (1, 9, 6, 4)), U(r, (13, 5, 5, 4), 0.1), U(r, (13,))],
                               lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=2)),
    "conv2d_1x1": (lambda r: [U(r, (2, 5, 7, 13)), U(r, (7, 1, 1, 13), 0.3)],
                   lambda x, w: F.conv2d(x, w)),
    "linear": (lambda r: [U(r, (3, 13)), U(r, (5, 13), 0.3), U(r, (5,))], lambda x, w, b: F.linear(x, w, b)),
    "relu": (lambda r: [U(r, (2, 7, 5, 3))], lambda x: F.relu(x)),
    "max_pool2d_k2s2": (lambda r: [distinct(r, (2, 7, 5, 3))], lambda x: F.max_pool2d(x, 2, 2)),
    "max_pool2d_k3s2": (lambda r: [distinct(r, (2, 9, 6, 5))], lambda x: F.max_pool2d(x, 3, 2)),
    "avg_pool2d_k2s2": (lambda r: [U(r, (2, 7, 5, 3))], lambda x: F.avg_pool2d(x, 2, 2)),
    "avg_pool2d_k3s2": (lambda r: [U(r, (2, 9, 6, 5))], lambda x: F.avg_pool2d(x, 3, 2)),
    "local_response_norm": (lambda r: [U(r, (2, 3, 5, 13), 3.0)],
                            lambda x: F.local_response_norm(x, size=5, alpha=5e-2, beta=0.75, k=2.0)),
    "softmax": (lambda r: [U(r, (3, 13), 5.0)], lambda x: F.softmax(x)),
    "log_softmax": (lambda r: [U(r, (3, 13), 5.0)], lambda x: F.log_softmax(x)),
    "cross_entropy": (lambda r: [U(r, (5, 13), 5.0)], lambda x: F.cross_entropy(x, _ce_target(5, 13))),
    "chain": (lambda r: [U(r, (2, 9, 8, 3)), U(r, (4, 3, 3, 3), 0.3), U(r, (6, 64), 0.3)],
              lambda x, w, v: F.log_softmax(F.linear(
                  F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2, 2).reshape(2, 64), v))),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_device_parity(gpu_device, name, rng):
    make, fn = PARITY[name]
    arrays = [rounded(a, "float32") for a in make(rng)]
    results = {}
    for dev, dt in (("cpu", "float64"), (gpu_device, "float32")):
        ts = [vt(a, dt, dev, True) for a in arrays]
        y = fn(*ts)
        g = np.linspace(-1.0, 1.0, int(np.prod(tuple(y.shape)))).reshape(tuple(y.shape))
        y.backward(vt(g, dt, dev))
        results[dev] = (to_np(y), [to_np(t.grad) for t in ts])
        assert y.device == dev
    (y64, g64), (y32, g32) = results["cpu"], results[gpu_device]
    assert_close(y32, y64, 1e-5, f"{name} forward on {gpu_device} vs cpu float64")
    for i, (a, b) in enumerate(zip(g32, g64)):
        assert_close(a, b, 1e-5, f"{name} grad of input {i} on {gpu_device} vs cpu float64")


# ---- the oracle itself, checked against PyTorch (CPU, float64, NCHW) ------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _t(torch, a):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


@pytest.mark.parametrize("case", CONV, ids=CONV_IDS)
def test_reference_conv2d_matches_torch(torch, case, rng):
    N, H, W, C, K, k, stride, pad, has_bias, _ = case
    x, w, b = U(rng, (N, H, W, C)), U(rng, (K, k, k, C)), U(rng, (K,))
    xt, wt, bt = _t(torch, ref.nhwc_to_nchw(x)), _t(torch, ref.krsc_to_kcrs(w)), _t(torch, b)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=pad)
    y = ref.conv2d(x, w, b, stride, pad)
    np.testing.assert_allclose(ref.nhwc_to_nchw(y), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dy = U(rng, y.shape)
    yt.backward(torch.tensor(ref.nhwc_to_nchw(dy)))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad)
    np.testing.assert_allclose(ref.nhwc_to_nchw(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.krsc_to_kcrs(dw), wt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", POOL, ids=POOL_IDS)
@pytest.mark.parametrize("ties", [False, True])
def test_reference_pools_match_torch(torch, case, ties, rng):
    N, H, W, C, k, s, _ = case
    x = rng.integers(-2, 3, (N, H, W, C)).astype(np.float64) if ties else U(rng, (N, H, W, C))
    dy = U(rng, (N, ref.pool_out_size(H, k, s), ref.pool_out_size(W, k, s), C))
    for name in ("max_pool2d", "avg_pool2d"):
        xt = _t(torch, ref.nhwc_to_nchw(x))
        yt = getattr(torch.nn.functional, name)(xt, k, s)
        np.testing.assert_allclose(ref.nhwc_to_nchw(getattr(ref, name)(x, k, s)), yt.detach().numpy(), rtol=1e-12)
        yt.backward(torch.tensor(ref.nhwc_to_nchw(dy)))
        dx = getattr(ref, name + "_backward")(x, dy, k, s)
        np.testing.assert_allclose(ref.nhwc_to_nchw(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("case", LRN, ids=[str(i) for i in range(len(LRN))])
def test_reference_lrn_matches_torch(torch, case, rng):
    shape, size, alpha, beta, k, _ = case
    x, dy = U(rng, shape, 3.0), U(rng, shape)
    xt = _t(torch, ref.nhwc_to_nchw(x))
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    np.testing.assert_allclose(ref.nhwc_to_nchw(ref.local_response_norm(x, size, alpha, beta, k)),
                               yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    yt.backward(torch.tensor(ref.nhwc_to_nchw(dy)))
    np.testing.assert_allclose(ref.nhwc_to_nchw(ref.local_response_norm_backward(x, dy, size, alpha, beta, k)),
                               xt.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_reference_dense_ops_match_torch(torch, rng):
    tf = torch.nn.functional
    x, w, b = U(rng, (4, 13)), U(rng, (7, 13)), U(rng, (7,))
    xt, wt, bt = _t(torch, x), _t(torch, w), _t(torch, b)
    yt = tf.linear(xt, wt, bt)
    np.testing.assert_allclose(ref.linear(x, w, b), yt.detach().numpy(), rtol=1e-12)
    dy = U(rng, (4, 7))
    yt.backward(torch.tensor(dy))
    for got, want in zip(ref.linear_backward(x, w, dy), (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-14)
    for shape in [(3, 13), (2, 3, 7)]:
        z, dz = U(rng, shape, 5.0), U(rng, shape)
        for name in ("softmax", "log_softmax"):
            zt = _t(torch, z)
            out = getattr(tf, name)(zt, dim=-1)
            np.testing.assert_allclose(getattr(ref, name)(z), out.detach().numpy(), rtol=1e-12, atol=1e-14)
            out.backward(torch.tensor(dz))
            np.testing.assert_allclose(getattr(ref, name + "_backward")(z, dz), zt.grad.numpy(), rtol=1e-10,
                                       atol=1e-14)
    z, target = U(rng, (6, 9), 1000.0), rng.integers(0, 9, 6)
    zt = _t(torch, z)
    loss = tf.cross_entropy(zt, torch.tensor(target))
    np.testing.assert_allclose(ref.cross_entropy(z, target), loss.item(), rtol=1e-12)
    (loss * 0.7).backward()
    np.testing.assert_allclose(ref.cross_entropy_backward(z, target, 0.7), zt.grad.numpy(), rtol=1e-10, atol=1e-14)
    r = U(rng, (3, 7))
    rt = _t(torch, r)
    tf.relu(rt).backward(torch.tensor(dy[:3]))
    np.testing.assert_array_equal(ref.relu(r), tf.relu(rt).detach().numpy())
    np.testing.assert_array_equal(ref.relu_backward(r, dy[:3]), rt.grad.numpy())
