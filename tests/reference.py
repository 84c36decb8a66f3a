"""Independent NumPy float64 references for every op in vggcore.nn.functional (forward and backward).

Written from the maths, not from the kernels: these are the oracle the CPU kernels are tested against, and
they are themselves checked against PyTorch (tests/test_ops.py, test_reference_*). Layout is the public
contract's: activations NHWC (N, H, W, C), conv weights (K, R, S, C), linear weights (OUT, IN).
Every function takes and returns float64 arrays; backward functions return gradients (never accumulate).
"""
import numpy as np


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ---- convolution ---------------------------------------------------------------------------------
def conv_out_size(h, r, stride, pad):
    return (h + 2 * pad - r) // stride + 1


def conv2d(x, w, b=None, stride=1, padding=0):
    """x (N,H,W,C), w (K,R,S,C), b (K) -> y (N,P,Q,K)."""
    x, w = _f64(x), _f64(w)
    N, H, W, C = x.shape
    K, R, S, C2 = w.shape
    assert C == C2
    P, Q = conv_out_size(H, R, stride, padding), conv_out_size(W, S, stride, padding)
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    y = np.zeros((N, P, Q, K))
    for r in range(R):
        for s in range(S):
            win = xp[:, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride, :]  # (N,P,Q,C)
            y += np.einsum("npqc,kc->npqk", win, w[:, r, s, :])
    if b is not None:
        y += _f64(b)
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0):
    """Returns (dx, dw, db) for y = conv2d(x, w, b)."""
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    N, H, W, C = x.shape
    K, R, S, _ = w.shape
    _, P, Q, _ = dy.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            hs = slice(r, r + stride * (P - 1) + 1, stride)
            ws = slice(s, s + stride * (Q - 1) + 1, stride)
            dxp[:, hs, ws, :] += np.einsum("npqk,kc->npqc", dy, w[:, r, s, :])
            dw[:, r, s, :] = np.einsum("npqk,npqc->kc", dy, xp[:, hs, ws, :])
    dx = dxp[:, padding:padding + H, padding:padding + W, :]
    db = dy.sum(axis=(0, 1, 2))
    return dx, dw, db


# ---- fully connected ----------------------------------------------------------------------------
def linear(x, w, b=None):
    """x (M,IN), w (OUT,IN), b (OUT) -> (M,OUT)."""
    y = _f64(x) @ _f64(w).T
    if b is not None:
        y = y + _f64(b)
    return y


def linear_backward(x, w, dy):
    x, w, dy = _f64(x), _f64(w), _f64(dy)
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ---- elementwise -------------------------------------------------------------------------------------
def relu(x):
    return np.maximum(_f64(x), 0.0)


def relu_backward(x, dy):
    return np.where(_f64(x) > 0, _f64(dy), 0.0)


def dropout(x, mask, p):
    """Inverted dropout with an explicit keep-mask (bool array)."""
    return np.where(mask, _f64(x) / (1.0 - p), 0.0)


# ---- pooling (no padding, floor mode) ---------------------------------------------------------------------
def pool_out_size(h, k, stride):
    return (h - k) // stride + 1


def _windows(x, k, stride):
    """Yields (p, q, window (N,k,k,C), h0, w0)."""
    N, H, W, C = x.shape
    P, Q = pool_out_size(H, k, stride), pool_out_size(W, k, stride)
    for p in range(P):
        for q in range(Q):
            h0, w0 = p * stride, q * stride
            yield p, q, x[:, h0:h0 + k, w0:w0 + k, :], h0, w0


def max_pool2d(x, kernel_size=2, stride=2):
    y, _ = _max_pool_with_argmax(_f64(x), kernel_size, stride)
    return y


def _max_pool_with_argmax(x, k, stride):
    N, H, W, C = x.shape
    P, Q = pool_out_size(H, k, stride), pool_out_size(W, k, stride)
    y = np.zeros((N, P, Q, C))
    arg = np.zeros((N, P, Q, C), dtype=np.int64)  # row-major index inside the window; first maximum wins
    for p, q, win, _, _ in _windows(x, k, stride):
        flat = win.reshape(N, k * k, C)
        arg[:, p, q, :] = np.argmax(flat, axis=1)  # np.argmax returns the first occurrence
        y[:, p, q, :] = flat.max(axis=1)
    return y, arg


