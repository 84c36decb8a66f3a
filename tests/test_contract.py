"""Acceptance tests written from DESIGN.md section 2 (the public contract), not from the implementation.

Everything is NHWC; conv weights (K, R, S, C); linear weights (out, in). PyTorch (CPU) is the independent
reference: activations are permuted NHWC <-> NCHW and conv weights (K, R, S, C) <-> (K, C, R, S).
"""
import math

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

torch = pytest.importorskip("torch")
TF = torch.nn.functional

DEVICES = vc.devices()
# (device, dtype) pairs the contract promises: cpu float32/float64, sim/cuda float32.
CASES = [("cpu", "float32"), ("cpu", "float64")] + [(d, "float32") for d in DEVICES if d != "cpu"]
CASE_IDS = [f"{d}-{t}" for d, t in CASES]
SIM = [d for d in DEVICES if d != "cpu"]


# ----------------------------------------------------------------------------------------------- helpers
def rng(seed=0):
    return np.random.default_rng(seed)


def npt(dtype):
    return np.float32 if dtype == "float32" else np.float64


def T(a, dtype="float64", device="cpu", requires_grad=False):
    return vc.tensor(np.asarray(a, dtype=npt(dtype)), dtype=dtype, device=device, requires_grad=requires_grad)


def to_np(v):
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "numpy"):
        return np.asarray(v.numpy())
    return np.asarray(v)


