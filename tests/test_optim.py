"""vc.optim.SGD against hand-computed steps and torch.optim.SGD; nn.Module basics (parameters, state dicts,
train/eval, to(device)) and each layer module against its functional op."""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from gradcheck import assert_close, rounded, to_np, vt


def set_grad(p, g):
    """Makes p.grad += g using only public ops: linear(I, p2d) = p2d^T, so backward(g2d^T) gives p2d.grad = g2d."""
    shape = tuple(p.shape)
    g = np.asarray(g, dtype=np.float64)
    if len(shape) == 1:
        y = F.linear(vt(np.zeros((1, 1)), p.dtype, p.device), vt(np.zeros((shape[0], 1)), p.dtype, p.device), p)
        y.backward(vt(g.reshape(1, -1), p.dtype, p.device))
        return
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    p2 = p.reshape(rows, cols) if len(shape) > 2 else p
    y = F.linear(vt(np.eye(cols), p.dtype, p.device), p2)
    y.backward(vt(g.reshape(rows, cols).T, p.dtype, p.device))


def grads_for(rng, shapes, steps):
    return [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]


def assert_grad_cleared(p):
    assert p.grad is None or not np.any(to_np(p.grad)), "zero_grad must clear the gradient"


# ---- SGD ---------------------------------------------------------------------------------------------------
def test_set_grad_helper_works(rng):
    for shape in [(5,), (3, 4), (2, 3, 3, 2)]:
        p = vt(rng.standard_normal(shape), requires_grad=True)
        g = rng.standard_normal(shape)
        set_grad(p, g)
        np.testing.assert_allclose(to_np(p.grad), g, rtol=1e-14)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sgd_plain_step_by_hand(wd, rng):
    p0, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    p = vt(p0, requires_grad=True)
    opt = vc.optim.SGD([p], lr=0.1, weight_decay=wd)
    set_grad(p, g)
    opt.step()
    np.testing.assert_allclose(to_np(p), p0 - 0.1 * (g + wd * p0), rtol=1e-14, atol=1e-15)
    assert p.requires_grad


def test_sgd_momentum_by_hand(rng):
    p0, g1, g2 = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    for nesterov in (False, True):
        p = vt(p0, requires_grad=True)
        opt = vc.optim.SGD([p], lr=0.5, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
        set_grad(p, g1)
        opt.step()
        opt.zero_grad()
        d1 = g1 + 0.01 * p0
        buf = d1
        p1 = p0 - 0.5 * (d1 + 0.9 * buf if nesterov else buf)
        np.testing.assert_allclose(to_np(p), p1, rtol=1e-13)
        set_grad(p, g2)
        opt.step()
        d2 = g2 + 0.01 * p1
        buf = 0.9 * buf + d2
        p2 = p1 - 0.5 * (d2 + 0.9 * buf if nesterov else buf)
        np.testing.assert_allclose(to_np(p), p2, rtol=1e-13, err_msg=f"nesterov={nesterov}")


SGD_CONFIGS = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
               dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True), dict(lr=0.2, momentum=0.5,
                                                                                 weight_decay=0.1)]
SHAPES = [(4, 3, 3, 2), (4,), (5, 7)]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=[str(i) for i in range(len(SGD_CONFIGS))])
def test_sgd_matches_torch(cfg, device_dtype, rng):
    torch = pytest.importorskip("torch")
    dev, dt = device_dtype
    init = [rounded(rng.standard_normal(s), dt) for s in SHAPES]
    grads = [[rounded(g, dt) for g in step] for step in grads_for(rng, SHAPES, 6)]
    ours = [vt(a, dt, dev, True) for a in init]
    theirs = [torch.tensor(a, requires_grad=True) for a in init]
    opt = vc.optim.SGD(ours, **cfg)
    topt = torch.optim.SGD(theirs, **cfg)
    for step, gs in enumerate(grads):
        if step == 3:  # a schedule changes the learning rate mid-run
            opt.lr = cfg["lr"] * 0.1
            for group in topt.param_groups:
                group["lr"] = cfg["lr"] * 0.1
            assert opt.lr == pytest.approx(cfg["lr"] * 0.1)
        opt.zero_grad()
        topt.zero_grad()
        for p, t, g in zip(ours, theirs, gs):
            set_grad(p, g)
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    tol = 1e-12 if dt == "float64" else 1e-5
    for i, (p, t) in enumerate(zip(ours, theirs)):
        assert p.device == dev and p.dtype == dt
        assert_close(p, t.detach().numpy(), tol, f"SGD {cfg} param {i} on {dev} {dt}")


