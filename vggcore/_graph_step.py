"""The training step of ``vc.train(..., cuda_graph=True)``: captured once, replayed for every full batch.

The step is two graphs, replayed back to back: forward + loss, then zero_grad + backward + SGD. The loss is read
between them, so that a NaN loss still stops training before the weights are updated, as in the eager loop. A
few eager steps come first (they create the momentum buffers and warm the allocator); the capture itself
computes nothing, and its batch is then run by replaying. A batch of another size (the short last one) runs
eagerly. Kernel for kernel, a replay runs what the eager step runs, on the same values: the batch is copied into
the graph's fixed input and label tensors, dropout's seeds are drawn from vggcore's generator in the same order,
and SGD reads the optimizer's current lr, so the history and weights are those of the eager loop.
"""

import numpy as np

from . import _C
from .graph import Graph, copy_into
from .nn import functional as F
from .tensor import Tensor

WARMUP_STEPS = 2  # eager full batches before the capture


class GraphedStep:
    def __init__(self, model, optimizer, device, compute, batch_size, warmup=WARMUP_STEPS):
        if device == "cpu" or not isinstance(device, str):
            raise ValueError(f"train: cuda_graph=True needs device 'sim' or 'cuda' (a graph of device work), got "
                             f"{device!r}")
        self.model, self.optimizer, self.device, self.compute = model, optimizer, device, compute
        self.batch_size = int(batch_size)
        self.warmup_left = int(warmup)
        self.forward_graph = self.update_graph = None
        self.x = self.y = self.logits = self.loss = None
        self._pending = None   # what update() finishes: ("eager", logits, loss) or ("graph",)
        self.replays = 0

    def forward(self, x, y_np):
        """Forward and loss of one batch (x on the device, y_np host labels); returns the loss as a float."""
        full = len(y_np) == self.batch_size
        if not full or self.warmup_left > 0:
            if full:
                self.warmup_left -= 1
            with self.compute:
                logits = self.model(x)
                loss = F.cross_entropy(logits, y_np)
            self._pending = ("eager", logits, loss)
            return loss.item()
        labels = np.ascontiguousarray(y_np, dtype=np.int64)
        if self.forward_graph is None:
            self._capture(x, labels)
        if x.shape != self.x.shape or x.dtype != self.x.dtype:
            raise ValueError(f"train: a full batch of shape {x.shape} {x.dtype} after capturing {self.x.shape} "
                             f"{self.x.dtype}")
        classes = self.logits.shape[1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):   # a replay cannot check them
            raise ValueError(f"train: batch labels must be in [0, {classes}), got {labels.min()}..{labels.max()}")
        copy_into(self.x, x)
        copy_into(self.y, labels)
        self.forward_graph.replay()
        self._pending = ("graph",)
        return self.loss.item()

    def update(self):
        """zero_grad, backward and SGD for the batch of the last forward; returns its logits as numpy."""
        pending, self._pending = self._pending, None
        if pending[0] == "eager":
            _, logits, loss = pending
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            return logits.numpy()
        self.update_graph.replay()
        self.replays += 1
        return self.logits.numpy()

    def _capture(self, x, labels):
        self.x = Tensor._from_engine(x._data.to(self.device))      # fixed inputs, filled before each replay
        self.y = Tensor._from_engine(_C.Tensor.from_numpy(labels, self.device))
        forward_graph, update_graph = Graph(), Graph()
        with self.compute, forward_graph.capture(self.device):
            self.logits = self.model(self.x)
            self.loss = F.cross_entropy(self.logits, self.y)
        # One pool: the update graph may reuse what the forward capture freed (temporaries, kernel workspaces);
        # the two always replay in the order they were captured.
        with update_graph.capture(self.device, pool=forward_graph):
            self.optimizer.zero_grad()
            self.loss.backward()
            self.optimizer.step()
        self.forward_graph, self.update_graph = forward_graph, update_graph
