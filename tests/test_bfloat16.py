"""The bfloat16 dtype: conversions (round to nearest even on crafted bit patterns), every VGG op on bfloat16 on the
GPU-style devices (sim, cuda), autograd through casts, and the dtype errors.

Tolerances come from bfloat16's 8-bit significand (7 stored bits): rounding a float32 to bfloat16 moves it by at most
half an ulp, a relative 2^-8 (BF16_U). Most non-matmul ops compute in float32 from the bfloat16 inputs and round
once, so they must equal the float32 kernel run on the same (bfloat16-valued) inputs, rounded: exact equality.
conv2d and linear accumulate in float32 in an order the kernel chooses, so they are held to
2^-8 |ref| (the output rounding) + n * 2^-24 * (|x| * |w|) (float32 accumulation of n products), and to exact
equality on small integers (integers up to 256 are exact in bfloat16, their float32 sums are exact too).
"""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore import _C
from vggcore.tensor import full

from conftest import GPU_DEVICES

BF16_U = 2.0 ** -8   # unit roundoff of bfloat16 (round to nearest)
F32_U = 2.0 ** -24   # unit roundoff of float32
CAST_DEVICES = ["cpu"] + GPU_DEVICES
needs_gpu = pytest.mark.skipif(not GPU_DEVICES, reason="no sim/cuda device in this build")


