"""Layers: a small Module system in the spirit of torch.nn, on NHWC tensors.

A Module keeps its parameters and sub-modules in insertion order (assigning a Parameter or a Module to an
attribute registers it), so ``named_parameters()`` and ``state_dict()`` list "conv1_1.weight", ... in the
order the network was built.
"""

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from .. import random as _random
from ..tensor import _DTYPES as _DTYPE_NAMES
from ..tensor import Tensor, _dtype_name, check_device_holds, tensor
from . import functional as F


def _size_arg(op, name, value, minimum):
    """A layer's int geometry (kernel size, stride, padding, LRN size), an int or a pair (a, a), checked when the
    layer is built rather than at its first forward."""
    value = F._int_arg(op, name, value)
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


class Parameter(Tensor):
    """A Tensor that a Module owns and trains (requires_grad=True)."""

    __slots__ = ()

    @classmethod
    def from_array(cls, array, dtype="float32", device="cpu"):
        source = tensor(array, dtype=dtype, device=device)
        return cls._from_engine(source._data, requires_grad=True)

    def __repr__(self):
        return "Parameter" + Tensor.__repr__(self)[len("vggcore.Tensor"):]


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- traversal ----------------------------------------------------------------------------------------------
    def named_modules(self, prefix="", remove_duplicate=True):
        """(name, module) depth first, self first. A module used in two places (weight tying) is listed once, under
        its first name, unless remove_duplicate=False (PyTorch's rule)."""
        stack, seen = [(prefix, self)], set()
        while stack:
            name, module = stack.pop()
            if remove_duplicate:
                if id(module) in seen:
                    continue
                seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child}" if name else child, m) for child, m in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (module for _, module in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """(name, Parameter) in registration order. A Parameter shared by two layers is listed once (under its
        first name), as in PyTorch, so an optimiser updates it once per step; remove_duplicate=False lists every
        name (what state_dict() holds)."""
        seen = set()
        for module_name, module in self.named_modules(prefix, remove_duplicate=remove_duplicate):
            for name, param in module._parameters.items():
                if remove_duplicate:
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                yield (f"{module_name}.{name}" if module_name else name), param

    def parameters(self):
        return (param for _, param in self.named_parameters())

    def num_parameters(self):
        return sum(param.numel() for param in self.parameters())

    # ---- modes and devices ------------------------------------------------------------------------------------
    def train(self, mode=True):
        if not isinstance(mode, (bool, np.bool_)):     # train("no") would otherwise be truthy: training mode
            raise TypeError(f"Module.train: mode must be True or False, got {mode!r}")
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Moves every parameter (and its gradient) to ``device`` and/or converts it to ``dtype`` ("float32",
        "float64" (cpu only), "bfloat16"), in place, as PyTorch's ``Module.to``: ``model.to("sim")``,
        ``model.to(dtype="bfloat16")``, ``model.to("bfloat16")``, ``model.to("sim", "bfloat16")``. The Parameter
        objects stay the same, so an optimiser built before the move keeps working (its momentum buffers follow
        at the next step). All or nothing: every copy is made before any parameter is switched, so a move that
        fails (unknown device, out of memory, a float64 parameter for a float32-only device) leaves the whole
        model where it was instead of split across devices or dtypes."""
        if isinstance(device, str) and device in _DTYPE_NAMES and dtype is None:
            device, dtype = None, device         # model.to("bfloat16"), as Tensor.to
        if device is not None and not isinstance(device, str):
            raise TypeError(f"Module.to: device must be a string such as 'cpu', 'sim' or 'cuda:0', got "
                            f"{type(device).__name__}")
        dtype = _dtype_name(dtype, "Module.to")
        moves = []
        for name, param in self.named_parameters():
            target_device = param.device if device is None else device
            target_dtype = param.dtype if dtype is None else dtype
            if param.device == target_device and param.dtype == target_dtype:
                continue
            what = f"parameter {name} of shape {param.shape}"
            check_device_holds("Module.to", target_device, target_dtype, what)
            # Tensor.to converts where both dtypes exist (float64: the cpu) and moves the smaller copy.
            data = param.detach().to(target_device, target_dtype)._data
            grad = param.grad.detach().to(target_device, target_dtype) if param.grad is not None else None
            moves.append((param, data, grad))
        for param, data, grad in moves:
            param._data = data
            param._grad = grad
        return self

    def float(self):
        """``self.to(dtype="float32")``."""
        return self.to(dtype="float32")

    def bfloat16(self):
        """``self.to(dtype="bfloat16")`` (bfloat16 computes on sim and cuda)."""
        return self.to(dtype="bfloat16")

    def zero_grad(self):
        for param in self.parameters():
            param.grad = None

    # ---- state ------------------------------------------------------------------------------------------------------
    def state_dict(self):
        """{name: numpy array copy} of every parameter, in registration order."""
        return OrderedDict((name, param.numpy()) for name, param in self.named_parameters(remove_duplicate=False))

    def load_state_dict(self, state_dict, strict=True):
        """Copies arrays (numpy or Tensor) into the parameters, checking names and shapes first."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: state_dict must be a mapping of parameter name -> array, got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters(remove_duplicate=False))
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for name, param in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            if tuple(array.shape) != param.shape:
                raise ValueError(f"load_state_dict: {name} has shape {tuple(array.shape)} in the state dict but "
                                 f"{param.shape} in the model")
            arrays[name] = array
        for name, array in arrays.items():  # only after every check passed: all or nothing
            param = own[name]
            param._data = tensor(array, dtype=param.dtype, device=param.device)._data
        return self

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, module in self._modules.items():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _uniform(shape, bound, dtype, device):
    values = _random.generator().uniform(-bound, bound, size=shape)
    return Parameter.from_array(values, dtype=dtype, device=device)


class Conv2d(Module):
    """2-D convolution on NHWC input; weight (out_channels, kernel, kernel, in_channels)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, bias=True,
                 dtype="float32", device="cpu"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {value!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _size_arg("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _size_arg("Conv2d", "stride", stride, 1)
        self.padding = _size_arg("Conv2d", "padding", padding, 0)
        # PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / np.sqrt(self.in_channels * self.kernel_size ** 2)
        self.weight = _uniform((self.out_channels, self.kernel_size, self.kernel_size, self.in_channels), bound,
                               dtype, device)
        self.bias = _uniform((self.out_channels,), bound, dtype, device) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class Linear(Module):
    """y = x weight^T + bias; weight (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, dtype="float32", device="cpu"):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / np.sqrt(self.in_features)
        self.weight = _uniform((self.out_features, self.in_features), bound, dtype, device)
        self.bias = _uniform((self.out_features,), bound, dtype, device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class MaxPool2d(Module):
    """kernel_size x kernel_size windows, floor mode; stride=None means kernel_size, as torch.nn.MaxPool2d (the
    functional F.max_pool2d defaults to stride 2, as the API contract writes it; the two agree for VGG's 2x2)."""

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        op = type(self).__name__
        self.kernel_size = _size_arg(op, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _size_arg(op, "stride", stride, 1)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class AvgPool2d(MaxPool2d):
    """Mean over the windows; the same geometry and defaults as MaxPool2d."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride)


class GlobalAvgPool2d(Module):
    """(N, H, W, C) -> (N, C)."""

    def forward(self, x):
        return F.global_avg_pool2d(x)


class LocalResponseNorm(Module):
    """Across channels, PyTorch's convention (see F.local_response_norm)."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        op = "LocalResponseNorm"
        self.size = _size_arg(op, "size", size, 1)
        self.alpha, self.beta, self.k = (F._real_arg(op, name, value)
                                         for name, value in (("alpha", alpha), ("beta", beta), ("k", k)))

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a number in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """(N, H, W, C) -> (N, H*W*C) in (H, W, C) order. Importing an NCHW-trained first FC weight W (out, C*H*W)
    needs W.reshape(out, C, H, W).transpose(0, 2, 3, 1).reshape(out, -1)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class Sequential(Module):
    """Runs its modules in order; built from modules (named "0", "1", ...) or one OrderedDict of named ones."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential: {name} is a {type(module).__name__}, not a Module")
            setattr(self, name, module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
