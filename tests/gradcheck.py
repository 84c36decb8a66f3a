"""Caffe-style gradient checker and the small tensor helpers the tests share.

gradcheck(): float64 on the cpu, central differences, loss = sum(out * g) for a random projection g, so
one backward checks every output at once; tolerance rtol * max(|analytic|, |numeric|, 1). Callers keep inputs
away from kinks (ReLU at 0, max-pool ties); dropout is reseeded before every forward.
"""

import numpy as np

import vggcore as vc
import vggcore.nn.functional as F

TOL = {"float32": 1e-5, "float64": 1e-10}
NP_DTYPE = {"float32": np.float32, "float64": np.float64}


def to_np(t):
    """A Tensor (or array, or None) as a float64-or-native numpy array."""
    if t is None:
        return None
    if isinstance(t, np.ndarray):
        return t
    return np.asarray(t.numpy())


def vt(a, dtype="float64", device="cpu", requires_grad=False):
    """vc.tensor from an array, cast to `dtype` on the numpy side first."""
    return vc.tensor(np.asarray(a, dtype=NP_DTYPE[dtype]), dtype=dtype, device=device, requires_grad=requires_grad)


def rounded(a, dtype):
    """`a` rounded to `dtype` and back to float64: the exact values the device sees, for the reference."""
    return np.asarray(a, dtype=NP_DTYPE[dtype]).astype(np.float64)


def assert_close(got, ref, rtol, what="", scale=1.0):
    """|got - ref| <= rtol * max(|ref|, scale) elementwise; NaN/inf in `got` fail.

    The suite's one comparison rule: relative where values are large, absolute (rtol * scale) near zero. scale is 1
    for values of order one (op tests); a whole network's gradients, far smaller, pass their own magnitude
    (max |ref|), which makes the check relative to the largest element."""
    g = to_np(got)
    assert g is not None, f"{what}: got None"
    g = g.astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert g.shape == ref.shape, f"{what}: shape {g.shape} != expected {ref.shape}"
    err = np.abs(g - ref) / np.maximum(np.abs(ref), scale)
    err = np.where(np.isfinite(err), err, np.inf)
    if err.size and not (err <= rtol).all():
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(
            f"{what}: max relative error {err[i]:.3g} > {rtol:g} at index {tuple(int(v) for v in i)}: "
            f"got {g[i]!r}, expected {ref[i]!r} ({int((err > rtol).sum())} of {err.size} elements off)")


def seeded_dropout(seed):
    """A function (x, p) -> F.dropout(x, p, training=True) whose mask depends only on `seed`."""
    return lambda x, p: F.dropout(x, p=p, training=True, seed=seed)


def gradcheck(op, fn, inputs, names=None, wrt=None, eps=1e-6, rtol=1e-6, seed=0, reseed=None, max_elems=250):
    """Checks d sum(fn(*inputs) * g)/d input against central differences, for each input in `wrt`.

    op: name used in failure messages; fn: callable on vc tensors returning a vc tensor; inputs: arrays
    (float64); reseed: called before every forward (dropout). Inputs larger than max_elems are sampled.
    """
    rng = np.random.default_rng(seed)
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    names = names or [f"input{i}" for i in range(len(inputs))]
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)

    def forward(arrays, requires_grad):
        if reseed is not None:
            reseed()
        ts = [vc.tensor(a.copy(), dtype="float64", device="cpu", requires_grad=requires_grad and i in wrt)
              for i, a in enumerate(arrays)]
        return ts, fn(*ts)

    ts, out = forward(inputs, True)
    out_np = to_np(out).astype(np.float64)
    g = rng.uniform(-1.0, 1.0, size=out_np.shape)
    out.backward(vc.tensor(g.copy(), dtype="float64", device="cpu"))

    def loss(arrays):
        with vc.no_grad():
            _, o = forward(arrays, False)
        return float((to_np(o).astype(np.float64) * g).sum())

    failures = []
    for i in wrt:
        analytic = to_np(ts[i].grad)
        assert analytic is not None, f"gradcheck {op}: {names[i]} got no gradient (grad is None)"
        assert analytic.shape == inputs[i].shape, \
            f"gradcheck {op}: {names[i]} grad shape {analytic.shape} != input shape {inputs[i].shape}"
        n = inputs[i].size
        idx = np.arange(n) if n <= max_elems else np.sort(rng.choice(n, max_elems, replace=False))
        for flat in idx:
            e = np.unravel_index(flat, inputs[i].shape)
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[i][e] += eps
            minus[i][e] -= eps
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            a = float(analytic[e])
            if not abs(a - numeric) <= rtol * max(abs(a), abs(numeric), 1.0):
                failures.append(f"{names[i]}[{', '.join(str(int(v)) for v in e)}]: analytic {a!r} numeric {numeric!r}")
    assert not failures, (f"gradcheck {op}: {len(failures)} gradient element(s) off (tolerance {rtol:g}); first: "
                          + "; ".join(failures[:5]))
