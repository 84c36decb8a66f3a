"""Data parallelism over processes: a process group started from MPI, collectives on vggcore tensors.

    mpirun -np 4 python -m vggcore train --data DIR ...      # or srun, or vc.train(...) in a script

A job started by mpirun or srun with more than one rank (``launcher_world_size() > 1``) gets one process group
for its lifetime (``init()``, called by ``vc.train``). Ranks talk over MPI (mpi4py over the system's MPI) for cpu
and sim tensors, and over NCCL for cuda tensors: NCCL is loaded with ctypes at run time, only when a cuda
tensor is first reduced (the nvidia-nccl wheel's libnccl, else the system's), its unique id broadcast over
MPI, one GPU per process picked from the local rank. mpi4py and NCCL are optional (``pip install vggcore[mpi]``);
importing vggcore never needs them.

A dead or hung rank never hangs the job: mpirun (and srun with --kill-on-bad-exit=1) end every rank when one
dies, and every collective in this module runs under a watchdog: one that has not returned after ``VGGCORE_DIST_TIMEOUT`` seconds (default 600)
makes the rank report which collective timed out and abort the whole job (MPI_Abort). The collectives themselves
are MPI's blocking calls (which release the GIL), so they run at the transport's full speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time

import numpy as np

__all__ = ["launcher_world_size", "init", "is_initialized", "rank", "world_size", "local_rank", "all_reduce",
           "broadcast", "barrier", "abort", "DistributedError"]

# Environment variables that carry the number of ranks: OpenMPI's mpirun, MPICH/Intel MPI (PMI), Slurm's srun.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
DEFAULT_TIMEOUT_S = 600.0

_group = None
_lock = threading.Lock()


class DistributedError(RuntimeError):
    """A collective that cannot run: missing mpi4py or NCCL, mismatched tensors, a timeout."""


def launcher_world_size(environ=None) -> int:
    """The number of ranks the launcher (mpirun, srun) started, from its environment; 1 when there is none."""
    environ = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        value = environ.get(name)
        if value:
            try:
                return max(1, int(value.split("(")[0]))     # SLURM_NTASKS may read "4(x2)" in some setups
            except ValueError:
                continue
    return 1


def _timeout_s():
    value = os.environ.get("VGGCORE_DIST_TIMEOUT")
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except ValueError:
        raise ValueError(f"VGGCORE_DIST_TIMEOUT must be a number of seconds, got {value!r}") from None
    if timeout <= 0:
        raise ValueError(f"VGGCORE_DIST_TIMEOUT must be positive, got {value!r}")
    return timeout


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise DistributedError("vggcore.distributed needs mpi4py for a job of several ranks "
                               "(pip install 'vggcore[mpi]', over the system's MPI)") from error
    return MPI


class _ProcessGroup:
    """COMM_WORLD's ranks. Two duplicated communicators: one for the caller's collectives and one for the
    gradient thread, so collectives issued by the two threads never interleave on one communicator."""

    def __init__(self, timeout_s):
        self.MPI = _import_mpi()
        world = self.MPI.COMM_WORLD
        self.comm = world.Dup()
        self.grad_comm = world.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = world.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self.timeout_s = timeout_s
        self.nccl = None
        self._deadlines = {}            # collective in flight -> (deadline, description)
        self._deadline_lock = threading.Lock()
        threading.Thread(target=self._watchdog, name="vggcore-watchdog", daemon=True).start()

    def _watchdog(self):
        while True:
            time.sleep(min(0.25, self.timeout_s / 4))
            now = time.monotonic()
            with self._deadline_lock:
                late = [what for deadline, what in self._deadlines.values() if now > deadline]
            if late:
                abort(f"vggcore.distributed: rank {self.rank}: {late[0]} did not complete within "
                      f"{self.timeout_s:g} s (VGGCORE_DIST_TIMEOUT): another rank died or hangs")

    def guarded(self, call, what):
        """Runs the blocking MPI call ``call()`` under the watchdog's deadline."""
        token = object()
        with self._deadline_lock:
            self._deadlines[token] = (time.monotonic() + self.timeout_s, what)
        try:
            return call()
        finally:
            with self._deadline_lock:
                del self._deadlines[token]

    def allreduce_array(self, array, op, comm=None, what="all_reduce"):
        comm = self.comm if comm is None else comm
        array = np.ascontiguousarray(array)
        out = np.empty_like(array)
        self.guarded(lambda: comm.Allreduce(array, out, op=op), what)
        return out

    def allreduce_in_place(self, array, op, comm=None, what="all_reduce"):
        """Sums a contiguous array over the ranks into itself (MPI_IN_PLACE: no copy)."""
        comm = self.comm if comm is None else comm
        self.guarded(lambda: comm.Allreduce(self.MPI.IN_PLACE, array, op=op), what)

    def bcast_array(self, array, root, what="broadcast"):
        array = np.ascontiguousarray(array)
        self.guarded(lambda: self.comm.Bcast(array, root=root), what)
        return array

    def allgather_object(self, value, what="allgather"):
        """Small records (a row of numbers) from every rank, as a (ranks, len) float64 array."""
        record = np.asarray(value, dtype=np.float64).reshape(-1)
        out = np.empty((self.size, record.size), np.float64)
        self.guarded(lambda: self.comm.Allgather(record, out), what)
        return out

    def bcast_object(self, value, root=0, what="broadcast"):
        """A picklable object from ``root`` (a training checkpoint): its length, then its bytes in pieces of at
        most 1 GiB, since MPI counts are 32-bit ints."""
        import pickle
        payload = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8) \
            if self.rank == root else np.zeros(0, np.uint8)
        length = int(self.bcast_array(np.array([payload.size], np.int64), root, what)[0])
        buffer = payload.copy() if self.rank == root else np.empty(length, np.uint8)
        piece = 1 << 30
        for start in range(0, length, piece):
            self.bcast_array(buffer[start:start + piece], root, what)   # a contiguous view: filled in place
        return value if self.rank == root else pickle.loads(buffer.tobytes())

    def barrier(self):
        self.guarded(self.comm.Barrier, "barrier")


