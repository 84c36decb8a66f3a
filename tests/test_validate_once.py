"""Arguments are validated once, in dispatch, and what was checked is carried on:

- the GPU kernels' 32-bit size limits are checked by dispatch, so a problem too large for them is a ValueError
  naming the op before anything is allocated or launched (not a RuntimeError from the backend);
- cross-entropy labels are range-checked once, by the forward, which returns them on the logits' device; the
  backward takes those (dtype, shape and device checked, no host round trip) and refuses anything else.
"""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore import _C

import reference as ref
from gradcheck import assert_close

GPU_LIKE = [d for d in vc.devices() if d != "cpu"]
needs_gpu_like = pytest.mark.skipif(not GPU_LIKE, reason="needs the sim or a cuda device")
WIDE = 65535 * 64 + 1  # one column more than the GPU GEMM's grid can hold


@needs_gpu_like
@pytest.mark.parametrize("device", GPU_LIKE)
def test_gemm_too_wide_for_the_gpu_is_a_value_error_from_dispatch(device):
    # 16 MB operands whose GEMM has WIDE columns: linear forward (N = OUT) and a 1x1 conv (N = K)
    x = vc.tensor(np.ones((1, 1), np.float32), device=device)
    w = vc.tensor(np.zeros((WIDE, 1), np.float32), device=device)
    with pytest.raises(ValueError, match=r"linear: on .*N = 4194241.*GPU kernels' limits"):
        F.linear(x, w)
    with pytest.raises(ValueError, match=r"conv2d: on .*N = 4194241"):
        F.conv2d(x.reshape(1, 1, 1, 1), w.reshape(WIDE, 1, 1, 1))
    # the data gradient's columns are the input channels
    dy = vc.tensor(np.ones((1, 1, 1, 1), np.float32), device=device)
    with pytest.raises(ValueError, match=r"conv2d_backward_data: on .*N = 4194241"):
        _C.conv2d_backward_data(dy._data, vc.tensor(np.zeros((1, 1, 1, WIDE), np.float32), device=device)._data,
                                [1, 1, 1, WIDE], 1, 0)


def test_the_same_wide_gemm_runs_on_the_cpu():
    y = F.linear(vc.tensor(np.ones((1, 1), np.float32)), vc.tensor(np.full((WIDE, 1), 2.0, np.float32)))
    assert y.shape == (1, WIDE) and float(y.numpy().min()) == 2.0


@pytest.mark.parametrize("device", vc.devices())
def test_cross_entropy_labels_are_checked_once_and_kept_on_the_device(device, rng):
    logits = rng.uniform(-2, 2, (5, 7))
    target = np.array([0, 6, 3, 3, 1])
    engine_target = vc.tensor(target.astype(np.float32))._data  # any engine tensor of the wrong dtype
    labels_cpu = _C.Tensor.from_numpy(target.astype(np.int64), "cpu")
    x = vc.tensor(logits, dtype="float32", device=device)
    loss, logp, labels = _C.cross_entropy_forward(x._data, labels_cpu)
    assert labels.device == device and labels.dtype == "int64"
    np.testing.assert_array_equal(labels.numpy(), target)
    dloss = _C.full([], 1.0, "float32", device)
    dx = _C.cross_entropy_backward(logp, labels, dloss)
    assert_close(dx.numpy(), ref.cross_entropy_backward(logits.astype(np.float32), target), 1e-5, "dlogits")
    # backward takes only what the forward returned: int64, one label per row, on logp's device
    with pytest.raises(TypeError, match="cross_entropy_backward: labels must be the int64 labels"):
        _C.cross_entropy_backward(logp, engine_target, dloss)
    with pytest.raises(ValueError, match=r"cross_entropy_backward: labels \(4,\)"):
        _C.cross_entropy_backward(logp, _C.Tensor.from_numpy(target[:4].astype(np.int64), "cpu").to(device), dloss)
    if device != "cpu":
        with pytest.raises(ValueError, match="as cross_entropy_forward returned them"):
            _C.cross_entropy_backward(logp, labels_cpu, dloss)
    # the forward still refuses labels out of range, once
    with pytest.raises(ValueError, match=r"target\[1\] = 7 is out of range for 7 classes"):
        _C.cross_entropy_forward(x._data, _C.Tensor.from_numpy(np.array([0, 7, 0, 0, 0], np.int64), "cpu"))


def test_loss_backward_uses_the_labels_saved_by_the_forward(rng):
    logits = vc.tensor(rng.uniform(-2, 2, (4, 3)), requires_grad=True)
    target = np.array([2, 0, 1, 1])
    loss = F.cross_entropy(logits, target)
    saved_logp, saved_labels = loss.grad_fn.saved_tensors
    np.testing.assert_array_equal(saved_labels.numpy(), target)
    loss.backward()
    assert_close(logits.grad, ref.cross_entropy_backward(logits.numpy(), target), 1e-12, "dlogits")


# A 3x2 filter with stride 2 and padding 1: the CPU's data gradient runs as a convolution padded differently along
# each axis, the GPU's gathers dy through both strides.
X_SHAPE, W_SHAPE, STRIDE, PAD = (2, 7, 6, 3), (4, 3, 2, 3), 2, 1


