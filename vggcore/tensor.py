"""The user-facing Tensor: engine storage (``vggcore._C.Tensor``) plus autograd bookkeeping, and ``Function``,
the base of every differentiable op, whose ``apply`` wraps the op's engine output into a Tensor.

This module owns the wrapping of engine tensors into Tensors; vggcore.autograd (grad mode, the op context, the
backward walk) imports nothing from it."""

import numbers

import numpy as np

from . import _C
from .autograd import AutogradError, Context, is_grad_enabled, run_backward

# dtype name -> the numpy dtype data is staged in on the host. numpy has no bfloat16: bfloat16 tensors are made
# from float32 values (rounded to nearest even) and read back by .numpy() as float32 (exact).
_DTYPES = {"float32": np.float32, "float64": np.float64, "bfloat16": np.float32}


def _dtype_name(dtype, op="tensor"):
    """Normalises "float32", np.float32, np.dtype("float64"), "bfloat16" ... to "float32"/"float64"/"bfloat16"."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in _DTYPES:
        return dtype
    if isinstance(dtype, np.generic):   # np.dtype(np.float32(2.0)) is float32: a value passed as the dtype
        raise TypeError(f"{op}: dtype must be \"float32\", \"float64\" or \"bfloat16\", got the value {dtype!r}")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"{op}: dtype must be \"float32\", \"float64\" or \"bfloat16\", got {dtype!r}")
    return name


def _check_requires_grad(value, op="tensor"):
    """A real bool: requires_grad='no' would otherwise be truthy and silently turn gradients on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: requires_grad must be True or False, got {value!r}")
    return bool(value)


def _check_shape(op, shape, allow_inferred=False):
    """Shape entries as Python ints, refused with a message naming the op (not pybind11's argument dump) when they
    are not integers, are negative, or do not fit the engine's int64 extents."""
    out = []
    for extent in shape:
        if isinstance(extent, bool) or not isinstance(extent, (int, np.integer)):
            raise TypeError(f"{op}: shape entries must be ints, got {tuple(shape)!r}")
        extent = int(extent)
        if extent < 0 and not (allow_inferred and extent == -1):
            raise ValueError(f"{op}: negative dimension {extent} in shape {tuple(shape)!r}")
        if extent >= 2**62:
            raise ValueError(f"{op}: dimension {extent} in shape {tuple(shape)!r} is too large")
        out.append(extent)
    return out


def check_device_holds(op, device, dtype, what):
    """float64 lives on the cpu only (the GPU kernels and the emulator run float32 and bfloat16): refused here,
    naming the op and ``what`` is moved, instead of by the engine's allocator under the name "tensor"."""
    if dtype == "float64" and device != "cpu":
        raise TypeError(f"{op}: {device} holds float32 and bfloat16 only, and {what} is float64; convert it to "
                        f"float32 first")


def _check_device(device, op="tensor"):
    if not isinstance(device, str):
        raise TypeError(f"{op}: device must be a string such as 'cpu', 'sim' or 'cuda:0', got {type(device).__name__}")
    return device


