"""What an acceptance audit of the tensor, layer and optimiser API found (2026-12-02), each pinned by a test that
fails without its fix: shared parameters listed once (PyTorch's rule), layer geometry checked when a layer is
built, SGD.load_state_dict keeping the constructor's rules, .grad checked when assigned, and errors that name the
op, the argument and the shapes instead of an internal op."""

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F

from contract_helpers import DEVICES, needs_torch, torch


# ---- a module used twice (weight tying) ----------------------------------------------------------------------------
def _tied_net():
    lin = vc.nn.Linear(3, 3)
    return lin, vc.nn.Sequential(lin, vc.nn.ReLU(), lin)


def test_shared_parameters_are_listed_once_and_state_dict_keeps_every_name():
    lin, net = _tied_net()
    named = list(net.named_parameters())
    assert [name for name, _ in named] == ["0.weight", "0.bias"]
    assert named[0][1] is lin.weight and named[1][1] is lin.bias
    assert net.num_parameters() == 12
    assert len(list(net.modules())) == 3                   # the Sequential, the Linear once, the ReLU
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]   # as torch's state_dict
    assert [n for n, _ in net.named_parameters(remove_duplicate=False)] == list(net.state_dict())
    net.load_state_dict(net.state_dict())                   # every name of the tied layer is accepted back


def test_sgd_updates_a_shared_parameter_once_per_step():
    lin, net = _tied_net()
    opt = vc.optim.SGD(net.parameters(), lr=1.0)
    before = lin.bias.numpy().copy()
    lin.bias.grad = vc.tensor(np.ones(3), dtype="float32")
    opt.step()
    np.testing.assert_array_equal(lin.bias.numpy(), before - 1.0)    # listed twice, it moved by 2


@needs_torch
def test_tied_training_matches_torch():
    rng = np.random.default_rng(0)
    lin, net = _tied_net()
    tl = torch.nn.Linear(3, 3).double()
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(lin.weight.numpy().astype(np.float64)))
        tl.bias.copy_(torch.from_numpy(lin.bias.numpy().astype(np.float64)))
    tnet = torch.nn.Sequential(tl, torch.nn.ReLU(), tl)
    opt = vc.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9)
    x = rng.standard_normal((4, 3))
    for _ in range(3):
        opt.zero_grad()
        topt.zero_grad()
        F.cross_entropy(net(vc.tensor(x, dtype="float32")), [0, 1, 2, 0]).backward()
        torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
        topt.step()
    np.testing.assert_allclose(lin.bias.numpy(), tl.bias.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.weight.numpy(), tl.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sgd_refuses_one_tensor_passed_twice():
    lin = vc.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"SGD: parameters 0 and 2 are the same tensor \(shape \(2, 2\)\)"):
        vc.optim.SGD(list(lin.parameters()) * 2, lr=0.1)


