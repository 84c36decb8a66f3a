"""Bad input to every public function raises ValueError/TypeError naming the op, and the process lives on.

Op errors run on every device (dispatch validates before choosing a backend, so the emulator is cheap here).
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from conftest import DEVICES
from gradcheck import to_np

ERR = (ValueError, TypeError)


def T(shape, dev="cpu", dt="float32", requires_grad=False):
    return vc.tensor(np.ones(shape, dtype=dt), dtype=dt, device=dev, requires_grad=requires_grad)


def x4(dev, C=3, H=7, W=5):
    return T((2, H, W, C), dev)


# (id, match, call(dev)): each must raise ValueError or TypeError whose message matches `match`.
OP_ERRORS = [
    ("conv2d-x-rank3", "conv2d", lambda d: F.conv2d(T((7, 5, 3), d), T((4, 3, 3, 3), d))),
    ("conv2d-x-rank5", "conv2d", lambda d: F.conv2d(T((1, 2, 7, 5, 3), d), T((4, 3, 3, 3), d))),
    ("conv2d-w-rank3", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3), d))),
    ("conv2d-channels", "conv2d", lambda d: F.conv2d(x4(d, C=3), T((4, 3, 3, 4), d))),
    ("conv2d-bias-length", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), T((5,), d))),
    ("conv2d-bias-rank", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), T((1, 4), d))),
    ("conv2d-negative-padding", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), padding=-1)),
    ("conv2d-zero-stride", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), stride=0)),
    ("conv2d-negative-stride", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), stride=-2)),
    ("conv2d-float-stride", "conv2d", lambda d: F.conv2d(x4(d), T((4, 3, 3, 3), d), stride=1.5)),
    ("conv2d-kernel-too-large", "conv2d", lambda d: F.conv2d(T((1, 3, 3, 3), d), T((4, 5, 5, 3), d))),
    ("conv2d-kernel-too-large-padded", "conv2d",
     lambda d: F.conv2d(T((1, 3, 4, 3), d), T((4, 7, 7, 3), d), padding=1)),
    ("conv2d-x-not-tensor", "conv2d", lambda d: F.conv2d("abc", T((4, 3, 3, 3), d))),
    ("conv2d-w-none", "conv2d", lambda d: F.conv2d(x4(d), None)),
    ("linear-features", "linear", lambda d: F.linear(T((2, 5), d), T((3, 4), d))),
    ("linear-w-rank1", "linear", lambda d: F.linear(T((2, 5), d), T((5,), d))),
    ("linear-w-rank3", "linear", lambda d: F.linear(T((2, 5), d), T((3, 5, 1), d))),
    ("linear-bias-length", "linear", lambda d: F.linear(T((2, 5), d), T((3, 5), d), T((4,), d))),
    ("linear-bias-rank", "linear", lambda d: F.linear(T((2, 5), d), T((3, 5), d), T((3, 1), d))),
    ("relu-not-tensor", "relu", lambda d: F.relu([1.0, -1.0])),
    ("max_pool2d-rank3", "max_pool2d", lambda d: F.max_pool2d(T((7, 5, 3), d))),
    ("max_pool2d-window-too-large", "max_pool2d", lambda d: F.max_pool2d(T((1, 1, 1, 3), d), 2, 2)),
    ("max_pool2d-window-too-wide", "max_pool2d", lambda d: F.max_pool2d(T((1, 5, 2, 3), d), 3, 2)),
    ("max_pool2d-zero-kernel", "max_pool2d", lambda d: F.max_pool2d(x4(d), 0, 2)),
    ("max_pool2d-zero-stride", "max_pool2d", lambda d: F.max_pool2d(x4(d), 2, 0)),
    ("max_pool2d-negative-stride", "max_pool2d", lambda d: F.max_pool2d(x4(d), 2, -1)),
    ("avg_pool2d-rank3", "avg_pool2d", lambda d: F.avg_pool2d(T((7, 5, 3), d))),
    ("avg_pool2d-window-too-large", "avg_pool2d", lambda d: F.avg_pool2d(T((1, 2, 2, 3), d), 3, 1)),
    ("avg_pool2d-zero-kernel", "avg_pool2d", lambda d: F.avg_pool2d(x4(d), 0, 2)),
    ("avg_pool2d-zero-stride", "avg_pool2d", lambda d: F.avg_pool2d(x4(d), 2, 0)),
    ("lrn-size-0", "local_response_norm", lambda d: F.local_response_norm(x4(d), size=0)),
    ("lrn-size-negative", "local_response_norm", lambda d: F.local_response_norm(x4(d), size=-3)),
    ("lrn-not-tensor", "local_response_norm", lambda d: F.local_response_norm(np.ones((1, 2, 2, 3)))),
    ("cross_entropy-label-too-large", "cross_entropy",
     lambda d: F.cross_entropy(T((3, 5), d), np.array([0, 5, 1]))),
    ("cross_entropy-label-negative", "cross_entropy",
     lambda d: F.cross_entropy(T((3, 5), d), np.array([0, -1, 1]))),
    ("cross_entropy-labels-too-few", "cross_entropy", lambda d: F.cross_entropy(T((3, 5), d), np.array([0, 1]))),
    ("cross_entropy-labels-too-many", "cross_entropy",
     lambda d: F.cross_entropy(T((3, 5), d), np.array([0, 1, 2, 3]))),
    ("cross_entropy-labels-non-integer", "cross_entropy",
     lambda d: F.cross_entropy(T((3, 5), d), np.array([0.5, 1.0, 2.0]))),
    ("cross_entropy-labels-2d", "cross_entropy",
     lambda d: F.cross_entropy(T((3, 5), d), np.array([[0], [1], [2]]))),
    ("cross_entropy-labels-string", "cross_entropy", lambda d: F.cross_entropy(T((3, 5), d), "abc")),
    ("dropout-p-negative", "dropout", lambda d: F.dropout(x4(d), p=-0.1)),
    ("dropout-p-above-1", "dropout", lambda d: F.dropout(x4(d), p=1.5)),
    ("dropout-p-nan", "dropout", lambda d: F.dropout(x4(d), p=float("nan"))),
]


@pytest.mark.parametrize("case", OP_ERRORS, ids=[c[0] for c in OP_ERRORS])
def test_op_rejects_bad_input(device, case):
    _, match, call = case
    with pytest.raises(ERR, match=match):
        call(device)


def test_mixed_dtypes():
    x64, w32 = T((1, 5, 5, 3), dt="float64"), T((4, 3, 3, 3), dt="float32")
    with pytest.raises(ERR, match="conv2d"):
        F.conv2d(T((1, 5, 5, 3)), T((4, 3, 3, 3), dt="float64"))
    with pytest.raises(ERR, match="conv2d"):
        F.conv2d(x64, w32)
    with pytest.raises(ERR, match="conv2d"):
        F.conv2d(T((1, 5, 5, 3)), w32, T((4,), dt="float64"))
    with pytest.raises(ERR, match="linear"):
        F.linear(T((2, 5)), T((3, 5), dt="float64"))
    with pytest.raises(ERR, match="linear"):
        F.linear(T((2, 5)), T((3, 5)), T((3,), dt="float64"))


@pytest.mark.skipif(len(DEVICES) < 2, reason="needs a second device")
def test_mixed_devices():
    other = DEVICES[1]
    with pytest.raises(ERR, match="conv2d"):
        F.conv2d(T((1, 5, 5, 3)), T((4, 3, 3, 3), other))
    with pytest.raises(ERR, match="conv2d"):
        F.conv2d(T((1, 5, 5, 3), other), T((4, 3, 3, 3), other), T((4,)))
    with pytest.raises(ERR, match="linear"):
        F.linear(T((2, 5), other), T((3, 5)))


@pytest.mark.parametrize("dev", ["sim", "cuda:0"])
def test_float64_rejected_on_float32_devices(dev):
    if dev not in DEVICES:
        pytest.skip(f"{dev} not available")
    with pytest.raises(TypeError):
        vc.tensor(np.ones(3), device=dev)
    with pytest.raises(TypeError):
        vc.tensor([1.0, 2.0], dtype="float64", device=dev)
    with pytest.raises(TypeError):
        vc.tensor(np.ones(3)).to(dev)


def _absent_cuda():
    n = 0
    while f"cuda:{n}" in DEVICES:
        n += 1
    return [f"cuda:{max(n, 7)}"] + ([] if "cuda:0" in DEVICES else ["cuda"])


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "", "CPU0"] + _absent_cuda())
def test_unknown_device(bad):
    with pytest.raises(ERR):
        vc.tensor([1.0], device=bad)
    with pytest.raises(ERR):
        vc.tensor([1.0]).to(bad)


@pytest.mark.parametrize("data", ["abc", None, [[1.0, 2.0], [3.0]], [1.0, "a"], {"a": 1}, object(),
                                  np.array(["x", "y"]), [[[1.0]], [2.0]]], ids=["str", "None", "ragged",
                                                                              "mixed", "dict", "object",
                                                                              "str-array", "ragged-depth"])
def test_tensor_rejects_non_numeric_data(data):
    with pytest.raises(ERR):
        vc.tensor(data)


@pytest.mark.parametrize("dtype", ["int32", "float16", "bf16", "f32", 3])
def test_tensor_rejects_unknown_dtype(dtype):
    with pytest.raises(ERR):
        vc.tensor([1.0, 2.0], dtype=dtype)


@pytest.mark.parametrize("shape", [(4,), (5, 2), (2, 4), (-1, 7), (0, 6)])
def test_reshape_to_incompatible_size(device, shape):
    with pytest.raises(ERR, match="reshape"):
        T((2, 3), device).reshape(*shape)


def test_backward_without_requires_grad():
    t = T((2, 3))
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        t.backward(T((2, 3)))
    y = F.relu(t)
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        y.backward(T((2, 3)))


def test_backward_with_wrong_grad():
    x = T((2, 3), requires_grad=True)
    y = F.relu(x)
    with pytest.raises(ERR):
        y.backward(T((3, 2)))
    with pytest.raises(ERR):
        y.backward(T((2, 3), dt="float64"))


def test_item_on_many_elements():
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        T((2,)).item()
    with pytest.raises((ValueError, TypeError, RuntimeError)):
        T((0,)).item()


def test_optimizer_bad_arguments():
    p = T((3,), requires_grad=True)
    for kwargs in (dict(lr=-0.1), dict(lr=0.1, momentum=-0.5), dict(lr=0.1, weight_decay=-1.0),
                   dict(lr=0.1, nesterov=True)):  # nesterov needs momentum > 0 (as in PyTorch)
        with pytest.raises(ERR):
            vc.optim.SGD([p], **kwargs)
    with pytest.raises(ERR):
        vc.optim.SGD([], lr=0.1)


def test_process_alive_and_ops_still_work(device):
    y = F.relu(vc.tensor(np.array([-1.0, 2.0], dtype=np.float32), device=device))
    np.testing.assert_array_equal(to_np(y), [0.0, 2.0])


def test_errors_do_not_abort_a_fresh_interpreter():
    """Every bad call in a child process: it must finish normally (no abort(), exit() or crash)."""
    script = textwrap.dedent("""
        import numpy as np, vggcore as vc, vggcore.nn.functional as F
        def T(shape, dev): return vc.tensor(np.ones(shape, np.float32), device=dev)
        for dev in vc.devices():
            for call in (lambda: F.conv2d(T((1, 5, 5, 3), dev), T((4, 3, 3, 4), dev)),
                         lambda: F.conv2d(T((1, 2, 2, 3), dev), T((4, 5, 5, 3), dev)),
                         lambda: F.max_pool2d(T((1, 1, 1, 3), dev), 2, 2),
                         lambda: F.cross_entropy(T((2, 3), dev), np.array([3, -1])),
                         lambda: F.linear(T((2, 5), dev), T((3, 4), dev)),
                         lambda: F.local_response_norm(T((1, 2, 2, 3), dev), size=0),
                         lambda: F.dropout(T((2, 3), dev), p=2.0),
                         lambda: F.conv2d(T((1, 5, 5, 3), dev), T((4, 3, 3, 3), dev), stride=0)):
                try:
                    call()
                except (ValueError, TypeError):
                    pass
                else:
                    raise SystemExit(f"no error on {dev}")
        print("ALIVE")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0 and "ALIVE" in r.stdout, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
