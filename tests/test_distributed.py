"""Data parallel (vggcore.distributed, vggcore/_parallel.py): 2 ranks under mpirun against 1 process.

The multi-rank tests start tests/distributed_worker.py under ``mpirun -np 2`` and skip only when mpirun or mpi4py
is missing (CI installs both). Tolerance of the 2-rank vs 1-process comparison: the ranks compute the same
arithmetic except that each weight gradient is a sum of two half-batch partial sums instead of one sum, so the
weights after two epochs (6 SGD steps) agree to float32 rounding: |a - b| <= 1e-5 * max(|a|, 1) element-wise
(the runs measured here differ by about 1e-7).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import _parallel
from vggcore import checkpoint
from vggcore import data as vdata
from vggcore import distributed as dist
from vggcore import random as vrandom
import vggcore.nn.functional as F

WORKER = Path(__file__).with_name("distributed_worker.py")
HAVE_MPI = shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpirun (OpenMPI) and mpi4py")
TOL = 1e-5


def _make_dataset(root):
    """3 classes, 7 training images each (21: batches of 8, 8 and 5, the last split 2 + 3 over two ranks) and 3
    validation images each; sizes vary so the rescale differs per image."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 7), ("val", 3)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = 36 + (i % 3) * 2, 40 - (i % 2) * 3
                img = rng.integers(0, 80, (h, w, 3))
                img[..., c] += 120                          # the class is the dominant colour
                img[(i % 5) * 4:(i % 5) * 4 + 10, :, (c + 1) % 3] += 60
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    _make_dataset(root / "data")
    return root


def _env(workdir, timeout=None):
    env = dict(os.environ, VGGCORE_CACHE=str(workdir / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if timeout is not None:
        env["VGGCORE_DIST_TIMEOUT"] = str(timeout)
    return env


def _run(workdir, out, ranks, *args, timeout=None, limit=120):
    """Runs the worker (under mpirun when ranks > 1) from workdir; returns (CompletedProcess, seconds)."""
    cmd = [sys.executable, str(WORKER), str(workdir / "data"), str(out), *map(str, args)]
    if ranks > 1:
        flags = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        cmd = ["mpirun", *flags, "--oversubscribe", "-np", str(ranks), *cmd]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir, timeout), capture_output=True, text=True,
                          timeout=limit)
    return proc, time.monotonic() - start


def _load(path):
    with np.load(path) as f:
        params = {k: f[k] for k in f.files if k not in ("history", "world_size")}
        return params, json.loads(str(f["history"])), int(f["world_size"])


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        diff = np.abs(a[name] - b[name]) / np.maximum(np.abs(a[name]), 1.0)
        assert diff.max() <= TOL, f"{name}: max relative difference {diff.max():.3g} > {TOL}"


