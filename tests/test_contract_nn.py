"""Contract tests (DESIGN.md section 2): vc.nn.Module and its layers, and vc.optim.SGD. Helpers and the PyTorch oracle: contract_helpers.py."""

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from contract_helpers import *  # noqa: F401,F403


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


def torch_reference_net():
    """build_pair's network in PyTorch (NCHW, float64); defined when called, so the module imports without torch."""

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

    return TorchRef()


@needs_torch
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
    ref = torch_reference_net()
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
    assert_close(y, yt.detach().numpy(), TOL["float32"], "sequential forward")
    labels = np.array([1, 3])
    loss = F.cross_entropy(y, labels)
    loss.backward()
    TF.cross_entropy(yt, torch.tensor(labels)).backward()
    tgrads = [ref.c1.weight.grad.numpy().transpose(0, 2, 3, 1), ref.c1.bias.grad.numpy(),
              ref.c2.weight.grad.numpy().transpose(0, 2, 3, 1), ref.c2.bias.grad.numpy(),
              ref.fc.weight.grad.numpy(), ref.fc.bias.grad.numpy()]
    for p, gt, (n, _) in zip(params, tgrads, named):
        assert p.grad is not None, f"no grad for {n}"
        assert_close(p.grad, gt, TOL["float32"], f"grad {n}")
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
    assert_close(y, y_cpu, TOL["float32"], "module on " + device)


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


SGD_CFGS = [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=5e-4), dict(weight_decay=0.01),
            dict(momentum=0.8, nesterov=True), dict(momentum=0.9, weight_decay=1e-3, nesterov=True)]


def _sgd_problem():
    g = rng(40)
    x = g.standard_normal((6, 8))
    y = g.integers(0, 4, 6)
    w0 = g.standard_normal((4, 8)) * 0.3
    b0 = g.standard_normal(4) * 0.1
    return x, y, w0, b0


@needs_torch
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

