"""Shapes that cross the sim kernels' internal thresholds, which the small shapes of the other tests never reach:
more than one warp of rows (cross-entropy's mean, softmax's 8 rows per block), more than a grid dimension of
images or rows (global average pooling's 65535-image grid, softmax's 8192-block grid), split counts that do not
divide the work (bias gradient splits, split-K), M, N and K one past a tile, and a multi-step SGD run. The sim
results are compared with the cpu backend, or exactly with NumPy where small integers make every sum exact.
A few kernels also run under several random schedule seeds.
"""

import numpy as np
import pytest

import vggcore as vc
from gpu_plans import forced_gemm_plan

C = vc._C
pytestmark = [pytest.mark.skipif("sim" not in vc.devices(), reason="built without the SIMT emulator"),
              pytest.mark.usefixtures("linear_sim_schedule")]


def on(device, a):
    return C.Tensor.from_numpy(np.ascontiguousarray(a), device)


def small_ints(rng, shape, lo=-2, hi=2):
    return rng.integers(lo, hi + 1, shape).astype(np.float32)


@pytest.mark.parametrize("rows, cols", [(33, 5), (257, 33), (300, 2)])
def test_cross_entropy_more_than_one_warp_of_rows(rows, cols):
    rng = np.random.default_rng(rows)
    logits = rng.uniform(-3, 3, (rows, cols)).astype(np.float32)
    target = rng.integers(0, cols, rows).astype(np.int64)
    out = {}
    for dev in ("cpu", "sim"):
        loss, logp, labels = C.cross_entropy_forward(on(dev, logits), on(dev, target))
        dx = C.cross_entropy_backward(logp, labels, on(dev, np.ones(1, np.float32)))
        out[dev] = loss.numpy(), logp.numpy(), dx.numpy()
    for got, want in zip(out["sim"], out["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_rows_over_several_blocks(op):
    rows, cols = 70, 33  # 9 blocks of 8 rows, the last one partial; 2 columns per lane for lane 0
    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, (rows, cols)).astype(np.float32)
    dy = rng.uniform(-1, 1, (rows, cols)).astype(np.float32)
    fwd, bwd = getattr(C, op + "_forward"), getattr(C, op + "_backward")
    res = {}
    for dev in ("cpu", "sim"):
        y = fwd(on(dev, x))
        res[dev] = y.numpy(), bwd(y, on(dev, dy)).numpy()
    for got, want in zip(res["sim"], res["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_softmax_rows_past_the_grid_are_grid_strided():
    rows = 8192 * 8 + 3  # more rows than the 8192-block grid has warps: the last 3 are a second pass
    x = np.zeros((rows, 1), np.float32)
    x[-3:, 0] = 5.0
    assert (C.log_softmax_forward(on("sim", x)).numpy() == 0.0).all()  # log(1) for every row, exactly


@pytest.mark.slow
def test_global_avg_pool_more_images_than_a_grid_dimension():
    n = 65535 + 2  # grid.y is capped at 65535: blocks 0 and 1 pool a second image
    rng = np.random.default_rng(1)
    x = small_ints(rng, (n, 1, 2, 1), -8, 8)  # HW = 2: averages of two small integers are exact
    y = C.global_avg_pool_forward(on("sim", x)).numpy()
    np.testing.assert_array_equal(y, x.reshape(n, 2).mean(axis=1, keepdims=True))
    dy = small_ints(rng, (n, 1), -8, 8)
    dx = C.global_avg_pool_backward(on("sim", dy), [n, 1, 2, 1]).numpy()
    np.testing.assert_array_equal(dx, np.repeat(dy / 2, 2, axis=1).reshape(n, 1, 2, 1))


@pytest.mark.parametrize("rows, cols", [(1001, 3), (1300, 33), (257, 70)])
def test_bias_gradient_splits_that_do_not_divide(rows, cols):
    # 1001 rows: 4 splits of 251 rows, the last one 248; 33 and 70 columns: a partial column tile.
    rng = np.random.default_rng(rows + cols)
    dy = small_ints(rng, (rows, cols))
    db = C.bias_backward(on("sim", dy)).numpy()
    np.testing.assert_array_equal(db, dy.astype(np.float64).sum(axis=0).astype(np.float32))


# (M, IN, OUT, plan): one past the small (64x64x16) and large (128x128x8) tiles, and split-K whose splits don't
# divide K (small:3 on K=50: 32 + 18; large:4 on K=41: 16 + 16 + 9).
GEMMS = [(65, 17, 65, "small"), (129, 9, 129, "large"), (33, 50, 20, "small:3"), (20, 41, 129, "large:4")]


@pytest.mark.parametrize("M, IN, OUT, plan", GEMMS, ids=[f"M{m}K{k}N{n}-{p}" for m, k, n, p in GEMMS])
def test_gemm_one_past_a_tile(M, IN, OUT, plan):
    rng = np.random.default_rng(M * IN + OUT)
    x, w, b, dy = small_ints(rng, (M, IN)), small_ints(rng, (OUT, IN)), small_ints(rng, (OUT,)), small_ints(rng, (M, OUT))
    with forced_gemm_plan(plan):
        y = C.linear_forward(on("sim", x), on("sim", w), on("sim", b)).numpy()
        dx = C.linear_backward_data(on("sim", dy), on("sim", w)).numpy()
        dw = C.linear_backward_weight(on("sim", x), on("sim", dy)).numpy()
    np.testing.assert_array_equal(y, x @ w.T + b)
    np.testing.assert_array_equal(dx, dy @ w)
    np.testing.assert_array_equal(dw, dy.T @ x)


def sgd_reference(p, g, steps, lr, momentum, weight_decay, nesterov):
    """PyTorch's SGD rule in double, rounding p and the momentum buffer to float32 after every step."""
    p = p.astype(np.float64)
    buf = None
    for step in range(steps):
        d = g[step].astype(np.float64) + weight_decay * p
        if momentum:
            buf = d if buf is None else momentum * buf + d
            buf = buf.astype(np.float32).astype(np.float64)
            d = d + momentum * buf if nesterov else buf
        p = (p - lr * d).astype(np.float32).astype(np.float64)
    return p.astype(np.float32)


@pytest.mark.parametrize("nesterov", [False, True])
def test_multi_step_sgd_on_sim(nesterov):
    n, steps = 4 * 300 + 3, 5  # float4 body and a scalar tail; more elements than one block of threads
    rng = np.random.default_rng(7)
    p0 = rng.uniform(-1, 1, n).astype(np.float32)
    grads = rng.uniform(-1, 1, (steps, n)).astype(np.float32)
    lr, momentum, wd = 0.1, 0.9, 1e-3
    results = {}
    for dev in ("cpu", "sim"):
        p = on(dev, p0)
        buf = C.Tensor.from_numpy(np.zeros(n, np.float32), dev)
        for step in range(steps):
            C.sgd_update(p, on(dev, grads[step]), buf, lr, momentum, wd, nesterov, step == 0)
        results[dev] = p.numpy()
    want = sgd_reference(p0, grads, steps, lr, momentum, wd, nesterov)
    np.testing.assert_allclose(results["sim"], want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(results["sim"], results["cpu"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_kernels_under_more_random_seeds(seed):
    C.sim_set_schedule(f"random:{seed}")
    rng = np.random.default_rng(seed)
    x, w, b = small_ints(rng, (33, 50)), small_ints(rng, (20, 50)), small_ints(rng, (20,))
    with forced_gemm_plan("small:3"):
        y = C.linear_forward(on("sim", x), on("sim", w), on("sim", b)).numpy()
    np.testing.assert_array_equal(y, x @ w.T + b)
    dy = small_ints(rng, (1001, 33))
    np.testing.assert_array_equal(C.bias_backward(on("sim", dy)).numpy(), dy.sum(axis=0))
    logits = rng.uniform(-3, 3, (257, 5)).astype(np.float32)
    target = rng.integers(0, 5, 257).astype(np.int64)
    loss_sim = C.cross_entropy_forward(on("sim", logits), on("sim", target))[0]
    loss_cpu = C.cross_entropy_forward(on("cpu", logits), on("cpu", target))[0]
    np.testing.assert_allclose(loss_sim.numpy(), loss_cpu.numpy(), rtol=1e-6)
    xg = small_ints(rng, (3, 3, 3, 40), -8, 8)
    want = xg.reshape(3, 9, 40).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(C.global_avg_pool_forward(on("sim", xg)).numpy(), want, rtol=1e-6)