@pytest.fixture(scope="module")
def single(workdir):
    """The reference: one process, global batch 8, two epochs."""
    proc, _ = _run(workdir, workdir / "single.npz", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _load(workdir / "single.npz")


# ---- without MPI ------------------------------------------------------------------------------------------------
def test_launcher_world_size_from_environment():
    assert dist.launcher_world_size({}) == 1
    assert dist.launcher_world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert dist.launcher_world_size({"PMI_SIZE": "3"}) == 3
    assert dist.launcher_world_size({"SLURM_NTASKS": "8"}) == 8
    assert dist.launcher_world_size({"SLURM_NTASKS": "bogus", "PMI_SIZE": "2"}) == 2


def test_without_a_group_collectives_are_the_identity():
    assert not dist.is_initialized() or dist.world_size() >= 1
    if not dist.is_initialized():
        assert dist.rank() == 0 and dist.world_size() == 1
        t = vc.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
        assert dist.all_reduce(t, "avg") is t and np.array_equal(t.numpy(), np.arange(6).reshape(2, 3))
        dist.barrier()
    with pytest.raises(ValueError, match="op"):
        dist.all_reduce(vc.tensor(np.zeros(2, np.float32)), "max")
    with pytest.raises(TypeError, match="Tensor"):
        dist.broadcast(np.zeros(2))


def test_uneven_batch_message():
    with pytest.raises(ValueError, match=r"batch_size 7.*world size 2"):
        _parallel.check_batch_size(7, 2)
    _parallel.check_batch_size(8, 2)


def test_shards_partition_every_global_batch(workdir):
    """The ranks' shares of each global batch, concatenated, are the single loader's batch, bit for bit (the
    augmentation is seeded by the global position), including a short last batch and an empty share."""
    folder = vdata.ImageFolder(workdir / "data" / "train")
    tf = vdata.TrainTransform(32, (32, 36), [100.0, 100.0, 100.0], [0.02, 0.01, 0.005], np.eye(3).tolist())
    for world, batch in ((2, 8), (3, 6), (4, 4)):
        whole = list(vdata.DataLoader(folder, batch, tf, shuffle=True, seed=5, num_workers=1).epoch(1))
        shards = [list(_parallel.ShardedLoader(folder, batch, tf, r, world, keep_empty=True, shuffle=True, seed=5,
                                               num_workers=1).epoch(1)) for r in range(world)]
        assert all(len(s) == len(whole) for s in shards)
        for b, (x, y) in enumerate(whole):
            parts = [s[b] for s in shards if s[b][0] is not None]
            assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
            assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
    # 21 images in batches of 4 over 4 ranks: the last batch holds 1 image, so three ranks get an empty share.
    last = [list(_parallel.ShardedLoader(folder, 4, tf, r, 4, keep_empty=True, num_workers=1).epoch(0))[-1]
            for r in range(4)]
    assert [len(y) for _, y in last] == [0, 0, 0, 1]


@pytest.mark.parametrize("device", [d for d in vc.devices() if d in ("cpu", "sim")])
def test_dropout_rows_drawn_as_in_the_global_batch(device):
    """Rows [r0, r1) of a global batch under batch_row_offset(r0) get the global batch's mask (odd row sizes,
    so the element offset is not a multiple of 4, as well as an even one)."""
    for cols in (7, 16):
        x = vc.tensor(np.arange(1, 9 * cols + 1, dtype=np.float32).reshape(9, cols), device=device)
        whole = F.dropout(x, 0.5, seed=1234).numpy()
        for r0, r1 in ((0, 4), (4, 9), (3, 5)):
            part = vc.tensor(x.numpy()[r0:r1], device=device)
            with vrandom.batch_row_offset(r0):
                got = F.dropout(part, 0.5, seed=1234).numpy()
            assert np.array_equal(got, whole[r0:r1]), (cols, r0, r1)


def test_buckets_cover_parameters_in_reverse_order():
    params = [vc.zeros(n) for n in (10, 300, 5, 1000, 20)]          # float32: 4 bytes each
    buckets = _parallel._bucket_indices(params, 1300 * 4)
    assert buckets == [[4, 3, 2], [1, 0]]
    assert _parallel._bucket_indices(params, 1) == [[4], [3], [2], [1], [0]]


def test_grad_ready_hook_sees_each_leaf_once_with_its_whole_gradient():
    """x feeds two branches: the hook must fire after both contributions are summed, once."""
    from vggcore import autograd
    x = vc.tensor(np.array([[1.0, 2.0, 3.0]], np.float32), requires_grad=True)
    w = vc.tensor(np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]], np.float32), requires_grad=True)
    seen = []
    hook = lambda t: seen.append((t is x, t is w, t.grad.numpy().copy()))
    autograd.grad_ready_hooks.append(hook)
    try:
        y = F.linear(x, w) + F.linear(x * 2.0, w)           # d/dx = 3 * (column sums of w)
        y.backward(np.ones((1, 2), np.float32))
    finally:
        autograd.grad_ready_hooks.remove(hook)
    assert sorted((a, b) for a, b, _ in seen) == [(False, True), (True, False)]
    gx = next(g for a, _, g in seen if a)
    assert np.array_equal(gx, [[3.0, 3.0, 9.0]])


class _TwinGroup:
    """A stand-in process group of 2 identical ranks: an all-reduce doubles its input."""
    rank, size, timeout_s = 0, 2, 30.0
    MPI = type("MPI", (), {"SUM": "sum"})
    grad_comm = None

    def __init__(self):
        self.calls = []

    def allreduce_in_place(self, array, op, comm=None, what=""):
        self.calls.append(array.size)
        array *= 2


def test_grad_reducer_sums_buckets_launched_in_order():
    """Gradients of a small VGG come back summed over the (stand-in) ranks, bucket by bucket in index order, each
    bucket launched during backward."""
    vc.manual_seed(1)
    model = vc.models.vgg("A", num_classes=3, width=1 / 16, fc_width=16, input_size=32, dropout=0.0, init="he")
    x = vc.tensor(np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32))
    F.cross_entropy(model(x), np.array([0, 2])).backward()
    expected = {name: 2 * p.grad.numpy() for name, p in model.named_parameters()}
    group = _TwinGroup()
    reducer = _parallel.GradReducer(group, model.parameters(), bucket_mb=0.004)     # 4 kB: several buckets
    for p in model.parameters():
        p.zero_grad()
    first_layer_done_at_launch = []
    launch = reducer._launch
    reducer._launch = lambda b: (first_layer_done_at_launch.append(model.conv1_1.weight.grad is not None), launch(b))
    with reducer:
        F.cross_entropy(model(x), np.array([0, 2])).backward()
    assert len(reducer.buckets) > 3
    params = list(model.parameters())
    assert group.calls == [params[i].numel() for b in reducer.buckets for i in b]      # in bucket order
    assert all(0 <= t <= reducer.backward_s for t in reducer.timeline)
    # Each bucket starts as soon as backward has passed its layers: every bucket but the last (conv1_1's) is
    # launched before conv1_1's gradient exists.
    assert first_layer_done_at_launch == [False] * (len(reducer.buckets) - 1) + [True]
    for name, p in model.named_parameters():
        assert np.array_equal(p.grad.numpy(), expected[name]), name


