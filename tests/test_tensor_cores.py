"""The tensor-core GEMM (csrc/cuda/tc_gemm.cuh): TF32 for float32 conv2d/linear under matmul precision "high",
and BF16 through the test-only `_C._bf16_matmul`, every pass, on sim (and cuda when present).

Small-integer inputs make every sum exact (in TF32 and BF16 operands with float32 accumulation), so a wrong
fragment lane, a missing pipeline wait or a wrong tile tail shows as a wrong integer. Random inputs are checked
against float64 with bounds derived from the formats: each TF32 operand rounded to 10 mantissa bits (relative
error <= 2^-11), each BF16 operand and the BF16 output to 7 bits (<= 2^-8), float32 accumulation.
"""
import contextlib

import numpy as np
import pytest

import vggcore as vc

import reference as ref

C = vc._C
GPU = [d for d in vc.devices() if d != "cpu"]
pytestmark = pytest.mark.skipif(not GPU, reason="needs sim or cuda")

PLANS = ["small", "large", "small:3", "large:2"]
SCHEDULES = ["linear", "reverse", "random:11"]

# (N, H, W, C, K, kernel, stride, pad): C=8/K=16 take cp.async (VEC), C=3 (the first layer) and C=13 the scalar
# loads, stride 2 the stride-aware dy gather.
CONVS = [(2, 6, 5, 8, 16, 3, 1, 1), (1, 7, 5, 3, 5, 3, 1, 1), (2, 5, 6, 12, 8, 3, 2, 1), (1, 5, 4, 13, 9, 3, 1, 2)]
# (M, IN, OUT): M one past a 64-row tile, IN one past a 32-wide k tile (and odd: scalar loads).
LINEARS = [(3, 13, 5), (65, 36, 20), (9, 33, 24)]


@contextlib.contextmanager
def settings(precision="highest", plan="auto", schedule=None):
    C.set_float32_matmul_precision(precision)
    C._set_gpu_gemm_plan(plan)
    if schedule and "sim" in vc.devices():
        C.sim_set_schedule(schedule)
    try:
        yield
    finally:
        C.set_float32_matmul_precision("highest")
        C._set_gpu_gemm_plan("auto")
        if "sim" in vc.devices():
            C.sim_set_schedule("linear")


def t(a, device):
    return C.Tensor.from_numpy(np.ascontiguousarray(a, np.float32), device)


def conv_passes(device, x, w, b, dy, stride, pad):
    X, W, B, DY = t(x, device), t(w, device), t(b, device), t(dy, device)
    y = C.conv2d_forward(X, W, B, stride, pad).numpy()
    dx = C.conv2d_backward_data(DY, W, list(x.shape), stride, pad).numpy()
    dw = C.conv2d_backward_weight(X, DY, list(w.shape), stride, pad).numpy()
    return y, dx, dw


def linear_passes(device, x, w, b, dy):
    X, W, B, DY = t(x, device), t(w, device), t(b, device), t(dy, device)
    return (C.linear_forward(X, W, B).numpy(), C.linear_backward_data(DY, W).numpy(),
            C.linear_backward_weight(X, DY).numpy())


def conv_reference(x, w, b, dy, stride, pad):
    dx, dw, _ = ref.conv2d_backward(x, w, dy, stride, pad)
    return ref.conv2d(x, w, b, stride, pad), dx, dw


def ints(rng, shape, lo=-3, hi=3):
    return rng.integers(lo, hi + 1, shape).astype(np.float32)


def conv_case(case, rng, make):
    N, H, W, Cin, K, R, stride, pad = case
    P = ref.conv_out_size(H, R, stride, pad)
    Q = ref.conv_out_size(W, R, stride, pad)
    return make(rng, (N, H, W, Cin)), make(rng, (K, R, R, Cin)), make(rng, (K,)), make(rng, (N, P, Q, K))


# ---- the switch ----------------------------------------------------------------------------------------------------

def test_precision_switch_round_trip_and_errors():
    assert vc.get_float32_matmul_precision() == "highest"
    vc.set_float32_matmul_precision("high")
    try:
        assert vc.get_float32_matmul_precision() == "high"
        assert C.get_float32_matmul_precision() == "high"
    finally:
        vc.set_float32_matmul_precision("highest")
    with pytest.raises(ValueError, match="precision"):
        vc.set_float32_matmul_precision("medium")
    with pytest.raises(TypeError):
        vc.set_float32_matmul_precision(3)
    assert vc.get_float32_matmul_precision() == "highest"


