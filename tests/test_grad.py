"""The Caffe-style gradient checker (tests/gradcheck.py) on every op and on chains of ops: float64, cpu.

Analytic gradients from backward() against central differences of sum(out * g), tolerance
1e-6 * max(|a|, |b|, 1). Inputs are kept away from kinks: ReLU inputs away from 0, max-pool windows without
near-ties; dropout is reseeded before every forward so its mask is fixed.
"""
import numpy as np
import pytest

import vggcore.nn.functional as F

import reference as ref
from gradcheck import gradcheck, seeded_dropout, to_np, vt


def U(rng, shape, scale=1.0):
    return rng.uniform(-scale, scale, size=shape)


def away_from_zero(rng, shape, margin=0.05):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(margin, 1.0, size=shape)


def distinct(rng, shape):
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * (2.0 / n)


# (N, H, W, C, K, kernel, stride, pad, bias)
CONV = [(1, 5, 4, 3, 2, 3, 1, 1, True), (2, 5, 3, 2, 3, 3, 2, 0, True), (1, 7, 6, 2, 3, 5, 2, 2, True),
        (2, 3, 4, 3, 2, 1, 1, 0, False), (1, 4, 5, 2, 2, 3, 2, 1, False), (1, 9, 7, 1, 2, 7, 3, 2, True)]


@pytest.mark.parametrize("case", CONV, ids=["N{}H{}W{}C{}K{}k{}s{}p{}".format(*c[:8]) for c in CONV])
def test_grad_conv2d(case, rng):
    N, H, W, C, K, k, stride, pad, has_bias = case
    inputs = [U(rng, (N, H, W, C)), U(rng, (K, k, k, C))] + ([U(rng, (K,))] if has_bias else [])
    gradcheck(f"conv2d(stride={stride}, padding={pad})",
              lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, stride=stride, padding=pad),
              inputs, names=["x", "weight", "bias"][:len(inputs)])


@pytest.mark.parametrize("bias", [True, False])
def test_grad_linear(bias, rng):
    inputs = [U(rng, (3, 7)), U(rng, (4, 7))] + ([U(rng, (4,))] if bias else [])
    gradcheck("linear", lambda x, w, *b: F.linear(x, w, b[0] if b else None), inputs,
              names=["x", "weight", "bias"][:len(inputs)])


def test_grad_relu(rng):
    gradcheck("relu", F.relu, [away_from_zero(rng, (2, 3, 5, 4))], names=["x"])


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3), (2, 1)])
def test_grad_max_pool2d(k, s, rng):
    gradcheck(f"max_pool2d({k}, {s})", lambda x: F.max_pool2d(x, kernel_size=k, stride=s),
              [distinct(rng, (2, 7, 5, 3))], names=["x"])


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2), (3, 3), (2, 1)])
def test_grad_avg_pool2d(k, s, rng):
    gradcheck(f"avg_pool2d({k}, {s})", lambda x: F.avg_pool2d(x, kernel_size=k, stride=s),
              [U(rng, (2, 7, 5, 3))], names=["x"])


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 0.5, 0.75, 2.0), (3, 0.1, 0.6, 1.0), (4, 0.3, 0.75, 1.0),
                                               (1, 0.2, 0.5, 1.0), (5, 5e-4, 0.75, 2.0), (7, 1.0, 0.9, 0.5)])
def test_grad_local_response_norm(size, alpha, beta, k, rng):
    gradcheck(f"local_response_norm(size={size}, alpha={alpha}, beta={beta}, k={k})",
              lambda x: F.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k),
              [U(rng, (2, 2, 3, 6), 2.0)], names=["x"])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(3, 7), (1, 1), (2, 3, 4)])
def test_grad_softmax_family(name, shape, rng):
    gradcheck(name, getattr(F, name), [U(rng, shape, 3.0)], names=["x"])