@pytest.mark.parametrize("device", [d for d in vc.devices() if d in ("cpu", "sim")])
def test_grad_reducer_on_each_host_device(device):
    """The cpu path sums in place over the gradients' memory, the sim path through a packed copy: both give the
    stand-in ranks' sum, also when autograd hands one engine tensor to two parameters (a + b)."""
    rng = np.random.default_rng(2)
    a = vc.tensor(rng.integers(-3, 4, (4, 7)).astype(np.float32), device=device, requires_grad=True)
    b = vc.tensor(rng.integers(-3, 4, (4, 7)).astype(np.float32), device=device, requires_grad=True)
    w = vc.tensor(rng.integers(-3, 4, (4, 7)).astype(np.float32), device=device, requires_grad=True)
    x = vc.tensor(rng.integers(-3, 4, (3, 7)).astype(np.float32), device=device)
    dy = rng.integers(-3, 4, (3, 4)).astype(np.float32)

    def backward():
        (F.linear(x, w) + F.linear(x, a + b)).backward(vc.tensor(dy, device=device))

    backward()
    expected = [2 * t.grad.numpy() for t in (a, b, w)]
    reducer = _parallel.GradReducer(_TwinGroup(), [a, b, w], bucket_mb=1e-4)
    for t in (a, b, w):
        t.zero_grad()
    with reducer:
        backward()
    for t, e in zip((a, b, w), expected):
        assert np.array_equal(t.grad.numpy(), e)