def init(timeout_s=None):
    """Starts the process group over MPI (idempotent); a single process without a launcher gets a group of one.

    timeout_s bounds every wait (default ``VGGCORE_DIST_TIMEOUT`` or 600 s).
    """
    global _group
    with _lock:
        if _group is None:
            _group = _ProcessGroup(_timeout_s() if timeout_s is None else float(timeout_s))
        return _group


def is_initialized() -> bool:
    return _group is not None


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return _group.rank if _group is not None else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return _group.size if _group is not None else 1


def local_rank() -> int:
    """This process's rank among those on its machine; picks its GPU (0 without a process group)."""
    if _group is not None:
        return _group.local_rank
    for name in _LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def abort(message, code=1):
    """Writes ``message`` to stderr and ends every rank of the job (MPI_Abort); the single-process fallback is
    SystemExit, since there is nothing else to end."""
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    if _group is not None:
        _group.MPI.COMM_WORLD.Abort(code)
    raise SystemExit(code)


# ---------------------------------------------------------------------------------------------------- NCCL
_NCCL_TYPES = {"float32": 7, "float64": 8, "bfloat16": 9}
_NCCL_OPS = {"sum": 0, "avg": 4}


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 128)]     # NCCL_UNIQUE_ID_BYTES


def _load_nccl():
    """libnccl from the nvidia-nccl wheel when installed, else the system's (LD_LIBRARY_PATH, ldconfig)."""
    candidates = []
    try:
        import nvidia.nccl
        for base in nvidia.nccl.__path__:
            candidates += [os.path.join(base, "lib", "libnccl.so.2"), os.path.join(base, "lib", "libnccl.so")]
    except ImportError:
        pass
    found = ctypes.util.find_library("nccl")
    candidates += [found] if found else []
    candidates += ["libnccl.so.2"]
    errors = []
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError as error:
            errors.append(f"{path}: {error}")
            continue
        return _declare_nccl(lib)
    raise DistributedError("vggcore.distributed: cuda tensors are reduced with NCCL, which was not found "
                           "(pip install nvidia-nccl-cu13, or the system's libnccl); tried " + "; ".join(errors))