def from_bits(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bf16_bits(t):
    """The bfloat16 bit patterns of a bfloat16 tensor (numpy() widens exactly: the high half of the float32)."""
    assert t.dtype == "bfloat16"
    return (t.numpy().view(np.uint32) >> 16).astype(np.uint16)


def rounded(a):
    """float32 values rounded to bfloat16 (by the cpu cast, which test_round_to_nearest_even pins down)."""
    return vc.tensor(np.asarray(a, np.float32), dtype="bfloat16").numpy()


def on(device, a, dtype="bfloat16", requires_grad=False):
    return vc.tensor(np.asarray(a, np.float32), dtype=dtype, device=device, requires_grad=requires_grad)


# ---- conversions ---------------------------------------------------------------------------------------------------
CRAFTED = [  # float32 bits -> bfloat16 bits
    (0x3F800000, 0x3F80),  # 1.0 exact
    (0x3F808000, 0x3F80),  # 1 + 2^-8: a tie, kept half even -> down
    (0x3F818000, 0x3F82),  # a tie with an odd kept half -> up to even
    (0x3F808001, 0x3F81),  # just above the tie -> up
    (0x3F807FFF, 0x3F80),  # just below the tie -> down
    (0xBF818000, 0xBF82),  # negative tie, odd -> away from zero to even
    (0x80000000, 0x8000),  # -0.0 keeps its sign
    (0x7F800000, 0x7F80),  # +inf
    (0xFF800000, 0xFF80),  # -inf
    (0x7F7FFFFF, 0x7F80),  # FLT_MAX rounds past the largest bfloat16 -> inf
    (0x7F7F7FFF, 0x7F7F),  # just below that boundary: the largest bfloat16
    (0x7F7F8000, 0x7F80),  # the tie at the top (odd kept half) -> inf
    (0x00000001, 0x0000),  # smallest float32 subnormal -> +0
    (0x00008000, 0x0000),  # subnormal tie, even -> down
    (0x00018000, 0x0002),  # subnormal tie, odd -> up
    (0x00008001, 0x0001),  # above the tie -> smallest bfloat16 subnormal
    (0x807FFFFF, 0x8080),  # largest negative subnormal rounds up into the smallest normal
    (0x00FF8000, 0x0100),  # normal tie, odd -> carries into the exponent
]


@pytest.mark.parametrize("device", CAST_DEVICES)
def test_round_to_nearest_even(device):
    f32 = from_bits([b for b, _ in CRAFTED])
    got = bf16_bits(vc.tensor(f32, device=device).to(dtype="bfloat16"))
    want = np.array([b for _, b in CRAFTED], np.uint16)
    bad = [(hex(CRAFTED[i][0]), hex(got[i]), hex(want[i])) for i in np.nonzero(got != want)[0]]
    assert not bad, f"(float32 bits, got, want): {bad}"


@pytest.mark.parametrize("device", CAST_DEVICES)
def test_nan_stays_nan_with_its_sign(device):
    # 0x7F800001: a signalling NaN whose payload sits in the dropped half; plain rounding would make it inf.
    nans = from_bits([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFC00001])
    out = vc.tensor(nans, device=device).to(dtype="bfloat16")
    assert np.all(np.isnan(out.numpy()))
    np.testing.assert_array_equal(np.signbit(out.numpy()), np.signbit(nans))


@pytest.mark.parametrize("device", CAST_DEVICES)
def test_matches_torch_on_random_bit_patterns(device):
    torch = pytest.importorskip("torch")
    bits = np.random.default_rng(5).integers(0, 2 ** 32, size=40000, dtype=np.uint64).astype(np.uint32)
    bits[:4] = [0x3F808000, 0x3F818000, 0x00008000, 0x00018000]
    f32 = from_bits(bits)
    f32 = f32[~np.isnan(f32)]
    want = torch.from_numpy(f32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = bf16_bits(vc.tensor(f32, device=device).to(dtype="bfloat16"))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("device", CAST_DEVICES)
def test_every_bfloat16_widens_exactly_and_converts_back(device):
    patterns = np.arange(2 ** 16, dtype=np.uint32)
    f32 = (patterns << 16).view(np.float32)
    t = vc.tensor(f32, device=device).to(dtype="bfloat16")          # exact: the low halves are zero
    widened = t.to(dtype="float32").numpy()
    is_nan = np.isnan(f32)
    np.testing.assert_array_equal(widened.view(np.uint32)[~is_nan], (patterns << 16)[~is_nan])
    assert np.all(np.isnan(widened[is_nan]))
    # Non-NaN patterns survive the round trip bit for bit; NaNs come back quiet (bit 6 of the bfloat16 set).
    back = bf16_bits(t)
    np.testing.assert_array_equal(back[~is_nan], patterns[~is_nan].astype(np.uint16))
    np.testing.assert_array_equal(back[is_nan], patterns[is_nan].astype(np.uint16) | 0x40)


def test_float64_rounds_once():
    # 1 + 2^-8 + 2^-30 is above the bfloat16 tie at 1 + 2^-8; rounding to float32 first would land on the tie
    # and go to even (1.0). Exact ties still go to even.
    d = np.array([1 + 2.0 ** -8 + 2.0 ** -30, 1 + 2.0 ** -8, -(1 + 3 * 2.0 ** -8 - 2.0 ** -40), 1e300, 2.0 ** -140])
    got = vc.tensor(d).to(dtype="bfloat16")
    np.testing.assert_array_equal(bf16_bits(got), np.array([0x3F81, 0x3F80, 0xBF81, 0x7F80, 0x0000], np.uint16))
    np.testing.assert_array_equal(got.to(dtype="float64").numpy(), got.numpy().astype(np.float64))


@pytest.mark.parametrize("device", CAST_DEVICES)
def test_dtype_and_to(device):
    x = vc.tensor([[1.0, 2.5], [-3.0, 256.0]], device=device)
    b = x.to(dtype="bfloat16")
    assert b.dtype == "bfloat16" and b.device == x.device and b.shape == (2, 2)
    assert b._data.nbytes == 2 * 4 and x._data.nbytes == 4 * 4   # 2 bytes an element
    assert x.to("bfloat16").dtype == "bfloat16" and b.bfloat16() is b and x.float() is x
    assert b.numpy().dtype == np.float32
    np.testing.assert_array_equal(b.numpy(), [[1.0, 2.5], [-3.0, 256.0]])
    assert b.reshape(4).dtype == "bfloat16" and b.reshape(-1).shape == (4,)
    assert b.to(dtype="float32").dtype == "float32"
    for target in CAST_DEVICES:
        moved = x.to(target, "bfloat16")
        assert (moved.device, moved.dtype) == (vc.tensor([0.0], device=target).device, "bfloat16")
        np.testing.assert_array_equal(moved.to("cpu", dtype="float32").numpy(), x.numpy())
    c = vc.tensor(np.array([1.00390625, 3.0]), dtype="bfloat16", device=device)  # the tie 1 + 2^-8 -> 1.0
    np.testing.assert_array_equal(c.numpy(), [1.0, 3.0])
    z = vc.zeros(2, 3, dtype="bfloat16", device=device)
    assert z.dtype == "bfloat16" and not z.numpy().any()
    np.testing.assert_array_equal(vc.ones(3, dtype="bfloat16", device=device).numpy(), [1, 1, 1])


def test_dtype_errors():
    x = vc.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="dtype"):
        x.to(dtype="float16")
    with pytest.raises(TypeError, match="dtype"):
        vc.tensor([1.0], dtype="bf16")
    with pytest.raises(TypeError, match="relu.*bfloat16 on the cpu"):
        F.relu(x.to(dtype="bfloat16"))
    if GPU_DEVICES:
        with pytest.raises(TypeError, match="float64"):
            x.to(GPU_DEVICES[0], "float64")
        with pytest.raises(TypeError, match="float64"):
            x.to(GPU_DEVICES[0]).to(dtype="float64")


@needs_gpu
def test_mixed_dtypes_raise_type_error_naming_op_and_dtypes():
    device = GPU_DEVICES[0]
    g = np.random.default_rng(1)
    x32 = on(device, g.standard_normal((1, 5, 5, 3)), "float32")
    x16 = x32.to(dtype="bfloat16")
    w32 = on(device, g.standard_normal((4, 3, 3, 3)), "float32")
    cases = [
        ("conv2d", lambda: F.conv2d(x16, w32)),
        ("conv2d", lambda: F.conv2d(x16, w32.to(dtype="bfloat16"), on(device, np.ones(4), "float32"))),
        ("linear", lambda: F.linear(x16.reshape(1, -1), on(device, np.ones((2, 75)), "float32"))),
        ("add", lambda: x16 + x32),
    ]
    for op, call in cases:
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert message.startswith(op) and "bfloat16" in message and "float32" in message, message


# ---- autograd through casts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", CAST_DEVICES)
def test_gradient_of_a_cast_is_the_cast_back(device):
    x = vc.tensor([1.0, -2.0, 3.00390625], device=device, requires_grad=True)
    y = x.to(dtype="bfloat16")
    y.backward(vc.tensor([0.5, 1.00390625, -4.0], dtype="bfloat16", device=device))
    assert x.grad.dtype == "float32" and x.grad.device == x.device
    np.testing.assert_array_equal(x.grad.numpy(), [0.5, 1.0, -4.0])  # the bfloat16 gradient, widened exactly


@needs_gpu
def test_gradient_flows_through_device_and_dtype_changes():
    device = GPU_DEVICES[0]
    g = np.random.default_rng(2)
    xv = rounded(g.standard_normal((1, 4, 4, 2)))
    x = vc.tensor(xv, requires_grad=True)                         # float32 on the cpu
    h = F.relu(x.to(device, "bfloat16"))                          # cast on the cpu, move, relu in bfloat16
    loss = F.cross_entropy(h.reshape(2, 16), [3, 7])
    assert h.dtype == "bfloat16" and loss.dtype == "float32"
    loss.backward()
    assert x.grad.dtype == "float32" and x.grad.device == "cpu"
    ref = vc.tensor(xv, requires_grad=True)
    F.cross_entropy(F.relu(ref).reshape(2, 16), [3, 7]).backward()
    # The float32 path's gradient rounded once to bfloat16 (cross_entropy backward is float32, relu exact).
    np.testing.assert_array_equal(x.grad.numpy(), rounded(ref.grad.numpy()))


# ---- every VGG op on bfloat16, against the float32 kernel on the same values -------------------------------------
def fp32_then_round(fn, *arrays, device):
    out = fn(*(on(device, a, "float32") for a in arrays))
    return rounded(out.numpy())


def test_elementwise_ops_equal_the_rounded_float32_result(gpu_device):
    g = np.random.default_rng(3)
    a = rounded(g.standard_normal((3, 37)) * 3)
    b = rounded(g.standard_normal((3, 37)))
    a[0, :3] = [0.0, -0.0, np.inf]
    for name, fn in [("relu", F.relu), ("scale", lambda t: t * 0.3), ("neg", lambda t: -t),
                     ("dropout", lambda t: F.dropout(t, p=0.4, seed=99)), ("flatten", lambda t: t.reshape(-1))]:
        got = fn(on(gpu_device, a))
        assert got.dtype == "bfloat16", name
        np.testing.assert_array_equal(got.numpy(), fp32_then_round(fn, a, device=gpu_device), err_msg=name)
    np.testing.assert_array_equal((on(gpu_device, a) + on(gpu_device, b)).numpy(),
                                  fp32_then_round(lambda u, v: u + v, a, b, device=gpu_device))
    # dropout keeps exactly the float32 mask
    mask16 = F.dropout(on(gpu_device, np.ones((5, 41))), p=0.5, seed=1234).numpy() != 0
    mask32 = F.dropout(on(gpu_device, np.ones((5, 41)), "float32"), p=0.5, seed=1234).numpy() != 0
    np.testing.assert_array_equal(mask16, mask32)
    # relu backward: the gradient passes where x > 0
    x = on(gpu_device, a, requires_grad=True)
    F.relu(x).backward(on(gpu_device, b))
    assert x.grad.dtype == "bfloat16"
    np.testing.assert_array_equal(x.grad.numpy(), np.where(a > 0, b, 0))


POOLS = [("max_pool2d", lambda t: F.max_pool2d(t, 2, 2)), ("max_pool2d k3s2", lambda t: F.max_pool2d(t, 3, 2)),
         ("avg_pool2d", lambda t: F.avg_pool2d(t, 2, 2)), ("avg_pool2d k3s2", lambda t: F.avg_pool2d(t, 3, 2)),
         ("global_avg_pool2d", F.global_avg_pool2d),
         ("local_response_norm", lambda t: F.local_response_norm(t, size=5, alpha=5e-4 * 40, beta=0.75, k=2.0))]


@pytest.mark.parametrize("name,fn", POOLS, ids=[p[0] for p in POOLS])
def test_pool_and_lrn_forward_backward_equal_the_rounded_float32_result(gpu_device, name, fn):
    g = np.random.default_rng(4)
    x_np = rounded(g.standard_normal((2, 7, 9, 6)) * 2)
    x16 = on(gpu_device, x_np, requires_grad=True)
    y16 = fn(x16)
    assert y16.dtype == "bfloat16"
    x32 = on(gpu_device, x_np, "float32", requires_grad=True)
    y32 = fn(x32)
    np.testing.assert_array_equal(y16.numpy(), rounded(y32.numpy()))
    dy = rounded(g.standard_normal(y16.shape))
    y16.backward(on(gpu_device, dy))
    assert x16.grad.dtype == "bfloat16"
    if name == "local_response_norm":
        # backward reads the saved bfloat16 output; the float32 kernel given that same output must agree exactly
        _, scale = _C.lrn_forward(x32._data, 5, 5e-4 * 40, 0.75, 2.0)
        y_saved = _C.cast(_C.cast(y32._data, "bfloat16"), "float32")
        dx = _C.lrn_backward(x32._data, y_saved, scale, on(gpu_device, dy, "float32")._data, 5, 5e-4 * 40, 0.75, 2.0)
        want = rounded(dx.numpy())
    else:
        y32.backward(on(gpu_device, dy, "float32"))
        want = rounded(x32.grad.numpy())
    np.testing.assert_array_equal(x16.grad.numpy(), want)


def test_cross_entropy_on_bfloat16_logits_is_float32(gpu_device):
    g = np.random.default_rng(6)
    logits = rounded(g.standard_normal((3, 11)) * 4)
    labels = [0, 10, 4]
    x16 = on(gpu_device, logits, requires_grad=True)
    x32 = on(gpu_device, logits, "float32", requires_grad=True)
    y16, y32 = F.cross_entropy(x16, labels), F.cross_entropy(x32, labels)
    assert y16.dtype == "float32"
    np.testing.assert_array_equal(y16.numpy(), y32.numpy())      # same float32 math from the same values
    y16.backward()
    y32.backward()
    assert x16.grad.dtype == "bfloat16"
    np.testing.assert_array_equal(x16.grad.numpy(), rounded(x32.grad.numpy()))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("autocast", [False, True])
def test_softmax_family_on_bfloat16_is_float32_math_in_pytorchs_dtype(gpu_device, name, autocast):
    """PyTorch's rule: bfloat16 in, bfloat16 out (computed in float32, rounded once); inside autocast, which runs
    the softmax family in float32, a float32 result. The gradient into the bfloat16 input is the float32 one
    (from the unrounded output, with the output gradient as given) rounded once."""
    fn = getattr(F, name)
    g = np.random.default_rng(6)
    logits = rounded(g.standard_normal((3, 11)) * 4)
    x16 = on(gpu_device, logits, requires_grad=True)
    x32 = on(gpu_device, logits, "float32", requires_grad=True)
    with F.autocast("bfloat16", enabled=autocast):
        y16 = fn(x16)
    y32 = fn(x32)
    assert y16.dtype == ("float32" if autocast else "bfloat16")
    want = y32.numpy() if autocast else rounded(y32.numpy())
    np.testing.assert_array_equal(y16.numpy(), want)
    dy = rounded(g.standard_normal(y16.shape))
    y16.backward(on(gpu_device, dy, y16.dtype))
    y32.backward(on(gpu_device, dy, "float32"))
    assert x16.grad.dtype == "bfloat16"
    np.testing.assert_array_equal(x16.grad.numpy(), rounded(x32.grad.numpy()))


def test_bias_gradient_and_fill(gpu_device):
    g = np.random.default_rng(7)
    dy = rounded(g.standard_normal((3, 5, 7, 9)))
    got = _C.bias_backward(on(gpu_device, dy)._data)
    assert got.dtype == "bfloat16"
    want = _C.bias_backward(on(gpu_device, dy, "float32")._data).numpy()
    np.testing.assert_array_equal(got.numpy(), rounded(want))
    ints = g.integers(-3, 4, size=(40, 6)).astype(np.float32)       # column sums are small integers: exact
    np.testing.assert_array_equal(_C.bias_backward(on(gpu_device, ints)._data).numpy(), ints.sum(axis=0))
    np.testing.assert_array_equal(full((3,), 1.00390625, dtype="bfloat16", device=gpu_device).numpy(), [1, 1, 1])


def test_sgd_on_bfloat16_parameters(gpu_device):
    g = np.random.default_rng(8)
    p0, grad = rounded(g.standard_normal(37)), rounded(g.standard_normal(37))
    p = on(gpu_device, p0, requires_grad=True)
    opt = vc.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    p.grad = on(gpu_device, grad)
    opt.step()
    assert p.dtype == "bfloat16"
    want = p0.astype(np.float64) - 0.1 * (grad + 0.01 * p0.astype(np.float64))
    # the momentum buffer and the parameter are each rounded to bfloat16 once
    np.testing.assert_allclose(p.numpy(), want, rtol=2.5 * BF16_U, atol=0)


# ---- conv2d and linear: float32 accumulation, bfloat16 out -----------------------------------------------------------
def conv_reference(x, w, b, stride, pad):
    """float64 cpu conv of the given values, and the same of |x|, |w| (the accumulation error scale)."""
    t = lambda a: vc.tensor(np.asarray(a, np.float64))
    y = F.conv2d(t(x), t(w), t(b), stride, pad).numpy()
    mag = F.conv2d(t(np.abs(x)), t(np.abs(w)), t(np.abs(b)), stride, pad).numpy()
    return y, mag


def assert_matmul_close(got, ref, mag, n_terms, what):
    bound = BF16_U * np.abs(ref) + n_terms * F32_U * mag * 1.01
    excess = np.abs(got.astype(np.float64) - ref) - bound
    assert excess.max() <= 0, f"{what}: error exceeds 2^-8|ref| + n 2^-24 (|x||w|) by {excess.max():.3g}"


CONV_CASES = [((1, 5, 6, 3), (17, 3, 3, 3), 1, 1), ((2, 7, 5, 13), (9, 3, 3, 13), 2, 1),
              ((1, 4, 4, 8), (5, 1, 1, 8), 1, 0)]


@pytest.mark.parametrize("xs,ws,stride,pad", CONV_CASES)
def test_conv2d_bfloat16_small_integers_are_exact(gpu_device, xs, ws, stride, pad):
    g = np.random.default_rng(9)
    x = g.integers(-2, 3, size=xs).astype(np.float32)
    w = g.integers(-2, 3, size=ws).astype(np.float32)
    b = g.integers(-4, 5, size=ws[0]).astype(np.float32)
    xt, wt, bt = (on(gpu_device, a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride, pad)
    assert y.dtype == "bfloat16"
    ref, _ = conv_reference(x, w, b, stride, pad)
    assert np.abs(ref).max() <= 256            # every output an integer that bfloat16 holds exactly
    np.testing.assert_array_equal(y.numpy(), ref)
    dy = g.integers(-1, 2, size=y.shape).astype(np.float32)
    y.backward(on(gpu_device, dy))
    x64, w64, b64 = (vc.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b))
    F.conv2d(x64, w64, b64, stride, pad).backward(vc.tensor(dy.astype(np.float64)))
    for name, got, want in [("dx", xt.grad, x64.grad), ("dw", wt.grad, w64.grad), ("db", bt.grad, b64.grad)]:
        assert got.dtype == "bfloat16", name
        assert np.abs(want.numpy()).max() <= 256, name
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=name)