def tt(a):
    """numpy -> float64 torch tensor requiring grad (the reference is always computed in float64)."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def nchw(a):  # NHWC numpy -> NCHW torch (float64, leaf requiring grad)
    return tt(np.ascontiguousarray(np.asarray(a, dtype=np.float64).transpose(0, 3, 1, 2)))


def to_nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def krsc_to_kcrs(w):
    return np.ascontiguousarray(np.asarray(w, dtype=np.float64).transpose(0, 3, 1, 2))


def tol(dtype):
    return 1e-10 if dtype == "float64" else 1e-5


def assert_close(got, want, dtype, what=""):
    got = to_np(got).astype(np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    err = float(np.max(np.abs(got - want))) / scale if want.size else 0.0
    assert err <= tol(dtype), f"{what}: scaled max error {err:.3g} > {tol(dtype)}"


def check_output(y, dtype, device):
    assert y.dtype == dtype, f"output dtype {y.dtype} != {dtype}"
    assert y.device == device, f"output device {y.device} != {device}"


def away_from_zero(a, eps=0.05):
    return np.where(a >= 0, a + eps, a - eps)


# ----------------------------------------------------------------------------------------------- Tensor API
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


# ----------------------------------------------------------------------------------------------- conv2d
CONV_CPU = [
    # N, H, W, C, K, R, S, stride, padding, bias
    (1, 11, 7, 3, 13, 3, 3, 1, 1, True),
    (2, 13, 10, 5, 7, 5, 5, 2, 2, False),
    (1, 23, 19, 3, 4, 11, 11, 4, 0, True),
    (2, 6, 5, 9, 17, 1, 1, 1, 0, True),
    (1, 15, 13, 3, 6, 7, 7, 2, 3, True),
    (3, 8, 9, 4, 5, 3, 2, 3, 1, True),
]
CONV_SIM = [(2, 9, 9, 3, 5, 3, 3, 1, 1, True), (1, 7, 6, 4, 3, 1, 1, 2, 0, False)]


def conv_cases():
    out = []
    for dev, dt in CASES:
        for c in CONV_CPU if dev == "cpu" else CONV_SIM:
            out.append(pytest.param(dev, dt, c, id=f"{dev}-{dt}-{c}"))
    return out


@pytest.mark.parametrize("device,dtype,case", conv_cases())
def test_conv2d_vs_torch(device, dtype, case):
    N, H, W, C, K, R, S, stride, padding, has_bias = case
    g = rng(10)
    x = g.standard_normal((N, H, W, C)).astype(npt(dtype))
    w = (g.standard_normal((K, R, S, C)) / math.sqrt(R * S * C)).astype(npt(dtype))
    b = g.standard_normal(K).astype(npt(dtype)) if has_bias else None
    xv, wv = T(x, dtype, device, True), T(w, dtype, device, True)
    bv = T(b, dtype, device, True) if has_bias else None
    y = F.conv2d(xv, wv, bv, stride, padding)
    check_output(y, dtype, device)
    xt, wt = nchw(x), tt(krsc_to_kcrs(w))
    bt = tt(b) if has_bias else None
    yt = TF.conv2d(xt, wt, bt, stride=stride, padding=padding)
    assert_close(y, to_nhwc(yt), dtype, "conv2d forward")
    gy = g.standard_normal(y.shape).astype(npt(dtype))
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2).astype(np.float64)))
    assert_close(xv.grad, to_nhwc(xt.grad), dtype, "conv2d dx")
    assert_close(wv.grad, wt.grad.numpy().transpose(0, 2, 3, 1), dtype, "conv2d dw")
    if has_bias:
        assert_close(bv.grad, bt.grad.numpy(), dtype, "conv2d db")
    assert xv.grad.shape == xv.shape and wv.grad.shape == wv.shape


def test_conv2d_defaults_and_keywords():
    g = rng(11)
    x = g.standard_normal((1, 6, 5, 3))
    w = g.standard_normal((4, 3, 3, 3))
    b = g.standard_normal(4)
    ref = to_nhwc(TF.conv2d(nchw(x), tt(krsc_to_kcrs(w))))
    y = F.conv2d(T(x), T(w))  # bias=None, stride=1, padding=0
    assert y.shape == (1, 4, 3, 4)
    assert_close(y, ref, "float64")
    y = F.conv2d(x=T(x), weight=T(w), bias=T(b), stride=2, padding=1)
    ref = to_nhwc(TF.conv2d(nchw(x), tt(krsc_to_kcrs(w)), tt(b), stride=2, padding=1))
    assert_close(y, ref, "float64")
    y = F.conv2d(T(x), T(w), None, padding=1)
    assert y.shape == (1, 6, 5, 4)


def test_conv2d_exact_small_integers():
    x = np.arange(1 * 4 * 5 * 2, dtype=np.float32).reshape(1, 4, 5, 2) % 7 - 3
    w = np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2) % 5 - 2
    want = to_nhwc(TF.conv2d(nchw(x), tt(krsc_to_kcrs(w))))
    for dev in DEVICES:
        y = F.conv2d(T(x, "float32", dev), T(w, "float32", dev))
        np.testing.assert_array_equal(y.numpy(), want.astype(np.float32))


# ----------------------------------------------------------------------------------------------- pointwise and pooling
@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_relu(device, dtype):
    x = away_from_zero(rng(12).standard_normal((1, 5, 7, 3))).astype(npt(dtype))
    xv = T(x, dtype, device, True)
    y = F.relu(xv)
    check_output(y, dtype, device)
    assert_close(y, np.maximum(x, 0), dtype, "relu")
    gy = rng(13).standard_normal(x.shape)
    y.backward(T(gy, dtype, device))
    assert_close(xv.grad, gy * (x > 0), dtype, "relu grad")


def pool_cases():
    out = []
    for dev, dt in CASES:
        shapes = [(1, 9, 7, 3), (2, 10, 13, 5)] if dev == "cpu" else [(2, 9, 7, 3)]
        for s in shapes:
            for kw in [None, (2, 2), (3, 2), (3, 3), (2, 1)]:
                out.append(pytest.param(dev, dt, s, kw, id=f"{dev}-{dt}-{s}-{kw}"))
    return out


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("device,dtype,shape,ks", pool_cases())
def test_pool_vs_torch(op, device, dtype, shape, ks):
    x = rng(14).standard_normal(shape).astype(npt(dtype))  # continuous: no max ties
    xv = T(x, dtype, device, True)
    f = F.max_pool2d if op == "max" else F.avg_pool2d
    tf = TF.max_pool2d if op == "max" else TF.avg_pool2d
    if ks is None:
        y = f(xv)
        k, s = 2, 2
    else:
        k, s = ks
        y = f(xv, k, s) if k != s else f(xv, kernel_size=k, stride=s)
    check_output(y, dtype, device)
    xt = nchw(x)
    yt = tf(xt, k, s)  # floor mode, no padding
    assert_close(y, to_nhwc(yt), dtype, f"{op}_pool2d forward")
    gy = rng(15).standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2)))
    assert_close(xv.grad, to_nhwc(xt.grad), dtype, f"{op}_pool2d backward")


LRN_PARAMS = [dict(), dict(size=5, alpha=5e-4, beta=0.75, k=2.0), dict(size=3, alpha=0.05, beta=0.6, k=1.5),
              dict(size=4, alpha=0.02, beta=0.75, k=1.0)]


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("params", LRN_PARAMS, ids=lambda p: str(p) or "defaults")
def test_local_response_norm(device, dtype, params):
    shape = (1, 5, 7, 13) if device == "cpu" else (2, 5, 4, 9)
    x = (rng(16).standard_normal(shape) * 10).astype(npt(dtype))  # large enough for alpha to matter
    xv = T(x, dtype, device, True)
    y = F.local_response_norm(xv, **params)
    if not params:
        y2 = F.local_response_norm(xv, 5, 1e-4, 0.75, 1.0)
        assert_close(y2, y.numpy(), dtype, "lrn defaults")
    check_output(y, dtype, device)
    p = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
    p.update(params)
    xt = nchw(x)
    yt = TF.local_response_norm(xt, p["size"], alpha=p["alpha"], beta=p["beta"], k=p["k"])
    assert_close(y, to_nhwc(yt), dtype, "lrn forward")
    gy = rng(17).standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2)))
    assert_close(xv.grad, to_nhwc(xt.grad), dtype, "lrn backward")


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear(device, dtype, has_bias):
    g = rng(18)
    N, I, O = (3, 37, 11) if device == "cpu" else (2, 13, 5)
    x = g.standard_normal((N, I)).astype(npt(dtype))
    w = g.standard_normal((O, I)).astype(npt(dtype))
    b = g.standard_normal(O).astype(npt(dtype))
    xv, wv, bv = T(x, dtype, device, True), T(w, dtype, device, True), T(b, dtype, device, True)
    y = F.linear(xv, wv, bv) if has_bias else F.linear(xv, wv)
    check_output(y, dtype, device)
    xt, wt, bt = tt(x), tt(w), tt(b)
    yt = TF.linear(xt, wt, bt if has_bias else None)
    assert_close(y, yt.detach().numpy(), dtype, "linear forward")
    gy = g.standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy))
    assert_close(xv.grad, xt.grad.numpy(), dtype, "linear dx")
    assert_close(wv.grad, wt.grad.numpy(), dtype, "linear dw")
    if has_bias:
        assert_close(bv.grad, bt.grad.numpy(), dtype, "linear db")
    y = F.linear(x=xv, weight=wv, bias=None)
    assert y.shape == (N, O)


def test_linear_exact_small_integers():
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) % 5) - 2
    w = (np.arange(8, dtype=np.float32).reshape(2, 4) % 3) - 1
    for dev in DEVICES:
        y = F.linear(T(x, "float32", dev), T(w, "float32", dev))
        np.testing.assert_array_equal(y.numpy(), x @ w.T)


# ----------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_dropout(device, dtype):
    shape = (4, 10, 10, 16) if device == "cpu" else (2, 9, 9, 13)
    x = (np.abs(rng(19).standard_normal(shape)) + 0.5).astype(npt(dtype))
    xv = T(x, dtype, device, True)
    # eval: identity
    y = F.dropout(xv, 0.5, False)
    assert_close(y, x, dtype, "dropout eval")
    y = F.dropout(xv, p=0.3, training=False)
    assert_close(y, x, dtype, "dropout eval kw")
    # p = 0 in training: identity
    assert_close(F.dropout(xv, p=0.0), x, dtype, "dropout p=0")
    for p in (0.5, 0.2):
        xv = T(x, dtype, device, True)
        y = F.dropout(xv, p=p, training=True) if p != 0.5 else F.dropout(xv)
        check_output(y, dtype, device)
        yn = y.numpy().astype(np.float64)
        keep = yn != 0
        assert_close(np.where(keep, yn, 0), np.where(keep, x / (1 - p), 0), dtype, "inverted scaling")
        frac = 1 - keep.mean()
        n = keep.size
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3, f"drop rate {frac} for p={p}"
        gy = rng(20).standard_normal(shape)
        y.backward(T(gy, dtype, device))
        assert_close(xv.grad, gy * keep / (1 - p), dtype, "dropout backward")


def test_dropout_masks_differ_between_calls_and_reseed_reproduces():
    x = T(np.ones((1, 8, 8, 16)), "float32")
    vc.manual_seed(123)
    a = F.dropout(x, 0.5).numpy()
    b = F.dropout(x, 0.5).numpy()
    assert not np.array_equal(a, b), "two dropout calls gave the same mask"
    vc.manual_seed(123)
    a2 = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, a2)


@pytest.mark.parametrize("device", SIM)
def test_dropout_same_mask_every_device(device):
    x = np.abs(rng(21).standard_normal((2, 9, 9, 13))).astype(np.float32) + 0.5
    vc.manual_seed(77)
    a = F.dropout(T(x, "float32", "cpu"), 0.5).numpy()
    vc.manual_seed(77)
    b = F.dropout(T(x, "float32", device), 0.5).numpy()
    np.testing.assert_array_equal(a != 0, b != 0)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- softmax / CE
@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4, 5), (1, 1000)])
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax_family(device, dtype, shape, which):
    x = (rng(22).standard_normal(shape) * 3).astype(npt(dtype))
    xv = T(x, dtype, device, True)
    y = getattr(F, which)(xv)
    check_output(y, dtype, device)
    xt = tt(x)
    yt = getattr(TF, which)(xt, dim=-1)
    assert_close(y, yt.detach().numpy(), dtype, which)
    gy = rng(23).standard_normal(shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy))
    assert_close(xv.grad, xt.grad.numpy(), dtype, which + " backward")


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_softmax_stable_for_large_logits(device, dtype):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0], [1e4, 1e4, -1e4]])
    xv = T(x, dtype, device)
    s = F.softmax(xv).numpy()
    ls = F.log_softmax(xv).numpy()
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ls))
    ref_s = torch.softmax(torch.tensor(x), -1).numpy()
    ref_ls = torch.log_softmax(torch.tensor(x), -1).numpy()
    np.testing.assert_allclose(s, ref_s, atol=1e-6)
    np.testing.assert_allclose(ls, ref_ls, rtol=1e-6, atol=1e-5)
    ce = F.cross_entropy(T(x, dtype, device), np.array([0, 0, 2])).item()
    ref = TF.cross_entropy(torch.tensor(x), torch.tensor([0, 0, 2])).item()
    assert math.isfinite(ce) and abs(ce - ref) <= 1e-6 * abs(ref)


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_cross_entropy(device, dtype):
    g = rng(24)
    N, C = (5, 7) if device == "cpu" else (3, 4)
    x = (g.standard_normal((N, C)) * 4).astype(npt(dtype))
    labels = g.integers(0, C, N)
    for target in (labels, labels.tolist(), labels.astype(np.int32)):
        xv = T(x, dtype, device, True)
        loss = F.cross_entropy(xv, target)
        check_output(loss, dtype, device)
        xt = tt(x)
        lt = TF.cross_entropy(xt, torch.tensor(np.asarray(labels, np.int64)))
        assert abs(loss.item() - lt.item()) <= tol(dtype) * max(1.0, abs(lt.item()))
        loss.backward()
        lt.backward()
        assert_close(xv.grad, xt.grad.numpy(), dtype, "cross_entropy backward")
    loss = F.cross_entropy(logits=T(x, dtype, device), target=labels)
    assert loss.item() > 0


# ----------------------------------------------------------------------------------------------- nn.Module
def build_pair():
    m = vc.nn.Sequential(
        vc.nn.Conv2d(3, 4, 3, padding=1),
        vc.nn.ReLU(),
        vc.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0),
        vc.nn.MaxPool2d(2, 2),
        vc.nn.Conv2d(4, 6, 3, stride=1, padding=1, bias=True),
        vc.nn.ReLU(),
        vc.nn.AvgPool2d(2, 2),
        vc.nn.Flatten(),
        vc.nn.Linear(2 * 2 * 6, 5),
        vc.nn.Dropout(0.5),
    )
    return m


class TorchRef(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1).double()
        self.c2 = torch.nn.Conv2d(4, 6, 3, padding=1).double()
        self.fc = torch.nn.Linear(24, 5).double()

    def forward(self, x):  # x NCHW
        x = TF.local_response_norm(torch.relu(self.c1(x)), 5, alpha=1e-2, beta=0.75, k=2.0)
        x = TF.max_pool2d(x, 2, 2)
        x = TF.avg_pool2d(torch.relu(self.c2(x)), 2, 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten order, as the contract says
        return self.fc(x)


def test_module_api_and_network_vs_torch():
    m = build_pair()
    named = list(m.named_parameters())
    params = list(m.parameters())
    assert len(named) == len(params) == 6
    shapes = [tuple(p.shape) for p in params]
    assert shapes == [(4, 3, 3, 3), (4,), (6, 3, 3, 4), (6,), (5, 24), (5,)]
    assert all(p.requires_grad for p in params)
    sd = m.state_dict()
    assert set(sd.keys()) == {n for n, _ in named}
    # copy vc's initialised weights into torch
    ref = TorchRef()
    pv = [p.numpy().astype(np.float64) for p in params]
    with torch.no_grad():
        ref.c1.weight.copy_(torch.tensor(krsc_to_kcrs(pv[0])))
        ref.c1.bias.copy_(torch.tensor(pv[1]))
        ref.c2.weight.copy_(torch.tensor(krsc_to_kcrs(pv[2])))
        ref.c2.bias.copy_(torch.tensor(pv[3]))
        ref.fc.weight.copy_(torch.tensor(pv[4]))
        ref.fc.bias.copy_(torch.tensor(pv[5]))
    x = rng(30).standard_normal((2, 9, 9, 3))
    dtype = params[0].dtype
    m.eval()
    y = m(T(x, dtype))
    assert y.shape == (2, 5)
    xt = nchw(x)
    yt = ref(xt)
    assert_close(y, yt.detach().numpy(), "float32", "sequential forward")
    labels = np.array([1, 3])
    loss = F.cross_entropy(y, labels)
    loss.backward()
    TF.cross_entropy(yt, torch.tensor(labels)).backward()
    tgrads = [ref.c1.weight.grad.numpy().transpose(0, 2, 3, 1), ref.c1.bias.grad.numpy(),
              ref.c2.weight.grad.numpy().transpose(0, 2, 3, 1), ref.c2.bias.grad.numpy(),
              ref.fc.weight.grad.numpy(), ref.fc.bias.grad.numpy()]
    for p, gt, (n, _) in zip(params, tgrads, named):
        assert p.grad is not None, f"no grad for {n}"
        assert_close(p.grad, gt, "float32", f"grad {n}")
    # train(): dropout active; eval(): identity
    m.train()
    outs = [m(T(x, dtype)).numpy() for _ in range(3)]
    assert any((o == 0).any() for o in outs) or not np.allclose(outs[0], outs[1])
    m.eval()
    np.testing.assert_allclose(m(T(x, dtype)).numpy(), y.numpy(), rtol=1e-6)


def test_state_dict_round_trip():
    m1, m2 = build_pair(), build_pair()
    m1.eval(), m2.eval()
    x = T(rng(31).standard_normal((1, 9, 9, 3)), "float32")
    assert not np.allclose(m1(x).numpy(), m2(x).numpy())
    sd = m1.state_dict()
    m2.load_state_dict(sd)
    np.testing.assert_array_equal(m1(x).numpy(), m2(x).numpy())
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    # load must copy, not alias: changing m1 afterwards leaves m2 alone
    before = m2(x).numpy()
    sd2 = {k: to_np(v) * 2 for k, v in m1.state_dict().items()}
    m1.load_state_dict(sd2)
    np.testing.assert_array_equal(m2(x).numpy(), before)


@pytest.mark.parametrize("device", SIM)
def test_module_to_device(device):
    m = vc.nn.Sequential(vc.nn.Conv2d(3, 4, 3, padding=1), vc.nn.ReLU(), vc.nn.MaxPool2d(2, 2),
                         vc.nn.Flatten(), vc.nn.Linear(4 * 4 * 4, 3))
    m.eval()
    x = rng(32).standard_normal((1, 9, 9, 3)).astype(np.float32)
    y_cpu = m(vc.tensor(x)).numpy()
    r = m.to(device)
    mm = r if r is not None else m
    assert all(p.device == device for p in mm.parameters())
    y = mm(vc.tensor(x, device=device))
    assert y.device == device
    assert_close(y, y_cpu, "float32", "module on " + device)


def test_flatten_nhwc_order_and_module_layers():
    x = rng(33).standard_normal((2, 3, 5, 4))
    y = vc.nn.Flatten()(T(x))
    np.testing.assert_array_equal(y.numpy(), x.reshape(2, -1))  # (H, W, C) order
    for mod, fn in [(vc.nn.ReLU(), lambda a: F.relu(a)),
                    (vc.nn.MaxPool2d(2, 2), lambda a: F.max_pool2d(a)),
                    (vc.nn.AvgPool2d(3, 2), lambda a: F.avg_pool2d(a, 3, 2)),
                    (vc.nn.LocalResponseNorm(3, 0.1, 0.5, 2.0), lambda a: F.local_response_norm(a, 3, 0.1, 0.5, 2.0))]:
        np.testing.assert_allclose(mod(T(x)).numpy(), fn(T(x)).numpy())
    d = vc.nn.Dropout(0.5)
    d.eval()
    np.testing.assert_array_equal(d(T(x)).numpy(), x)


# ----------------------------------------------------------------------------------------------- SGD
SGD_CFGS = [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=5e-4), dict(weight_decay=0.01),
            dict(momentum=0.8, nesterov=True), dict(momentum=0.9, weight_decay=1e-3, nesterov=True)]


def _sgd_problem():
    g = rng(40)
    x = g.standard_normal((6, 8))
    y = g.integers(0, 4, 6)
    w0 = g.standard_normal((4, 8)) * 0.3
    b0 = g.standard_normal(4) * 0.1
    return x, y, w0, b0


@pytest.mark.parametrize("cfg", SGD_CFGS, ids=str)
def test_sgd_matches_torch(cfg):
    x, y, w0, b0 = _sgd_problem()
    w, b = T(w0, requires_grad=True), T(b0, requires_grad=True)
    opt = vc.optim.SGD([w, b], 0.1, **cfg)
    wt, bt = tt(w0), tt(b0)
    topt = torch.optim.SGD([wt, bt], lr=0.1, **cfg)
    for step in range(6):
        if step == 3:
            opt.lr = 0.03
            for gr in topt.param_groups:
                gr["lr"] = 0.03
            assert opt.lr == 0.03
        opt.zero_grad()
        F.cross_entropy(F.linear(T(x), w, b), y).backward()
        opt.step()
        topt.zero_grad()
        TF.cross_entropy(TF.linear(torch.tensor(x), wt, bt), torch.tensor(y)).backward()
        topt.step()
        np.testing.assert_allclose(w.numpy(), wt.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
        np.testing.assert_allclose(b.numpy(), bt.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=f"step {step}")


def test_sgd_state_dict_round_trip():
    x, y, w0, b0 = _sgd_problem()

    def run(split):
        w, b = T(w0, requires_grad=True), T(b0, requires_grad=True)
        opt = vc.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=False)
        for step in range(5):
            if step == split:
                sd = opt.state_dict()
                opt = vc.optim.SGD([w, b], lr=0.5, momentum=0.9, weight_decay=1e-3)
                opt.load_state_dict(sd)
                assert opt.lr == 0.1
            opt.zero_grad()
            F.cross_entropy(F.linear(T(x), w, b), y).backward()
            opt.step()
        return w.numpy(), b.numpy()

    a, b = run(None), run(2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sgd_with_module_parameters():
    m = vc.nn.Linear(8, 4)
    opt = vc.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y, _, _ = _sgd_problem()
    before = [p.numpy().copy() for p in m.parameters()]
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(m(T(x, "float32")), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(a, p.numpy()) for a, p in zip(before, m.parameters()))
    opt.zero_grad()
    assert all(p.grad is None or not np.any(p.grad.numpy()) for p in m.parameters())


# ----------------------------------------------------------------------------------------------- models
PAPER_COUNTS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
                "D": 138_357_544, "E": 143_667_240}
ALIASES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_1x1": "C", "vgg16": "D", "vgg19": "E"}
# Table 1: (out channels, kernel) per conv, "M" for max-pool
_B = [(64, 3), (64, 3), "M", (128, 3), (128, 3), "M"]
TABLE1 = {
    "A": [(64, 3), "M", (128, 3), "M", (256, 3), (256, 3), "M", (512, 3), (512, 3), "M", (512, 3), (512, 3), "M"],
    "B": _B + [(256, 3), (256, 3), "M", (512, 3), (512, 3), "M", (512, 3), (512, 3), "M"],
    "C": _B + [(256, 3), (256, 3), (256, 1), "M", (512, 3), (512, 3), (512, 1), "M",
               (512, 3), (512, 3), (512, 1), "M"],
    "D": _B + [(256, 3)] * 3 + ["M"] + [(512, 3)] * 3 + ["M"] + [(512, 3)] * 3 + ["M"],
    "E": _B + [(256, 3)] * 4 + ["M"] + [(512, 3)] * 4 + ["M"] + [(512, 3)] * 4 + ["M"],
}
TABLE1["A-LRN"] = TABLE1["A"]


def expected_count(config, num_classes=1000, width=1.0, fc_width=4096, input_size=224):
    c, n = 3, 0
    for item in TABLE1[config]:
        if item == "M":
            continue
        k, r = item
        k = int(round(k * width))
        n += r * r * c * k + k
        c = k
    s = input_size // 32
    n += s * s * c * fc_width + fc_width + fc_width * fc_width + fc_width + fc_width * num_classes + num_classes
    return n


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def test_expected_count_formula_matches_paper():
    for cfg, n in PAPER_COUNTS.items():
        assert expected_count(cfg) == n


SMALL = dict(num_classes=10, width=1 / 16, fc_width=16, input_size=32)


@pytest.mark.parametrize("config", list(PAPER_COUNTS) + list(ALIASES))
def test_vgg_every_config_small(config):
    base = ALIASES.get(config, config)
    m = vc.models.vgg(config, **SMALL)
    assert n_params(m) == expected_count(base, **SMALL)
    names = [n for n, _ in m.named_parameters()]
    parts = {p for n in names for p in n.split(".")}
    for layer in ("conv1_1", "fc6", "fc7", "fc8"):
        assert layer in parts, f"{layer} not among {names}"
    m.eval()
    x = vc.tensor(rng(50).standard_normal((2, 32, 32, 3)).astype(np.float32))
    y = m(x)
    assert y.shape == (2, 10)
    assert np.all(np.isfinite(y.numpy()))
    # positional signature: vgg(config, num_classes, width, fc_width, input_size, dropout, init)
    m2 = vc.models.vgg(config, 7, 1 / 16, 8, 32, 0.0, "glorot")
    assert n_params(m2) == expected_count(base, 7, 1 / 16, 8, 32)


@pytest.mark.parametrize("config", list(PAPER_COUNTS))
def test_vgg_paper_counts_without_allocating(config):
    count = getattr(vc.models, "count_params", None)
    if count is None:
        pytest.skip("no allocation-free counter; covered by test_vgg_a_full_size")
    assert count(config) == PAPER_COUNTS[config]
    for alias, base in ALIASES.items():
        if base == config:
            assert count(alias) == PAPER_COUNTS[config]


def test_vgg_a_full_size():
    m = vc.models.vgg("A")
    assert n_params(m) == PAPER_COUNTS["A"]
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    conv11 = [s for n, s in shapes.items() if "conv1_1" in n and len(s) == 4]
    assert conv11 == [(64, 3, 3, 3)]  # (K, R, S, C)
    fc6 = [s for n, s in shapes.items() if "fc6" in n and len(s) == 2]
    assert fc6 == [(4096, 7 * 7 * 512)]  # (out, in)
    del m


def test_vgg_options_and_init():
    m = vc.models.vgg("A", num_classes=10, width=1 / 16, fc_width=16, input_size=64, dropout=0.0, init="normal")
    assert n_params(m) == expected_count("A", 10, 1 / 16, 16, 64)
    conv_w = [p.numpy() for n, p in m.named_parameters() if len(p.shape) == 4]
    allw = np.concatenate([w.ravel() for w in conv_w])
    assert abs(allw.std() - 0.01) < 0.002  # normal(0, 0.01)
    m.eval()
    y = m(vc.tensor(np.zeros((1, 64, 64, 3), np.float32)))
    assert y.shape == (1, 10)
    with pytest.raises((ValueError, TypeError)):
        vc.models.vgg("F")
    with pytest.raises((ValueError, TypeError)):
        vc.models.vgg("A", init="bogus")


def _by_layer(model):
    out = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        for q in parts:
            if q.startswith("conv") or q.startswith("fc"):
                out.setdefault(q, []).append(p.numpy().copy())
                break
    return out


def test_init_from():
    a = vc.models.vgg("A", **SMALL)
    d = vc.models.vgg("D", **SMALL)
    before = _by_layer(d)
    r = vc.models.init_from(d, a)
    d2 = r if r is not None else d
    la, ld = _by_layer(a), _by_layer(d2)
    copied = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
    for layer in copied:
        assert layer in la and layer in ld, layer
        for pa, pd in zip(la[layer], ld[layer]):
            np.testing.assert_array_equal(pa, pd, err_msg=layer)
    for layer in ("conv1_2", "conv3_3", "conv5_3"):
        for p0, p1 in zip(before[layer], ld[layer]):
            np.testing.assert_array_equal(p0, p1, err_msg=f"{layer} should be untouched")


@pytest.mark.parametrize("config", ["A", "A-LRN", "C"])
def test_to_fully_convolutional_same_scores(config):
    m = vc.models.vgg(config, **SMALL)
    m.eval()
    x = vc.tensor(rng(51).standard_normal((2, 32, 32, 3)).astype(np.float32))
    y = m(x).numpy()
    r = m.to_fully_convolutional()
    fc = r if r is not None else m
    fc.eval()
    yf = fc(x).numpy()
    assert yf.size == y.size, f"fully convolutional output shape {yf.shape} vs {y.shape}"
    assert_close(yf.reshape(y.shape), y, "float32", "fully convolutional scores")
    # a larger image gives a spatial map (or its average), still finite
    y2 = fc(vc.tensor(rng(52).standard_normal((1, 64, 48, 3)).astype(np.float32))).numpy()
    assert np.all(np.isfinite(y2)) and y2.shape[-1] == 10


# ----------------------------------------------------------------------------------------------- train / evaluate
CLASSES = ["circle", "square", "stripes"]


def _make_image(cls, i, g):
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in g.integers(0, 80, 3))
    img = Image.new("RGB", (40, 40), bg)
    dr = ImageDraw.Draw(img)
    col = [(230, 40, 40), (40, 230, 40), (40, 40, 230)][CLASSES.index(cls)]
    o = int(g.integers(0, 6))
    if cls == "circle":
        dr.ellipse([6 + o, 6 + o, 30 + o, 30 + o], fill=col)
    elif cls == "square":
        dr.rectangle([5 + o, 5 + o, 28 + o, 28 + o], fill=col)
    else:
        for y in range(0, 40, 8):
            dr.rectangle([0, y + o % 4, 39, y + o % 4 + 3], fill=col)
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    g = rng(60)
    for split, n in (("train", 10), ("val", 4)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                _make_image(cls, i, g).save(d / f"{i}.png")
    return root


TRAIN_KW = dict(config="A", batch_size=4, scale=(32, 40), crop=32, width=1 / 16, fc_width=16, device="cpu", seed=0)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck_full")
    res = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(ck), **TRAIN_KW)
    return res, ck


def test_train_result_and_history(trained):
    res, ck = trained
    assert res.model is not None
    h = res.history
    assert isinstance(h, list) and len(h) == 2
    for e in h:
        for key in ("epoch", "lr", "train_loss", "val_top1_err", "val_top5_err", "images_per_s"):
            assert key in e, f"history lacks {key}: {e}"
        assert math.isfinite(e["train_loss"]) and e["train_loss"] > 0
        assert 0.0 <= e["val_top1_err"] <= 1.0 and 0.0 <= e["val_top5_err"] <= e["val_top1_err"]
        assert e["images_per_s"] > 0
        assert e["lr"] > 0
    assert h[0]["epoch"] < h[1]["epoch"]
    assert h[0]["lr"] == pytest.approx(1e-2)
    assert h[-1]["val_top5_err"] == 0.0  # 3 classes: top-5 always right
    assert any(ck.iterdir()), "no checkpoint written"
    # the model is a usable module with 3 classes
    res.model.eval()
    y = res.model(vc.tensor(np.zeros((1, 32, 32, 3), np.float32)))
    assert y.shape == (1, 3)


def test_train_resume_reproduces(folder, trained, tmp_path):
    res_full, _ = trained
    ck = tmp_path / "ck"
    r1 = vc.train(data=str(folder), epochs=1, checkpoint_dir=str(ck), **TRAIN_KW)
    assert len(r1.history) == 1
    assert r1.history[0]["train_loss"] == pytest.approx(res_full.history[0]["train_loss"], rel=1e-6)
    r2 = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(ck), resume=True, **TRAIN_KW)
    assert len(r2.history) == 2
    for a, b in zip(r2.history, res_full.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_top1_err"] == pytest.approx(b["val_top1_err"])


def test_evaluate(folder, trained):
    res, _ = trained
    val = str(folder / "val")
    r = vc.evaluate(res.model, data=val, crop=32, scale=32, dense=False)
    assert set(("top1_err", "top5_err", "n")) <= set(r)
    assert r["n"] == 12
    assert 0 <= r["top1_err"] <= 1 and r["top5_err"] == 0.0
    # dense evaluation of a crop-sized image equals single-crop evaluation
    rd = vc.evaluate(res.model, val, crop=32, scale=32, dense=True)
    assert rd["n"] == 12 and rd["top1_err"] == pytest.approx(r["top1_err"])
    rf = vc.evaluate(res.model, val, crop=32, scale=40, dense=True, flip=True)
    assert rf["n"] == 12 and 0 <= rf["top1_err"] <= 1
    rm = vc.evaluate(res.model, val, crop=32, scale=[32, 40], dense=False, flip=False)
    assert rm["n"] == 12 and 0 <= rm["top1_err"] <= 1
    rc = vc.evaluate(res.model, val, crop=32, scale=36, device="cpu")
    assert rc["n"] == 12


def test_model_left_usable_after_evaluate_dense(folder, trained):
    res, _ = trained
    m = res.model
    vc.evaluate(m, str(folder / "val"), crop=32, scale=40, dense=True)
    m.eval()
    y = m(vc.tensor(np.zeros((2, 32, 32, 3), np.float32)))
    assert y.shape == (2, 3)


# ----------------------------------------------------------------------------------------------- errors
def _raises(fn, opname=None):
    with pytest.raises((ValueError, TypeError)) as ei:
        fn()
    if opname:
        assert opname in str(ei.value).lower(), f"message does not name {opname!r}: {ei.value}"
    return ei.value


def x4(shape=(1, 5, 5, 3), dtype="float32", device="cpu"):
    return T(rng(70).standard_normal(shape), dtype, device)


def test_errors_conv2d():
    x, w = x4(), x4((4, 3, 3, 3))
    _raises(lambda: F.conv2d(x4((5, 5, 3)), w), "conv2d")  # wrong rank
    _raises(lambda: F.conv2d(x, x4((4, 3, 3, 2))), "conv2d")  # channel mismatch
    _raises(lambda: F.conv2d(x, w, padding=-1), "conv2d")
    _raises(lambda: F.conv2d(x, w, stride=0), "conv2d")
    _raises(lambda: F.conv2d(x, x4((4, 7, 7, 3))), "conv2d")  # kernel larger than padded input
    _raises(lambda: F.conv2d(x, w, T(np.zeros(5), "float32")), "conv2d")  # bias length
    _raises(lambda: F.conv2d(x, x4((4, 3, 3, 3), "float64")), "conv2d")  # mixed dtypes
    if SIM:
        _raises(lambda: F.conv2d(x, x4((4, 3, 3, 3), device=SIM[0])), "conv2d")  # mixed devices
    _raises(lambda: F.conv2d("abc", w), "conv2d")


ERR_CASES = {
    "max_pool2d-rank": (lambda: F.max_pool2d(x4((5, 5, 3))), "max_pool2d"),
    "max_pool2d-k0": (lambda: F.max_pool2d(x4(), 0, 1), "max_pool2d"),
    "max_pool2d-s0": (lambda: F.max_pool2d(x4(), 2, 0), "max_pool2d"),
    "max_pool2d-k>input": (lambda: F.max_pool2d(x4(), 7, 1), "max_pool2d"),
    "avg_pool2d-rank": (lambda: F.avg_pool2d(x4((5, 5, 3))), "avg_pool2d"),
    "avg_pool2d-k0": (lambda: F.avg_pool2d(x4(), 0, 1), "avg_pool2d"),
    "avg_pool2d-k>input": (lambda: F.avg_pool2d(x4(), 6, 2), "avg_pool2d"),
    "lrn-size0": (lambda: F.local_response_norm(x4(), size=0), "local_response_norm"),
    "lrn-notensor": (lambda: F.local_response_norm(np.ones((1, 3, 3, 2))), "local_response_norm"),
    "linear-features": (lambda: F.linear(x4((2, 4)), x4((3, 5))), "linear"),
    "linear-bias": (lambda: F.linear(x4((2, 4)), x4((3, 4)), x4((2,))), "linear"),
    "linear-dtype": (lambda: F.linear(x4((2, 4)), x4((3, 4), "float64")), "linear"),
    "linear-rank-weight": (lambda: F.linear(x4((2, 4)), x4((3, 4, 1))), "linear"),
    "dropout-p>1": (lambda: F.dropout(x4(), p=1.5), "dropout"),
    "dropout-p<0": (lambda: F.dropout(x4(), p=-0.1), "dropout"),
    "relu-notensor": (lambda: F.relu("abc"), "relu"),
    "softmax-notensor": (lambda: F.softmax([1.0, 2.0]), "softmax"),
    "log_softmax-notensor": (lambda: F.log_softmax(None), "log_softmax"),
}


@pytest.mark.parametrize("case", list(ERR_CASES))
def test_errors_ops(case):
    fn, op = ERR_CASES[case]
    _raises(fn, op)


def test_errors_cross_entropy_labels():
    logits = x4((3, 4))
    _raises(lambda: F.cross_entropy(logits, np.array([0, 1, 4])), "cross_entropy")  # out of range
    _raises(lambda: F.cross_entropy(logits, np.array([0, -1, 2])), "cross_entropy")  # negative
    _raises(lambda: F.cross_entropy(logits, np.array([0, 1])), "cross_entropy")  # count mismatch
    _raises(lambda: F.cross_entropy(logits, np.array([0.5, 1.0, 2.0])), "cross_entropy")  # non-integer
    _raises(lambda: F.cross_entropy(x4((3,)), np.array([0, 1, 2])), "cross_entropy")  # wrong rank


def test_errors_tensor_and_devices():
    _raises(lambda: vc.tensor("abc"))
    _raises(lambda: vc.tensor(np.ones(3), device="tpu"))
    _raises(lambda: vc.tensor(np.ones(3), dtype="int32"))
    _raises(lambda: vc.tensor([[1.0, 2.0], [3.0]]))
    if not vc.cuda_available():
        _raises(lambda: vc.tensor(np.ones(3), device="cuda:0"))
    _raises(lambda: vc.tensor(np.ones(3)).to("nowhere"))
    _raises(lambda: vc.tensor(np.ones((2, 3))).reshape(4, 2))
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        vc.tensor(np.ones(3)).item()
    _raises(lambda: vc.optim.SGD([T(np.ones(2), requires_grad=True)], lr=-1.0))
    _raises(lambda: vc.optim.SGD([T(np.ones(2), requires_grad=True)], lr=0.1, nesterov=True))  # needs momentum


@pytest.mark.parametrize("device", SIM)
def test_errors_float64_on_sim(device):
    """sim runs float32 only: a float64 tensor there (or an op on it) must raise, not crash or silently work."""
    try:
        t = vc.tensor(np.ones((1, 3, 3, 2)), dtype="float64", device=device)
    except (ValueError, TypeError):
        return
    _raises(lambda: F.relu(t))


def test_process_alive_after_errors():
    y = F.relu(T(np.array([-1.0, 2.0])))
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0])


# ----------------------------------------------------------------------------------------------- more probes
@pytest.mark.parametrize("device", SIM)
def test_sim_conv_odd_channels_and_backward_on_device(device):
    g = rng(80)
    x = g.standard_normal((1, 5, 6, 5)).astype(np.float32)
    w = (g.standard_normal((17, 3, 3, 5)) / 6).astype(np.float32)
    b = g.standard_normal(17).astype(np.float32)
    xv, wv, bv = (vc.tensor(a, device=device, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xv, wv, bv, 2, 1)
    xt, wt, bt = nchw(x), tt(krsc_to_kcrs(w)), tt(b)
    yt = TF.conv2d(xt, wt, bt, stride=2, padding=1)
    assert_close(y, to_nhwc(yt), "float32", "sim conv")
    loss = F.cross_entropy(y.reshape(y.shape[0] * y.shape[1] * y.shape[2], 17), np.arange(9) % 17)
    assert loss.device == device
    loss.backward()
    lt = TF.cross_entropy(yt.permute(0, 2, 3, 1).reshape(-1, 17), torch.tensor(np.arange(9) % 17))
    lt.backward()
    assert xv.grad.device == device and wv.grad.device == device
    assert_close(xv.grad, to_nhwc(xt.grad), "float32", "sim dx")
    assert_close(wv.grad, wt.grad.numpy().transpose(0, 2, 3, 1), "float32", "sim dw")
    assert_close(bv.grad, bt.grad.numpy(), "float32", "sim db")


def test_dropout_p_one_gives_zeros_not_nan():
    x = x4()
    try:
        y = F.dropout(x, p=1.0)
    except (ValueError, TypeError):
        return
    assert np.all(y.numpy() == 0)


def test_train_deterministic_for_seed(folder, trained, tmp_path):
    res_full, _ = trained
    r = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(tmp_path / "again"), **TRAIN_KW)
    assert [e["train_loss"] for e in r.history] == [e["train_loss"] for e in res_full.history]


def test_train_fixed_scale_and_no_checkpoint_dir(folder):
    kw = dict(TRAIN_KW, scale=36)
    r = vc.train(data=str(folder), epochs=1, **kw)
    assert len(r.history) == 1 and math.isfinite(r.history[0]["train_loss"])


def test_train_init_from_model(folder, trained):
    res_a, _ = trained
    kw = dict(TRAIN_KW, config="B")
    r = vc.train(data=str(folder), epochs=1, init_from=res_a.model, **kw)
    la, lb = _by_layer(res_a.model), _by_layer(r.model)
    assert "conv1_1" in lb and "fc8" in lb and len(r.history) == 1


@pytest.mark.parametrize("broken", ["missing", "empty", "class_without_images", "val_classes_differ"])
def test_train_bad_data_folder(folder, tmp_path, broken):
    import shutil

    root = tmp_path / "d"
    if broken != "missing":
        shutil.copytree(folder, root)
    if broken == "empty":
        shutil.rmtree(root)
        root.mkdir()
    elif broken == "class_without_images":
        for f in (root / "train" / "circle").iterdir():
            f.unlink()
    elif broken == "val_classes_differ":
        (root / "val" / "square").rename(root / "val" / "triangle")
    with pytest.raises((ValueError, TypeError, FileNotFoundError, OSError)) as ei:
        vc.train(data=str(root), epochs=1, **TRAIN_KW)
    assert str(ei.value)


def test_evaluate_default_preprocessing_and_missing_folder(folder, trained):
    res, _ = trained
    r = vc.evaluate(res.model, str(folder / "val"))  # the model carries crop/scale/mean
    assert r["n"] == 12
    with pytest.raises((ValueError, TypeError, FileNotFoundError, OSError)):
        vc.evaluate(res.model, str(folder / "nope"))


def test_checkpoint_reload_evaluates_the_same(folder, trained):
    res, ck = trained
    load = getattr(vc.models, "load", None)
    if load is None:
        pytest.skip("no documented loader")
    files = sorted(p for p in ck.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    assert files, f"no .safetensors checkpoint in {list(ck.rglob('*'))}"
    last = [f for f in files if "last" in f.name] or files
    m = load(str(last[0]))
    val = str(folder / "val")
    a = vc.evaluate(res.model, val, crop=32, scale=32)
    b = vc.evaluate(m, val, crop=32, scale=32)
    assert a == b


def _torch_vgg_forward(config, model, x_nhwc, lrn=None):
    """Paper VGG in PyTorch (NCHW) with `model`'s weights; returns float64 scores."""
    params = [(n, p.numpy().astype(np.float64)) for n, p in model.named_parameters()]
    convs = [p for n, p in params if p.ndim == 4]
    biases = {n.rsplit(".", 1)[0]: p for n, p in params if p.ndim == 1}
    conv_names = [n.rsplit(".", 1)[0] for n, p in params if p.ndim == 4]
    fcs = [(n.rsplit(".", 1)[0], p) for n, p in params if p.ndim == 2]
    h = torch.tensor(x_nhwc.astype(np.float64)).permute(0, 3, 1, 2)
    i = 0
    for item in TABLE1[config]:
        if item == "M":
            h = TF.max_pool2d(h, 2, 2)
            continue
        w = convs[i]
        h = torch.relu(TF.conv2d(h, torch.tensor(krsc_to_kcrs(w)), torch.tensor(biases[conv_names[i]]),
                                 padding=w.shape[1] // 2))
        if i == 0 and lrn:
            h = TF.local_response_norm(h, **lrn)
        i += 1
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    for j, (name, w) in enumerate(fcs):
        h = TF.linear(h, torch.tensor(w), torch.tensor(biases[name]))
        if j < 2:
            h = torch.relu(h)
    return h.numpy()


def test_vgg_d_full_size_224_vs_torch():
    m = vc.models.vgg("D")
    assert n_params(m) == PAPER_COUNTS["D"]
    m.eval()
    x = rng(90).standard_normal((1, 224, 224, 3)).astype(np.float32)
    y = m(vc.tensor(x)).numpy()
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))
    ref = _torch_vgg_forward("D", m, x)
    assert_close(y, ref, "float32", "VGG-D forward at 224")
    del m


