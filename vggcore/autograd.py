"""Reverse-mode automatic differentiation: grad mode, the op context, and the backward walk.

An op is a ``Function`` subclass (``vggcore.tensor.Function``, built on ``Context`` here). Its instance is the
context: it keeps its parents in the graph, which of them need a gradient (fixed at forward time), and what its
backward needs, saved at forward time with ``save_for_backward`` (as tinygrad and PyTorch do). Backward never
reads a parent's current storage, so replacing a parameter's data between forward and backward
(``load_state_dict``, ``Module.to``) does not change the gradient of the forward that ran.

``run_backward`` walks the graph in reverse topological order (an iterative depth-first sort, so deep networks
cannot overflow Python's recursion limit), adds up the gradients reaching each node (fan-out works) and hands
each leaf's total to the leaf (``_accumulate_grad``: tensor.py owns the wrapping into Tensors, so this module
imports nothing from it). Kernels only ever overwrite; the adding happens here. Afterwards the saved tensors are
freed, and a second backward through the same graph raises ``AutogradError`` unless the first one was called with
``retain_graph=True``.
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


class Context:
    """What one op's backward sees: its parents, which of them need a gradient, and the tensors it saved.

    Subclasses implement ``forward(self, *engine_inputs, **params) -> engine tensor``, calling
    ``self.save_for_backward(...)`` with the engine tensors backward will need (only those for the gradients in
    ``self.needs_input_grad``), and ``backward(self, grad) -> tuple`` with one engine tensor (or None) per input.
    """

    def __init__(self, inputs, needs_input_grad):
        self.inputs = inputs                      # the parent Tensors (or None), in the op's argument order
        self.needs_input_grad = needs_input_grad  # one bool per input, fixed when the forward ran
        self._saved = ()
        self._released = False

    def save_for_backward(self, *tensors):
        self._saved = tensors

    @property
    def saved_tensors(self):
        return self._saved

    def needs_grad(self, index):
        return self.needs_input_grad[index]

    def release(self):
        """Frees what backward needed; a later backward through this node raises."""
        self._saved = ()
        self._released = True

    def forward(self, *args, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError


def _parents(ctx):
    return [t for t, needed in zip(ctx.inputs, ctx.needs_input_grad) if needed]


def _topological_order(root):
    """Tensors reachable from root through grad_fn, each after every tensor that consumes it (root first).

    Iterative depth-first search; a node is marked when it is first expanded, not when it is pushed, so a node
    reached by several paths (x + 2x, skip connections) is placed after all of its consumers. A node's leaf
    inputs are pushed before its other inputs, so they are placed right after the node instead of after the whole
    graph beneath it: a parameter's gradient is then complete, and ``grad_ready_hooks`` run, as soon as backward
    has passed its layer (data-parallel training overlaps the all-reduce of the last layers' gradients with the
    backward of the first ones). The order of the non-leaf nodes, and so every sum, is unchanged.
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
        parents = [p for p in _parents(node.grad_fn) if id(p) not in expanded_ids]
        stack.extend((p, False) for p in parents if p.grad_fn is None)
        stack.extend((p, False) for p in parents if p.grad_fn is not None)
    order.reverse()
    return order


def _mark_shared(shared, node_grad, parent_grads):
    """Adds to ``shared`` (id -> engine tensor, which keeps the ids valid) every parent gradient whose storage
    another parent gradient of the same node also starts at, or node_grad when that is itself shared. All of them
    are alive here, so equal addresses mean one storage, never a freed block reused."""
    given = [g for g in parent_grads if g is not None]
    if not given:
        return
    starts = [g.data_ptr for g in given]
    for g, start in zip(given, starts):
        if starts.count(start) > 1 or (id(node_grad) in shared and start == node_grad.data_ptr):
            shared[id(g)] = g


def run_backward(root, grad, retain_graph=False):
    """Propagates ``grad`` (an engine tensor shaped like root) from root to every leaf that requires grad."""
    order = _topological_order(root)
    # Checked before any gradient moves, so a refused call leaves every .grad as it was.
    if any(node.grad_fn is not None and node.grad_fn._released for node in order):
        raise AutogradError("backward: this graph was already backpropagated and its saved tensors freed; call "
                            "backward(retain_graph=True) the first time to backpropagate through it again")
    pending = {id(root): grad}
    # Gradients whose storage another gradient of this pass also holds: a pass-through backward (a + b, a reshape
    # view) hands one engine tensor to several inputs. A leaf keeps a copy of such a gradient, so that every .grad
    # owns its memory: an in-place update of one parameter's gradient (the data-parallel all-reduce sums in place,
    # on another thread) must not change another's, or a gradient still flowing through the graph.
    shared = {}
    for node in order:
        node_grad = pending.pop(id(node), None)
        ctx = node.grad_fn
        if ctx is None:  # a leaf
            if node_grad is not None:
                if id(node_grad) in shared:
                    node_grad = _C.scale(node_grad, 1.0)
                node._accumulate_grad(node_grad)
                for hook in grad_ready_hooks:   # every contribution to this leaf is in (reverse topological order)
                    hook(node)
            continue
        if node_grad is not None:
            parent_grads = ctx.backward(node_grad)
            _mark_shared(shared, node_grad, parent_grads)
            for parent, needed, parent_grad in zip(ctx.inputs, ctx.needs_input_grad, parent_grads):
                if not needed or parent_grad is None:
                    continue
                key = id(parent)
                pending[key] = parent_grad if key not in pending else _C.add(pending[key], parent_grad)
        if not retain_graph:
            ctx.release()