def _conv_inputs(rng, device):
    # small integers: every sum is exact in float32, so both paths and the reference agree to the bit
    x = rng.integers(-3, 4, X_SHAPE).astype(np.float32)
    w = rng.integers(-3, 4, W_SHAPE).astype(np.float32)
    return x, w, vc.tensor(x, device=device)._data, vc.tensor(w, device=device)._data


@pytest.mark.parametrize("device", vc.devices())
def test_conv2d_forward_returns_the_geometry_its_backward_passes_take(device, rng):
    x, w, X, W = _conv_inputs(rng, device)
    y, shape = _C.conv2d_forward_with_shape(X, W, None, STRIDE, PAD)
    assert isinstance(shape, _C.Conv2dShape)
    assert (shape.N, shape.H, shape.W, shape.C, shape.K, shape.R, shape.S) == (2, 7, 6, 3, 4, 3, 2)
    assert (shape.stride_h, shape.stride_w, shape.pad_h, shape.pad_w, shape.P, shape.Q) == (2, 2, 1, 1, 4, 4)
    np.testing.assert_array_equal(y.numpy(), ref.conv2d(x, w, stride=STRIDE, padding=PAD))
    dy = rng.integers(-3, 4, y.shape).astype(np.float32)
    DY = vc.tensor(dy, device=device)._data
    dx_ref, dw_ref, _ = ref.conv2d_backward(x, w, dy, stride=STRIDE, padding=PAD)
    dx = _C.conv2d_backward_data(DY, W, shape).numpy()
    dw = _C.conv2d_backward_weight(X, DY, shape).numpy()
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    # the bindings that take the shapes, stride and padding (and validate them again) give the same bits
    np.testing.assert_array_equal(_C.conv2d_backward_data(DY, W, list(X_SHAPE), STRIDE, PAD).numpy(), dx)
    np.testing.assert_array_equal(_C.conv2d_backward_weight(X, DY, list(W_SHAPE), STRIDE, PAD).numpy(), dw)


@pytest.mark.parametrize("device", vc.devices())
def test_backward_with_the_forward_geometry_refuses_tensors_it_does_not_describe(device, rng):
    x, w, X, W = _conv_inputs(rng, device)
    y, shape = _C.conv2d_forward_with_shape(X, W, None, STRIDE, PAD)
    dy = vc.tensor(np.ones(y.shape, np.float32), device=device)._data
    wrong_dy = vc.tensor(np.ones((2, 4, 3, 4), np.float32), device=device)._data
    with pytest.raises(ValueError, match=r"conv2d_backward_data: grad_output .*\(2, 4, 4, 4\)"):
        _C.conv2d_backward_data(wrong_dy, W, shape)
    with pytest.raises(ValueError, match=r"conv2d_backward_data: weight"):
        _C.conv2d_backward_data(dy, vc.tensor(np.ones((4, 2, 3, 3), np.float32), device=device)._data, shape)
    with pytest.raises(ValueError, match=r"conv2d_backward_weight: input"):
        _C.conv2d_backward_weight(vc.tensor(np.ones((2, 6, 7, 3), np.float32), device=device)._data, dy, shape)
    with pytest.raises(ValueError, match=r"conv2d_backward_weight: grad_output"):
        _C.conv2d_backward_weight(X, wrong_dy, shape)
    with pytest.raises(TypeError, match=r"conv2d_backward_weight: "):
        _C.conv2d_backward_weight(X, vc.tensor(np.ones(y.shape, np.float64), device="cpu")._data, shape)


def test_a_conv2d_geometry_is_only_made_by_the_forward():
    with pytest.raises(TypeError):
        _C.Conv2dShape()
    _, shape = _C.conv2d_forward_with_shape(vc.tensor(np.ones(X_SHAPE, np.float32))._data,
                                            vc.tensor(np.ones(W_SHAPE, np.float32))._data, None, STRIDE, PAD)
    with pytest.raises(AttributeError):
        shape.P = 100
    assert "stride 2, pad 1" in repr(shape)


def test_the_autograd_context_keeps_the_forward_geometry(rng):
    x = vc.tensor(rng.integers(-3, 4, X_SHAPE).astype(np.float32), requires_grad=True)
    w = vc.tensor(rng.integers(-3, 4, W_SHAPE).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w, stride=STRIDE, padding=PAD)
    assert isinstance(y.grad_fn.geometry, _C.Conv2dShape) and (y.grad_fn.geometry.P, y.grad_fn.geometry.Q) == (4, 4)
    dy = rng.integers(-3, 4, y.shape).astype(np.float32)
    y.backward(vc.tensor(dy))
    dx_ref, dw_ref, _ = ref.conv2d_backward(x.numpy(), w.numpy(), dy, stride=STRIDE, padding=PAD)
    np.testing.assert_array_equal(x.grad.numpy(), dx_ref)
    np.testing.assert_array_equal(w.grad.numpy(), dw_ref)
