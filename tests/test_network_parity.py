"""Whole-network integration: a small VGG training step on every GPU-style device (sim, cuda) against the cpu.

The op tests check each kernel alone; this checks them composed the way training composes them: a VGG-A-LRN
(conv, ReLU, LRN, max-pool, fc, dropout, cross-entropy), backward through all of it, then one SGD step.
The same weights, inputs and dropout seeds go to both devices; float32 on both, so the tolerance only covers
the different summation orders of the two backends (1e-4 of the largest magnitude).
"""
import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from vggcore import models

from conftest import GPU_DEVICES
from gradcheck import assert_close

TOL = 1e-4


def train_step(device, state, images, labels):
    vc.manual_seed(7)  # the dropout seeds are drawn from this generator
    model = models.vgg("A-LRN", num_classes=5, width=1 / 16, fc_width=24, input_size=32, dropout=0.5)
    model.load_state_dict(state)
    model.to(device).train()
    opt = vc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    logits = model(vc.tensor(images, device=device))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    opt.step()
    return logits.numpy(), loss.item(), grads, model.state_dict()


def assert_close_to_largest(got, want, what):
    """Within TOL of the largest magnitude of `want` (at least 1e-3): gradients deep in a network are small."""
    assert_close(got, want, TOL, what, scale=max(float(np.abs(want).max()), 1e-3))


@pytest.mark.parametrize("device", [d for d in GPU_DEVICES] or [pytest.param("sim", marks=pytest.mark.skip)])
def test_vgg_training_step_matches_cpu(device):
    rng = np.random.default_rng(3)
    vc.manual_seed(1)
    state = models.vgg("A-LRN", num_classes=5, width=1 / 16, fc_width=24, input_size=32).state_dict()
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    labels = np.array([1, 4])

    ref_logits, ref_loss, ref_grads, ref_state = train_step("cpu", state, images, labels)
    logits, loss, grads, new_state = train_step(device, state, images, labels)

    assert_close_to_largest(logits, ref_logits, "logits")
    assert abs(loss - ref_loss) < TOL * max(abs(ref_loss), 1.0), f"loss {loss} vs {ref_loss}"
    for name in ref_grads:
        assert_close_to_largest(grads[name], ref_grads[name], f"gradient of {name}")
        assert_close_to_largest(new_state[name], ref_state[name], f"{name} after one SGD step")
