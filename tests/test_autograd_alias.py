"""Every leaf's .grad owns its storage, even when a pass-through backward (a + b) hands one gradient tensor to
several inputs: the data-parallel all-reduce sums gradients in place on another thread, and a shared storage
summed twice gave one parameter 4x the gradient instead of 2x, depending on timing."""
import numpy as np
import pytest

import vggcore as vc
from vggcore.nn import functional as F

DEVICES = [d for d in ("cpu", "sim") if d in vc.devices()]


@pytest.mark.parametrize("device", DEVICES)
def test_pass_through_gradients_get_their_own_storage(device):
    rng = np.random.default_rng(0)
    a = vc.tensor(rng.integers(-3, 4, (4, 7)).astype(np.float32), device=device, requires_grad=True)
    b = vc.tensor(rng.integers(-3, 4, (4, 7)).astype(np.float32), device=device, requires_grad=True)
    c = vc.tensor(rng.integers(-3, 4, (28,)).astype(np.float32), device=device, requires_grad=True)
    x = vc.tensor(rng.integers(-3, 4, (3, 7)).astype(np.float32), device=device)
    dy = rng.integers(-3, 4, (3, 4)).astype(np.float32)
    (F.linear(x, a + b + c.reshape(4, 7))).backward(vc.tensor(dy, device=device))
    expected = dy.T @ x.numpy()              # d/dW of x W^T, the same for all three
    grads = [a.grad, b.grad, c.grad]
    for g in grads:
        np.testing.assert_array_equal(g.numpy().reshape(4, 7), expected)
    starts = [g._data.data_ptr for g in grads]
    assert len(set(starts)) == 3, starts

