"""Contract tests (DESIGN.md section 2): the error rules (ValueError/TypeError naming the op, the argument and the shapes; the process stays alive). Helpers and the PyTorch oracle: contract_helpers.py."""

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from contract_helpers import *  # noqa: F401,F403


def _raises(fn, opname=None):
    with pytest.raises((ValueError, TypeError)) as ei:
        fn()
    if opname:
        assert opname in str(ei.value).lower(), f"message does not name {opname!r}: {ei.value}"
    return ei.value


def test_errors_conv2d():
    x, w = x4(), x4((4, 3, 3, 3))
    _raises(lambda: F.conv2d(x4((5, 5, 3)), w), "conv2d")  # wrong rank
    _raises(lambda: F.conv2d(x, x4((4, 3, 3, 2))), "conv2d")  # channel mismatch
    _raises(lambda: F.conv2d(x, w, padding=-1), "conv2d")
    _raises(lambda: F.conv2d(x, w, stride=0), "conv2d")
    _raises(lambda: F.conv2d(x, x4((4, 7, 7, 3))), "conv2d")  # kernel larger than padded input
    _raises(lambda: F.conv2d(x, w, T(np.zeros(5), "float32")), "conv2d")  # bias length
    _raises(lambda: F.conv2d(x, x4((4, 3, 3, 3), "float64")), "conv2d")  # mixed dtypes
    if SIM:
        _raises(lambda: F.conv2d(x, x4((4, 3, 3, 3), device=SIM[0])), "conv2d")  # mixed devices
    _raises(lambda: F.conv2d("abc", w), "conv2d")


ERR_CASES = {
    "max_pool2d-rank": (lambda: F.max_pool2d(x4((5, 5, 3))), "max_pool2d"),
    "max_pool2d-k0": (lambda: F.max_pool2d(x4(), 0, 1), "max_pool2d"),
    "max_pool2d-s0": (lambda: F.max_pool2d(x4(), 2, 0), "max_pool2d"),
    "max_pool2d-k>input": (lambda: F.max_pool2d(x4(), 7, 1), "max_pool2d"),
    "avg_pool2d-rank": (lambda: F.avg_pool2d(x4((5, 5, 3))), "avg_pool2d"),
    "avg_pool2d-k0": (lambda: F.avg_pool2d(x4(), 0, 1), "avg_pool2d"),
    "avg_pool2d-k>input": (lambda: F.avg_pool2d(x4(), 6, 2), "avg_pool2d"),
    "lrn-size0": (lambda: F.local_response_norm(x4(), size=0), "local_response_norm"),
    "lrn-notensor": (lambda: F.local_response_norm(np.ones((1, 3, 3, 2))), "local_response_norm"),
    "linear-features": (lambda: F.linear(x4((2, 4)), x4((3, 5))), "linear"),
    "linear-bias": (lambda: F.linear(x4((2, 4)), x4((3, 4)), x4((2,))), "linear"),
    "linear-dtype": (lambda: F.linear(x4((2, 4)), x4((3, 4), "float64")), "linear"),
    "linear-rank-weight": (lambda: F.linear(x4((2, 4)), x4((3, 4, 1))), "linear"),
    "dropout-p>1": (lambda: F.dropout(x4(), p=1.5), "dropout"),
    "dropout-p<0": (lambda: F.dropout(x4(), p=-0.1), "dropout"),
    "relu-notensor": (lambda: F.relu("abc"), "relu"),
    "softmax-notensor": (lambda: F.softmax([1.0, 2.0]), "softmax"),
    "log_softmax-notensor": (lambda: F.log_softmax(None), "log_softmax"),
}


@pytest.mark.parametrize("case", list(ERR_CASES))
def test_errors_ops(case):
    fn, op = ERR_CASES[case]
    _raises(fn, op)


def test_errors_cross_entropy_labels():
    logits = x4((3, 4))
    _raises(lambda: F.cross_entropy(logits, np.array([0, 1, 4])), "cross_entropy")  # out of range
    _raises(lambda: F.cross_entropy(logits, np.array([0, -1, 2])), "cross_entropy")  # negative
    _raises(lambda: F.cross_entropy(logits, np.array([0, 1])), "cross_entropy")  # count mismatch
    _raises(lambda: F.cross_entropy(logits, np.array([0.5, 1.0, 2.0])), "cross_entropy")  # non-integer
    _raises(lambda: F.cross_entropy(x4((3,)), np.array([0, 1, 2])), "cross_entropy")  # wrong rank


def test_errors_tensor_and_devices():
    _raises(lambda: vc.tensor("abc"))
    _raises(lambda: vc.tensor(np.ones(3), device="tpu"))
    _raises(lambda: vc.tensor(np.ones(3), dtype="int32"))
    _raises(lambda: vc.tensor([[1.0, 2.0], [3.0]]))
    if not vc.cuda_available():
        _raises(lambda: vc.tensor(np.ones(3), device="cuda:0"))
    _raises(lambda: vc.tensor(np.ones(3)).to("nowhere"))
    _raises(lambda: vc.tensor(np.ones((2, 3))).reshape(4, 2))
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        vc.tensor(np.ones(3)).item()
    _raises(lambda: vc.optim.SGD([T(np.ones(2), requires_grad=True)], lr=-1.0))
    _raises(lambda: vc.optim.SGD([T(np.ones(2), requires_grad=True)], lr=0.1, nesterov=True))  # needs momentum


@pytest.mark.parametrize("device", SIM)
def test_errors_float64_on_sim(device):
    """sim runs float32 only: a float64 tensor there (or an op on it) must raise, not crash or silently work."""
    try:
        t = vc.tensor(np.ones((1, 3, 3, 2)), dtype="float64", device=device)
    except (ValueError, TypeError):
        return
    _raises(lambda: F.relu(t))


def test_process_alive_after_errors():
    y = F.relu(T(np.array([-1.0, 2.0])))
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0])