def test_sgd_state_dict_round_trip(rng):
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = grads_for(rng, SHAPES, 5)
    a = [vt(x, requires_grad=True) for x in init]
    opt_a = vc.optim.SGD(a, **cfg)
    for gs in grads[:3]:
        opt_a.zero_grad()
        for p, g in zip(a, gs):
            set_grad(p, g)
        opt_a.step()
    state = opt_a.state_dict()
    b = [vt(to_np(p).copy(), requires_grad=True) for p in a]
    opt_b = vc.optim.SGD(b, lr=999.0)  # hyper-parameters come from the state dict too
    opt_b.load_state_dict(state)
    assert opt_b.lr == pytest.approx(0.1)
    for gs in grads[3:]:
        for opt, params in ((opt_a, a), (opt_b, b)):
            opt.zero_grad()
            for p, g in zip(params, gs):
                set_grad(p, g)
            opt.step()
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(to_np(pb), to_np(pa), rtol=1e-14, err_msg="momentum buffers not restored")


def test_sgd_zero_grad_and_fresh_gradient(rng):
    p = vt(rng.standard_normal((2, 3)), requires_grad=True)
    opt = vc.optim.SGD([p], lr=0.1)
    set_grad(p, np.ones((2, 3)))
    set_grad(p, np.ones((2, 3)))
    np.testing.assert_array_equal(to_np(p.grad), np.full((2, 3), 2.0))  # backward accumulates
    opt.zero_grad()
    assert_grad_cleared(p)
    g = rng.standard_normal((2, 3))
    set_grad(p, g)
    np.testing.assert_allclose(to_np(p.grad), g, rtol=1e-15)


def test_sgd_skips_params_without_grad(rng):
    p0, q0 = rng.standard_normal(3), rng.standard_normal(3)
    p, q = vt(p0, requires_grad=True), vt(q0, requires_grad=True)
    opt = vc.optim.SGD([p, q], lr=0.1, momentum=0.9, weight_decay=0.1)
    set_grad(p, np.ones(3))
    opt.step()
    np.testing.assert_array_equal(to_np(q), q0)
    assert not np.array_equal(to_np(p), p0)


def test_sgd_accepts_a_generator_of_parameters(rng):
    model = vc.nn.Linear(3, 2)
    opt = vc.optim.SGD(model.parameters(), lr=0.1)
    before = [to_np(p).copy() for p in model.parameters()]
    loss = F.cross_entropy(model(vt(rng.standard_normal((4, 3)), "float32")), np.array([0, 1, 1, 0]))
    loss.backward()
    opt.step()
    after = [to_np(p) for p in model.parameters()]
    assert len(before) == 2 and all(not np.array_equal(x, y) for x, y in zip(before, after))


# ---- nn.Module -----------------------------------------------------------------------------------------------
def small_net():
    return vc.nn.Sequential(
        vc.nn.Conv2d(3, 5, 3, padding=1), vc.nn.ReLU(), vc.nn.MaxPool2d(2, 2),
        vc.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), vc.nn.Conv2d(5, 4, 1), vc.nn.ReLU(),
        vc.nn.AvgPool2d(2, 2), vc.nn.Flatten(), vc.nn.Linear(4, 6), vc.nn.Dropout(0.5), vc.nn.Linear(6, 3))


def test_module_parameters_and_names():
    net = small_net()
    params = list(net.parameters())
    named = list(net.named_parameters())
    assert len(params) == 8 and len(named) == 8
    names = [n for n, _ in named]
    assert len(set(names)) == 8, f"parameter names must be unique: {names}"
    assert [tuple(p.shape) for p in params] == [(5, 3, 3, 3), (5,), (4, 1, 1, 5), (4,), (6, 4), (6,), (3, 6), (3,)]
    assert all(p is q for p, (_, q) in zip(params, named))
    assert all(p.requires_grad for p in params)
    assert sum(int(np.prod(tuple(p.shape))) for p in params) == 135 + 5 + 20 + 4 + 24 + 6 + 18 + 3


def test_module_forward_matches_functional(rng):
    net = small_net()
    net.eval()
    x = vt(rng.standard_normal((2, 5, 4, 3)), "float32")
    p = [to_np(t).astype(np.float64) for t in net.parameters()]
    with vc.no_grad():
        y = to_np(net(x))
        x64 = vt(to_np(x))
        h = F.relu(F.conv2d(x64, vt(p[0]), vt(p[1]), padding=1))
        h = F.local_response_norm(F.max_pool2d(h, 2, 2), 5, 5e-4, 0.75, 2.0)
        h = F.avg_pool2d(F.relu(F.conv2d(h, vt(p[2]), vt(p[3]))), 2, 2).reshape(2, 4)
        expected = to_np(F.linear(F.linear(h, vt(p[4]), vt(p[5])), vt(p[6]), vt(p[7])))
    assert_close(y, expected, 1e-5, "Sequential forward")


def test_flatten_is_hwc_order(device, rng):
    x = rng.standard_normal((2, 3, 5, 4))
    y = vc.nn.Flatten()(vt(x, "float32", device))
    assert tuple(y.shape) == (2, 60)
    assert_close(y, rounded(x, "float32").reshape(2, 60), 0.0, "Flatten must flatten NHWC in (H, W, C) order")