class Tensor:
    """An n-dimensional float32/float64/bfloat16 array on one device (cpu, sim or cuda:N), with autograd.

    Activations are NHWC (N, H, W, C). Create tensors with ``vggcore.tensor(...)``. float64 lives on the cpu only;
    bfloat16 computes on sim and cuda, and the cpu only stores, converts and moves it (``.numpy()`` returns its
    values as float32, exactly).
    """

    __slots__ = ("_data", "requires_grad_", "_grad", "grad_fn", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("use vggcore.tensor(data, dtype=None, device='cpu', requires_grad=False) to create a Tensor")

    @classmethod
    def _from_engine(cls, data, requires_grad=False, grad_fn=None):
        t = object.__new__(cls)
        t._data = data
        t.requires_grad_ = bool(requires_grad)
        t._grad = None
        t.grad_fn = grad_fn
        return t

    # ---- description ---------------------------------------------------------------------------------------------
    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def device(self):
        return self._data.device

    @property
    def ndim(self):
        return len(self._data.shape)

    def numel(self):
        return int(self._data.numel)

    def size(self, axis=None):
        return self.shape if axis is None else self.shape[axis]

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"vggcore.Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device!r}{extra})"

    @property
    def grad(self):
        """The accumulated gradient (a Tensor like this one), or None."""
        return self._grad

    @grad.setter
    def grad(self, value):
        # Checked here, as PyTorch does: a mismatched .grad would otherwise surface at the next backward or
        # optimiser step as an error of some internal op ("add: b must have shape ...").
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"grad: must be None or a vggcore Tensor of shape {self.shape}, got "
                                f"{type(value).__name__}")
            if value.shape != self.shape:
                raise ValueError(f"grad: a tensor of shape {self.shape} cannot take a gradient of shape {value.shape}")
            if value.dtype != self.dtype or value.device != self.device:
                raise TypeError(f"grad: this tensor of shape {self.shape} is {self.dtype} on {self.device}; the "
                                f"gradient assigned is {value.dtype} on {value.device}")
        self._grad = value

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def requires_grad(self):
        return self.requires_grad_

    @requires_grad.setter
    def requires_grad(self, value):
        _check_requires_grad(value, "requires_grad")
        if self.grad_fn is not None and not value:
            raise AutogradError("requires_grad: cannot turn off requires_grad on a non-leaf tensor; use detach()")
        self.requires_grad_ = bool(value)

    # ---- conversion ---------------------------------------------------------------------------------------------
    def numpy(self):
        """A copy of the contents as a numpy array (synchronises with the device); bfloat16 comes back as float32."""
        return self._data.numpy()

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, shape is {self.shape}")
        return float(self._data.numpy().reshape(()))

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """The same storage, cut from the graph."""
        return Tensor._from_engine(self._data, requires_grad=False, grad_fn=None)

    def to(self, device=None, dtype=None, non_blocking=False):
        """A copy on ``device`` ("cpu", "sim", "cuda", "cuda:N") and/or in ``dtype`` ("float32", "float64" (cpu
        only), "bfloat16"); differentiable (the gradient of a cast is the cast back, as in PyTorch). Narrowing
        rounds to nearest even. ``t.to("bfloat16")`` is ``t.to(dtype="bfloat16")``. Nothing to change: self.

        ``non_blocking=True`` moves a pinned cpu tensor (``pin_memory()``) to sim or cuda on the device's copy
        stream: the host goes on at once, and the device's later work waits for the copy. The source must not be
        written until the copy has completed (``vggcore._C.pinned_ready(t._data.host_view())``; the DataLoader
        checks this for its buffers); a non-pinned source raises ValueError. Without a dtype change.
        """
        if isinstance(device, str) and device in _DTYPES and dtype is None:
            device, dtype = None, device
        if device is not None:
            _check_device(device, "to")
        dtype = _dtype_name(dtype, "to")
        same_device = device is None or device == self.device or (device == "cuda" and self.device == "cuda:0")
        if not same_device:
            check_device_holds("to", device, dtype or self.dtype, f"this tensor of shape {self.shape}")
        elif dtype == "float64" and self.device != "cpu":
            # refused here, naming "to" (the engine's refusal would name its internal op "cast")
            raise TypeError(f"to: {self.device} holds float32 and bfloat16 only; this {self.dtype} tensor of shape "
                            f"{self.shape} cannot become float64 there (move it to the cpu: .to(\"cpu\", "
                            f"\"float64\"))")
        out = self
        if non_blocking and not same_device and device != "cpu":
            if self.device != "cpu" or not self._data.is_pinned:
                raise ValueError(f"to: non_blocking=True copies to {device} only from a pinned cpu tensor "
                                 f"(t.pin_memory()); this tensor of shape {self.shape} is "
                                 f"{'on ' + self.device if self.device != 'cpu' else 'in ordinary memory'}; "
                                 "pass non_blocking=False")
            if dtype is not None and dtype != self.dtype:
                raise ValueError(f"to: non_blocking=True moves without converting; got dtype {dtype} for a "
                                 f"{self.dtype} tensor (convert on the device after the move)")
            return _ToDevice.apply(out, device=device, non_blocking=True)
        if dtype is None or dtype == self.dtype:
            return out if same_device else _ToDevice.apply(out, device=device)
        # Convert where the dtypes exist (float64: the cpu only) and move the smaller of the two copies.
        cast_first = same_device or self.dtype == "float64" or (dtype == "bfloat16" and self.dtype == "float32")
        if cast_first:
            out = _Cast.apply(out, dtype=dtype)
        if not same_device:
            out = _ToDevice.apply(out, device=device)
        if not cast_first:
            out = _Cast.apply(out, dtype=dtype)
        return out

    def float(self):
        """``self.to(dtype="float32")``."""
        return self.to(dtype="float32")

    def bfloat16(self):
        """``self.to(dtype="bfloat16")``."""
        return self.to(dtype="bfloat16")

    def cpu(self):
        return self.to("cpu")

    def pin_memory(self):
        """A copy of this cpu tensor in page-locked host memory, the source ``to(device, non_blocking=True)``
        needs; self when it is pinned already. Not differentiable (a data-loading step)."""
        if self.device != "cpu":
            raise ValueError(f"pin_memory: only a cpu tensor can be pinned, this one is on {self.device}")
        if self._data.is_pinned:
            return self
        if self.dtype == "bfloat16":
            raise TypeError("pin_memory: a bfloat16 tensor cannot be pinned (numpy has no bfloat16); pin the "
                            "float32 data and cast on the device")
        pinned = _C.Tensor.empty_pinned(list(self.shape), self.dtype)
        np.copyto(pinned.host_view(), self._data.host_view())
        return Tensor._from_engine(pinned)

    def is_pinned(self):
        """Whether this is a cpu tensor in page-locked host memory."""
        return bool(self._data.is_pinned)

    def reshape(self, *shape):
        """A view with a new shape (one entry may be -1); differentiable."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _Reshape.apply(self, shape=tuple(_check_shape("reshape", shape, allow_inferred=True)))

    view = reshape

    def flatten(self, start_dim=1):
        if isinstance(start_dim, bool) or not isinstance(start_dim, (int, np.integer)) or \
                not -self.ndim <= start_dim <= self.ndim:
            raise ValueError(f"flatten: start_dim must be an int in [{-self.ndim}, {self.ndim}] for shape "
                             f"{self.shape}, got {start_dim!r}")
        return self.reshape(*self.shape[:int(start_dim)], -1)

    # ---- autograd ---------------------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulates d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` (same shape as self) defaults to 1 for a one-element tensor. The graph's saved tensors are freed
        afterwards: a second backward through it raises AutogradError unless this one had ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise AutogradError("backward: this tensor does not require grad and has no graph "
                                "(create inputs with requires_grad=True, outside no_grad())")
        if grad is None:
            if self.numel() != 1:
                raise AutogradError(f"backward: grad can be omitted only for a one-element output, shape is "
                                    f"{self.shape}; pass grad=<tensor of that shape>")
            engine_grad = _C.full(list(self.shape), 1.0, self.dtype, self.device)
        else:
            if not isinstance(grad, Tensor):
                grad = tensor(grad, dtype=self.dtype, device=self.device)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape} but the output has shape {self.shape}")
            if grad.dtype != self.dtype or grad.device != self.device:
                raise TypeError(f"backward: grad is {grad.dtype} on {grad.device}, the output {self.dtype} on "
                                f"{self.device}")
            engine_grad = grad._data
        run_backward(self, engine_grad, retain_graph=bool(retain_graph))

    def _accumulate_grad(self, engine_grad):
        """Adds a gradient computed by backward into .grad, on this tensor's current device (Module.to may have
        moved it since the forward that produced the gradient)."""
        if not self.requires_grad:
            return
        if engine_grad.device != self.device:
            engine_grad = engine_grad.to(self.device)
        if self._grad is None:
            self._grad = Tensor._from_engine(engine_grad)
        else:
            self._grad = Tensor._from_engine(_C.add(self._grad._data, engine_grad))

    def zero_grad(self):
        self._grad = None

    # ---- a little arithmetic, enough for losses and tests ----------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, Tensor):
            return NotImplemented
        return _Add.apply(self, other)

    def __mul__(self, other):
        if isinstance(other, bool) or not isinstance(other, numbers.Real):
            return NotImplemented
        return _Scale.apply(self, alpha=float(other))

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, Tensor):
            return NotImplemented
        return self + (-other)

    def __truediv__(self, other):
        if isinstance(other, bool) or not isinstance(other, numbers.Real):
            return NotImplemented
        return self * (1.0 / other)

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)


class Function(Context):
    """A differentiable op: subclass it with forward and backward on engine tensors (see autograd.Context), call
    ``Op.apply(*tensors, **params)`` with vggcore Tensors (or None for an absent optional input)."""

    @classmethod
    def apply(cls, *inputs, **params):
        enabled = is_grad_enabled()
        needs = tuple(enabled and t is not None and t.requires_grad for t in inputs)
        ctx = cls(inputs, needs)
        output = ctx.forward(*(t._data if t is not None else None for t in inputs), **params)
        if not any(needs):
            return Tensor._from_engine(output)
        return Tensor._from_engine(output, requires_grad=True, grad_fn=ctx)


class _ToDevice(Function):
    def forward(self, x, device, non_blocking=False):
        self.source_device = x.device
        if non_blocking:
            out, ticket = _C.copy_async(x, device)
            _C.wait_copy(ticket)     # the device's later work runs after the copy; the host does not block
            return out
        return x.to(device)

    def backward(self, grad):
        return (grad.to(self.source_device),)


class _Cast(Function):
    def forward(self, x, dtype):
        self.source_dtype = x.dtype
        return _C.cast(x, dtype)

    def backward(self, grad):
        return (_C.cast(grad, self.source_dtype),)


class _Reshape(Function):
    def forward(self, x, shape):
        self.source_shape = list(x.shape)
        return x.reshape(list(shape))

    def backward(self, grad):
        return (grad.reshape(self.source_shape),)


class _Add(Function):
    def forward(self, a, b):
        return _C.add(a, b)

    def backward(self, grad):
        return grad, grad


class _Scale(Function):
    def forward(self, x, alpha):
        self.alpha = alpha
        return _C.scale(x, alpha)

    def backward(self, grad):
        return (_C.scale(grad, self.alpha),)


def _as_array(data, dtype):
    """numpy copy of user data with a float dtype: keeps float32/float64 numpy arrays, else float32."""
    if isinstance(data, Tensor):
        array = data.numpy()
    elif isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"tensor: data must be a number, a (nested) list of numbers or a numpy array, "
                        f"got {type(data).__name__}")
    else:
        try:
            array = np.asarray(data)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"tensor: data is not a rectangular array ({error})") from None
        except TypeError as error:   # an object numpy cannot read, e.g. a torch bfloat16 tensor (numpy has none)
            raise TypeError(f"tensor: data of type {type(data).__name__} cannot be read as a numpy array ({error}); "
                            f"pass float32 values, e.g. a torch tensor's .float().numpy()") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"tensor: data must be numeric, got numpy dtype {array.dtype}")
    if dtype is None and isinstance(data, Tensor):
        dtype = data.dtype
    if dtype is None:  # as torch.tensor: numpy float arrays keep their precision, Python numbers become float32
        keeps_dtype = isinstance(data, (np.ndarray, np.generic)) and array.dtype.name in ("float32", "float64")
        dtype = array.dtype.name if keeps_dtype else "float32"
    return np.array(array, dtype=_DTYPES[dtype], order="C", copy=True), dtype


def tensor(data, dtype=None, device="cpu", requires_grad=False, non_blocking=False):
    """A new tensor holding a copy of ``data`` (numpy array, nested list, number, or Tensor).

    dtype: "float32", "float64" or "bfloat16"; by default numpy float32/float64 arrays (and Tensors) keep theirs,
    everything else (Python numbers and lists, integer arrays) becomes float32. sim and cuda hold float32 and
    bfloat16; bfloat16 values are the float32 data rounded to nearest even.

    non_blocking=True (sim and cuda; ignored for the cpu, where nothing is copied asynchronously): ``data`` is a
    C-contiguous float32 numpy array in pinned memory (``pinned_empty``, ``DataLoader(pin_memory=True)``), copied
    on the device's copy stream; the host goes on at once and the device's later work waits for the copy. Do not
    write the array again before ``_C.pinned_ready(data)``. Any other source raises ValueError.
    """
    dtype = _dtype_name(dtype)
    device = "cpu" if device is None else device       # as torch.tensor(device=None): the default device
    _check_device(device)
    requires_grad = _check_requires_grad(requires_grad)
    if non_blocking and device != "cpu":
        return _tensor_async(data, dtype, device, requires_grad)
    array, dtype = _as_array(data, dtype)
    if dtype == "bfloat16":  # rounded on the host, then moved: half the bytes to copy
        data = _C.cast(_C.Tensor.from_numpy(array, "cpu"), "bfloat16")
        if device != "cpu":
            data = data.to(device)
        return Tensor._from_engine(data, requires_grad=requires_grad)
    return Tensor._from_engine(_C.Tensor.from_numpy(array, device), requires_grad=requires_grad)


def _tensor_async(data, dtype, device, requires_grad):
    if isinstance(data, Tensor):         # a pinned cpu tensor: a new leaf on the device
        moved = data.to(device, dtype=dtype, non_blocking=True)
        return Tensor._from_engine(moved._data, requires_grad=requires_grad)
    if not isinstance(data, np.ndarray) or data.dtype != np.float32 or dtype not in (None, "float32"):
        raise ValueError(f"tensor: non_blocking=True copies to {device} from a float32 numpy array in pinned "
                         f"memory (vggcore.pinned_empty, DataLoader(pin_memory=True)), got "
                         f"{type(data).__name__}{' of dtype ' + str(data.dtype) if hasattr(data, 'dtype') else ''}"
                         f"{' as ' + dtype if dtype else ''}")
    if not data.flags.c_contiguous or not _C.is_pinned(data):
        raise ValueError(f"tensor: non_blocking=True copies to {device} only from pinned memory, and this array "
                         f"of shape {data.shape} is {'not C-contiguous' if not data.flags.c_contiguous else 'ordinary memory'}; "
                         "allocate it with vggcore.pinned_empty or use DataLoader(pin_memory=True), or pass "
                         "non_blocking=False")
    out, ticket = _C.copy_async(data, device)
    _C.wait_copy(ticket)
    return Tensor._from_engine(out, requires_grad=requires_grad)


def pinned_empty(shape, dtype="float32"):
    """An uninitialised numpy array in page-locked host memory (cudaHostAlloc on a machine with a GPU, aligned
    memory otherwise): the source ``tensor(..., non_blocking=True)`` copies from asynchronously."""
    if not isinstance(shape, (tuple, list)):
        shape = (shape,)
    name = np.dtype(dtype).name
    return _C.pinned_empty(_check_shape("pinned_empty", shape), name)


def zeros(*shape, dtype="float32", device="cpu", requires_grad=False):
    return _full("zeros", shape, 0.0, dtype, device, requires_grad)


def ones(*shape, dtype="float32", device="cpu", requires_grad=False):
    return _full("ones", shape, 1.0, dtype, device, requires_grad)


def full(shape, value, dtype="float32", device="cpu", requires_grad=False):
    return _full("full", shape, value, dtype, device, requires_grad)


def _full(op, shape, value, dtype, device, requires_grad):
    if not isinstance(shape, (tuple, list)):
        shape = (shape,)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: value must be a real number, got {value!r}")
    extents = _check_shape(op, shape)
    data = _C.full(extents, float(value), _dtype_name(dtype, op) or "float32", _check_device(device, op))
    return Tensor._from_engine(data, requires_grad=_check_requires_grad(requires_grad, op))
