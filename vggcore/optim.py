"""SGD with momentum, weight decay and Nesterov momentum: PyTorch's update rule, one fused kernel per tensor."""

import numbers

import numpy as np

from . import _C
from . import graph as _graph
from .tensor import Tensor, tensor


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"SGD: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"SGD: {name} must be a finite number >= 0, got {value}")
    return value


def _hyper_parameters(op, lr, momentum, weight_decay, nesterov):
    """(lr, momentum, weight_decay, nesterov) checked: the constructor's rules, which load_state_dict keeps too."""
    values = [_nonnegative(name, value) for name, value in (("lr", lr), ("momentum", momentum),
                                                             ("weight_decay", weight_decay))]
    if not isinstance(nesterov, (bool, np.bool_)) and nesterov not in (0, 1):
        raise TypeError(f"{op}: nesterov must be True or False, got {nesterov!r}")
    if nesterov and values[1] == 0:
        raise ValueError(f"{op}: nesterov momentum needs momentum > 0")
    return (*values, bool(nesterov))


class SGD:
    """d = grad + weight_decay * p;  buf = momentum * buf + d (buf = d at the first step);
    d = d + momentum * buf if nesterov else buf;  p -= lr * d."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty parameter list")
        first_index = {}
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(f"SGD: parameter {i} is not a Tensor that requires grad")
            if id(p) in first_index:     # it would be updated twice a step, with two momentum buffers
                raise ValueError(f"SGD: parameters {first_index[id(p)]} and {i} are the same tensor (shape "
                                 f"{p.shape}); pass each parameter once (Module.parameters() lists shared ones once)")
            first_index[id(p)] = i
        self.lr, self.momentum, self.weight_decay, self.nesterov = _hyper_parameters(
            "SGD", lr, momentum, weight_decay, nesterov)
        self._buffers = [None] * len(self.params)  # engine tensors, created at each parameter's first step

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _nonnegative("lr", value)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """One update of every parameter that has a gradient. Inside a graph capture (``vggcore.Graph``) the
        kernels read lr, momentum and weight decay from device memory that each replay refreshes from this
        optimizer, so changing ``lr`` between replays takes effect; the momentum buffers must exist by then (take
        one eager step before capturing)."""
        hyper = None
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            first_step = False
            buffer = None
            if self.momentum > 0:
                buffer = self._buffers[i]
                if buffer is None or tuple(buffer.shape) != p.shape:
                    buffer = _C.full(list(p.shape), 0.0, p.dtype, p.device)
                    first_step = True
                else:
                    # The model moved (Module.to) or changed dtype (Module.to(dtype=...)) since the last step: the
                    # state follows. Converted where both dtypes exist (float64 lives on the cpu only), then moved.
                    if buffer.dtype != p.dtype and buffer.device == "cpu":
                        buffer = _C.cast(buffer, p.dtype)
                    if buffer.device != p.device:
                        buffer = buffer.to(p.device)
                    if buffer.dtype != p.dtype:
                        buffer = _C.cast(buffer, p.dtype)
                self._buffers[i] = buffer
            graph = _graph.capturing(p.device)
            if graph is not None:
                if first_step:
                    raise ValueError(f"SGD.step: parameter {i} has no momentum buffer yet; a graph capture would "
                                     f"bake in its first step (take one eager step before capturing)")
                if hyper is None:
                    hyper = graph._sgd_hyper(self)
            _C.sgd_update(p._data, p.grad._data, buffer, self.lr, self.momentum, self.weight_decay,
                          self.nesterov, first_step, hyper)

    def state_dict(self):
        """Hyper-parameters and the momentum buffers as numpy arrays (None before a parameter's first step)."""
        return {
            "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov,
            "momentum_buffers": [None if b is None else b.numpy() for b in self._buffers],
        }

    def load_state_dict(self, state):
        missing = [k for k in ("lr", "momentum", "weight_decay", "nesterov", "momentum_buffers")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"SGD.load_state_dict: the state lacks {', '.join(missing)} (got {type(state).__name__})")
        buffers = state["momentum_buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: {len(buffers)} momentum buffers for {len(self.params)} parameters")
        for i, (p, b) in enumerate(zip(self.params, buffers)):
            if b is not None and tuple(np.shape(b)) != p.shape:
                raise ValueError(f"SGD.load_state_dict: buffer {i} has shape {np.shape(b)}, parameter {p.shape}")
        hyper = _hyper_parameters("SGD.load_state_dict", state["lr"], state["momentum"], state["weight_decay"],
                                  state["nesterov"])
        loaded = [None if b is None else tensor(np.asarray(b), dtype=p.dtype, device=p.device)._data
                  for p, b in zip(self.params, buffers)]
        # only after every check and copy: a refused state leaves the optimiser as it was
        self.lr, self.momentum, self.weight_decay, self.nesterov = hyper
        self._buffers = loaded