def _declare_nccl(lib):
    """The prototypes of the NCCL functions used (nccl.h): every ncclResult_t and enum is a C int, handles
    (ncclComm_t, cudaStream_t) are pointers, and ncclCommInitRank takes the unique id by value."""
    p, i, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    prototypes = {
        "ncclGetVersion": (i, [ctypes.POINTER(i)]),
        "ncclGetUniqueId": (i, [ctypes.POINTER(_UniqueId)]),
        "ncclCommInitRank": (i, [ctypes.POINTER(p), i, _UniqueId, i]),
        "ncclAllReduce": (i, [p, p, size, i, i, p, p]),
        "ncclBroadcast": (i, [p, p, size, i, i, p, p]),
        "ncclGroupStart": (i, []),
        "ncclGroupEnd": (i, []),
        "ncclGetErrorString": (ctypes.c_char_p, [i]),
    }
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class _Nccl:
    """One NCCL communicator over the process group, on this process's GPU.

    Collectives run on a second stream of the device (``_C.cuda_side_stream``) so that they overlap vggcore's
    kernels. ``enqueue`` makes that stream wait for the kernels queued so far (those that produced the data);
    ``join`` makes vggcore's stream wait for the collectives queued so far (before anything reads the result).
    The host never blocks on either.
    """

    def __init__(self, group, device):
        from . import _C
        self._C = _C
        self.lib = _load_nccl()
        self.device = device
        self.index = int(device.split(":")[1]) if ":" in device else 0
        _C.cuda_stream(self.index)                                  # makes the device current on this thread
        self.side = _C.cuda_side_stream(self.index)
        self.stream = ctypes.c_void_p(self.side)
        uid = _UniqueId()
        if group.rank == 0:
            self._check(self.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        raw = group.bcast_array(np.frombuffer(bytes(uid), np.uint8).copy(), 0, "NCCL unique id broadcast")
        ctypes.memmove(ctypes.byref(uid), raw.tobytes(), 128)
        self.comm = ctypes.c_void_p()
        self._check(self.lib.ncclCommInitRank(ctypes.byref(self.comm), group.size, uid, group.rank),
                    "ncclCommInitRank")

    def _check(self, result, what):
        if result != 0:
            message = self.lib.ncclGetErrorString(result).decode(errors="replace")
            raise DistributedError(f"vggcore.distributed: {what} failed: {message} (NCCL error {result})")

    def join(self):
        self._C.cuda_stream_wait(self.index, 0, self.side)

    def all_reduce(self, engine_tensors, op, join=True):
        """In place, one NCCL group (a single fused launch) for all the tensors; without ``join`` the caller
        calls ``join()`` before the results are read."""
        self._C.cuda_stream_wait(self.index, self.side, 0)
        self._check(self.lib.ncclGroupStart(), "ncclGroupStart")
        try:
            for t in engine_tensors:
                ptr = ctypes.c_void_p(t.data_ptr)
                self._check(self.lib.ncclAllReduce(ptr, ptr, t.numel, _NCCL_TYPES[t.dtype], _NCCL_OPS[op],
                                                   self.comm, self.stream), "ncclAllReduce")
        finally:
            self._check(self.lib.ncclGroupEnd(), "ncclGroupEnd")
        if join:
            self.join()

    def broadcast(self, engine_tensors, root):
        self._C.cuda_stream_wait(self.index, self.side, 0)
        self._check(self.lib.ncclGroupStart(), "ncclGroupStart")
        try:
            for t in engine_tensors:
                ptr = ctypes.c_void_p(t.data_ptr)
                self._check(self.lib.ncclBroadcast(ptr, ptr, t.numel, _NCCL_TYPES[t.dtype], root, self.comm,
                                                   self.stream), "ncclBroadcast")
        finally:
            self._check(self.lib.ncclGroupEnd(), "ncclGroupEnd")
        self.join()


def _nccl_for(group, device):
    if group.nccl is None:
        group.nccl = _Nccl(group, device)
    elif group.nccl.device != device:
        raise DistributedError(f"vggcore.distributed: this process reduces on {group.nccl.device}; one GPU per "
                               f"process, got a tensor on {device}")
    return group.nccl


# ----------------------------------------------------------------------------------------- tensor collectives
def _check_tensor(op, tensor):
    from .tensor import Tensor
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: expected a vggcore Tensor, got {type(tensor).__name__}")


def _check_same_everywhere(group, op, tensor):
    """Every rank must pass the same shape and dtype: compared here so a mismatch is an error, not garbage."""
    code = {"float32": 0, "float64": 1, "bfloat16": 2}[tensor.dtype]
    record = [code, len(tensor.shape)] + list(tensor.shape) + [0] * (8 - len(tensor.shape))
    table = group.allgather_object(record, f"{op} shape check")
    if not (table == table[0]).all():
        shapes = [tuple(int(v) for v in row[2:2 + int(row[1])]) for row in table]
        raise ValueError(f"{op}: the ranks passed different tensors: shapes {shapes}, dtype codes "
                         f"{[int(row[0]) for row in table]}")


def all_reduce(tensor, op="sum"):
    """Replaces ``tensor``'s values by their sum (``op="sum"``) or mean (``"avg"``) over all ranks; returns it.

    cpu and sim tensors go over MPI, cuda tensors over NCCL (ordered with vggcore's kernels on the device, the
    host does not wait). Without a process group (``init()`` not called) the tensor is unchanged.
    """
    _check_tensor("all_reduce", tensor)
    if op not in _NCCL_OPS:
        raise ValueError(f"all_reduce: op must be 'sum' or 'avg', got {op!r}")
    group = _group
    if group is None:
        return tensor
    _check_same_everywhere(group, "all_reduce", tensor)
    if tensor.device.startswith("cuda"):
        _nccl_for(group, tensor.device).all_reduce([tensor._data], op)
        return tensor
    from . import _C
    summed = group.allreduce_array(tensor._data.numpy(), group.MPI.SUM)
    if op == "avg":
        summed = summed / group.size
    tensor._data = _C.Tensor.from_numpy(summed, tensor.device)
    return tensor


def broadcast(tensor, src=0):
    """Replaces ``tensor``'s values on every rank by those of rank ``src``; returns it."""
    _check_tensor("broadcast", tensor)
    group = _group
    if group is None:
        return tensor
    if not isinstance(src, int) or not 0 <= src < group.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {group.size}), got {src!r}")
    _check_same_everywhere(group, "broadcast", tensor)
    if tensor.device.startswith("cuda"):
        _nccl_for(group, tensor.device).broadcast([tensor._data], src)
        return tensor
    from . import _C
    tensor._data = _C.Tensor.from_numpy(group.bcast_array(tensor._data.numpy(), src), tensor.device)
    return tensor


def barrier():
    """Returns once every rank has called it (a bounded wait)."""
    if _group is not None:
        _group.barrier()
