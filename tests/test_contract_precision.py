"""Acceptance audit of the precision contract (DESIGN.md section 2, "Precision on GPU devices"): the findings of
the audit, each a test that failed before its fix.

Exact small-integer data wherever a result can be exact: integers up to 256 are exact in bfloat16 and their
float32 sums are exact, so bfloat16 conv/linear must equal the float64 cpu result bit for bit.
"""
import warnings

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore import datasets, nn
from vggcore.training import train

from conftest import GPU_DEVICES

needs_gpu = pytest.mark.skipif(not GPU_DEVICES, reason="no sim/cuda device in this build")
DEVICE = GPU_DEVICES[0] if GPU_DEVICES else None
TINY_NET = dict(num_classes=5, width=1 / 32, fc_width=16, input_size=32)


def small_integer_net(rng):
    """Conv2d -> ReLU -> Flatten -> Linear with small-integer weights: every activation an exact small integer."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 3, 2))
    net.load_state_dict({name: rng.integers(-1, 2, size=p.shape).astype(np.float32)
                         for name, p in net.named_parameters()})
    return net


# ---- Module.to(device=None, dtype=None), as PyTorch's ----------------------------------------------------------
@needs_gpu
def test_module_to_dtype_converts_parameters_and_grads_in_place():
    rng = np.random.default_rng(0)
    net = small_integer_net(rng)
    x = rng.integers(0, 3, size=(2, 5, 3, 3)).astype(np.float32)
    reference = small_integer_net(np.random.default_rng(0)).to("cpu", "float64")
    want = reference(vc.tensor(x.astype(np.float64))).numpy()
    assert np.abs(want).max() <= 256                       # exact in bfloat16

    params_before = list(net.parameters())
    params_before[0].grad = vc.tensor(np.ones((4, 3, 3, 3), np.float32))
    assert net.to(DEVICE, "bfloat16") is net
    assert list(net.parameters()) == params_before         # the same Parameter objects (an optimiser keeps them)
    first = params_before[0]
    home = first.device                                    # DEVICE as the engine names it ("cuda" -> "cuda:0")
    assert {(p.dtype, p.device) for p in net.parameters()} == {("bfloat16", home)}
    assert (first.grad.dtype, first.grad.device) == ("bfloat16", home)   # the gradient follows

    y = net(vc.tensor(x, dtype="bfloat16", device=DEVICE))
    assert y.dtype == "bfloat16"
    np.testing.assert_array_equal(y.numpy(), want)

    # the other spellings: positional dtype, .float(), .bfloat16(), dtype= keyword only
    assert {p.dtype for p in net.to("float32").parameters()} == {"float32"}
    assert {p.dtype for p in net.bfloat16().parameters()} == {"bfloat16"}
    assert {p.dtype for p in net.float().parameters()} == {"float32"}
    assert {p.dtype for p in net.to(dtype="bfloat16").parameters()} == {"bfloat16"}
    np.testing.assert_array_equal(net.to("cpu", "float32")(vc.tensor(x)).numpy(), want)

    # float64 (cpu) to a GPU-style device converts on the cpu first, then moves
    moved = reference.to(DEVICE, "float32")
    assert {(p.dtype, p.device) for p in moved.parameters()} == {("float32", home)}


@needs_gpu
def test_module_to_dtype_errors_leave_the_model_unchanged():
    net = small_integer_net(np.random.default_rng(1))
    for bad, error in [("float16", TypeError), ("bf16", TypeError), (3, TypeError)]:
        with pytest.raises(error, match="^Module.to: dtype"):
            net.to(dtype=bad)
    with pytest.raises(TypeError, match="^Module.to: .*float64"):
        net.to(DEVICE, "float64")
    assert {(p.dtype, p.device) for p in net.parameters()} == {("float32", "cpu")}


@needs_gpu
def test_sgd_momentum_buffers_follow_a_module_dtype_change():
    net = nn.Linear(3, 2).to(DEVICE)
    opt = vc.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    x = vc.tensor(np.ones((1, 3), np.float32), device=DEVICE)
    F.cross_entropy(net(x), [0]).backward()
    opt.step()
    net.bfloat16()
    net.load_state_dict({"weight": np.ones((2, 3)), "bias": np.zeros(2)})   # exact values for the check below
    opt.zero_grad()
    for p in net.parameters():
        p.grad = vc.tensor(np.full(p.shape, 2.0, np.float32), dtype="bfloat16", device=DEVICE)
    buffers = [b.numpy() for b in opt._buffers]
    opt.step()                                            # was: sgd_update refusing the float32 buffer
    assert all(b.dtype == "bfloat16" for b in opt._buffers)
    assert net.weight.dtype == "bfloat16"
    # buf = 0.5 buf + 2; p -= 0.5 buf, from the (bfloat16-rounded) buffers of the float32 step
    for p, start, buf in zip(net.parameters(), (np.ones((2, 3)), np.zeros(2)), buffers):
        new_buf = vc.tensor(0.5 * buf + 2.0, dtype="bfloat16").numpy()
        np.testing.assert_array_equal(p.numpy(), vc.tensor(start - 0.5 * new_buf, dtype="bfloat16").numpy())


@needs_gpu
def test_vgg_in_bfloat16_keeps_its_dtype_through_fully_convolutional_and_evaluate(tmp_path):
    vc.manual_seed(3)
    model = vc.models.vgg("A", **TINY_NET).to(DEVICE, "bfloat16")
    fcn = model.to_fully_convolutional()
    assert {p.dtype for p in fcn.parameters()} == {"bfloat16"}
    assert {p.dtype for p in model.with_num_classes(3).parameters()} == {"bfloat16"}
    x = vc.tensor(np.random.default_rng(4).standard_normal((1, 32, 32, 3)), dtype="bfloat16", device=DEVICE)
    model.eval()
    np.testing.assert_array_equal(fcn.eval()(x).numpy().reshape(1, -1), model(x).numpy())
    data = datasets.generate(tmp_path / "shapes", classes=datasets.CLASSES[:5], train_per_class=1, val_per_class=1, size=32, seed=2)
    result = vc.evaluate(model, data / "val", device=DEVICE)   # was: conv2d refusing the float32 images
    assert result["n"] == 5
    assert {p.dtype for p in model.parameters()} == {"bfloat16"}


# ---- vc.train(precision="fp32") is exact float32 whatever the global setting -------------------------------------
@needs_gpu
def test_fp32_training_run_is_exact_float32_under_a_global_high_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    data = datasets.generate(tmp_path / "shapes", classes=datasets.CLASSES[:3], train_per_class=2, val_per_class=1, size=32, seed=2)
    tiny = dict(config="A", width=1 / 32, fc_width=16, crop=32, scale=32, batch_size=6, init="he", dropout=0.0,
                num_workers=1, verbose=False, progress=False, stats_sample=6, epochs=1, device=DEVICE,
                precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = train(data=data, **tiny).model.state_dict()
        assert vc.get_float32_matmul_precision() == "highest"
        vc.set_float32_matmul_precision("high")
        try:
            result = train(data=data, **tiny)
            assert vc.get_float32_matmul_precision() == "high"     # the caller's setting restored
        finally:
            vc.set_float32_matmul_precision("highest")
    assert result.history[-1]["precision"] == "fp32"
    got = result.model.state_dict()
    for name in exact:   # TF32 kernels (10-bit operands) would move these weights
        np.testing.assert_array_equal(got[name], exact[name], err_msg=name)


# ---- autocast leaves cpu ops alone ------------------------------------------------------------------------------
def test_autocast_leaves_cpu_conv2d_and_linear_alone():
    rng = np.random.default_rng(5)
    x = vc.tensor(rng.standard_normal((1, 5, 4, 3)).astype(np.float32))
    w = vc.tensor(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), requires_grad=True)
    a = vc.tensor(rng.standard_normal((2, 6)))                         # float64
    b = vc.tensor(rng.standard_normal((3, 6)))
    want_conv, want_linear = F.conv2d(x, w, None, 1, 1).numpy(), F.linear(a, b).numpy()
    with F.autocast("bfloat16"):                     # was: TypeError "input is bfloat16 on the cpu"
        y = F.conv2d(x, w, None, 1, 1)
        z = F.linear(a, b)
    assert (y.dtype, z.dtype) == ("float32", "float64")
    np.testing.assert_array_equal(y.numpy(), want_conv)
    np.testing.assert_array_equal(z.numpy(), want_linear)


# ---- error messages name the public op ---------------------------------------------------------------------------
@needs_gpu
def test_to_float64_on_a_gpu_style_device_names_to():
    x = vc.tensor([1.0, 2.0], device=DEVICE)
    for call in (lambda: x.to(dtype="float64"), lambda: x.to(DEVICE, "float64"),
                 lambda: x.to(dtype="bfloat16").to(dtype=np.float64)):
        with pytest.raises(TypeError, match="^to: .*float32 and bfloat16 only.*float64"):
            call()


def test_a_torch_bfloat16_tensor_as_data_is_a_type_error_naming_tensor():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^tensor: data of type Tensor cannot be read.*\.float\(\)\.numpy\(\)"):
        vc.tensor(torch.ones(2, dtype=torch.bfloat16), dtype="bfloat16")
    # the suggested route is exact
    values = torch.tensor([1.5, -3.0, 2.0 ** -9], dtype=torch.bfloat16)
    np.testing.assert_array_equal(vc.tensor(values.float().numpy(), dtype="bfloat16").numpy(),
                                  values.float().numpy())
