"""The Tensor and autograd contract: creation and dtype inference, shape/dtype/device attributes, devices
round trips, reshape, item, detach, no_grad, fan-out accumulation, repeated backward, deep graphs."""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from conftest import DEVICES
from gradcheck import gradcheck, to_np, vt


# ---- creation --------------------------------------------------------------------------------------------------
def test_tensor_copies_numpy_source():
    a = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    t = vc.tensor(a)
    a[...] = -7.0
    np.testing.assert_array_equal(to_np(t), np.arange(12.0).reshape(3, 4))


def test_tensor_copies_on_every_device(device):
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    t = vc.tensor(a, device=device)
    a[0, 0] = 100.0
    assert t.device == device
    np.testing.assert_array_equal(to_np(t), np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("data,dtype", [
    (np.zeros((2, 3), dtype=np.float64), "float64"),
    (np.zeros((2, 3), dtype=np.float32), "float32"),
    ([[1.5, 2.5], [3.0, 4.0]], "float32"),
    ([1, 2, 3], "float32"),
    ([[1, 2], [3, 4]], "float32"),
])
def test_dtype_inference(data, dtype):
    t = vc.tensor(data)
    assert t.dtype == dtype
    assert tuple(t.shape) == np.asarray(data).shape
    np.testing.assert_array_equal(to_np(t), np.asarray(data, dtype=np.float64))


@pytest.mark.parametrize("value", [3, 2.5])
def test_python_scalar_is_float32(value):
    t = vc.tensor(value)
    assert t.dtype == "float32" and t.item() == float(value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_explicit_dtype_wins(dtype):
    for data in ([1, 2, 3], np.zeros(3, np.float32), np.zeros(3, np.float64)):
        t = vc.tensor(data, dtype=dtype)
        assert t.dtype == dtype
        assert to_np(t).dtype == np.dtype(dtype)


def test_float64_values_are_kept_exactly():
    a = np.array([1.0 + 2.0 ** -40, np.pi, -1e-300, 1e300])
    np.testing.assert_array_equal(to_np(vc.tensor(a)), a)


def test_attributes():
    t = vc.tensor(np.zeros((2, 3, 4, 5)), requires_grad=True)
    assert tuple(t.shape) == (2, 3, 4, 5)
    assert t.dtype == "float64" and t.device == "cpu"
    assert t.requires_grad is True and t.grad is None
    assert vc.tensor([1.0]).requires_grad is False


def test_numpy_has_the_tensor_dtype(device_dtype):
    dev, dt = device_dtype
    a = vt(np.arange(6.0).reshape(2, 3), dt, dev).numpy()
    assert isinstance(a, np.ndarray) and a.dtype == np.dtype(dt) and a.shape == (2, 3)


# ---- to, reshape, item, detach -------------------------------------------------------------------------------------
@pytest.mark.parametrize("src", DEVICES)
def test_to_device_round_trip(device, src):
    a = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    t = vc.tensor(a, device=src)
    u = t.to(device)
    assert u.device == device and u.dtype == "float32" and tuple(u.shape) == (2, 3, 5)
    back = u.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(to_np(back), a)
    np.testing.assert_array_equal(to_np(u), a)


def test_reshape_is_row_major_and_differentiable(device_dtype):
    dev, dt = device_dtype
    a = np.arange(24.0).reshape(2, 3, 4)
    t = vt(a, dt, dev, requires_grad=True)
    r = t.reshape(4, 6)
    assert tuple(r.shape) == (4, 6) and r.dtype == dt and r.device == dev
    np.testing.assert_array_equal(to_np(r), a.reshape(4, 6))
    np.testing.assert_array_equal(to_np(t.reshape(24)), a.reshape(24))
    g = np.arange(24.0).reshape(4, 6) * 0.5
    r.backward(vt(g, dt, dev))
    assert tuple(t.grad.shape) == (2, 3, 4)
    np.testing.assert_array_equal(to_np(t.grad), g.reshape(2, 3, 4))


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1)])
def test_item(device_dtype, shape):
    dev, dt = device_dtype
    v = vt(np.full(shape, 2.5), dt, dev).item()
    assert isinstance(v, float) and v == 2.5


