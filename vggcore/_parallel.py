"""Data-parallel training over the ranks of ``vggcore.distributed`` (used by ``vggcore.train``).

Why N ranks reproduce one process with the same global batch (float rounding aside):
- every rank walks the same epoch order and cuts each global batch into contiguous shares, rank r taking
  images [start + r*m // N, start + (r+1)*m // N) of a batch of m; each image's augmentation is seeded by its
  global position in the epoch (data.py), whichever rank decodes it;
- dropout masks are keyed by (seed, element index): every rank draws the same per-call seeds (same generator,
  same calls) and offsets the element index by the rows that the lower ranks hold (``random.batch_row_offset``);
- rank r's loss is the mean over its n_r images; backward starts from n_r / m instead of 1, and the gradients
  are summed over ranks, giving the gradient of the mean over all m images (also for a short last batch);
- parameters start as rank 0's, and every rank applies the same summed gradient, so they stay equal.

Gradients are summed in buckets of about ``bucket_mb`` megabytes, in reverse parameter order (backward produces
the FC layers' gradients first). A bucket's all-reduce starts as soon as its last gradient is accumulated
(``autograd.grad_ready_hooks``), on a communication thread for cpu/sim tensors (MPI over a communicator of its
own) and as one grouped NCCL call on the device's stream for cuda tensors, so it overlaps the rest of backward.
Buckets are launched strictly in index order, so every rank issues the same collectives in the same order.
"""

from __future__ import annotations

import ctypes
import math
import queue
import sys
import threading
import time
import traceback
from collections import deque

import numpy as np

from . import _C
from . import autograd as _autograd
from . import data as _data
from . import distributed as _dist
from . import random as _random

DEFAULT_BUCKET_MB = 25.0


def start_if_launched():
    """The process group when this process was started by mpirun/srun with more than one rank, else None."""
    if _dist.launcher_world_size() <= 1 and not _dist.is_initialized():
        return None
    group = _dist.init()
    return group if group.size > 1 else None


def check_batch_size(batch_size, world):
    if batch_size % world:
        raise ValueError(f"train: batch_size {batch_size} (the global batch) must be divisible by the world size "
                         f"{world} (the number of ranks), so that every rank gets batch_size / world_size images")


def device_for_rank(device):
    """One GPU per process: "auto"/"cuda" on a machine with several GPUs becomes cuda:<local rank % GPUs>."""
    import vggcore as vc
    gpus = [d for d in vc.devices() if d.startswith("cuda")]
    if device in ("auto", "cuda", None) and gpus:
        return gpus[_dist.local_rank() % len(gpus)]
    return device


class ShardedLoader(_data.DataLoader):
    """A DataLoader over the global batches of ``folder`` that yields only this rank's share of each.

    The global batch structure (order, batch starts, per-image seeds) is the single-process loader's. With
    ``keep_empty`` every global batch yields exactly one item, ``(None, empty labels)`` for an empty share, so
    that all ranks take the same number of steps; without it, empty shares are skipped (evaluation).
    """

    def __init__(self, folder, batch_size, transform, rank, world, *, keep_empty, **kwargs):
        super().__init__(folder, batch_size, transform, **kwargs)
        self.rank, self.world, self.keep_empty = int(rank), int(world), bool(keep_empty)

    def share(self, start, size):
        return start + (self.rank * size) // self.world, start + ((self.rank + 1) * size) // self.world

    def epoch(self, epoch: int = 0):
        order = self.order(epoch)
        starts = list(range(0, len(order), self.batch_size))
        if self.drop_last and len(order) % self.batch_size:
            starts = starts[:-1]
        if self._pool is None:
            import concurrent.futures
            self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="vggcore-data")
        empty = (None, np.zeros(0, np.int64))
        pending = deque()

        def submit(start):
            lo, hi = self.share(start, min(self.batch_size, len(order) - start))
            # Image k of the share is seeded with position lo + k: its global position in the epoch.
            return self._submit(epoch, lo, order[lo:hi]) if hi > lo else None

        def take():
            job = pending.popleft()
            batch = self._assemble(job)[0] if job is not None else None    # buffers are not recycled here
            self.folder.warn_skipped()
            return batch

        try:
            for start in starts:
                pending.append(submit(start))
                if len(pending) >= self.batches_ahead:
                    batch = take()
                    if batch is not None or self.keep_empty:
                        yield batch if batch is not None else empty
            while pending:
                batch = take()
                if batch is not None or self.keep_empty:
                    yield batch if batch is not None else empty
        finally:
            for job in pending:
                for f in (job[0] if job is not None else ()):
                    f.cancel()


# ---------------------------------------------------------------------------------------------- gradients
def _bucket_indices(params, bucket_bytes):
    """Parameter indices in reverse order, cut into buckets of at most bucket_bytes (at least one each)."""
    buckets, current, size = [], [], 0
    for i in reversed(range(len(params))):
        nbytes = params[i].numel() * (8 if params[i].dtype == "float64" else 4 if params[i].dtype == "float32" else 2)
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


