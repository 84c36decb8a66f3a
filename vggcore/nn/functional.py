"""Differentiable ops on NHWC tensors, one ``Function`` each (forward and backward run engine kernels).

Every op checks its Python-level arguments here (types, ranges) and leaves shapes, dtypes and devices to the
engine, which validates them once and raises ValueError/TypeError naming the op, the argument and the shapes.

dtypes: every op computes in its inputs' dtype (float32, float64 on the cpu, bfloat16 on sim/cuda), and mixing
dtypes in one op is a TypeError, as in PyTorch. softmax and log_softmax compute in float32 for bfloat16 input and
return bfloat16 (PyTorch's rule), float32 inside ``autocast`` (as PyTorch's autocast runs them); cross_entropy,
the loss, returns float32 for bfloat16 logits. ``autocast("bfloat16")`` is mixed precision: inside it conv2d and
linear cast their input, weight and bias to bfloat16 first (differentiably), so float32 master weights get float32
gradients and the activations between the layers are bfloat16.
"""

import numbers
import threading

import numpy as np

from .. import _C
from .. import graph as _graph
from .. import random as _random
from ..tensor import Function
from ..tensor import Tensor


# ---- argument checks -------------------------------------------------------------------------------------------
def _check_tensor(op, name, value, optional=False):
    if value is None and optional:
        return
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {name} must be a vggcore Tensor, got {type(value).__name__}")


