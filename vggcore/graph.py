"""Capture a fixed-shape sequence of device work once and replay it: ``vggcore.Graph``, like ``torch.cuda.graph``.

::

    g = vggcore.Graph()
    with g.capture("cuda:0"):            # or "sim"; the cpu is refused (ValueError)
        logits = model(static_x)         # recorded, not computed
        loss = F.cross_entropy(logits, static_y)
    for x, y in batches:
        vggcore.graph.copy_into(static_x, x)
        vggcore.graph.copy_into(static_y, y)
        g.replay()                       # the recorded kernels run, in order, on the same memory
        print(loss.item())               # outputs are valid only after a replay

On cuda the device's stream is captured into a CUDA graph (``cudaStreamBeginCapture``) and replayed with
``cudaGraphLaunch``: one launch instead of one per kernel. On sim each launch is recorded with its arguments
and every replay runs it with all of the emulator's checks, so a capture can be tested without a GPU.

What a capture bakes in: every kernel argument, so every tensor's address and shape. The capture body runs the
Python code once, to record; nothing is computed and the outputs hold garbage until the first replay. Inputs
must be tensors made before the capture and kept alive; fill them in place (``copy_into``) before each replay.
Two per-call values are read from device memory instead, which the graph writes before each replay:
dropout's seed (a fresh draw from ``vggcore.random`` per dropout call, in the order of the capture, so a
replayed step draws the seeds the eager step would) and SGD's lr, momentum and weight decay (the optimizer's
values at replay time, so ``optimizer.lr = ...`` between replays takes effect). A dropout ``seed=`` given
explicitly is baked in; so is dropout's row offset (a data-parallel rank's, constant over a run).

Memory: blocks allocated during the capture come from the graph's memory pool; blocks freed during it, or later
when Python drops a tensor the capture made, go back to that pool and never to the general cache, so an eager op
after the capture is never handed memory a replay writes. ``g2.capture(device, pool=g1)`` captures into g1's pool
(like ``torch.cuda.graph(..., pool=...)``): g2 may reuse the blocks g1 freed (its temporaries and workspaces, and
any of its outputs dropped since), instead of holding memory of its own beside them. Replay them in capture order:
a replay of g1 may overwrite what g2 left in a reused block (g2's outputs stay valid until g1 runs again). The pool
is released with the last graph that uses it. On sim every captured allocation is filled with the poison word
again at its point of each replay, so reading memory that the replay did not write is an error every time.

Refused inside a capture, with a RuntimeError naming the op (the capture is ended; the device stays usable):
anything that makes the host wait for the device or read its memory (``.numpy()``, ``.item()``, moving a
tensor to the cpu, ``vc.tensor(..., device=...)`` and other host-to-device copies, ``empty_cache``,
``synchronize``), and work on cuda's side or copy streams. The labels of a captured ``cross_entropy`` must
already be on the device (an int64 Tensor); a replay cannot range-check them (a label outside [0, classes)
gives a NaN loss), so check them on the host before ``copy_into`` (``vc.train`` does).
"""

import contextlib

import numpy as np

from . import _C
from . import random as _random
from .tensor import Tensor

__all__ = ["Graph", "copy_into", "capturing"]

_capturing = {}  # device -> the Graph being captured on it


def capturing(device=None):
    """The Graph whose capture is in progress on ``device`` (any device when None), or None."""
    if device is None:
        return next(iter(_capturing.values()), None)
    return _capturing.get(device)


def copy_into(dst, source):
    """Copies ``source`` (a numpy array, or a Tensor on dst's device) into the sim/cuda Tensor ``dst`` in place;
    same shape and dtype. From the host it is refused while capturing; between two tensors of a device it is
    recorded like a kernel."""
    if not isinstance(dst, Tensor):
        raise TypeError(f"copy_into: dst must be a vggcore Tensor, got {type(dst).__name__}")
    if isinstance(source, Tensor):
        _C.copy_into(dst._data, source._data)
    else:
        _C.copy_into(dst._data, np.ascontiguousarray(source))


class Graph:
    """Device work captured once and replayed (see the module docstring)."""

    def __init__(self):
        self._engine = _C.Graph()
        self._device = None
        self._slots = []          # (engine int64 tensor, () -> numpy int64 array): written before each replay

    @property
    def device(self):
        return self._device

    @property
    def state(self):
        """'empty', 'capturing', 'ready' (replayable) or 'failed' (an error ended the capture)."""
        return self._engine.state

    @contextlib.contextmanager
    def capture(self, device, pool=None):
        """Records the device work of the ``with`` body on ``device`` ('sim' or 'cuda[:N]'); an exception in the
        body ends the capture (the graph is then 'failed') and propagates. ``pool``: a Graph captured before on
        the same device whose memory pool this capture shares (see "Memory" in the module docstring)."""
        if not isinstance(device, str):
            raise TypeError(f"Graph.capture: device must be a string such as 'sim' or 'cuda:0', got "
                            f"{type(device).__name__}")
        if pool is not None and not isinstance(pool, Graph):
            raise TypeError(f"Graph.capture: pool must be a vggcore.Graph (whose memory pool to share) or None, "
                            f"got {type(pool).__name__}")
        device = "cuda:0" if device == "cuda" else device
        if device == "cpu":
            raise ValueError("Graph.capture: device cpu cannot be captured (its ops run on the host as they are "
                             "called); use 'sim' or 'cuda'")
        self._engine.begin(device, None if pool is None else pool._engine)
        self._device = device
        _capturing[device] = self
        try:
            yield self
        except BaseException:
            self._engine.abort()
            raise
        else:
            self._engine.end()
        finally:
            _capturing.pop(device, None)

    def replay(self):
        """Writes the graph's per-replay values (dropout seeds, SGD hyper-parameters) to the device, then runs
        the captured work once."""
        if self._engine.state != "ready":
            self._engine.replay()            # raises, saying why
        for slot, values in self._slots:
            _C.copy_into(slot, values())
        self._engine.replay()

    # ---- per-replay device values, registered by the ops that need them while capturing ------------------------
    def _slot(self, count, values):
        """An int64 engine tensor of ``count`` elements on the capture's device, set to ``values()`` before every
        replay, in registration order."""
        slot = _C.int64_empty([count], self._device)  # no host copy: it can be made while capturing
        self._slots.append((slot, values))
        return slot

    def _dropout_seed(self):
        return self._slot(1, lambda: np.array([_random.next_seed()], np.int64))

    def _sgd_hyper(self, optimizer):
        return self._slot(3, lambda: np.array([optimizer.lr, optimizer.momentum, optimizer.weight_decay],
                                              np.float64).view(np.int64))