@pytest.mark.parametrize("rows,cols", [(1, 5), (4, 7), (3, 2)])
def test_grad_cross_entropy(rows, cols, rng):
    target = rng.integers(0, cols, rows)
    gradcheck("cross_entropy", lambda x: F.cross_entropy(x, target), [U(rng, (rows, cols), 3.0)], names=["logits"])


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_grad_dropout(p, rng):
    drop = seeded_dropout(77)
    x = U(rng, (2, 3, 4, 5))
    gradcheck(f"dropout(p={p})", lambda t: drop(t, p), [x], names=["x"])


def test_grad_reshape(rng):
    gradcheck("reshape", lambda x: F.linear(x.reshape(2, 12), vt(np.arange(36.0).reshape(3, 12) / 36)),
              [U(rng, (2, 2, 3, 2))], names=["x"])


def _kink_free_chain_inputs(seed):
    """Inputs for conv -> relu -> maxpool whose pre-activations and pool windows keep clear of kinks."""
    for s in range(seed, seed + 200):
        r = np.random.default_rng(s)
        x, w, b = U(r, (2, 6, 7, 3)), U(r, (4, 3, 3, 3), 0.5), U(r, (4,), 0.2)
        pre = ref.conv2d(x, w, b, 1, 1)
        act = ref.relu(pre)
        if np.abs(pre).min() > 1e-3 and ref.max_pool_min_gap(act + (act == 0) * pre * 1e-3, 2, 2) > 1e-4:
            return x, w, b
    raise RuntimeError("no kink-free inputs found")


def test_grad_chain_conv_relu_pool_linear_cross_entropy(rng):
    x, w, b = _kink_free_chain_inputs(1)
    v, c = U(rng, (5, 36), 0.3), U(rng, (5,), 0.1)  # pooled (2, 3, 3, 4) -> 36 features
    target = np.array([4, 1])

    def net(x, w, b, v, c):
        h = F.max_pool2d(F.relu(F.conv2d(x, w, b, stride=1, padding=1)), 2, 2)
        return F.cross_entropy(F.linear(h.reshape(2, 36), v, c), target)

    gradcheck("chain conv-relu-maxpool-linear-cross_entropy", net, [x, w, b, v, c],
              names=["x", "conv.weight", "conv.bias", "fc.weight", "fc.bias"])


def test_grad_chain_lrn_avgpool_conv_stride2_log_softmax(rng):
    x, w = U(rng, (1, 9, 8, 5), 2.0), U(rng, (3, 3, 3, 5), 0.3)

    def net(x, w):
        h = F.local_response_norm(x, size=5, alpha=5e-2, beta=0.75, k=2.0)
        h = F.conv2d(F.avg_pool2d(h, 3, 2), w, stride=2, padding=1)  # (1, 4, 3, 5) -> (1, 2, 2, 3)
        return F.log_softmax(h.reshape(1, 12))

    gradcheck("chain lrn-avgpool-conv(stride 2)-log_softmax", net, [x, w], names=["x", "weight"])


def test_grad_chain_with_dropout(rng):
    drop = seeded_dropout(5)
    x, w = U(rng, (3, 8)), U(rng, (4, 8))
    gradcheck("chain linear-dropout-softmax", lambda x, w: F.softmax(drop(F.linear(x, w), 0.5)), [x, w],
              names=["x", "weight"])


def test_gradcheck_catches_a_wrong_gradient(rng):
    """The checker itself must be able to fail, naming the op, the input and the element."""
    def wrong(t):  # the first (analytic) forward is 2 x, later (numeric) ones 1 x: the gradients disagree
        wrong.calls += 1
        return F.linear(t, vt(np.eye(3) * (2.0 if wrong.calls == 1 else 1.0)))
    wrong.calls = 0
    with pytest.raises(AssertionError, match=r"gradcheck bogus: .*x\[0, 0\]"):
        gradcheck("bogus", wrong, [rng.uniform(0.5, 1.0, (2, 3))], names=["x"])
