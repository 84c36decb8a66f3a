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
