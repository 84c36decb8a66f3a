"""Pinned batch buffers, asynchronous host-to-device copies and the device prefetcher (vggcore.prefetch).

sim models the copy stream (csrc/core/async_copy.h): an asynchronous copy is performed only when the compute
stream waits on it (or the host does), its destination holds NaN poison until then, and a source written before
the copy completed is reported. So the orderings the prefetcher and the pinned loader rely on can be checked here
without a GPU: with them, batches are bit-identical to the synchronous path; without them, the tests see the bug.
"""

import contextlib

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import _C
from vggcore import data as vdata
from vggcore import prefetch as vprefetch

pytestmark = pytest.mark.skipif(not _C.sim_compiled(), reason="needs the sim device")


def _folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(34, 44)), int(rng.integers(34, 44))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return vdata.ImageFolder(root)


def _loader(folder, batch_size=4, **kwargs):
    tf = vdata.TrainTransform(32, (32, 40), [120.0, 110.0, 100.0], flip=True)
    return vdata.DataLoader(folder, batch_size, tf, shuffle=True, seed=3, num_workers=2, **kwargs)


def _sync_batches(folder, **kwargs):
    loader = _loader(folder, **kwargs)
    try:
        return [(x.copy(), y.copy()) for x, y in loader.epoch(1)]
    finally:
        loader.close()


# The devices with a copy stream: sim (modelled) and every GPU (real), for the tests that hold on both.
COPY_DEVICES = [d for d in vc.devices() if d != "cpu"]


def _through_sim(folder, depth=2, compute=lambda x: x, device="sim", **kwargs):
    """Each batch of a pinned loader through the prefetcher to ``device``, then ``compute`` there, as numpy."""
    loader = _loader(folder, pin_memory=True, **kwargs)
    pf = vprefetch.DevicePrefetcher(loader.epoch(1), device, depth)
    out = [(compute(x).numpy(), y.copy()) for x, y in pf]
    pf.close()
    loader.close()
    return out, pf.async_copies


@pytest.fixture
def folder(tmp_path):
    yield _folder(tmp_path / "data")
    _C.synchronize("sim")      # no copy left queued for the next test


@pytest.mark.parametrize("device", COPY_DEVICES)
def test_prefetched_batches_are_bit_identical_to_the_synchronous_path(folder, device):
    expected = _sync_batches(folder)
    got, copies = _through_sim(folder, compute=lambda x: vc.Tensor._from_engine(_C.scale(x._data, 1.0)),
                               device=device)
    assert copies == len(expected) == 3
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert gx.tobytes() == ex.tobytes()
        np.testing.assert_array_equal(gy, ey)
    _C.synchronize(device)
    assert _C.pending_copies() == 0


def test_the_emulator_catches_compute_that_does_not_wait_for_its_copy(folder, monkeypatch):
    expected = _sync_batches(folder)
    monkeypatch.setattr(vprefetch, "_ORDER_BEFORE_COMPUTE", False)
    try:
        got, _ = _through_sim(folder, compute=lambda x: vc.Tensor._from_engine(_C.scale(x._data, 1.0)))
    except RuntimeError as error:  # the emulator's checks on (VGG_SIM_CHECKS=all) stop the reading kernel at once
        assert "uninitialised device memory read" in str(error)
        return
    # The first batch's copy is still queued when its compute runs: the kernel reads the destination's poison.
    assert np.isnan(got[0][0]).all()
    assert any(g.tobytes() != e.tobytes() for (g, _), (e, _) in zip(got, expected))


def _record_reuse(monkeypatch):
    """Wraps DataLoader._take_buffer: for every buffer handed out again, whether its last copy had completed."""
    seen, ready_at_reuse = set(), []
    take = vdata.DataLoader._take_buffer

    def spy(self):
        buf = take(self)
        if id(buf) in seen:
            ready_at_reuse.append(_C.pinned_ready(buf))
        seen.add(id(buf))
        return buf

    monkeypatch.setattr(vdata.DataLoader, "_take_buffer", spy)
    return ready_at_reuse


def test_a_pinned_buffer_is_reused_only_after_its_copy_completed(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "data", per_class=12)
    ready_at_reuse = _record_reuse(monkeypatch)
    expected = _sync_batches(folder, batch_size=2)
    got, copies = _through_sim(folder, batch_size=2, prefetch=1)
    assert copies == 12
    assert len(ready_at_reuse) >= 4 and all(ready_at_reuse)
    for (gx, _), (ex, _) in zip(got, expected):
        assert gx.tobytes() == ex.tobytes()


def test_the_reuse_check_sees_a_buffer_handed_back_too_early(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "data", per_class=12)
    ready_at_reuse = _record_reuse(monkeypatch)
    monkeypatch.setattr(vdata, "_WAIT_FOR_COPIES", False)
    # The overwritten source may also be reported when the copy is performed (it depends on whether the decoding
    # threads wrote the buffer first); the reuse itself is what this test checks.
    with contextlib.suppress(RuntimeError):
        _through_sim(folder, batch_size=2, prefetch=1)
    with contextlib.suppress(RuntimeError):
        _C.synchronize("sim")
    assert ready_at_reuse and not all(ready_at_reuse)