# ---- SGD.load_state_dict keeps the constructor's rules, and is all or nothing --------------------------------------
@pytest.mark.parametrize("change, error, message", [
    ({"momentum": 0.0, "nesterov": True}, ValueError, "nesterov momentum needs momentum > 0"),
    ({"lr": -1.0}, ValueError, "lr must be a finite number >= 0"),
    ({"nesterov": "yes"}, TypeError, "nesterov must be True or False"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay must be a finite number >= 0"),
])
def test_sgd_load_state_dict_refuses_what_the_constructor_refuses(change, error, message):
    lin = vc.nn.Linear(2, 2)
    opt = vc.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    state = {**opt.state_dict(), **change}
    with pytest.raises(error, match=message):
        opt.load_state_dict(state)
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (0.1, 0.9, 0.0, False)


# ---- layers check their geometry when built -------------------------------------------------------------------------
@pytest.mark.parametrize("build, message", [
    (lambda: vc.nn.Conv2d(3, 4, 3, stride=0), "Conv2d: stride must be >= 1, got 0"),
    (lambda: vc.nn.Conv2d(3, 4, 3, padding=-1), "Conv2d: padding must be >= 0, got -1"),
    (lambda: vc.nn.Conv2d(3, 4, (3, 1)), "Conv2d: kernel_size must be one int"),
    (lambda: vc.nn.MaxPool2d(0), "MaxPool2d: kernel_size must be >= 1, got 0"),
    (lambda: vc.nn.AvgPool2d(2, stride=0), "AvgPool2d: stride must be >= 1, got 0"),
    (lambda: vc.nn.LocalResponseNorm(0), "LocalResponseNorm: size must be >= 1, got 0"),
])
def test_layers_check_their_geometry_when_built(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_layer_geometry_accepts_square_pairs_as_pytorch_does():
    conv = vc.nn.Conv2d(3, 4, (3, 3), stride=(2, 2), padding=(1, 1))
    assert conv.weight.shape == (4, 3, 3, 3) and (conv.kernel_size, conv.stride, conv.padding) == (3, 2, 1)
    assert vc.nn.MaxPool2d((3, 3)).stride == 3                      # stride=None: kernel_size, as torch.nn
    with pytest.raises(TypeError, match="LocalResponseNorm: alpha must be a number"):
        vc.nn.LocalResponseNorm(5, alpha="1e-4")


def test_module_train_mode_must_be_a_bool():
    net = vc.nn.Sequential(vc.nn.Dropout(0.5)).eval()
    with pytest.raises(TypeError, match="Module.train: mode must be True or False, got 'no'"):
        net.train("no")
    assert net.training is False and net[0].training is False


# ---- .grad is checked when assigned ----------------------------------------------------------------------------------
def test_grad_assignment_is_checked_when_made():
    p = vc.nn.Linear(3, 2).weight
    with pytest.raises(TypeError, match=r"grad: must be None or a vggcore Tensor of shape \(2, 3\), got ndarray"):
        p.grad = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) cannot take a gradient of shape \(3, 2\)"):
        p.grad = vc.tensor(np.ones((3, 2)), dtype="float32")
    with pytest.raises(TypeError, match="is float32 on cpu; the gradient assigned is float64 on cpu"):
        p.grad = vc.tensor(np.ones((2, 3)))
    assert p.grad is None
    p.grad = vc.tensor(np.full((2, 3), 2.0), dtype="float32")         # a matching one is kept, and accumulates
    F.linear(vc.tensor(np.ones((1, 3)), dtype="float32"), p).backward(vc.tensor(np.ones((1, 2)), dtype="float32"))
    np.testing.assert_array_equal(p.grad.numpy(), np.full((2, 3), 3.0))


# ---- messages that name the op, the argument and the shapes ---------------------------------------------------------
@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
def test_float64_to_a_float32_device_names_to_and_the_shape(device):
    with pytest.raises(TypeError, match=rf"^to: {device} holds float32 and bfloat16 only, and this tensor of shape "
                                        r"\(2, 3\) is float64"):
        vc.tensor(np.ones((2, 3))).to(device)
    model = vc.nn.Linear(2, 4, dtype="float64")
    with pytest.raises(TypeError, match=r"^Module.to: .* parameter weight of shape \(4, 2\) is float64"):
        model.to(device)
    assert model.weight.device == "cpu"


def test_a_huge_conv_output_names_conv2d():
    x = vc.tensor(np.ones((1, 3, 3, 1)), dtype="float32")
    with pytest.raises(MemoryError, match=r"^conv2d: input \(1, 3, 3, 1\), weight \(1, 3, 3, 1\), stride 1, "
                                          r"padding 1048576"):
        F.conv2d(x, x, padding=2**20)


@pytest.mark.parametrize("target, message", [
    ([0, -1], r"cross_entropy: target\[1\] = -1 is out of range for 3 classes \(logits \(2, 3\)"),
    (np.array([0.0, -2.0]), r"cross_entropy: target\[1\] = -2.0 is out of range for 3 classes"),
])
def test_cross_entropy_negative_labels_read_like_the_too_large_ones(target, message):
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(vc.tensor(np.zeros((2, 3)), dtype="float32"), target)


def test_cross_entropy_refuses_bool_labels():
    with pytest.raises(TypeError, match="cross_entropy: target must hold integer class labels, got dtype bool"):
        F.cross_entropy(vc.tensor(np.zeros((2, 3)), dtype="float32"), [True, False])


def test_tensor_device_none_is_the_cpu():
    assert vc.tensor([1.0], device=None).device == "cpu"