@pytest.mark.parametrize("config", ["A-LRN", "C", "E"])
def test_vgg_small_vs_torch(config):
    m = vc.models.vgg(config, num_classes=10, width=1 / 8, fc_width=32, input_size=64)
    m.eval()
    x = (rng(91).standard_normal((2, 64, 64, 3)) * 50).astype(np.float32)
    y = m(vc.tensor(x)).numpy()
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0) if config == "A-LRN" else None
    ref = _torch_vgg_forward(config, m, x, lrn)
    assert_close(y, ref, "float32", f"VGG-{config} forward")


def test_vgg_e_full_size_224_finite():
    m = vc.models.vgg("vgg19")
    assert n_params(m) == PAPER_COUNTS["E"]
    m.eval()
    y = m(vc.tensor(rng(92).standard_normal((2, 224, 224, 3)).astype(np.float32))).numpy()
    assert y.shape == (2, 1000) and np.all(np.isfinite(y))
    del m


def test_to_fully_convolutional_at_224_same_scores():
    m = vc.models.vgg("A", num_classes=10, width=1 / 16, fc_width=16, input_size=224)
    m.eval()
    x = vc.tensor(rng(93).standard_normal((1, 224, 224, 3)).astype(np.float32))
    y = m(x).numpy()
    r = m.to_fully_convolutional()
    fc = r if r is not None else m
    fc.eval()
    shapes = {n: tuple(p.shape) for n, p in fc.named_parameters()}
    fc6 = [s for n, s in shapes.items() if "fc6" in n and len(s) == 4]
    fc7 = [s for n, s in shapes.items() if "fc7" in n and len(s) == 4]
    assert fc6 == [(16, 7, 7, 32)] and fc7 == [(16, 1, 1, 16)], shapes
    yf = fc(x).numpy()
    assert_close(yf.reshape(y.shape), y, "float32", "fully conv at 224")
    if r is not None and r is not m:  # the original stays usable
        assert_close(m(x).numpy(), y, "float32", "original after conversion")