def test_a_source_written_before_its_copy_completed_is_reported():
    buf = vc.pinned_empty((2, 3))
    buf[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    data, ticket = _C.copy_async(buf, "sim")
    assert np.isnan(data.numpy()).all()          # queued: the destination still holds the poison
    assert not _C.pinned_ready(buf) and not _C.copy_done(ticket)
    _C.wait_copy(ticket)
    np.testing.assert_array_equal(data.numpy(), np.arange(6).reshape(2, 3))
    assert _C.pinned_ready(buf) and _C.copy_done(ticket)

    data, ticket = _C.copy_async(buf, "sim")
    buf[0, 0] = 7.0
    with pytest.raises(RuntimeError, match="written before the copy completed"):
        _C.wait_copy(ticket)
    assert _C.pending_copies() == 0


@pytest.mark.parametrize("device", COPY_DEVICES)
def test_non_blocking_tensor_and_to(folder, device):
    buf = vc.pinned_empty((3, 4))
    buf[:] = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = vc.tensor(buf, device=device, non_blocking=True)
    np.testing.assert_array_equal(t.numpy(), np.arange(12).reshape(3, 4))   # ordered: later work sees the copy
    _C.pinned_wait(buf)
    assert _C.pinned_ready(buf)
    buf[:] = 5.0                      # reused after its copy completed: the tensor keeps the first contents
    np.testing.assert_array_equal(t.numpy(), np.arange(12).reshape(3, 4))
    pinned = vc.tensor(np.arange(5, dtype=np.float32)).pin_memory()
    assert pinned.is_pinned() and not vc.tensor([1.0]).is_pinned()
    moved = pinned.to(device, non_blocking=True)
    assert moved.device == t.device
    np.testing.assert_array_equal(moved.numpy(), np.arange(5))
    # The cpu path is unchanged: no copy is queued.
    before = _C.pending_copies()
    np.testing.assert_array_equal(vc.tensor(buf, device="cpu", non_blocking=True).numpy(), buf)
    assert _C.pending_copies() == before


def test_non_blocking_from_ordinary_memory_is_refused():
    with pytest.raises(ValueError, match="tensor: non_blocking=True .*pinned"):
        vc.tensor(np.zeros((2, 2), np.float32), device="sim", non_blocking=True)
    with pytest.raises(ValueError, match="tensor: non_blocking=True .*float32"):
        vc.tensor([1.0, 2.0], device="sim", non_blocking=True)
    with pytest.raises(ValueError, match="to: non_blocking=True .*pin_memory"):
        vc.tensor(np.zeros(3, np.float32)).to("sim", non_blocking=True)
    with pytest.raises(ValueError, match="copy_async: .*pinned"):
        _C.copy_async(np.zeros(3, np.float32), "sim")
    with pytest.raises(ValueError, match="copy_async: .*cpu"):
        _C.copy_async(vc.pinned_empty(3), "cpu")
    strided = vc.pinned_empty((4, 4))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        vc.tensor(strided, device="sim", non_blocking=True)


def test_a_closed_loader_or_prefetcher_raises(folder):
    loader = _loader(folder, pin_memory=True)
    batches = loader.epoch(0)
    next(batches)
    loader.close()
    with pytest.raises(ValueError, match="DataLoader: the loader is closed"):
        next(batches)
    with pytest.raises(ValueError, match="DataLoader: the loader is closed"):
        next(iter(loader))
    pf = vprefetch.DevicePrefetcher(iter([(vc.pinned_empty((1, 2)), np.zeros(1, np.int64))]), "sim")
    pf.close()
    with pytest.raises(ValueError, match="DevicePrefetcher: the prefetcher is closed"):
        next(pf)
    with pytest.raises(ValueError, match="depth"):
        vprefetch.DevicePrefetcher([], "sim", -1)


def test_the_cpu_path_makes_no_copies(folder):
    expected = _sync_batches(folder)
    loader = _loader(folder, reuse_buffers=True)
    pf = vprefetch.DevicePrefetcher(loader.epoch(1), "cpu")
    got = [x.numpy() for x, _ in pf]
    loader.close()
    assert pf.async_copies == 0
    assert [g.tobytes() for g in got] == [e.tobytes() for e, _ in expected]


def test_waiting_for_a_batch_that_is_not_ready_is_data_wait():
    import time

    def slow():
        for i in range(3):
            time.sleep(0.05)
            x = vc.pinned_empty((1, 2, 2, 3))
            x[:] = i
            yield x, np.array([i])

    pf = vprefetch.DevicePrefetcher(slow(), "sim", 2)
    t0 = time.perf_counter()
    x, _ = next(pf)                 # two batches are fetched (and their copies issued) before the first returns
    waited = time.perf_counter() - t0
    assert waited >= 0.09
    assert x.numpy().max() == 0
    pf.close()


def _train_sim(root, **kwargs):
    return vc.train("A", data=str(root), epochs=1, batch_size=4, crop=32, scale=32, width=1 / 16, fc_width=16,
                    dropout=0.0, device="sim", verbose=False, stats_sample=10, num_workers=1, **kwargs)


def test_train_with_prefetching_matches_the_synchronous_loop_on_sim(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _folder(root / "train")
    _folder(root / "val", per_class=2)
    sync = _train_sim(root, pin_memory=False, prefetch=0).history[0]
    overlapped = _train_sim(root, pin_memory=True, prefetch=2).history[0]
    for key in ("train_loss", "train_top1_err", "val_loss", "val_top1_err"):
        assert overlapped[key] == sync[key], key
    assert 0 <= overlapped["input_bound"] <= 1 and overlapped["data_wait_s"] <= overlapped["epoch_time_s"]
    # Without the compute stream's wait the first batch computes on the copy's NaN poison: the loss turns NaN,
    # or, with the emulator's checks on (VGG_SIM_CHECKS=all), the first kernel that reads it is stopped at once.
    monkeypatch.setattr(vprefetch, "_ORDER_BEFORE_COMPUTE", False)
    with pytest.raises((FloatingPointError, RuntimeError), match="loss became nan|uninitialised device memory read"):
        _train_sim(root, pin_memory=True, prefetch=2)
    _C.synchronize("sim")
    with pytest.raises(ValueError, match="prefetch"):
        _train_sim(root, prefetch=-1)