@pytest.mark.parametrize("xs,ws,stride,pad", CONV_CASES)
def test_conv2d_bfloat16_within_the_format_bound(gpu_device, xs, ws, stride, pad):
    g = np.random.default_rng(10)
    x, w, b = (rounded(g.standard_normal(s)) for s in (xs, ws, (ws[0],)))
    xt, wt, bt = (on(gpu_device, a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride, pad)
    ref, mag = conv_reference(x, w, b, stride, pad)
    n = ws[1] * ws[2] * ws[3] + 1
    assert_matmul_close(y.numpy(), ref, mag, n, "conv2d forward")
    dy = rounded(g.standard_normal(y.shape))
    y.backward(on(gpu_device, dy))
    x64, w64 = (vc.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w))
    F.conv2d(x64, w64, None, stride, pad).backward(vc.tensor(dy.astype(np.float64)))
    ax64, aw64 = (vc.tensor(np.abs(a).astype(np.float64), requires_grad=True) for a in (x, w))
    F.conv2d(ax64, aw64, None, stride, pad).backward(vc.tensor(np.abs(dy).astype(np.float64)))
    assert_matmul_close(xt.grad.numpy(), x64.grad.numpy(), ax64.grad.numpy(), ws[0] * ws[1] * ws[2], "conv2d dx")
    assert_matmul_close(wt.grad.numpy(), w64.grad.numpy(), aw64.grad.numpy(), int(np.prod(y.shape[:3])),
                        "conv2d dw")