def test_plan_override_round_trip_and_errors():
    with settings(plan="large:4"):
        assert C._get_gpu_gemm_plan() == "large:4"
    assert C._get_gpu_gemm_plan() == "auto"
    for bad in ["huge", "small:0", "large:", "large:1000", "small:x"]:
        with pytest.raises(ValueError, match="plan"):
            C._set_gpu_gemm_plan(bad)
    assert C._get_gpu_gemm_plan() == "auto"


def test_cpu_stays_exact_float32_under_high():
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 6, 6, 8), (4, 3, 3, 8), (4,)))
    with settings("highest"):
        exact = C.conv2d_forward(t(x, "cpu"), t(w, "cpu"), t(b, "cpu"), 1, 1).numpy()
    with settings("high"):
        high = C.conv2d_forward(t(x, "cpu"), t(w, "cpu"), t(b, "cpu"), 1, 1).numpy()
    np.testing.assert_array_equal(high, exact)


@pytest.mark.parametrize("device", GPU)
def test_high_precision_really_uses_tf32(device):
    # 1 + 2^-12 is not a TF32 value: "highest" keeps it, "high" rounds the operand to 1.
    x = np.full((1, 1, 1, 4), 1 + 2**-12, np.float32)
    w = np.ones((1, 1, 1, 4), np.float32)
    b = np.zeros(1, np.float32)
    with settings("highest"):
        np.testing.assert_array_equal(C.conv2d_forward(t(x, device), t(w, device), t(b, device), 1, 0).numpy(),
                                      np.float32(4 + 4 * 2**-12))
    with settings("high"):
        np.testing.assert_array_equal(C.conv2d_forward(t(x, device), t(w, device), t(b, device), 1, 0).numpy(), 4.0)


# ---- TF32 ----------------------------------------------------------------------------------------------------------

