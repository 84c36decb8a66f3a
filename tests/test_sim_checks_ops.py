"""Every sim kernel family once with every emulator check on (races, uninit, bounds): the checks must stay silent on
correct kernels (no false positives) and the results must match the cpu backend. The whole sim suite can be run
the same way with VGG_SIM_CHECKS=all (docs/emulator.md); this file is the part CI runs every time."""

import numpy as np
import pytest

import vggcore as vc
from gpu_plans import forced_gemm_plan
import vggcore.nn.functional as F

C = vc._C
pytestmark = [pytest.mark.skipif("sim" not in vc.devices(), reason="built without the SIMT emulator"),
              pytest.mark.usefixtures("every_sim_check")]


def run(device, rng_seed):
    rng = np.random.default_rng(rng_seed)
    x = vc.tensor(rng.uniform(-1, 1, (2, 9, 7, 5)).astype(np.float32), device=device, requires_grad=True)
    w = vc.tensor(rng.uniform(-1, 1, (6, 3, 3, 5)).astype(np.float32), device=device, requires_grad=True)
    b = vc.tensor(rng.uniform(-1, 1, (6,)).astype(np.float32), device=device, requires_grad=True)
    fc = vc.tensor(rng.uniform(-1, 1, (4, 6)).astype(np.float32), device=device, requires_grad=True)
    h = F.relu(F.conv2d(x, w, b, stride=1, padding=1))
    h = F.local_response_norm(h, size=3)
    h = F.max_pool2d(h, 2, 2)
    h = F.avg_pool2d(h, 2, 1)
    h = F.global_avg_pool2d(h)
    logits = F.linear(h, fc)
    target = vc.tensor(np.array([1, 3], np.int64), device=device)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    return [loss, x.grad, w.grad, b.grad, fc.grad]


@pytest.mark.parametrize("plan", ["auto", "large:3"])
def test_network_pieces_pass_every_check(plan):
    with forced_gemm_plan(plan):
        sim = [t.numpy() for t in run("sim", 3)]
        cpu = [t.numpy() for t in run("cpu", 3)]
    for got, want in zip(sim, cpu):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_softmax_dropout_sgd_pass_every_check():
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, (11, 40)).astype(np.float32)
    for op in ("softmax", "log_softmax"):
        y = getattr(C, op + "_forward")(C.Tensor.from_numpy(x, "sim"))
        getattr(C, op + "_backward")(y, C.Tensor.from_numpy(x, "sim"))
    C.dropout(C.Tensor.from_numpy(x, "sim"), 0.5, 7)
    p = C.Tensor.from_numpy(x.ravel().copy(), "sim")
    buf = C.Tensor.from_numpy(np.zeros(x.size, np.float32), "sim")
    for step in range(2):
        C.sgd_update(p, C.Tensor.from_numpy(x.ravel(), "sim"), buf, 0.1, 0.9, 1e-4, True, step == 0)
    assert np.isfinite(p.numpy()).all()
