"""Contract tests (DESIGN.md section 2): the Tensor API (vc.tensor, shape/dtype/device, backward, detach, item, to, reshape, no_grad). Helpers and the PyTorch oracle: contract_helpers.py."""

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from contract_helpers import *  # noqa: F401,F403


def test_tensor_from_numpy_and_list_and_scalar():
    a = rng().standard_normal((2, 3, 4, 5))
    t = vc.tensor(a)
    assert t.shape == (2, 3, 4, 5)
    assert tuple(t.shape) == (2, 3, 4, 5)
    assert t.dtype in ("float32", "float64")
    assert t.device == "cpu"
    assert t.requires_grad is False
    assert t.grad is None
    np.testing.assert_allclose(t.numpy(), a, rtol=1e-6)
    # copies
    a[0, 0, 0, 0] = 1234.0
    assert t.numpy()[0, 0, 0, 0] != 1234.0

    t32 = vc.tensor(np.ones((2, 2), np.float32))
    assert t32.dtype == "float32"
    t64 = vc.tensor(np.ones((2, 2), np.float64))
    assert t64.dtype == "float64"  # like torch.tensor(ndarray): the array's float dtype is kept
    for dt in ("float32", "float64"):
        t = vc.tensor([[1, 2, 3], [4, 5, 6]], dtype=dt)
        assert t.dtype == dt and t.shape == (2, 3)
        assert t.numpy().dtype == np.dtype(dt)
        np.testing.assert_array_equal(t.numpy(), [[1, 2, 3], [4, 5, 6]])
    tl = vc.tensor([1.5, 2.5])
    assert tl.shape == (2,) and tl.dtype in ("float32", "float64")
    s = vc.tensor(3.5)
    assert s.shape == ()
    assert s.item() == 3.5
    assert isinstance(s.item(), float)
    assert vc.tensor([[7.25]]).item() == 7.25


@needs_torch
def test_tensor_requires_grad_backward_detach_item():
    x = vc.tensor(np.array([1.0, -2.0, 3.0]), dtype="float64", requires_grad=True)
    assert x.requires_grad
    y = F.relu(x)
    assert y.requires_grad
    # backward with an explicit gradient
    y.backward(vc.tensor(np.array([1.0, 10.0, 100.0]), dtype="float64"))
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 0.0, 100.0])
    d = y.detach()
    assert d.requires_grad is False
    np.testing.assert_allclose(d.numpy(), [1.0, 0.0, 3.0])
    # scalar backward with grad=None
    x2 = vc.tensor(np.array([[0.5, -1.0, 2.0]]), dtype="float64", requires_grad=True)
    loss = F.cross_entropy(x2, np.array([2]))
    assert loss.shape in ((), (1,))
    v = loss.item()
    assert isinstance(v, float)
    loss.backward()
    ref = tt([[0.5, -1.0, 2.0]])
    TF.cross_entropy(ref, torch.tensor([2])).backward()
    np.testing.assert_allclose(x2.grad.numpy(), ref.grad.numpy(), rtol=1e-10)
    assert abs(v - TF.cross_entropy(ref, torch.tensor([2])).item()) < 1e-12


def test_tensor_reshape_and_fanout_accumulation():
    a = rng(1).standard_normal((2, 3, 4))
    x = vc.tensor(a, dtype="float64", requires_grad=True)
    r = x.reshape(6, 4)
    assert r.shape == (6, 4)
    np.testing.assert_array_equal(r.numpy(), a.reshape(6, 4))
    r2 = x.reshape(24)
    assert r2.shape == (24,)
    # fan-out: x used twice; gradients accumulate
    w = vc.tensor(rng(2).standard_normal((5, 4)), dtype="float64")
    y1 = F.linear(x.reshape(6, 4), w)
    y2 = F.relu(x.reshape(24)).reshape(6, 4)
    g1 = rng(3).standard_normal((6, 5))
    y1.backward(vc.tensor(g1, dtype="float64"))
    y2.backward(vc.tensor(np.ones((6, 4)), dtype="float64"))
    want = (g1 @ w.numpy()).reshape(2, 3, 4) + (a > 0).astype(np.float64)
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-10, atol=1e-12)


def test_no_grad_and_devices():
    devs = vc.devices()
    assert isinstance(devs, list) and "cpu" in devs
    assert isinstance(vc.cuda_available(), bool)
    assert vc.cuda_available() == any(d.startswith("cuda") for d in devs)
    x = vc.tensor(np.ones((2, 3)), requires_grad=True)
    with vc.no_grad():
        y = F.relu(x)
    assert y.requires_grad is False
    z = F.relu(x)
    assert z.requires_grad is True


@pytest.mark.parametrize("device", SIM)
def test_tensor_to_device(device):
    a = rng(4).standard_normal((2, 3, 5)).astype(np.float32)
    t = vc.tensor(a, device=device)
    assert t.device == device
    np.testing.assert_array_equal(t.numpy(), a)
    c = vc.tensor(a).to(device)
    assert c.device == device
    np.testing.assert_array_equal(c.numpy(), a)
    back = c.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.numpy(), a)
    # gradients flow back across .to()
    x = vc.tensor(a, requires_grad=True)
    y = F.relu(x.to(device))
    y.backward(vc.tensor(np.ones_like(a), device=device))
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), (a > 0).astype(np.float32))

