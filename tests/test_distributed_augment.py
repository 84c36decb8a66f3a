"""device_augment in data-parallel runs: every rank augments its own share of the global batch on its own device,
and the global batch (images, crops, flips, colour shifts) is the single-process run's with the same seed.

The shares are checked directly (each rank's augmented share, concatenated in rank order, is bit-identical to the
whole batch augmented in one process, on sim, with the JPEGs decoded on the threads or left as bytes for the
device decoder), and end to end under ``mpirun -np 2`` against one process, with the tolerance of
tests/test_distributed.py (the gradient of each weight is a sum of two partial sums instead of one).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggcore import _parallel
from vggcore import data as vdata
from vggcore import decode as vdecode

sys.path.insert(0, str(Path(__file__).parent))
import test_distributed as tdist  # noqa: E402

WORKER = Path(__file__).with_name("distributed_augment_worker.py")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The data-parallel tests' images, the even-numbered ones of each class re-saved as baseline JPEGs."""
    root = tmp_path_factory.mktemp("dist_augment")
    tdist._make_dataset(root / "data")
    for png in sorted((root / "data").rglob("*.png")):
        if int(png.stem) % 2 == 0:
            with Image.open(png) as im:
                im.convert("RGB").save(png.with_suffix(".jpg"), quality=95)
            png.unlink()
    return root


def _transform():
    return vdata.TrainTransform(32, (32, 36), [120.0, 110.0, 100.0], [0.1, 0.02, 0.004], np.eye(3))


@pytest.mark.parametrize("decode", ["cpu", "bytes"])
@pytest.mark.parametrize("world", [2, 3])
def test_shares_augmented_per_rank_make_the_global_batch(workdir, world, decode):
    folder = vdata.ImageFolder(workdir / "data" / "train")
    dec = vdecode.CpuJpegDecoder() if decode == "bytes" else "cpu"
    kwargs = dict(shuffle=True, seed=5, num_workers=1, device_augment=True, decode=dec)
    whole = list(vdata.DataLoader(folder, 8, _transform(), **kwargs).epoch(1))
    shares = [list(_parallel.ShardedLoader(folder, 8, _transform(), r, world, keep_empty=True, **kwargs).epoch(1))
              for r in range(world)]
    assert all(len(s) == len(whole) == 3 for s in shares)
    for b, (x, y) in enumerate(whole):
        ref = vdata.augment_batch(x, "sim").numpy()
        got = np.concatenate([vdata.augment_batch(s[b][0], "sim").numpy() for s in shares])
        np.testing.assert_array_equal(np.concatenate([s[b][1] for s in shares]), y)
        np.testing.assert_array_equal(got, ref)
        if decode == "bytes":
            assert sum(len(s[b][0].encoded) for s in shares) == len(x.encoded) > 0


def _run(workdir, out, ranks, *args):
    saved = tdist.WORKER
    tdist.WORKER = WORKER
    try:
        return tdist._run(workdir, out, ranks, *args)
    finally:
        tdist.WORKER = saved


@tdist.needs_mpi
def test_two_ranks_match_one_process_with_device_augment(workdir):
    proc, _ = _run(workdir, workdir / "single.npz", 1, "--jpeg-bytes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _run(workdir, workdir / "two.npz", 2, "--jpeg-bytes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, ref_history, ref_world = tdist._load(workdir / "single.npz")
    got, history, world = tdist._load(workdir / "two.npz")
    assert (ref_world, world) == (1, 2)
    tdist._assert_same_weights(ref, got)
    assert len(history) == 2
    for a, b in zip(ref_history, history):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5 * max(1.0, abs(a["train_loss"]))
        assert abs(a["train_top1_err"] - b["train_top1_err"]) <= 1e-9       # sums of 0/1 over ranks, as fractions
        assert abs(a["val_top1_err"] - b["val_top1_err"]) <= 1e-9
