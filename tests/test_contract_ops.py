"""Contract tests (DESIGN.md section 2): the functional ops (conv2d, relu, pooling, local_response_norm, linear, dropout, softmax family, cross_entropy). Helpers and the PyTorch oracle: contract_helpers.py."""
import math

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

import reference
from contract_helpers import *  # noqa: F401,F403


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


@needs_torch
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
    assert_close(y, to_nhwc(yt), TOL[dtype], "conv2d forward")
    gy = g.standard_normal(y.shape).astype(npt(dtype))
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2).astype(np.float64)))
    assert_close(xv.grad, to_nhwc(xt.grad), TOL[dtype], "conv2d dx")
    assert_close(wv.grad, wt.grad.numpy().transpose(0, 2, 3, 1), TOL[dtype], "conv2d dw")
    if has_bias:
        assert_close(bv.grad, bt.grad.numpy(), TOL[dtype], "conv2d db")
    assert xv.grad.shape == xv.shape and wv.grad.shape == wv.shape


def test_conv2d_defaults_and_keywords():
    g = rng(11)
    x = g.standard_normal((1, 6, 5, 3))
    w = g.standard_normal((4, 3, 3, 3))
    b = g.standard_normal(4)
    ref = reference.conv2d(x, w)
    y = F.conv2d(T(x), T(w))  # bias=None, stride=1, padding=0
    assert y.shape == (1, 4, 3, 4)
    assert_close(y, ref, TOL["float64"])
    y = F.conv2d(x=T(x), weight=T(w), bias=T(b), stride=2, padding=1)
    ref = reference.conv2d(x, w, b, stride=2, padding=1)
    assert_close(y, ref, TOL["float64"])
    y = F.conv2d(T(x), T(w), None, padding=1)
    assert y.shape == (1, 6, 5, 4)


def test_conv2d_exact_small_integers():
    x = np.arange(1 * 4 * 5 * 2, dtype=np.float32).reshape(1, 4, 5, 2) % 7 - 3
    w = np.arange(3 * 2 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 2) % 5 - 2
    want = reference.conv2d(x, w)  # integer sums: exact in float64, so any correct oracle gives these values
    for dev in DEVICES:
        y = F.conv2d(T(x, "float32", dev), T(w, "float32", dev))
        np.testing.assert_array_equal(y.numpy(), want.astype(np.float32))


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_relu(device, dtype):
    x = away_from_zero(rng(12).standard_normal((1, 5, 7, 3))).astype(npt(dtype))
    xv = T(x, dtype, device, True)
    y = F.relu(xv)
    check_output(y, dtype, device)
    assert_close(y, np.maximum(x, 0), TOL[dtype], "relu")
    gy = rng(13).standard_normal(x.shape)
    y.backward(T(gy, dtype, device))
    assert_close(xv.grad, gy * (x > 0), TOL[dtype], "relu grad")


def pool_cases():
    out = []
    for dev, dt in CASES:
        shapes = [(1, 9, 7, 3), (2, 10, 13, 5)] if dev == "cpu" else [(2, 9, 7, 3)]
        for s in shapes:
            for kw in [None, (2, 2), (3, 2), (3, 3), (2, 1)]:
                out.append(pytest.param(dev, dt, s, kw, id=f"{dev}-{dt}-{s}-{kw}"))
    return out


@needs_torch
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
    assert_close(y, to_nhwc(yt), TOL[dtype], f"{op}_pool2d forward")
    gy = rng(15).standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2)))
    assert_close(xv.grad, to_nhwc(xt.grad), TOL[dtype], f"{op}_pool2d backward")


LRN_PARAMS = [dict(), dict(size=5, alpha=5e-4, beta=0.75, k=2.0), dict(size=3, alpha=0.05, beta=0.6, k=1.5),
              dict(size=4, alpha=0.02, beta=0.75, k=1.0)]


@needs_torch
@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("params", LRN_PARAMS, ids=lambda p: str(p) or "defaults")
def test_local_response_norm(device, dtype, params):
    shape = (1, 5, 7, 13) if device == "cpu" else (2, 5, 4, 9)
    x = (rng(16).standard_normal(shape) * 10).astype(npt(dtype))  # large enough for alpha to matter
    xv = T(x, dtype, device, True)
    y = F.local_response_norm(xv, **params)
    if not params:
        y2 = F.local_response_norm(xv, 5, 1e-4, 0.75, 1.0)
        assert_close(y2, y.numpy(), TOL[dtype], "lrn defaults")
    check_output(y, dtype, device)
    p = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
    p.update(params)
    xt = nchw(x)
    yt = TF.local_response_norm(xt, p["size"], alpha=p["alpha"], beta=p["beta"], k=p["k"])
    assert_close(y, to_nhwc(yt), TOL[dtype], "lrn forward")
    gy = rng(17).standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy.transpose(0, 3, 1, 2)))
    assert_close(xv.grad, to_nhwc(xt.grad), TOL[dtype], "lrn backward")