def tf32_round(a):
    """float32 -> TF32 as cvt.rna does: round to nearest on 10 mantissa bits, ties away from zero."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


# 1 + 3 * 2^-12 is not a TF32 value; rounded to nearest it is 1 + 2^-10, truncated (the raw float bits an mma reads
# without cvt.rna) it is 1. All operands positive: no cancellation, so the float32 accumulation error (at most
# K * 2^-24 relative, K <= 144 here: < 9e-6, so rtol 2e-5) stays far below the 2^-10 a truncated operand costs.
NOT_TF32 = np.float32(1 + 3 * 2**-12)


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("case", CONVS[:2] + LINEARS[:2], ids=["conv-vec", "conv-c3", "linear-m3", "linear-m65"])
def test_tf32_operands_rounded_to_nearest_not_truncated(device, case):
    assert tf32_round(NOT_TF32) == np.float32(1 + 2**-10)
    full = lambda shape: np.full(shape, NOT_TF32, np.float32)  # noqa: E731
    if len(case) == 8:
        x, w, b, dy = conv_case(case, None, lambda rng, shape: full(shape))
        with settings("high"):
            got = conv_passes(device, x, w, b, dy, case[6], case[7])
        want = conv_reference(tf32_round(x), tf32_round(w), b, tf32_round(dy), case[6], case[7])
    else:
        M, IN, OUT = case
        x, w, b, dy = full((M, IN)), full((OUT, IN)), full((OUT,)), full((M, OUT))
        with settings("high"):
            got = linear_passes(device, x, w, b, dy)
        dx, dw, _ = ref.linear_backward(tf32_round(x), tf32_round(w), tf32_round(dy))
        want = (ref.linear(tf32_round(x), tf32_round(w), b), dx, dw)
    for name, g, r in zip(("forward", "backward data", "backward weight"), got, want):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=0, err_msg=f"tf32 rounding {case} {name}")



@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", CONVS, ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c) for c in CONVS])
def test_tf32_conv_small_integers_exact(device, plan, case):
    x, w, b, dy = conv_case(case, np.random.default_rng(sum(case)), ints)
    with settings("high", plan):
        got = conv_passes(device, x, w, b, dy, case[6], case[7])
    for name, g, r in zip(("forward", "backward data", "backward weight"), got,
                          conv_reference(x, w, b, dy, case[6], case[7])):
        np.testing.assert_array_equal(g, r.astype(np.float32), err_msg=f"tf32 conv {case} {plan} {name}")


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", LINEARS, ids=["M{}IN{}OUT{}".format(*c) for c in LINEARS])
def test_tf32_linear_small_integers_exact(device, plan, case):
    M, IN, OUT = case
    rng = np.random.default_rng(M + IN + OUT)
    x, w, b, dy = ints(rng, (M, IN)), ints(rng, (OUT, IN)), ints(rng, (OUT,)), ints(rng, (M, OUT))
    with settings("high", plan):
        got = linear_passes(device, x, w, b, dy)
    dx, dw, _ = ref.linear_backward(x, w, dy)
    for name, g, r in zip(("forward", "backward data", "backward weight"), got, (ref.linear(x, w, b), dx, dw)):
        np.testing.assert_array_equal(g, r.astype(np.float32), err_msg=f"tf32 linear {case} {plan} {name}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_tf32_every_schedule(schedule):
    if "sim" not in vc.devices():
        pytest.skip("schedules are the emulator's")
    case = CONVS[0]
    x, w, b, dy = conv_case(case, np.random.default_rng(5), ints)
    for plan in ("small", "large:2"):
        with settings("high", plan, schedule):
            got = conv_passes("sim", x, w, b, dy, case[6], case[7])
        for g, r in zip(got, conv_reference(x, w, b, dy, case[6], case[7])):
            np.testing.assert_array_equal(g, r.astype(np.float32), err_msg=f"{schedule} {plan}")


def tf32_bound(ref_abs):
    """Both operands rounded to nearest TF32 (relative 2^-11 each), float32 accumulation: |err| <= 2^-9.9 * sum|a*b|."""
    return (2 * 2**-11 + 2**-22 + 64 * 2**-24) * ref_abs + 1e-30


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", ["small", "large:3"])
@pytest.mark.parametrize("case", CONVS[:3], ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c) for c in CONVS[:3]])
def test_tf32_conv_random_within_format_bound(device, plan, case):
    normal = lambda rng, s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w, b, dy = conv_case(case, np.random.default_rng(7 + sum(case)), normal)
    stride, pad = case[6], case[7]
    with settings("high", plan):
        got = conv_passes(device, x, w, b, dy, stride, pad)
    want = conv_reference(x, w, b, dy, stride, pad)
    zero = np.zeros_like(b)
    absref = conv_reference(np.abs(x), np.abs(w), zero, np.abs(dy), stride, pad)
    absref = (absref[0] + np.abs(b), absref[1], absref[2])
    for name, g, r, a in zip(("forward", "backward data", "backward weight"), got, want, absref):
        err = np.abs(g.astype(np.float64) - r)
        assert (err <= tf32_bound(a)).all(), f"tf32 conv {case} {plan} {name}: max err {err.max():.3g}"
        # ...and it is TF32, not float32: the error is far above float32 rounding somewhere.
        assert err.max() > 1e-5 * np.abs(r).max(), f"tf32 conv {case} {name}: suspiciously exact"


# ---- BF16 ----------------------------------------------------------------------------------------------------------

def bf16_round(a):
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)).view(np.float32)


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("IN", [2, 40])
def test_bf16_output_ties_round_to_even(device, IN):
    # Exact float32 sums halfway between two bfloat16 values: 1 + 2^-8 lies between 1 (even) and 1 + 2^-7 (odd),
    # so round-to-nearest-even gives 1 where ties-away-from-zero would give 1 + 2^-7; 1 + 2^-7 + 2^-8 rounds up to
    # the even 1 + 2^-6 either way. Every input is a bfloat16 value; the columns past the second are zero.
    x = np.zeros((3, IN), np.float32)
    x[:, :2] = [[1, 2**-8], [1 + 2**-7, 2**-8], [-1, -2**-8]]
    w = np.ones((1, IN), np.float32)
    b = np.zeros(1, np.float32)
    with settings("highest"):
        got = C._bf16_matmul("linear_forward", t(x, device), t(w, device), t(b, device)).numpy()
    np.testing.assert_array_equal(got[:, 0], np.float32([1, 1 + 2**-6, -1]))


def bf16_conv(device, x, w, b, dy, stride, pad):
    X, W, B, DY = t(x, device), t(w, device), t(b, device), t(dy, device)
    return (C._bf16_matmul("conv2d_forward", X, W, B, stride=stride, pad=pad).numpy(),
            C._bf16_matmul("conv2d_backward_data", DY, W, out_shape=list(x.shape), stride=stride, pad=pad).numpy(),
            C._bf16_matmul("conv2d_backward_weight", X, DY, out_shape=list(w.shape), stride=stride, pad=pad).numpy())


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", CONVS, ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c) for c in CONVS])
def test_bf16_conv_small_integers_exact(device, plan, case):
    x, w, b, dy = conv_case(case, np.random.default_rng(3 * sum(case)), ints)
    with settings("highest", plan):
        got = bf16_conv(device, x, w, b, dy, case[6], case[7])
    # Exact float32 sums, rounded once to bf16 (nearest even) on the way out.
    for name, g, r in zip(("forward", "backward data", "backward weight"), got,
                          conv_reference(x, w, b, dy, case[6], case[7])):
        np.testing.assert_array_equal(g, bf16_round(r), err_msg=f"bf16 conv {case} {plan} {name}")


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("case", LINEARS, ids=["M{}IN{}OUT{}".format(*c) for c in LINEARS])
def test_bf16_linear_small_integers_exact(device, plan, case):
    M, IN, OUT = case
    rng = np.random.default_rng(2 * (M + IN + OUT))
    x, w, b, dy = ints(rng, (M, IN)), ints(rng, (OUT, IN)), ints(rng, (OUT,)), ints(rng, (M, OUT))
    X, W, B, DY = t(x, device), t(w, device), t(b, device), t(dy, device)
    with settings("highest", plan):
        got = (C._bf16_matmul("linear_forward", X, W, B).numpy(), C._bf16_matmul("linear_backward_data", DY, W).numpy(),
               C._bf16_matmul("linear_backward_weight", X, DY).numpy())
    dx, dw, _ = ref.linear_backward(x, w, dy)
    for name, g, r in zip(("forward", "backward data", "backward weight"), got, (ref.linear(x, w, b), dx, dw)):
        np.testing.assert_array_equal(g, bf16_round(r), err_msg=f"bf16 linear {case} {plan} {name}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_bf16_every_schedule(schedule):
    if "sim" not in vc.devices():
        pytest.skip("schedules are the emulator's")
    case = CONVS[0]
    x, w, b, dy = conv_case(case, np.random.default_rng(9), ints)
    for plan in ("small", "large:2"):
        with settings("highest", plan, schedule):
            got = bf16_conv("sim", x, w, b, dy, case[6], case[7])
        for g, r in zip(got, conv_reference(x, w, b, dy, case[6], case[7])):
            np.testing.assert_array_equal(g, bf16_round(r), err_msg=f"{schedule} {plan}")


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("plan", ["small", "large:3"])
@pytest.mark.parametrize("case", CONVS[:3], ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c) for c in CONVS[:3]])
def test_bf16_conv_random_within_format_bound(device, plan, case):
    # Inputs already bf16 values, so the only errors are float32 accumulation and the one output rounding.
    normal = lambda rng, s: bf16_round(rng.standard_normal(s))  # noqa: E731
    x, w, b, dy = conv_case(case, np.random.default_rng(17 + sum(case)), normal)
    stride, pad = case[6], case[7]
    with settings("highest", plan):
        got = bf16_conv(device, x, w, b, dy, stride, pad)
    want = conv_reference(x, w, b, dy, stride, pad)
    absref = conv_reference(np.abs(x), np.abs(w), np.zeros_like(b), np.abs(dy), stride, pad)
    absref = (absref[0] + np.abs(b), absref[1], absref[2])
    for name, g, r, a in zip(("forward", "backward data", "backward weight"), got, want, absref):
        err = np.abs(g.astype(np.float64) - r)
        bound = 2**-8 * np.abs(r) + 64 * 2**-24 * a * 1.01 + 1e-30
        assert (err <= bound).all(), f"bf16 conv {case} {plan} {name}: max err {err.max():.3g}"


def test_bf16_matmul_rejects_cpu_and_unknown_ops():
    x = t(np.ones((2, 4), np.float32), "cpu")
    with pytest.raises(ValueError, match="sim or cuda"):
        C._bf16_matmul("linear_forward", x, x)
    dev = GPU[0]
    y = t(np.ones((2, 4), np.float32), dev)
    with pytest.raises(ValueError, match="unknown op"):
        C._bf16_matmul("matmul", y, y)