def _host_view(engine_tensor):
    """A numpy array over a cpu tensor's own memory (no copy); the tensor must outlive it."""
    ctype = {"float32": ctypes.c_float, "float64": ctypes.c_double}[engine_tensor.dtype]
    buffer = (ctype * engine_tensor.numel).from_address(engine_tensor.data_ptr)
    return np.ctypeslib.as_array(buffer)


class _CommThread:
    """Runs the MPI all-reduces of cpu/sim buckets in submission order, off the compute thread (mpi4py releases
    the GIL inside MPI, and vggcore's kernels release it too, so both proceed). Each all-reduce is a blocking call
    under the process group's watchdog, which bounds it.

    A job is a list of arrays summed in place: views of cpu gradients (no copy at all), or one packed copy of a
    sim bucket's gradients."""

    def __init__(self, group):
        self.group = group
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="vggcore-allreduce", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            arrays, done = job
            try:
                for array in arrays:
                    self.group.allreduce_in_place(array, self.group.MPI.SUM, comm=self.group.grad_comm,
                                                  what="gradient all-reduce")
            except BaseException as error:          # reported by the waiting thread
                done.error = error
            done.set()

    def submit(self, arrays):
        done = threading.Event()
        done.arrays, done.error = arrays, None
        self.jobs.put((arrays, done))
        return done


class GradReducer:
    """Sums the parameters' gradients over the ranks in buckets started during backward.

    ``with reducer: loss.backward(...)``: entering registers the grad-ready hook; leaving launches what is left
    (parameters that received no gradient this step contribute zeros), waits and writes the summed ``.grad``.
    For the benchmark (bench/allreduce.py), ``timeline`` holds the last step's bucket launch times in seconds
    since entering, ``backward_s`` the seconds from entering to leaving (backward), and ``exposed_wait_s`` every
    step's seconds spent after backward until the sums were in place (communication not hidden behind it).
    """

    def __init__(self, group, params, bucket_mb=DEFAULT_BUCKET_MB):
        self.group = group
        self.params = list(params)
        self.buckets = _bucket_indices(self.params, bucket_mb * 1e6)
        self.where = {id(self.params[i]): b for b, bucket in enumerate(self.buckets) for i in bucket}
        self.cuda = self.params[0].device.startswith("cuda")
        self.comm = None if self.cuda else _CommThread(group)
        self.exposed_wait_s = []
        self.timeline, self.backward_s = [], 0.0

    def __enter__(self):
        self.t_enter = time.perf_counter()
        self.timeline = []
        self.remaining = [len(bucket) for bucket in self.buckets]
        self.next_launch = 0
        self.pending = [None] * len(self.buckets)
        self.storages = set()
        _autograd.grad_ready_hooks.append(self._on_grad_ready)
        return self

    def _on_grad_ready(self, tensor):
        b = self.where.get(id(tensor))
        if b is None:
            return
        self.remaining[b] -= 1
        while self.next_launch < len(self.buckets) and self.remaining[self.next_launch] == 0:
            self._launch(self.next_launch)
            self.next_launch += 1

    def _grad(self, p):
        """p's gradient in storage of its own, which the all-reduce may overwrite: autograd can hand one engine
        tensor to two inputs (a + b), so a storage already seen this step is copied first."""
        if p.grad is None:
            p.grad = p._from_engine(_C.full(list(p.shape), 0.0, p.dtype, p.device))
        elif p.grad._data.data_ptr in self.storages:
            p.grad = p._from_engine(_C.scale(p.grad._data, 1.0))
        self.storages.add(p.grad._data.data_ptr)
        return p.grad

    def _launch(self, b):
        self.timeline.append(time.perf_counter() - self.t_enter)
        grads = [self._grad(self.params[i]) for i in self.buckets[b]]
        if self.cuda:
            _dist._nccl_for(self.group, grads[0].device).all_reduce([g._data for g in grads], "sum", join=False)
            self.pending[b] = True
        elif grads[0].device == "cpu":
            # In place in the gradients' own memory; the job keeps the tensors alive while MPI writes.
            done = self.comm.submit([_host_view(g._data) for g in grads])
            done.tensors = grads
            self.pending[b] = done
        else:
            self.pending[b] = self.comm.submit([np.concatenate([g._data.numpy().reshape(-1) for g in grads])])

    def __exit__(self, exc_type, exc, tb):
        _autograd.grad_ready_hooks.remove(self._on_grad_ready)
        if exc_type is not None:
            return False
        t0 = time.perf_counter()
        self.backward_s = t0 - self.t_enter
        while self.next_launch < len(self.buckets):
            self._launch(self.next_launch)
            self.next_launch += 1
        if self.cuda:
            _dist._nccl_for(self.group, self.params[0].device).join()
            self.exposed_wait_s.append(time.perf_counter() - t0)
            return False
        for b, done in enumerate(self.pending):
            # The watchdog bounds the communication thread's all-reduce (it aborts the job); this only backs it up.
            if not done.wait(self.group.timeout_s + 60):
                _dist.abort(f"vggcore.distributed: rank {self.group.rank}: gradient bucket {b} never completed")
            if done.error is not None:
                raise done.error
            if getattr(done, "tensors", None) is not None:
                continue                            # summed in place
            offset, flat = 0, done.arrays[0]
            for i in self.buckets[b]:
                p = self.params[i]
                n = p.numel()
                p.grad = p._from_engine(_C.Tensor.from_numpy(flat[offset:offset + n].reshape(p.shape), p.device))
                offset += n
        self.exposed_wait_s.append(time.perf_counter() - t0)
        return False


