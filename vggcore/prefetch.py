"""A device prefetcher: keeps the host-to-device copies of the next batches in flight while a batch computes.

``DevicePrefetcher(batches, device, depth=2)`` iterates ``(x, y)`` with x a vggcore Tensor on ``device`` and y
the labels as they came (numpy). For sim and cuda, a batch whose x lies in pinned memory (``DataLoader(...,
pin_memory=True)``) is copied asynchronously on the device's copy stream as soon as the loader yields it, and
``depth`` such copies are kept issued ahead of the compute: while batch i computes, batch i+1's copy runs. Handing
batch i out makes the compute stream wait on its copy's event (the host does not block), so the compute that
reads x comes after the copy. The pinned buffer itself is recycled by the loader only once that copy has completed
(data.DataLoader checks each buffer's copy before reusing it).

Anything else (the cpu, or x in ordinary memory) is copied synchronously when the loader yields it (the loader may
recycle its array once the next batch is requested), which is the loop's behaviour without prefetching.

Time spent in ``next()`` is time the consumer waited for a batch that was not ready (the loader's decoding, or,
on sim, the copy being performed, since the emulator performs it at the wait); on cuda the copies run during
compute and are not in it. To issue batch i+1's copy before batch i's compute, ``next()`` takes batch i+1 from
the loader before it returns batch i: when the loader is behind, the wait for i+1 shows one call early (the first
call of an epoch waits for ``depth`` batches), which moves data wait between steps but does not change its total.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from . import _C
from .tensor import Tensor, tensor

__all__ = ["DevicePrefetcher"]

# Test-only switch: False hands batches out without ordering the compute after their copy (the bug the emulator
# must catch: on sim the batch then reads the copy's NaN poison). Never turn it off outside tests.
_ORDER_BEFORE_COMPUTE = True


class DevicePrefetcher:
    """Iterates ``batches`` (an iterable of ``(x, y)``, x an NHWC float32 numpy array) as device batches, with
    ``depth`` asynchronous copies in flight (see the module docstring). ``depth`` 0 copies each batch
    synchronously when it is requested."""

    def __init__(self, batches, device: str, depth: int = 2):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"DevicePrefetcher: depth must be an int >= 0, got {depth!r}")
        self.device = device
        self.depth = depth
        self._batches = iter(batches)
        self._queue = deque()       # (x tensor, y, ticket or None), copies issued in order
        self._exhausted = False
        self._closed = False
        self.async_copies = 0       # batches handed out that came through the copy stream

    def __iter__(self):
        return self

    def _issue(self, x, y):
        if (self.device != "cpu" and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous
                and _C.is_pinned(x)):
            data, ticket = _C.copy_async(x, self.device)
            return Tensor._from_engine(data), y, ticket
        return tensor(x, device=self.device), y, None

    def _fill(self, target):
        while not self._exhausted and len(self._queue) < target:
            try:
                x, y = next(self._batches)
            except StopIteration:
                self._exhausted = True
                break
            self._queue.append(self._issue(x, y))

    def __next__(self):
        if self._closed:
            raise ValueError("DevicePrefetcher: the prefetcher is closed (its loader was closed or the epoch ended)")
        # Issue this batch's and the next depth-1 batches' copies before handing this one out, so that the next
        # copies start before this batch's compute is queued and run during it.
        self._fill(max(1, self.depth))
        if not self._queue:
            raise StopIteration
        x, y, ticket = self._queue.popleft()
        if ticket is not None:
            self.async_copies += 1
            if _ORDER_BEFORE_COMPUTE:
                _C.wait_copy(ticket)
        return x, y

    def close(self):
        """Orders every issued copy before later compute (their destination blocks go back to the allocator)
        and stops; later ``next`` calls raise ValueError."""
        while self._queue:
            _, _, ticket = self._queue.popleft()
            if ticket is not None:
                _C.wait_copy(ticket)
        self._closed = True
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
