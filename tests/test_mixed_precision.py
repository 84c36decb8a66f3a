"""Mixed-precision training: bfloat16 activations and gradients, float32 master weights, SGD state and loss.

A VGG-A-LRN training step under F.autocast("bfloat16") on sim/cuda is checked two ways:
  1. against the same step on the cpu in float32 with every op's inputs and outputs rounded to bfloat16 by casts
     (the gradient of a cast rounds the gradient: the rounding points of the bfloat16 pipeline). The two differ only
     where a float32 summation order tips a bfloat16 rounding by one ulp (a relative 2^-7 on one element), so they
     agree to EMULATION_TOL in norm;
  2. against the plain float32 cpu step. Forward, each of the 11 layers adds about one bfloat16 rounding (2^-8) to
     the activations, so logits agree to LOGITS_TOL = 11 * 2^-8 ~ 4% of their largest magnitude. Backward, each
     data gradient dx = dy W is a sum with heavy cancellation in this 2-image net (|dx| << sum |dy||W|), so its
     bfloat16 inputs' rounding grows to tens of percent of |dx| in the first layers: 1. shows that this is the
     format's effect, not the kernels'. The gradients are held to GRAD_TOL in norm and a cosine above GRAD_COSINE,
     headroom over the 26% / 0.966 measured.
"""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore import checkpoint, datasets, models
from vggcore.models.vgg import LRN_PARAMS
from vggcore.training import train

from conftest import GPU_DEVICES

EMULATION_TOL = 0.03
LOGITS_TOL = 11 * 2.0 ** -8
GRAD_TOL = 0.4
GRAD_COSINE = 0.93
NET = dict(num_classes=5, width=1 / 16, fc_width=24, input_size=32)


def rounded(t):
    return t.to(dtype="bfloat16").to(dtype="float32")


def forward(model, x, r):
    """VGG-A-LRN's forward pass (as models/vgg.py) with r applied to every op's inputs and outputs."""
    def conv(name, x):
        m = getattr(model, name)
        return r(F.conv2d(r(x), r(m.weight), r(m.bias), 1, 1))

    def fc(name, x):
        m = getattr(model, name)
        return r(F.linear(r(x), r(m.weight), r(m.bias)))

    for kind, name in model._plan:
        if kind == "conv":
            x = r(F.relu(conv(name, x)))
        elif kind == "lrn":
            x = r(F.local_response_norm(x, **LRN_PARAMS))
        else:
            x = r(F.max_pool2d(x, 2, 2))
    x = x.reshape(x.shape[0], -1)
    x = r(F.dropout(r(F.relu(fc("fc6", x))), 0.5, True))
    x = r(F.dropout(r(F.relu(fc("fc7", x))), 0.5, True))
    return fc("fc8", x)


def train_step(device, state, images, labels, mode):
    """mode: "fp32", "emulated" (float32 with bfloat16 rounding points) or "bf16" (autocast, the real thing)."""
    vc.manual_seed(7)  # the dropout seeds
    model = models.vgg("A-LRN", dropout=0.5, **NET)
    model.load_state_dict(state)
    model.to(device).train()
    opt = vc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    with F.autocast("bfloat16", enabled=mode == "bf16"):
        logits = forward(model, vc.tensor(images, device=device), rounded if mode == "emulated" else (lambda t: t))
        loss = F.cross_entropy(logits, labels)
    assert loss.dtype == "float32"
    loss.backward()
    params = dict(model.named_parameters())
    grads = {name: p.grad.numpy() for name, p in params.items()}
    assert all(p.dtype == "float32" and p.grad.dtype == "float32" for p in params.values())
    opt.step()
    assert all(p.dtype == "float32" for p in model.parameters())
    return logits, loss.item(), grads, model.state_dict()


def norm_error(got, want):
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def cosine(got, want):
    a, b = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    vc.manual_seed(1)
    state = models.vgg("A-LRN", **NET).state_dict()
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    labels = np.array([1, 4])
    return state, images, labels, train_step("cpu", state, images, labels, "fp32")


