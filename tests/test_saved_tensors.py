"""Autograd saves what backward needs when the forward runs (save_for_backward), frees it after backward, and
refuses a second backward through a freed graph (as PyTorch) unless the first kept it with retain_graph=True."""
import ast
import pathlib

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore.autograd import AutogradError

import reference as ref
from gradcheck import assert_close


def small_net():
    vc.manual_seed(3)
    return vc.nn.Sequential(vc.nn.Conv2d(2, 3, 3, padding=1), vc.nn.ReLU(), vc.nn.Flatten(), vc.nn.Linear(3 * 4 * 4, 2))


def grads(model):
    return {name: p.grad.numpy().astype(np.float64) for name, p in model.named_parameters()}


def undisturbed_grads(x, dy):
    """The gradients of small_net() when nothing happens between its forward and backward."""
    model = small_net()
    model.forward(vc.tensor(x, dtype="float32")).backward(vc.tensor(dy, dtype="float32"))
    return grads(model)


@pytest.fixture
def batch(rng):
    return rng.uniform(-1, 1, (2, 4, 4, 2)), rng.uniform(-1, 1, (2, 2))


def test_load_state_dict_between_forward_and_backward_keeps_the_gradient(batch):
    x, dy = batch
    expected = undisturbed_grads(x, dy)

    model = small_net()
    y = model.forward(vc.tensor(x, dtype="float32"))
    # other weights before backward: the gradient is still that of the forward that ran
    model.load_state_dict({name: np.full(p.shape, 0.5, np.float32) for name, p in model.named_parameters()})
    y.backward(vc.tensor(dy, dtype="float32"))
    for name, g in grads(model).items():
        np.testing.assert_array_equal(g, expected[name], err_msg=name)


def test_conv_gradient_uses_the_forward_weight(rng):
    x, w = rng.uniform(-1, 1, (1, 5, 4, 2)), rng.uniform(-1, 1, (3, 3, 3, 2))
    xt, wt = vc.tensor(x, requires_grad=True), vc.tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1)
    wt._data = vc.tensor(np.zeros_like(w))._data  # what load_state_dict does to a parameter
    dy = rng.uniform(-1, 1, y.shape)
    y.backward(vc.tensor(dy))
    dx, dw, _ = ref.conv2d_backward(x, w, dy, 1, 1)
    assert_close(xt.grad, dx, 1e-12, "grad x from the saved weight")
    assert_close(wt.grad, dw, 1e-12, "grad weight")


@pytest.mark.skipif("sim" not in vc.devices(), reason="needs a second device (sim)")
def test_module_to_between_forward_and_backward_keeps_the_gradient(batch):
    x, dy = batch
    expected = undisturbed_grads(x, dy)

    model = small_net()
    y = model.forward(vc.tensor(x, dtype="float32"))
    model.to("sim")
    y.backward(vc.tensor(dy, dtype="float32"))
    for name, p in model.named_parameters():
        assert p.grad.device == "sim", f"{name}: the gradient follows its parameter to {p.device}"
        np.testing.assert_array_equal(p.grad.numpy(), expected[name], err_msg=name)


def test_second_backward_through_a_freed_graph_raises_and_changes_nothing(rng):
    x = vc.tensor(rng.uniform(-1, 1, (3, 4)), requires_grad=True)
    w = vc.tensor(rng.uniform(-1, 1, (2, 4)), requires_grad=True)
    y = F.relu(F.linear(x, w))
    dy = vc.tensor(rng.uniform(-1, 1, (3, 2)))
    y.backward(dy)
    first_x, first_w = x.grad.numpy(), w.grad.numpy()
    with pytest.raises(AutogradError, match="retain_graph=True"):
        y.backward(dy)
    with pytest.raises(RuntimeError):  # PyTorch's exception type too
        y.backward(dy)
    np.testing.assert_array_equal(x.grad.numpy(), first_x)
    np.testing.assert_array_equal(w.grad.numpy(), first_w)


def test_retain_graph_allows_a_second_backward_that_accumulates(rng):
    x = vc.tensor(rng.uniform(-1, 1, (1, 5, 5, 2)), requires_grad=True)
    w = vc.tensor(rng.uniform(-1, 1, (3, 3, 3, 2)), requires_grad=True)
    y = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2, 2)
    dy = vc.tensor(rng.uniform(-1, 1, y.shape))
    y.backward(dy, retain_graph=True)
    once_x, once_w = x.grad.numpy(), w.grad.numpy()
    y.backward(dy)  # the graph was kept; this one frees it
    np.testing.assert_allclose(x.grad.numpy(), 2 * once_x, rtol=1e-15, atol=0)
    np.testing.assert_allclose(w.grad.numpy(), 2 * once_w, rtol=1e-15, atol=0)
    with pytest.raises(AutogradError):
        y.backward(dy)


def test_only_the_needed_tensors_are_saved(rng):
    """conv2d keeps x only for the weight gradient and w only for the data gradient."""
    x = vc.tensor(rng.uniform(-1, 1, (1, 4, 4, 2)))  # an input image: no gradient wanted
    w = vc.tensor(rng.uniform(-1, 1, (3, 3, 3, 2)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    saved_x, saved_w = y.grad_fn.saved_tensors
    assert saved_x is not None and saved_w is None
    with vc.no_grad():
        assert F.conv2d(x, w, padding=1).grad_fn is None


def test_autograd_does_not_import_tensor():
    """tensor.py owns wrapping engine tensors into Tensors; autograd.py must not import it (no import cycle)."""
    source = pathlib.Path(vc.autograd.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("tensor", "vggcore.tensor") and not (
                node.level and node.module == "tensor"), f"autograd.py imports {node.module}"
            assert not any(alias.name == "tensor" for alias in node.names), "autograd.py imports tensor"
        if isinstance(node, ast.Import):
            assert all(alias.name != "vggcore.tensor" for alias in node.names)