@needs_torch
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
    assert_close(y, yt.detach().numpy(), TOL[dtype], "linear forward")
    gy = g.standard_normal(y.shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy))
    assert_close(xv.grad, xt.grad.numpy(), TOL[dtype], "linear dx")
    assert_close(wv.grad, wt.grad.numpy(), TOL[dtype], "linear dw")
    if has_bias:
        assert_close(bv.grad, bt.grad.numpy(), TOL[dtype], "linear db")
    y = F.linear(x=xv, weight=wv, bias=None)
    assert y.shape == (N, O)


def test_linear_exact_small_integers():
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) % 5) - 2
    w = (np.arange(8, dtype=np.float32).reshape(2, 4) % 3) - 1
    for dev in DEVICES:
        y = F.linear(T(x, "float32", dev), T(w, "float32", dev))
        np.testing.assert_array_equal(y.numpy(), x @ w.T)


@pytest.mark.parametrize("device,dtype", CASES, ids=CASE_IDS)
def test_dropout(device, dtype):
    shape = (4, 10, 10, 16) if device == "cpu" else (2, 9, 9, 13)
    x = (np.abs(rng(19).standard_normal(shape)) + 0.5).astype(npt(dtype))
    xv = T(x, dtype, device, True)
    # eval: identity
    y = F.dropout(xv, 0.5, False)
    assert_close(y, x, TOL[dtype], "dropout eval")
    y = F.dropout(xv, p=0.3, training=False)
    assert_close(y, x, TOL[dtype], "dropout eval kw")
    # p = 0 in training: identity
    assert_close(F.dropout(xv, p=0.0), x, TOL[dtype], "dropout p=0")
    for p in (0.5, 0.2):
        xv = T(x, dtype, device, True)
        y = F.dropout(xv, p=p, training=True) if p != 0.5 else F.dropout(xv)
        check_output(y, dtype, device)
        yn = y.numpy().astype(np.float64)
        keep = yn != 0
        assert_close(np.where(keep, yn, 0), np.where(keep, x / (1 - p), 0), TOL[dtype], "inverted scaling")
        frac = 1 - keep.mean()
        n = keep.size
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3, f"drop rate {frac} for p={p}"
        gy = rng(20).standard_normal(shape)
        y.backward(T(gy, dtype, device))
        assert_close(xv.grad, gy * keep / (1 - p), TOL[dtype], "dropout backward")


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


@needs_torch
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
    assert_close(y, yt.detach().numpy(), TOL[dtype], which)
    gy = rng(23).standard_normal(shape)
    y.backward(T(gy, dtype, device))
    yt.backward(torch.tensor(gy))
    assert_close(xv.grad, xt.grad.numpy(), TOL[dtype], which + " backward")


@needs_torch
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


@needs_torch
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
        assert abs(loss.item() - lt.item()) <= TOL[dtype] * max(1.0, abs(lt.item()))
        loss.backward()
        lt.backward()
        assert_close(xv.grad, xt.grad.numpy(), TOL[dtype], "cross_entropy backward")
    loss = F.cross_entropy(logits=T(x, dtype, device), target=labels)
    assert loss.item() > 0


@needs_torch
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
    assert_close(y, to_nhwc(yt), TOL["float32"], "sim conv")
    loss = F.cross_entropy(y.reshape(y.shape[0] * y.shape[1] * y.shape[2], 17), np.arange(9) % 17)
    assert loss.device == device
    loss.backward()
    lt = TF.cross_entropy(yt.permute(0, 2, 3, 1).reshape(-1, 17), torch.tensor(np.arange(9) % 17))
    lt.backward()
    assert xv.grad.device == device and wv.grad.device == device
    assert_close(xv.grad, to_nhwc(xt.grad), TOL["float32"], "sim dx")
    assert_close(wv.grad, wt.grad.numpy().transpose(0, 2, 3, 1), TOL["float32"], "sim dw")
    assert_close(bv.grad, bt.grad.numpy(), TOL["float32"], "sim db")


def test_dropout_p_one_gives_zeros_not_nan():
    x = x4()
    try:
        y = F.dropout(x, p=1.0)
    except (ValueError, TypeError):
        return
    assert np.all(y.numpy() == 0)