def test_detach():
    x = vt(np.array([[1.0, -2.0, 3.0]]), requires_grad=True)
    y = F.relu(x)
    d = y.detach()
    assert d.requires_grad is False
    np.testing.assert_array_equal(to_np(d), to_np(y))
    z = F.linear(d, vt(np.ones((1, 3))))
    assert z.requires_grad is False
    y.backward(vt(np.ones((1, 3))))
    np.testing.assert_array_equal(to_np(x.grad), [[1.0, 0.0, 1.0]])


# ---- graph construction -------------------------------------------------------------------------------------------
def test_requires_grad_propagates(rng):
    x = vt(rng.standard_normal((2, 5)))
    w = vt(rng.standard_normal((3, 5)), requires_grad=True)
    assert F.linear(x, vt(rng.standard_normal((3, 5)))).requires_grad is False
    y = F.linear(x, w)
    assert y.requires_grad is True
    y.backward(vt(np.ones((2, 3))))
    assert x.grad is None, "an input that does not require grad must not get a gradient"
    assert tuple(w.grad.shape) == (3, 5)


def test_no_grad(rng):
    x = vt(rng.standard_normal((2, 5)), requires_grad=True)
    with vc.no_grad():
        y = F.relu(x)
        z = F.linear(y, x)
    assert y.requires_grad is False and z.requires_grad is False
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        z.backward(vt(np.ones((2, 2))))
    assert x.grad is None
    assert F.relu(x).requires_grad is True, "grad mode must be back on after leaving no_grad"


def test_no_grad_restores_after_exception(rng):
    x = vt(rng.standard_normal((2, 5)), requires_grad=True)
    with pytest.raises(KeyError):
        with vc.no_grad():
            raise KeyError("boom")
    assert F.relu(x).requires_grad is True


def test_grad_shapes_equal_tensor_shapes(device_dtype, rng):
    dev, dt = device_dtype
    x = vt(rng.standard_normal((2, 7, 5, 3)), dt, dev, True)
    w = vt(rng.standard_normal((4, 3, 3, 3)), dt, dev, True)
    b = vt(rng.standard_normal(4), dt, dev, True)
    v = vt(rng.standard_normal((6, 4)), dt, dev, True)
    h = F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=2, padding=1)), 2, 2)  # (2, 2, 1, 4)
    loss = F.cross_entropy(F.linear(h.reshape(4, 4), v), np.array([0, 5, 2, 1]))
    loss.backward()
    for t in (x, w, b, v):
        assert t.grad is not None
        assert tuple(t.grad.shape) == tuple(t.shape)
        assert t.grad.dtype == dt and t.grad.device == dev
        assert np.isfinite(to_np(t.grad)).all()


def test_scalar_backward_default_grad_is_one(rng):
    x = rng.standard_normal((3, 4))
    xt = vt(x, requires_grad=True)
    F.cross_entropy(xt, np.array([1, 0, 3])).backward()
    a = to_np(xt.grad).copy()
    xt2 = vt(x, requires_grad=True)
    F.cross_entropy(xt2, np.array([1, 0, 3])).backward(vt(np.ones(tuple(F.cross_entropy(
        xt2, np.array([1, 0, 3])).shape))))
    np.testing.assert_allclose(to_np(xt2.grad), a, rtol=1e-15)


# ---- accumulation ------------------------------------------------------------------------------------------------
def test_fan_out_in_one_op(rng):
    """linear(x, x) = x x^T uses x twice: dx = dy x + dy^T x."""
    x = rng.standard_normal((4, 4))
    xt = vt(x, requires_grad=True)
    y = F.linear(xt, xt)
    dy = rng.standard_normal((4, 4))
    y.backward(vt(dy))
    np.testing.assert_allclose(to_np(xt.grad), dy @ x + dy.T @ x, rtol=1e-12, atol=1e-12)