# ---- under mpirun -------------------------------------------------------------------------------------------------
@needs_mpi
def test_two_ranks_match_one_process(workdir, single):
    proc, _ = _run(workdir, workdir / "two.npz", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, ref_history, ref_world = single
    got, history, world = _load(workdir / "two.npz")
    assert (ref_world, world) == (1, 2)
    _assert_same_weights(ref, got)
    assert len(history) == 2
    for a, b in zip(ref_history, history):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * max(1.0, abs(a["train_loss"]))
        assert abs(a["train_top1_err"] - b["train_top1_err"]) <= 1e-9
        assert abs(a["val_top1_err"] - b["val_top1_err"]) <= 1e-9
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5 * max(1.0, abs(a["val_loss"]))
    # Only rank 0 prints: one summary line per epoch.
    assert proc.stdout.count("epoch   1/2") == 1 and proc.stdout.count("epoch   2/2") == 1


@needs_mpi
@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_across_world_sizes(workdir, single, first, second):
    ckpt = workdir / f"ckpt_{first}_{second}"
    proc, _ = _run(workdir, workdir / "part.npz", first, "--epochs", 1, "--checkpoint-dir", ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ckpt / "last.safetensors").is_file()
    out = workdir / f"resumed_{first}_{second}.npz"
    proc, _ = _run(workdir, out, second, "--epochs", 2, "--checkpoint-dir", ckpt, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, history, world = _load(out)
    assert world == second and [h["epoch"] for h in history] == [1, 2]
    _assert_same_weights(single[0], got)


@needs_mpi
def test_uneven_batch_refused_under_mpirun(workdir):
    proc, seconds = _run(workdir, workdir / "never.npz", 2, "--batch-size", 7, limit=60)
    assert proc.returncode != 0
    for rank in (0, 1):
        error = (workdir / f"never.npz.rank{rank}.error").read_text()
        assert error.startswith("ValueError: train: batch_size 7") and "world size 2" in error, error
    assert not (workdir / "never.npz").exists()


@needs_mpi
def test_killed_rank_ends_the_job(workdir):
    """Rank 1 is SIGKILLed at step 5 (epoch 2): mpirun ends rank 0, which waits in a collective, and the job
    fails within a bounded time; epoch 1's checkpoint stays readable."""
    ckpt = workdir / "ckpt_killed"
    proc, seconds = _run(workdir, workdir / "killed.npz", 2, "--checkpoint-dir", ckpt, "--die-at", 5,
                         timeout=30, limit=90)
    assert proc.returncode != 0
    assert seconds < 60
    assert not (workdir / "killed.npz").exists()
    assert checkpoint.load_state(ckpt / "last.safetensors")["epoch"] == 1


@needs_mpi
def test_nan_on_one_rank_stops_every_rank(workdir):
    """Rank 1's images are NaN at step 5 (epoch 2, batch 2): both ranks raise FloatingPointError at that step,
    before any weight update, without waiting for a timeout; epoch 1's checkpoint is kept."""
    ckpt = workdir / "ckpt_nan"
    proc, seconds = _run(workdir, workdir / "nan.npz", 2, "--checkpoint-dir", ckpt, "--nan-at", 5, timeout=60,
                         limit=90)
    assert proc.returncode != 0
    # Each rank's error from its own file: the ranks' stderr streams interleave under mpirun.
    for rank in (0, 1):
        error = workdir / f"nan.npz.rank{rank}.error"
        assert error.is_file(), proc.stderr[-3000:]
        assert error.read_text().startswith(
            "FloatingPointError: train: the loss became nan at epoch 2, batch 2"), error.read_text()
    assert "did not complete within" not in proc.stderr and seconds < 40
    assert checkpoint.load_state(ckpt / "last.safetensors")["epoch"] == 1


@needs_mpi
def test_cli_under_mpirun_matches_one_process(workdir):
    """``mpirun -np 2 python -m vggcore train ...`` writes the checkpoint of the single-process command."""
    args = ["train", "--data", str(workdir / "data"), "--config", "A", "--width", "1/16", "--fc-width", "16",
            "--dropout", "0.5", "--init", "he", "--scale", "32,36", "--crop", "32", "--epochs", "2",
            "--batch-size", "8", "--seed", "3", "--lr", "0.02", "--device", "cpu", "--workers", "1",
            "--stats-sample", "50", "--no-progress"]
    runs = {}
    for ranks in (1, 2):
        out = workdir / f"cli_{ranks}"
        cmd = [sys.executable, "-m", "vggcore", *args, "--checkpoint-dir", str(out)]
        if ranks > 1:
            flags = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
            cmd = ["mpirun", *flags, "--oversubscribe", "-np", str(ranks), *cmd]
        proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("done in") == 1
        runs[ranks] = checkpoint.load_state(out / "last.safetensors")["model"]
    _assert_same_weights({k: np.asarray(v) for k, v in runs[1].items()}, {k: np.asarray(v) for k, v in runs[2].items()})


@pytest.mark.skipif(not vc.cuda_available() or importlib.util.find_spec("mpi4py") is None,
                    reason="needs a GPU and mpi4py")
def test_nccl_one_process_group_on_cuda(workdir):
    """A one-rank group on cuda goes through NCCL (loaded at run time): sums, means and broadcasts are exact."""
    script = (
        "import numpy as np, vggcore as vc\n"
        "from vggcore import distributed as dist\n"
        "dist.init()\n"
        "a = np.arange(-7, 1030, dtype=np.float32).reshape(17, 61)\n"
        "for op in ('sum', 'avg'):\n"
        "    t = vc.tensor(a, device='cuda:0')\n"
        "    assert dist.all_reduce(t, op) is t and np.array_equal(t.numpy(), a), op\n"
        "t = vc.tensor(a, device='cuda:0')\n"
        "assert np.array_equal(dist.broadcast(t, 0).numpy(), a)\n"
        "assert dist._group.nccl is not None\n"
        "print('nccl ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=_env(workdir), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "nccl ok" in proc.stdout, proc.stderr[-3000:]


def _nccl_present():
    import ctypes.util
    try:
        return importlib.util.find_spec("nvidia.nccl") is not None or ctypes.util.find_library("nccl") is not None
    except ImportError:
        return ctypes.util.find_library("nccl") is not None


@pytest.mark.skipif(not _nccl_present(), reason="needs libnccl (the nvidia-nccl wheel or the system's)")
def test_nccl_loads_at_run_time_with_its_prototypes():
    """Without a GPU: libnccl is found and loaded by ctypes, reports a version with bfloat16 (>= 2.10), and
    makes the unique id that rank 0 broadcasts."""
    import ctypes
    lib = dist._load_nccl()
    version = ctypes.c_int()
    assert lib.ncclGetVersion(ctypes.byref(version)) == 0 and version.value >= 21000
    uid = dist._UniqueId()
    assert lib.ncclGetUniqueId(ctypes.byref(uid)) == 0 and any(bytes(uid))
    assert b"invalid" in lib.ncclGetErrorString(4).lower()


@needs_mpi
def test_hung_rank_ends_the_job(workdir):
    """Rank 1 sleeps forever at step 2: rank 0's collective times out after VGGCORE_DIST_TIMEOUT=4 s and aborts
    the whole job (MPI_Abort) with a message naming the collective."""
    proc, seconds = _run(workdir, workdir / "hung.npz", 2, "--hang-at", 2, timeout=4, limit=90)
    assert proc.returncode != 0
    assert "did not complete within 4 s" in proc.stderr
    assert seconds < 45
