"""Reverse-mode automatic differentiation.

An op is a ``Function`` subclass. Its instance is the context: it keeps the input tensors (its parents in the
graph) and whatever its backward needs, nothing else. ``forward`` and ``backward`` work on engine tensors
(``vggcore._C.Tensor``); ``apply`` wraps the result in a ``vggcore.Tensor`` that remembers the context.

``Tensor.backward`` walks the graph in reverse topological order (an iterative depth-first sort, so deep
networks cannot overflow Python's recursion limit), adds up the gradients reaching each node (fan-out works)
and accumulates into the ``.grad`` of leaf tensors that require it. Kernels only ever overwrite; the adding
happens here.
"""

import threading

from . import _C


class AutogradError(RuntimeError, ValueError):
    """Misuse of backward(): a RuntimeError as in PyTorch, and a ValueError as vggcore's contract promises."""


_state = threading.local()

# Callables run with each leaf tensor as soon as its .grad is complete for the current backward pass; data-parallel
# training (vggcore/_parallel.py) starts a gradient bucket's all-reduce from here while backward goes on.
grad_ready_hooks = []


def is_grad_enabled():
    return getattr(_state, "enabled", True)


class _GradMode:
    def __init__(self, enabled):
        self._enabled = enabled

    def __enter__(self):
        self._previous = is_grad_enabled()
        _state.enabled = self._enabled
        return self

    def __exit__(self, *exc):
        _state.enabled = self._previous
        return False

    def __call__(self, func):  # usable as a decorator too
        def wrapper(*args, **kwargs):
            with _GradMode(self._enabled):
                return func(*args, **kwargs)

        wrapper.__name__ = getattr(func, "__name__", "wrapper")
        wrapper.__doc__ = getattr(func, "__doc__", None)
        return wrapper


def no_grad():
    """Context manager (or decorator): ops inside record no graph and return tensors without requires_grad."""
    return _GradMode(False)


def enable_grad():
    return _GradMode(True)


class Function:
    """Base of every differentiable op.

    Subclasses implement ``forward(self, *engine_inputs, **params) -> engine tensor`` and
    ``backward(self, grad) -> tuple`` with one engine tensor (or None) per input given to ``apply``.
    """

    def __init__(self, inputs):
        self.inputs = inputs  # vggcore.Tensor or None, in apply's order

    @classmethod
    def apply(cls, *inputs, **params):
        from .tensor import Tensor

        ctx = cls(inputs)
        output = ctx.forward(*(t._data if t is not None else None for t in inputs), **params)
        track = is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        return Tensor._from_engine(output, requires_grad=track, grad_fn=ctx if track else None)

    def forward(self, *args, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def needs_grad(self, index):
        t = self.inputs[index]
        return t is not None and t.requires_grad


def _topological_order(root):
    """Tensors reachable from root through grad_fn, each after every tensor that consumes it (root first).

    Iterative depth-first search; a node is marked when it is first expanded, not when it is pushed, so a node
    reached by several paths (x + 2x, skip connections) is placed after all of its consumers.
    """
    order, expanded_ids = [], set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in expanded_ids:
            continue
        expanded_ids.add(id(node))
        stack.append((node, True))
        if node.grad_fn is None:
            continue
        for parent in node.grad_fn.inputs:
            if parent is not None and parent.requires_grad and id(parent) not in expanded_ids:
                stack.append((parent, False))
    order.reverse()
    return order


def run_backward(root, grad):
    """Propagates ``grad`` (an engine tensor shaped like root) from root to every leaf that requires grad."""
    from .tensor import Tensor

    pending = {id(root): grad}
    for node in _topological_order(root):
        node_grad = pending.pop(id(node), None)
        if node_grad is None:
            continue
        if node.grad_fn is None:  # a leaf: accumulate into .grad
            if node.grad is None:
                node.grad = Tensor._from_engine(node_grad, requires_grad=False, grad_fn=None)
            else:
                node.grad = Tensor._from_engine(_C.add(node.grad._data, node_grad), requires_grad=False,
                                                grad_fn=None)
            for hook in grad_ready_hooks:
                hook(node)
            continue
        parent_grads = node.grad_fn.backward(node_grad)
        for parent, parent_grad in zip(node.grad_fn.inputs, parent_grads):
            if parent is None or parent_grad is None or not parent.requires_grad:
                continue
            key = id(parent)
            pending[key] = parent_grad if key not in pending else _C.add(pending[key], parent_grad)