def test_fan_out_across_depths_needs_topological_order(rng):
    """h feeds a node directly and through another node; h's gradient must be complete before relu's backward."""
    w1 = rng.standard_normal((4, 4)) * 0.5
    x = rng.choice([-1.0, 1.0], (4, 4)) * rng.uniform(0.2, 1.0, (4, 4))

    def net(x, w1):
        h = F.relu(x)
        u = F.linear(h, w1)
        return F.linear(u, h)

    gradcheck("fan-out diamond", net, [x, w1], names=["x", "w1"])


@pytest.mark.parametrize("order", ["direct path first", "long path first"])
def test_fan_out_across_depths_in_either_input_order(order, rng):
    """The node reached both directly and through another node, with the two inputs in either order (the
    traversal order of a depth-first search depends on it)."""
    w1 = rng.standard_normal((4, 4)) * 0.5
    x = rng.choice([-1.0, 1.0], (4, 4)) * rng.uniform(0.2, 1.0, (4, 4))

    def net(x, w1):
        h = F.relu(x)
        u = F.linear(h, w1)
        return F.linear(h, u) if order == "direct path first" else F.linear(u, h)

    gradcheck(f"fan-out diamond ({order})", net, [x, w1], names=["x", "w1"])


@pytest.mark.parametrize("expression", ["x + 2x", "2x + x", "(x + 3x) + relu(3x)"])
def test_fan_out_sums_every_path(expression):
    x = vt(np.array([1.0, 2.0]), requires_grad=True)
    if expression == "x + 2x":
        y, slope = x + x * 2.0, 3.0
    elif expression == "2x + x":
        y, slope = x * 2.0 + x, 3.0
    else:
        a = F.relu(x)
        y, slope = (a + a * 3.0) + F.relu(a * 3.0), 7.0
    y.backward(vt(np.ones(2)))
    np.testing.assert_array_equal(to_np(x.grad), [slope, slope])


def test_fan_out_two_branches_into_one_op(rng):
    """a = relu(x) and b = max_pool(x) both feed linear: x's gradient is the sum of both paths."""
    x = (rng.permutation(16).reshape(1, 4, 4, 1) - 7.5) / 8.0
    gradcheck("two branches", lambda x: F.linear(F.relu(x).reshape(4, 4), F.max_pool2d(x, 2, 2).reshape(1, 4)),
              [x], names=["x"])


def test_backward_twice_through_fresh_graphs_accumulates(device_dtype, rng):
    dev, dt = device_dtype
    x, w = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    xt, wt = vt(x, dt, dev, True), vt(w, dt, dev, True)
    dy = rng.standard_normal((3, 2))
    F.linear(xt, wt).backward(vt(dy, dt, dev))
    first = to_np(wt.grad).astype(np.float64).copy()
    F.linear(xt, wt).backward(vt(dy, dt, dev))
    tol = 1e-5 if dt == "float32" else 1e-12
    np.testing.assert_allclose(to_np(wt.grad), 2 * first, rtol=tol, atol=tol)
    np.testing.assert_allclose(to_np(xt.grad), 2 * dy @ w, rtol=tol, atol=tol)
    np.testing.assert_allclose(first, dy.T @ x, rtol=tol, atol=tol)


def test_deep_graph_does_not_recurse(rng):
    """3000 chained ops: the topological sort must be iterative (no RecursionError)."""
    x = vt(np.abs(rng.standard_normal((2, 3))) + 0.1, requires_grad=True)
    y = x
    for _ in range(3000):
        y = F.relu(y)
    y.backward(vt(np.full((2, 3), 2.0)))
    np.testing.assert_array_equal(to_np(x.grad), np.full((2, 3), 2.0))


def test_backward_non_scalar_needs_grad(rng):
    """A non-scalar tensor needs an explicit grad; with one, backward works and fills .grad."""
    x = vt(rng.standard_normal((2, 3)), requires_grad=True)
    y = F.relu(x)
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        y.backward()
    F.relu(x).backward(vt(np.ones((2, 3))))
    np.testing.assert_array_equal(to_np(x.grad), (to_np(x) > 0).astype(np.float64))
