"""The GPU GEMM family (conv2d and linear, all three passes) under every tile plan, on sim and cuda.

At the emulator's small test shapes the automatic plan always picks small tiles without split-K, while a GPU at
VGG sizes runs large tiles and split-K. The test-only _C._set_gpu_gemm_plan("small"|"large"[:SPLITS]) forces the
plan, so these tests cover the code a GPU actually runs, including more splits than there are k tiles (the launcher
re-counts them).
"""

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from gpu_plans import forced_gemm_plan

import reference as ref
from gradcheck import assert_close

PLANS = ["small", "large", "small:3", "large:4", "large:999"]


# (N, H, W, C, K, kernel, stride, pad): C=3 and C=13 take the scalar loads, C=8 and K=16 the float4 ones.
CONVS = [(1, 7, 5, 3, 5, 3, 1, 1), (2, 9, 6, 8, 16, 3, 2, 1), (2, 6, 7, 13, 13, 5, 1, 2), (1, 8, 8, 16, 8, 1, 1, 0)]
LINEARS = [(3, 13, 5), (9, 16, 24)]  # (M, IN, OUT)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", CONVS, ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c) for c in CONVS])
def test_conv2d_every_plan(gpu_device, plan, case):
    with forced_gemm_plan(plan):
        run_conv2d(gpu_device, plan, case)


def run_conv2d(gpu_device, plan, case):
    N, H, W, C, K, R, stride, pad = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((N, H, W, C), (K, R, R, C), (K,)))
    X = vc.tensor(x, device=gpu_device, requires_grad=True)
    Wt = vc.tensor(w, device=gpu_device, requires_grad=True)
    B = vc.tensor(b, device=gpu_device, requires_grad=True)
    y = F.conv2d(X, Wt, B, stride=stride, padding=pad)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    y.backward(vc.tensor(dy, device=gpu_device))
    dx, dw, db = ref.conv2d_backward(x, w, dy, stride, pad)
    what = f"conv2d {case} plan {plan} on {gpu_device}"
    assert_close(y, ref.conv2d(x, w, b, stride, pad), 1e-5, what + " forward")
    assert_close(X.grad, dx, 1e-5, what + " grad input")
    assert_close(Wt.grad, dw, 1e-5, what + " grad weight")
    assert_close(B.grad, db, 1e-5, what + " grad bias")


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", LINEARS, ids=["M{}IN{}OUT{}".format(*c) for c in LINEARS])
def test_linear_every_plan(gpu_device, plan, case):
    with forced_gemm_plan(plan):
        run_linear(gpu_device, plan, case)


def run_linear(gpu_device, plan, case):
    M, IN, OUT = case
    rng = np.random.default_rng(M * IN * OUT)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((M, IN), (OUT, IN), (OUT,)))
    X = vc.tensor(x, device=gpu_device, requires_grad=True)
    Wt = vc.tensor(w, device=gpu_device, requires_grad=True)
    y = F.linear(X, Wt, vc.tensor(b, device=gpu_device))
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    y.backward(vc.tensor(dy, device=gpu_device))
    dx, dw, _ = ref.linear_backward(x, w, dy)
    what = f"linear {case} plan {plan} on {gpu_device}"
    assert_close(y, ref.linear(x, w, b), 1e-5, what + " forward")
    assert_close(X.grad, dx, 1e-5, what + " grad input")
    assert_close(Wt.grad, dw, 1e-5, what + " grad weight")


def test_bad_plan_setting_is_a_value_error():
    with pytest.raises(ValueError, match="set_gpu_gemm_plan"):
        vc._C._set_gpu_gemm_plan("huge")
    assert vc._C._get_gpu_gemm_plan() == "auto"