def load_checkpoint(group, path, load):
    """Rank 0 reads the checkpoint at ``path`` (None when there is none) and sends it to every rank, so the
    checkpoint folder needs to exist on rank 0's machine only."""
    state = load(path) if group.rank == 0 and path.is_file() else None
    return group.bcast_object(state, 0, "checkpoint broadcast")


def broadcast_parameters(group, params):
    """Every rank starts from rank 0's parameters (one collective for cpu/sim, one NCCL broadcast each on cuda)."""
    params = list(params)
    if params[0].device.startswith("cuda"):
        _dist._nccl_for(group, params[0].device).broadcast([p._data for p in params], 0)
        return
    flat = group.bcast_array(np.concatenate([p._data.numpy().reshape(-1) for p in params]), 0,
                             "parameter broadcast")
    offset = 0
    for p in params:
        n = p.numel()
        p._data = _C.Tensor.from_numpy(flat[offset:offset + n].reshape(p.shape), p.device)
        offset += n


class DataParallel:
    """The per-run state of data-parallel training: the group, the gradient reducer and the step."""

    def __init__(self, group, model, bucket_mb=DEFAULT_BUCKET_MB):
        self.group = group
        self.model = model
        broadcast_parameters(group, model.parameters())
        self.reducer = GradReducer(group, model.parameters(), bucket_mb)

    @property
    def is_main(self):
        return self.group.rank == 0

    def train_step(self, model, optimizer, x_np, y_np, device, input_shape):
        """One SGD step on this rank's share; returns (loss of this share, images, wrong top-1) or None when
        the whole global batch was undecodable. The loss returned is NaN on every rank when any rank's was not
        finite, and then the weights are left as they were (the caller raises). ``x_np`` may be a PackedBatch
        (device augmentation): this rank augments its share on its own device, before the batch sizes are
        exchanged, so an image no decoder could decode is left out of the counts as in the loader."""
        import vggcore as vc
        from .nn import functional as F
        group = self.group
        x = None
        if isinstance(x_np, _data.PackedBatch):
            x = _data.augment_batch(x_np, device)
            y_np = y_np[x_np.kept]
        n = len(y_np)
        counts = group.allgather_object([n], "batch size exchange")[:, 0].astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            return None
        with _random.batch_row_offset(int(counts[:group.rank].sum())):
            if n > 0:
                logits = model(x if x is not None else vc.tensor(x_np, device=device))
                loss = F.cross_entropy(logits, y_np)
                loss_value = loss.item()
            else:
                # An empty share still runs the forward pass on one blank image (no graph), so this rank draws
                # the same dropout seeds as the others and its generator stays in step.
                with vc.no_grad():
                    model(vc.tensor(np.zeros((1,) + tuple(input_shape), np.float32), device=device))
                loss_value = 0.0
        bad = group.allreduce_array(np.array([0.0 if math.isfinite(loss_value) else 1.0]), group.MPI.SUM,
                                    what="loss check")
        if bad[0] > 0:
            return (loss_value if not math.isfinite(loss_value) else float("nan")), n, 0
        optimizer.zero_grad()
        with self.reducer:
            if n > 0:
                loss.backward(vc.Tensor._from_engine(_C.full(list(loss.shape), n / total, loss.dtype, loss.device)))
        optimizer.step()
        wrong = int((logits.numpy().argmax(axis=1) != y_np).sum()) if n > 0 else 0
        return loss_value, n, wrong

    def sum(self, values, what="sum"):
        return self.group.allreduce_array(np.asarray(values, np.float64), self.group.MPI.SUM, what=what)

    def fail(self, error):
        """An error raised on this rank only: the others would wait for it in their next collective, so end the
        job now (after printing the traceback) instead of at the timeout."""
        if getattr(error, "collective", False):
            return
        sys.stderr.write(f"vggcore: rank {self.group.rank} failed:\n{traceback.format_exc()}")
        _dist.abort(f"vggcore: rank {self.group.rank} of {self.group.size} failed ({type(error).__name__}); "
                    "ending the job")