def _int_arg(op, name, value):
    """An int the engine's int64 holds; a pair (a, a) is accepted for PyTorch-style calls, a pair (a, b) is not
    supported. Its range (stride >= 1, padding >= 0, ...) is the op's to check, in dispatch (csrc/dispatch)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{op}: {name} must be one int (the same along height and width), got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    # Beyond int64, pybind11 would refuse the call with its signature dump instead of naming the argument.
    if value > 2**63 - 1:
        raise ValueError(f"{op}: {name} must be < 2**63, got {value}")
    if value < -2**63:
        raise ValueError(f"{op}: {name} must be >= -2**63, got {value}")
    return int(value)


def _real_arg(op, name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return value


# ---- mixed precision --------------------------------------------------------------------------------------------
_autocast_state = threading.local()


class autocast:
    """Context manager (per thread): conv2d and linear inside run in ``dtype`` ("bfloat16", or "float32" to turn an
    outer autocast off for a region), as ``torch.autocast`` does for these ops, on sim and cuda (the cpu computes
    no bfloat16: its ops run as they are). Casts are differentiable: the
    gradient of a cast is the cast back, so a float32 weight receives a float32 gradient. No loss scaling is needed
    for bfloat16 (it has float32's exponent range). ``enabled=False`` makes it a no-op.
    """

    def __init__(self, dtype="bfloat16", enabled=True):
        if dtype not in ("bfloat16", "float32"):
            raise ValueError(f"autocast: dtype must be \"bfloat16\" or \"float32\", got {dtype!r}")
        self.dtype, self.enabled = dtype, bool(enabled)

    def __enter__(self):
        self._previous = getattr(_autocast_state, "dtype", None)
        if self.enabled:
            _autocast_state.dtype = None if self.dtype == "float32" else self.dtype
        return self

    def __exit__(self, *exc):
        _autocast_state.dtype = self._previous
        return False


def autocast_dtype():
    """The dtype conv2d and linear run in under the innermost active ``autocast``, or None."""
    return getattr(_autocast_state, "dtype", None)


def _autocast_inputs(*tensors):
    dtype = autocast_dtype()
    # The cpu kernels compute float32 and float64 only: there autocast leaves the op alone, as torch.autocast for
    # one device type leaves the others' ops alone (casting would make every cpu conv2d/linear raise "input is
    # bfloat16 on the cpu" for float32 tensors the caller never converted).
    if dtype is None or tensors[0].device == "cpu":
        return tensors
    return tuple(t if t is None or t.dtype == dtype else t.to(dtype=dtype) for t in tensors)


def _grad_in_dtype(grad, dtype):
    """The float32 input gradient of a loss op rounded to its input's dtype (bfloat16 input, float32 output)."""
    return grad if grad.dtype == dtype else _C.cast(grad, dtype)


# ---- convolution and fully connected ------------------------------------------------------------------------------
class _Conv2d(Function):
    def forward(self, x, w, bias, stride, padding):
        # the data gradient needs w, the weight gradient x
        self.save_for_backward(x if self.needs_grad(1) else None, w if self.needs_grad(0) else None)
        # the geometry dispatch validated, which the backward passes take instead of checking it again
        y, self.geometry = _C.conv2d_forward_with_shape(x, w, bias, stride, padding)
        return y

    def backward(self, dy):
        x, w = self.saved_tensors
        dx = _C.conv2d_backward_data(dy, w, self.geometry) if self.needs_grad(0) else None
        dw = _C.conv2d_backward_weight(x, dy, self.geometry) if self.needs_grad(1) else None
        db = _C.bias_backward(dy) if self.needs_grad(2) else None
        return dx, dw, db


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """x (N, H, W, C), weight (K, R, S, C), bias (K) -> (N, P, Q, K); P = (H + 2 padding - R) // stride + 1."""
    _check_tensor("conv2d", "input", x)
    _check_tensor("conv2d", "weight", weight)
    _check_tensor("conv2d", "bias", bias, optional=True)
    stride = _int_arg("conv2d", "stride", stride)
    padding = _int_arg("conv2d", "padding", padding)
    x, weight, bias = _autocast_inputs(x, weight, bias)
    try:
        return _Conv2d.apply(x, weight, bias, stride=stride, padding=padding)
    except MemoryError as error:   # the allocator names "tensor"; say which call asked for that much
        raise MemoryError(f"conv2d: input {x.shape}, weight {weight.shape}, stride {stride}, padding {padding}: "
                          f"{error}") from None


class _Linear(Function):
    def forward(self, x, w, bias):
        # the data gradient needs w, the weight gradient x
        self.save_for_backward(x if self.needs_grad(1) else None, w if self.needs_grad(0) else None)
        return _C.linear_forward(x, w, bias)

    def backward(self, dy):
        x, w = self.saved_tensors
        dx = _C.linear_backward_data(dy, w) if self.needs_grad(0) else None
        dw = _C.linear_backward_weight(x, dy) if self.needs_grad(1) else None
        db = _C.bias_backward(dy) if self.needs_grad(2) else None
        return dx, dw, db


def linear(x, weight, bias=None):
    """x (..., in), weight (out, in), bias (out) -> (..., out) = x weight^T + bias."""
    _check_tensor("linear", "input", x)
    _check_tensor("linear", "weight", weight)
    _check_tensor("linear", "bias", bias, optional=True)
    x, weight, bias = _autocast_inputs(x, weight, bias)
    return _Linear.apply(x, weight, bias)


# ---- activations and regularisation ---------------------------------------------------------------------------------
class _ReLU(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return _C.relu_forward(x)

    def backward(self, dy):
        (x,) = self.saved_tensors
        return (_C.relu_backward(x, dy),)


def relu(x):
    _check_tensor("relu", "input", x)
    return _ReLU.apply(x)


class _Dropout(Function):
    # seed: an int, or (inside a graph capture) a 1-element int64 engine tensor the kernel reads it from
    def forward(self, x, p, seed, offset):
        self.p, self.seed, self.offset = p, seed, offset
        return self._mask(x)

    def backward(self, dy):
        return (self._mask(dy),)  # the same mask and scale, recomputed

    def _mask(self, x):
        if isinstance(self.seed, int):
            return _C.dropout(x, self.p, self.seed, self.offset)
        return _C.dropout_device_seed(x, self.p, self.seed, self.offset)


def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout: zeroes each element with probability p and scales the rest by 1 / (1 - p).

    The mask is a pure function of (seed, element index) (Philox4x32-10), identical on every device; ``seed``
    defaults to a fresh draw from vggcore's generator (``vggcore.manual_seed``). Identity when not training.
    Inside a graph capture (``vggcore.Graph``) the default seed is drawn at each replay instead, and read by the
    kernel from device memory.
    """
    _check_tensor("dropout", "input", x)
    p = _real_arg("dropout", "p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not isinstance(training, (bool, np.bool_)):   # training="no" is truthy: it would drop out
        raise TypeError(f"dropout: training must be True or False, got {type(training).__name__} {training!r}")
    if not training or p == 0.0:
        return x
    graph = _graph.capturing(x.device) if seed is None else None
    if graph is not None:
        seed = graph._dropout_seed()
    elif seed is None:
        seed = _random.next_seed()
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"dropout: seed must be an int, got {type(seed).__name__}")
    # A data-parallel rank's rows start at row_offset() of the global batch (0 in a single process).
    rows = x.shape[0] if x.shape else 1
    offset = _random.row_offset() * (x.numel() // max(rows, 1))
    if graph is None:
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return _Dropout.apply(x, p=p, seed=seed, offset=offset)


# ---- pooling ----------------------------------------------------------------------------------------------------
class _MaxPool2d(Function):
    def forward(self, x, kernel, stride):
        self.kernel, self.stride, self.x_shape = kernel, stride, list(x.shape)
        y, argmax = _C.max_pool2d_forward(x, kernel, stride)
        self.save_for_backward(argmax)
        return y

    def backward(self, dy):
        (argmax,) = self.saved_tensors
        return (_C.max_pool2d_backward(dy, argmax, self.x_shape, self.kernel, self.stride),)


def max_pool2d(x, kernel_size=2, stride=2):
    """Max over kernel_size x kernel_size windows, floor mode, no padding; stride=None means kernel_size."""
    _check_tensor("max_pool2d", "input", x)
    kernel_size = _int_arg("max_pool2d", "kernel_size", kernel_size)
    stride = kernel_size if stride is None else _int_arg("max_pool2d", "stride", stride)
    return _MaxPool2d.apply(x, kernel=kernel_size, stride=stride)


class _AvgPool2d(Function):
    def forward(self, x, kernel, stride):
        self.kernel, self.stride, self.x_shape = kernel, stride, list(x.shape)
        return _C.avg_pool2d_forward(x, kernel, stride)

    def backward(self, dy):
        return (_C.avg_pool2d_backward(dy, self.x_shape, self.kernel, self.stride),)


def avg_pool2d(x, kernel_size=2, stride=2):
    """Mean over kernel_size x kernel_size windows, floor mode, no padding; stride=None means kernel_size."""
    _check_tensor("avg_pool2d", "input", x)
    kernel_size = _int_arg("avg_pool2d", "kernel_size", kernel_size)
    stride = kernel_size if stride is None else _int_arg("avg_pool2d", "stride", stride)
    return _AvgPool2d.apply(x, kernel=kernel_size, stride=stride)


class _GlobalAvgPool2d(Function):
    def forward(self, x):
        self.x_shape = list(x.shape)
        return _C.global_avg_pool_forward(x)

    def backward(self, dy):
        return (_C.global_avg_pool_backward(dy, self.x_shape),)


def global_avg_pool2d(x):
    """x (N, H, W, C) -> (N, C), the mean over every position (dense evaluation averages class scores so)."""
    _check_tensor("global_avg_pool2d", "input", x)
    return _GlobalAvgPool2d.apply(x)


# ---- normalisation ------------------------------------------------------------------------------------------------
class _LocalResponseNorm(Function):
    def forward(self, x, size, alpha, beta, k):
        self.params = (size, alpha, beta, k)
        y, scale = _C.lrn_forward(x, size, alpha, beta, k)
        self.save_for_backward(x, y, scale)
        return y

    def backward(self, dy):
        x, y, scale = self.saved_tensors
        return (_C.lrn_backward(x, y, scale, dy, *self.params),)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Across channels (the last axis), PyTorch's/Caffe's convention:
    b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_c'^2) ^ beta.

    The AlexNet/VGG papers write alpha without the 1/size: their LRN (k=2, n=5, alpha=1e-4, beta=0.75) is
    size=5, alpha=5e-4, beta=0.75, k=2 here.
    """
    op = "local_response_norm"
    _check_tensor(op, "input", x)
    size = _int_arg(op, "size", size)
    return _LocalResponseNorm.apply(x, size=size, alpha=_real_arg(op, "alpha", alpha),
                                    beta=_real_arg(op, "beta", beta), k=_real_arg(op, "k", k))


# ---- softmax and the loss -------------------------------------------------------------------------------------------
def _check_last_axis(op, dim, x):
    if dim not in (-1, x.ndim - 1):
        raise ValueError(f"{op}: only the last axis is supported (dim=-1), got dim={dim} for shape {x.shape}")


def _softmax_output(y, x):
    """A softmax-family result (float32 for bfloat16 x: the kernels compute and store in float32) in the dtype
    PyTorch returns: x's own dtype, except inside autocast, which runs the softmax family in float32."""
    return _C.cast(y, x.dtype) if y.dtype != x.dtype and autocast_dtype() is None else y


class _Softmax(Function):
    def forward(self, x):
        y = _C.softmax_forward(x)
        self.save_for_backward(y)       # float32 for bfloat16 x: the backward uses the unrounded output
        return _softmax_output(y, x)

    def backward(self, dy):
        (y,) = self.saved_tensors
        dy = dy if dy.dtype == y.dtype else _C.cast(dy, y.dtype)
        return (_grad_in_dtype(_C.softmax_backward(y, dy), self.inputs[0].dtype),)


def softmax(x, dim=-1):
    """exp(x) / sum(exp(x)) over the last axis, computed stably (in float32 for bfloat16 x, which gets a bfloat16
    result outside autocast and a float32 one inside it, as in PyTorch)."""
    _check_tensor("softmax", "input", x)
    _check_last_axis("softmax", dim, x)
    return _Softmax.apply(x)


class _LogSoftmax(Function):
    def forward(self, x):
        y = _C.log_softmax_forward(x)
        self.save_for_backward(y)       # float32 for bfloat16 x, as in _Softmax
        return _softmax_output(y, x)

    def backward(self, dy):
        (y,) = self.saved_tensors
        dy = dy if dy.dtype == y.dtype else _C.cast(dy, y.dtype)
        return (_grad_in_dtype(_C.log_softmax_backward(y, dy), self.inputs[0].dtype),)


def log_softmax(x, dim=-1):
    """x - logsumexp(x) over the last axis, computed stably (in float32 for bfloat16 x; the result's dtype as for
    softmax)."""
    _check_tensor("log_softmax", "input", x)
    _check_last_axis("log_softmax", dim, x)
    return _LogSoftmax.apply(x)


def _labels(op, target, logits_shape):
    """Integer class labels as an int64 engine tensor on the cpu (the engine checks the upper end of their range)."""
    if isinstance(target, Tensor):
        values = target.numpy()
    elif isinstance(target, (str, bytes)) or target is None:
        raise TypeError(f"{op}: target must be integer class labels (array, list or Tensor), got "
                        f"{type(target).__name__}")
    else:
        try:
            values = np.asarray(target)
        except ValueError as error:
            raise ValueError(f"{op}: target is not a rectangular array ({error})") from None
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError(f"{op}: target must hold integer class labels, got non-integer values")
    elif values.dtype.kind not in "iu":      # bools too (as PyTorch): True would silently read as class 1
        raise TypeError(f"{op}: target must hold integer class labels, got dtype {values.dtype}")
    # Checked before the cast to int64, which would wrap 1e20 or 2**64 - 1 into some other number.
    bad = np.flatnonzero((values < 0) | (values >= 2**62)) if values.size else []
    if len(bad):
        index = tuple(map(int, np.unravel_index(bad[0], values.shape))) if values.ndim > 1 else int(bad[0])
        label = values.flat[bad[0]].item()        # 3 or -1.0, not np.int64(3)
        raise ValueError(f"{op}: target[{index}] = {label} is out of range for {logits_shape[-1] if logits_shape else 0} classes (logits "
                         f"{logits_shape}; labels are 0 .. classes - 1)")
    values = np.ascontiguousarray(values, dtype=np.int64)
    return _C.Tensor.from_numpy(values, "cpu")


class _CrossEntropy(Function):
    def forward(self, logits, target):
        # the engine checks the labels once and returns them on the logits' device, for backward
        loss, logp, labels = _C.cross_entropy_forward(logits, target)
        self.save_for_backward(logp, labels)
        return loss

    def backward(self, dloss):
        logp, labels = self.saved_tensors
        return (_grad_in_dtype(_C.cross_entropy_backward(logp, labels, dloss), self.inputs[0].dtype),)


def cross_entropy(logits, target):
    """Mean over the batch of -log softmax(logits)[target]; logits (N, classes), target (N) integer labels.

    The loss is float32 for bfloat16 logits (computed from them in float32)."""
    _check_tensor("cross_entropy", "logits", logits)
    if (isinstance(target, Tensor) and target.dtype == "int64" and target.device == logits.device
            and target.device != "cpu"):
        # labels already on the device (a graph's fixed labels): the engine checks them, or, while capturing,
        # leaves that to whoever fills them before each replay
        return _CrossEntropy.apply(logits, target=target._data)
    labels = _labels("cross_entropy", target, logits.shape)
    return _CrossEntropy.apply(logits, target=labels)
