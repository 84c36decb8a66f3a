"""Average pooling agrees between the devices at the edge of float32's range and to the last bit elsewhere.

The kernels sum in double and round once (csrc/cpu/pool.cpp, csrc/cuda/pool.cu): a float32 sum of four values
near FLT_MAX overflows to inf before the division, while their mean is finite. The reference is NumPy in float64.
"""
import numpy as np
import pytest

import vggcore as vc
from vggcore.nn import functional as F

DEVICES = [d for d in ("cpu", "sim") if d in vc.devices()]
BIG = np.float32(3e38)


def _window_mean_reference(x, k, stride):
    n, h, w, c = x.shape
    p, q = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.empty((n, p, q, c), np.float64)
    for i in range(p):
        for j in range(q):
            out[:, i, j] = x[:, i * stride:i * stride + k, j * stride:j * stride + k].astype(np.float64).mean(axis=(1, 2))
    return out.astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (3, 1)])
def test_avg_pool_mean_of_values_near_float_max_is_finite(device, k, stride):
    rng = np.random.default_rng(k * 10 + stride)
    x = (BIG * rng.choice(np.array([1.0, 0.9, -1.0, 0.99], np.float32), size=(2, 7, 9, 33))).astype(np.float32)
    x[0, :3, :3, 0] = BIG                     # a whole window at +3e38: its float32 sum is inf
    X = vc.tensor(x, device=device, requires_grad=True)
    y = F.avg_pool2d(X, k, stride)
    got = y.numpy()
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, _window_mean_reference(x, k, stride))
    # backward: dx sums dy / (k*k) over the windows containing each pixel; with dy near FLT_MAX and overlapping
    # windows (stride < k) a float32 sum would overflow where the exact value does not.
    dy = np.full(got.shape, BIG, np.float32)
    y.backward(vc.tensor(dy, device=device))
    cover = np.zeros(x.shape[1:3])
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            cover[i * stride:i * stride + k, j * stride:j * stride + k] += 1
    expect = (np.float64(BIG) * cover / (k * k)).astype(np.float32)
    np.testing.assert_array_equal(X.grad.numpy(), np.broadcast_to(expect[None, :, :, None], x.shape))


@pytest.mark.parametrize("device", DEVICES)
def test_global_avg_pool_near_float_max(device):
    # 3 x 3 positions > the 8 slices of the GPU reduction, 40 channels > one 32-channel block
    x = np.full((3, 3, 3, 40), BIG, np.float32)
    x[1, 0, 0, :] = -BIG
    X = vc.tensor(x, device=device, requires_grad=True)
    y = F.global_avg_pool2d(X)
    got = y.numpy()
    expect = x.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    np.testing.assert_array_equal(got, expect)
    y.backward(vc.tensor(np.full(got.shape, BIG, np.float32), device=device))
    np.testing.assert_array_equal(X.grad.numpy(), np.full(x.shape, np.float32(np.float64(BIG) / 9)))


@pytest.mark.skipif(len(DEVICES) < 2, reason="needs cpu and sim")
def test_avg_pool_devices_agree_to_the_bit():
    # Both devices sum the same window values in the same order in double and round once, so non-integer data
    # must give identical bits, not just close values (odd sizes, more than one grid-stride step of threads).
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 31, 29, 37)).astype(np.float32)
    dy_shape = None
    outs, grads = {}, {}
    for d in DEVICES:
        X = vc.tensor(x, device=d, requires_grad=True)
        y = F.avg_pool2d(X, 3, 2)
        dy_shape = y.shape
        y.backward(vc.tensor(np.linspace(-2, 2, int(np.prod(dy_shape)), dtype=np.float32).reshape(dy_shape),
                             device=d))
        outs[d], grads[d] = y.numpy(), X.grad.numpy()
    np.testing.assert_array_equal(outs["sim"], outs["cpu"])
    np.testing.assert_array_equal(grads["sim"], grads["cpu"])