@pytest.mark.parametrize("m,n_in,n_out", [(1, 7, 3), (5, 33, 17)])
def test_linear_bfloat16(gpu_device, m, n_in, n_out):
    g = np.random.default_rng(11)
    # exact on small integers
    x, w, b = (g.integers(-2, 3, size=s).astype(np.float32) for s in ((m, n_in), (n_out, n_in), (n_out,)))
    xt, wt, bt = (on(gpu_device, a, requires_grad=True) for a in (x, w, b))
    y = F.linear(xt, wt, bt)
    assert y.dtype == "bfloat16"
    np.testing.assert_array_equal(y.numpy(), x @ w.T + b)
    dy = g.integers(-2, 3, size=(m, n_out)).astype(np.float32)
    y.backward(on(gpu_device, dy))
    np.testing.assert_array_equal(xt.grad.numpy(), dy @ w)
    np.testing.assert_array_equal(wt.grad.numpy(), dy.T @ x)
    np.testing.assert_array_equal(bt.grad.numpy(), dy.sum(axis=0))
    # random values within the bound
    x, w = rounded(g.standard_normal((m, n_in))), rounded(g.standard_normal((n_out, n_in)))
    y = F.linear(on(gpu_device, x), on(gpu_device, w)).numpy()
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert_matmul_close(y, x64 @ w64.T, np.abs(x64) @ np.abs(w64).T, n_in, "linear forward")