@pytest.mark.parametrize("device", GPU_DEVICES or [pytest.param("sim", marks=pytest.mark.skip(reason="no sim/cuda"))])
def test_vgg_bf16_training_step(device, setup):
    state, images, labels, (ref_logits, ref_loss, ref_grads, ref_state) = setup
    logits, loss, grads, new_state = train_step(device, state, images, labels, "bf16")
    assert logits.dtype == "bfloat16"
    logits = logits.numpy()
    emu_logits, emu_loss, emu_grads, _ = train_step("cpu", state, images, labels, "emulated")

    # 1. the bfloat16 pipeline is the float32 one with bfloat16 rounding at every op boundary
    assert norm_error(logits, emu_logits.numpy()) < EMULATION_TOL
    assert abs(loss - emu_loss) < EMULATION_TOL * 2.0 ** -8 * max(abs(emu_loss), 1.0)
    for name in ref_grads:
        assert norm_error(grads[name], emu_grads[name]) < EMULATION_TOL, name

    # 2. close to the float32 step
    ref_logits = ref_logits.numpy()
    assert float(np.abs(logits - ref_logits).max()) < LOGITS_TOL * float(np.abs(ref_logits).max())
    assert abs(loss - ref_loss) < LOGITS_TOL * max(abs(ref_loss), 1.0)
    for name in ref_grads:
        assert norm_error(grads[name], ref_grads[name]) < GRAD_TOL, name
        assert cosine(grads[name], ref_grads[name]) > GRAD_COSINE, name

    # The update is float32 SGD on the float32 masters: the new weights follow from the float32 gradients exactly
    # as on the cpu (first step: buf = g + wd w, w -= lr buf), to float32 rounding.
    for name, w0 in state.items():
        w0 = np.asarray(w0, np.float64)
        want = w0 - 0.01 * (grads[name] + 5e-4 * w0)
        np.testing.assert_allclose(new_state[name], want, rtol=1e-6, atol=1e-9, err_msg=name)


def test_autocast_scope():
    assert F.autocast_dtype() is None
    with F.autocast():
        assert F.autocast_dtype() == "bfloat16"
        with F.autocast("float32"):
            assert F.autocast_dtype() is None
        with F.autocast(enabled=False):
            assert F.autocast_dtype() == "bfloat16"
    assert F.autocast_dtype() is None
    with pytest.raises(ValueError, match="autocast"):
        F.autocast("float64")


# ---- vc.train(precision=...) ----------------------------------------------------------------------------------------
TINY = dict(config="A", width=1 / 16, fc_width=16, crop=32, scale=32, batch_size=16, init="he", dropout=0.0,
            num_workers=1, verbose=False, progress=False, stats_sample=20, epochs=1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return datasets.generate(tmp_path_factory.mktemp("data") / "shapes", train_per_class=2, val_per_class=1,
                             size=32, seed=2)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))


def test_precision_argument_errors(shapes):
    with pytest.raises(ValueError, match="precision"):
        train(data=shapes, precision="fp16", device="cpu", **TINY)
    with pytest.raises(ValueError, match="precision='bf16'.*cpu"):
        train(data=shapes, precision="bf16", device="cpu", **TINY)


def test_tf32_on_cpu_runs_and_is_recorded(shapes, tmp_path):
    before = vc.get_float32_matmul_precision() if hasattr(vc, "get_float32_matmul_precision") else None
    result = train(data=shapes, precision="tf32", device="cpu", checkpoint_dir=tmp_path / "ck", **TINY)
    assert result.history[-1]["precision"] == "tf32"
    assert checkpoint.load_state(tmp_path / "ck" / "last.safetensors")["precision"] == "tf32"
    if before is not None:
        assert vc.get_float32_matmul_precision() == before   # restored after the run


@pytest.mark.slow
@pytest.mark.parametrize("device", GPU_DEVICES[:1] or [pytest.param("sim", marks=pytest.mark.skip(reason="no sim"))])
def test_bf16_training_run_keeps_float32_checkpoints(shapes, tmp_path, device):
    result = train(data=shapes, precision="bf16", device=device, checkpoint_dir=tmp_path / "ck", **TINY)
    entry = result.history[-1]
    assert entry["precision"] == "bf16" and np.isfinite(entry["train_loss"])
    state = checkpoint.load_state(tmp_path / "ck" / "last.safetensors")
    assert state["precision"] == "bf16" and state["settings"]["precision"] == "bf16"
    assert all(np.asarray(v).dtype == np.float32 for v in state["model"].values())
    assert all(p.dtype == "float32" for p in result.model.parameters())