def max_pool2d_backward(x, dy, kernel_size=2, stride=2):
    x, dy = _f64(x), _f64(dy)
    k = kernel_size
    _, arg = _max_pool_with_argmax(x, k, stride)
    dx = np.zeros_like(x)
    N, P, Q, C = dy.shape
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for p in range(P):
        for q in range(Q):
            a = arg[:, p, q, :]
            h = p * stride + a // k
            w = q * stride + a % k
            np.add.at(dx, (n_idx, h, w, c_idx), dy[:, p, q, :])
    return dx


def max_pool_min_gap(x, kernel_size=2, stride=2):
    """Smallest gap between the largest and second-largest value over all pooling windows (kink distance)."""
    x = _f64(x)
    gap = np.inf
    for _, _, win, _, _ in _windows(x, kernel_size, stride):
        flat = np.sort(win.reshape(win.shape[0], -1, win.shape[3]), axis=1)
        gap = min(gap, float((flat[:, -1, :] - flat[:, -2, :]).min()))
    return gap


def avg_pool2d(x, kernel_size=2, stride=2):
    x = _f64(x)
    N, H, W, C = x.shape
    P, Q = pool_out_size(H, kernel_size, stride), pool_out_size(W, kernel_size, stride)
    y = np.zeros((N, P, Q, C))
    for p, q, win, _, _ in _windows(x, kernel_size, stride):
        y[:, p, q, :] = win.mean(axis=(1, 2))
    return y


def avg_pool2d_backward(x, dy, kernel_size=2, stride=2):
    x, dy = _f64(x), _f64(dy)
    k = kernel_size
    dx = np.zeros_like(x)
    N, P, Q, C = dy.shape
    for p in range(P):
        for q in range(Q):
            dx[:, p * stride:p * stride + k, q * stride:q * stride + k, :] += dy[:, p, q, None, None, :] / (k * k)
    return dx


def global_avg_pool(x):
    """x (N,H,W,C) -> (N,C)."""
    return _f64(x).mean(axis=(1, 2))


# ---- local response normalisation across channels (PyTorch's convention) -------------------------------
def _lrn_window(C, size):
    """List of channel index arrays: window(c) = c - size//2 .. c + (size-1)//2, clipped to [0, C)."""
    return [np.arange(max(0, c - size // 2), min(C, c + (size - 1) // 2 + 1)) for c in range(C)]


def _lrn_scale(x, size, alpha, k):
    C = x.shape[-1]
    sq = x * x
    s = np.empty_like(x)
    for c, win in enumerate(_lrn_window(C, size)):
        s[..., c] = k + alpha / size * sq[..., win].sum(axis=-1)
    return s


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    x = _f64(x)
    return x * _lrn_scale(x, size, alpha, k) ** (-beta)


def local_response_norm_backward(x, dy, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """dx_j = dy_j s_j^-beta - (2 alpha beta / size) x_j sum_{i : j in window(i)} dy_i x_i s_i^(-beta-1)."""
    x, dy = _f64(x), _f64(dy)
    C = x.shape[-1]
    s = _lrn_scale(x, size, alpha, k)
    dx = dy * s ** (-beta)
    t = dy * x * s ** (-beta - 1.0)
    for i, win in enumerate(_lrn_window(C, size)):
        dx[..., win] -= (2.0 * alpha * beta / size) * x[..., win] * t[..., i:i + 1]
    return dx


# ---- softmax family (last axis) ---------------------------------------------------------------------------
def softmax(x):
    x = _f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(x, dy):
    y = softmax(x)
    dy = _f64(dy)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax(x):
    x = _f64(x)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def log_softmax_backward(x, dy):
    dy = _f64(dy)
    return dy - softmax(x) * dy.sum(axis=-1, keepdims=True)


def cross_entropy(logits, target):
    """Mean over the batch of -log_softmax(logits)[r, target[r]]."""
    lp = log_softmax(logits)
    target = np.asarray(target)
    return float(-lp[np.arange(lp.shape[0]), target].mean())


def cross_entropy_backward(logits, target, dloss=1.0):
    logits = _f64(logits)
    rows = logits.shape[0]
    g = softmax(logits)
    g[np.arange(rows), np.asarray(target)] -= 1.0
    return g * (dloss / rows)


# ---- the same ops in NCHW PyTorch terms, for checking these references against torch --------------------
def nhwc_to_nchw(a):
    return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def nchw_to_nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def krsc_to_kcrs(w):
    return np.ascontiguousarray(np.transpose(w, (0, 3, 1, 2)))