def test_state_dict_round_trip(rng):
    a, b = small_net(), small_net()
    a.eval(), b.eval()
    x = vt(rng.standard_normal((1, 4, 4, 3)), "float32")
    sd = a.state_dict()
    assert set(sd) == {n for n, _ in a.named_parameters()}
    b.load_state_dict(sd)
    np.testing.assert_array_equal(to_np(b(x)), to_np(a(x)))
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(to_np(p), to_np(q))
    assert all(q.requires_grad for q in b.parameters())


def test_load_state_dict_wrong_shape_raises():
    a = small_net()
    sd = {k: to_np(v).copy() for k, v in a.state_dict().items()}
    name = next(iter(sd))
    sd[name] = np.zeros((7, 3, 3, 3), dtype=np.float32)
    with pytest.raises((ValueError, TypeError), match=name.replace(".", r"\.")):
        a.load_state_dict(sd)


def test_load_state_dict_from_other_architecture_raises():
    net = vc.nn.Sequential(vc.nn.Linear(4, 3))
    with pytest.raises((ValueError, TypeError, KeyError)):
        net.load_state_dict(vc.nn.Sequential(vc.nn.Linear(4, 5)).state_dict())
    with pytest.raises((ValueError, TypeError, KeyError)):
        net.load_state_dict({})


def test_train_eval_propagate_to_children(rng):
    net = vc.nn.Sequential(vc.nn.Sequential(vc.nn.Dropout(0.5)), vc.nn.ReLU())
    x = vt(rng.uniform(1.0, 2.0, (4, 256)), "float32")
    net.eval()
    np.testing.assert_array_equal(to_np(net(x)), to_np(x), err_msg="eval(): dropout must be the identity")
    if hasattr(net, "training"):
        assert net.training is False
    net.train()
    y = to_np(net(x))
    assert (y == 0).mean() > 0.3, "train(): dropout must drop elements"
    net.train(False)
    np.testing.assert_array_equal(to_np(net(x)), to_np(x))


@pytest.mark.parametrize("name,args,fn", [
    ("ReLU", (), lambda x: F.relu(x)),
    ("MaxPool2d", (3, 2), lambda x: F.max_pool2d(x, 3, 2)),
    ("AvgPool2d", (2, 2), lambda x: F.avg_pool2d(x, 2, 2)),
    ("LocalResponseNorm", (3, 0.1, 0.6, 1.5), lambda x: F.local_response_norm(x, 3, 0.1, 0.6, 1.5)),
])
def test_parameterless_modules_match_functional(name, args, fn, device, rng):
    x = vt(rng.standard_normal((2, 7, 5, 4)), "float32", device)
    np.testing.assert_array_equal(to_np(getattr(vc.nn, name)(*args)(x)), to_np(fn(x)))


def test_conv2d_and_linear_modules_match_functional(rng):
    conv = vc.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    fc = vc.nn.Linear(7, 4)
    assert tuple(conv.weight.shape) == (5, 3, 3, 3) and tuple(conv.bias.shape) == (5,)
    assert tuple(fc.weight.shape) == (4, 7) and tuple(fc.bias.shape) == (4,)
    x = vt(rng.standard_normal((2, 7, 5, 3)), "float32")
    np.testing.assert_array_equal(to_np(conv(x)), to_np(F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)))
    z = vt(rng.standard_normal((3, 7)), "float32")
    np.testing.assert_array_equal(to_np(fc(z)), to_np(F.linear(z, fc.weight, fc.bias)))


def test_module_to_device(gpu_device, rng):
    dev = gpu_device
    net = small_net()
    net.eval()
    x = rng.standard_normal((2, 5, 4, 3))
    y_cpu = to_np(net(vt(x, "float32")))
    out = net.to(dev)
    assert out is None or out is net
    assert all(p.device == dev for p in net.parameters())
    y_dev = net(vt(x, "float32", dev))
    assert y_dev.device == dev
    assert_close(y_dev, y_cpu.astype(np.float64), 1e-5, f"module on {dev} vs cpu")
    net.to("cpu")
    assert all(p.device == "cpu" for p in net.parameters())


def test_module_training_reduces_loss(rng):
    """Parameters get gradients through a module and SGD on them lowers the loss."""
    net = vc.nn.Sequential(vc.nn.Linear(5, 16), vc.nn.ReLU(), vc.nn.Linear(16, 3))
    x = vt(rng.standard_normal((24, 5)), "float32")
    target = rng.integers(0, 3, 24)
    opt = vc.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_module_dropout_uses_a_fresh_mask(rng):
    drop = vc.nn.Dropout(0.5)
    drop.train()
    x = vt(np.ones((1, 1024)), "float32")
    assert not np.array_equal(to_np(drop(x)), to_np(drop(x)))
