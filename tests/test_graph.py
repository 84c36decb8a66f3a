"""vggcore.Graph on the emulator: a captured training step replays bit-identically to the eager one, reads lr and
dropout seeds from device memory, keeps its memory private, and refuses host synchronisation cleanly."""
import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from conftest import needs_sim_access_hooks
from vggcore import _C, _graph_step, nn
from vggcore import data as vdata
from vggcore.graph import Graph, copy_into
from vggcore.nn import functional as F

DEV = "sim"
pytestmark = pytest.mark.skipif("sim" not in vc.devices(), reason="needs the SIMT emulator")


def _net():
    vc.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))
    model.to(DEV)
    return model, vc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(-2, 3, (4, 8, 8, 3)).astype(np.float32), rng.integers(0, 5, 4)) for _ in range(n)]


def _labels(y):
    return vc.Tensor._from_engine(_C.Tensor.from_numpy(np.asarray(y, np.int64), DEV))


def _eager_step(model, opt, x, y):
    logits = model(vc.tensor(x, device=DEV))
    loss = F.cross_entropy(logits, y)
    value = loss.item()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return value


def _eager_run(batches, lrs):
    model, opt = _net()
    losses = []
    for (x, y), lr in zip(batches, lrs):
        opt.lr = lr
        losses.append(_eager_step(model, opt, x, y))
    return losses, [p.numpy() for p in model.parameters()]


def _graphed_run(batches, lrs, share_pool=False):
    """One eager step, then forward+loss and backward+SGD captured as two graphs (the second in the first's pool
    with share_pool) and replayed for the rest."""
    model, opt = _net()
    opt.lr = lrs[0]
    losses = [_eager_step(model, opt, *batches[0])]
    sx, sy = vc.tensor(batches[1][0], device=DEV), _labels(batches[1][1])
    forward, update = Graph(), Graph()
    with forward.capture(DEV):
        logits = model(sx)
        loss = F.cross_entropy(logits, sy)
    with update.capture(DEV, pool=forward if share_pool else None):
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert forward.state == update.state == "ready"
    for (x, y), lr in zip(batches[1:], lrs[1:]):
        copy_into(sx, x)
        copy_into(sy, np.asarray(y, np.int64))
        opt.lr = lr
        forward.replay()
        losses.append(loss.item())
        update.replay()
    return losses, [p.numpy() for p in model.parameters()]


def test_replayed_training_step_is_bit_identical_to_eager_steps_with_dropout_and_a_changing_lr():
    batches = _batches(5)
    lrs = [0.05, 0.05, 0.02, 0.0, 0.1]
    eager_losses, eager_weights = _eager_run(batches, lrs)
    for share_pool in (False, True):      # the update graph in its own pool, then in the forward graph's
        graph_losses, graph_weights = _graphed_run(batches, lrs, share_pool)
        assert graph_losses == eager_losses
        for e, g in zip(eager_weights, graph_weights):
            assert np.array_equal(e, g)
    # the same run with lr held at 0.05: a graph that baked in its capture-time lr would give these weights
    _, fixed_lr_weights = _eager_run(batches, [0.05] * 5)
    assert not all(np.array_equal(e, f) for e, f in zip(eager_weights, fixed_lr_weights))


def test_lr_zero_between_replays_leaves_the_weights_alone():
    w = vc.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device=DEV, requires_grad=True)
    x = vc.tensor(np.ones((1, 3), np.float32), device=DEV)
    dy = vc.tensor(np.ones((1, 2), np.float32), device=DEV)
    opt = vc.optim.SGD([w], lr=0.5)
    g = Graph()
    with g.capture(DEV):
        opt.zero_grad()
        F.linear(x, w).backward(dy)
        opt.step()
    g.replay()                                   # d(sum)/dw = 1 everywhere: w -= 0.5
    np.testing.assert_array_equal(w.numpy(), np.arange(6).reshape(2, 3) - 0.5)
    opt.lr = 0.0
    g.replay()
    np.testing.assert_array_equal(w.numpy(), np.arange(6).reshape(2, 3) - 0.5)
    opt.lr = 2.0
    g.replay()
    np.testing.assert_array_equal(w.numpy(), np.arange(6).reshape(2, 3) - 2.5)


def test_each_replay_draws_a_new_dropout_seed_in_the_eager_order():
    x = vc.tensor(np.ones((2, 64), np.float32), device=DEV)
    g = Graph()
    vc.manual_seed(11)
    with g.capture(DEV):
        y = F.dropout(x, 0.5)
        z = F.dropout(x, 0.5)
    masks = []
    for _ in range(3):
        g.replay()
        masks.append((y.numpy().copy(), z.numpy().copy()))
    vc.manual_seed(11)                           # the capture drew nothing: eager calls draw the same seeds
    for my, mz in masks:
        np.testing.assert_array_equal(my, F.dropout(x, 0.5).numpy())
        np.testing.assert_array_equal(mz, F.dropout(x, 0.5).numpy())
    assert not np.array_equal(masks[0][0], masks[1][0]) and not np.array_equal(masks[0][0], masks[0][1])
    assert set(np.unique(masks[0][0])) == {0.0, 2.0}


def test_eager_tensors_made_after_a_capture_are_not_written_by_its_replays():
    x = vc.tensor(np.arange(-8, 8, dtype=np.float32).reshape(4, 4), device=DEV)
    g = Graph()
    with g.capture(DEV):
        a = F.relu(x)                            # freed inside the capture: its block stays with the graph
        b = a + a
        del a
        out = b + x
        del b
    del out                                      # dropped by Python after the capture: still the graph's
    fills = [vc.tensor(np.full((4, 4), 100.0 + i, np.float32), device=DEV) for i in range(6)]
    g.replay()
    for i, t in enumerate(fills):
        np.testing.assert_array_equal(t.numpy(), np.full((4, 4), 100.0 + i, np.float32))
    del g                                        # the pool goes with the graph; eager work goes on
    np.testing.assert_array_equal(F.relu(x).numpy(), np.maximum(np.arange(-8, 8).reshape(4, 4), 0))


def test_the_outputs_are_computed_by_the_replay_not_by_the_capture():
    x = vc.tensor(np.arange(4, dtype=np.float32), device=DEV)
    g = Graph()
    with g.capture(DEV):
        y = x + x
    copy_into(x, np.array([5, 6, 7, 8], np.float32))
    g.replay()
    np.testing.assert_array_equal(y.numpy(), [10, 12, 14, 16])


@pytest.mark.parametrize("what,sync", [
    ("numpy", lambda y, w: y.numpy()),
    ("item", lambda y, w: F.linear(y.reshape(1, 6), w).item()),      # a (1, 1) result
    ("to cpu", lambda y, w: y.to("cpu")),
    ("upload", lambda y, w: vc.tensor(np.ones(3, np.float32), device=DEV)),
    ("empty_cache", lambda y, w: _C.empty_cache()),
    ("synchronize", lambda y, w: _C.synchronize(DEV)),
    ("copy_async", lambda y, w: _C.copy_async(vc.pinned_empty((2, 3)), DEV)),
])
def test_host_synchronisation_inside_a_capture_raises_and_the_device_stays_usable(what, sync):
    x = vc.tensor(np.arange(-3, 3, dtype=np.float32), device=DEV)
    w = vc.tensor(np.ones((1, 6), np.float32), device=DEV)
    g = Graph()
    with pytest.raises(RuntimeError, match=r"graph capture: .*(host|synchronis)"):
        with g.capture(DEV):
            y = F.relu(x)
            sync(y, w)
    assert g.state == "failed" and not _C.capturing(DEV)
    with pytest.raises(RuntimeError, match="failed"):
        g.replay()
    np.testing.assert_array_equal(F.relu(x).numpy(), [0, 0, 0, 0, 1, 2])    # eager work runs at once again
    g2 = Graph()
    with g2.capture(DEV):
        y = F.relu(x)
    g2.replay()
    np.testing.assert_array_equal(y.numpy(), [0, 0, 0, 0, 1, 2])


def test_waiting_for_an_asynchronous_copy_inside_a_capture_is_refused():
    source = vc.pinned_empty((2, 3))
    source[:] = 7
    copied, ticket = _C.copy_async(source, DEV)
    g = Graph()
    with pytest.raises(RuntimeError, match="graph capture: wait_copy"):
        with g.capture(DEV):
            _C.wait_copy(ticket)
    _C.wait_copy(ticket)
    np.testing.assert_array_equal(copied.numpy(), np.full((2, 3), 7.0))


def test_capture_misuse_is_refused_clearly():
    with pytest.raises(ValueError, match="device cpu cannot be captured"):
        with Graph().capture("cpu"):
            pass
    with pytest.raises(RuntimeError, match="only a completed capture"):
        Graph().replay()
    g = Graph()
    with g.capture(DEV):
        with pytest.raises(RuntimeError, match="already in progress"):
            with Graph().capture(DEV):
                pass
    with pytest.raises(RuntimeError, match="captured once"):
        with g.capture(DEV):
            pass
    model, opt = _net()                          # no eager step yet: the momentum buffers do not exist
    loss = F.cross_entropy(model(vc.tensor(np.ones((4, 8, 8, 3), np.float32), device=DEV)), [0, 1, 2, 3])
    loss.backward()
    with pytest.raises(ValueError, match="eager step before capturing"):
        with Graph().capture(DEV):
            opt.step()


def _image_folder(root, per_class):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


@pytest.mark.parametrize("precision,epochs", [("fp32", 2), ("bf16", 1)])   # bf16 emulation is the slow one
def test_train_with_cuda_graph_gives_the_eager_history_and_weights_on_sim(tmp_path, monkeypatch, precision, epochs):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _image_folder(root / "train", per_class=9)   # 18 images, batch 4: 4 full batches and a short one of 2
    _image_folder(root / "val", per_class=2)
    replays = []

    class CountingGraph(Graph):
        def replay(self):
            replays.append(1)
            super().replay()

    monkeypatch.setattr(_graph_step, "Graph", CountingGraph)

    def run(**kwargs):
        return vc.train("A", data=str(root), epochs=epochs, batch_size=4, crop=32, scale=32, width=1 / 16, fc_width=16,
                        dropout=0.5, device=DEV, verbose=False, stats_sample=10, num_workers=1, precision=precision,
                        **kwargs)

    eager = run()
    graphed = run(cuda_graph=True)
    # epoch 1: batches 3 and 4 after 2 eager warm-up steps; epoch 2 (after an eager validation pass): batches 1-4
    assert len(replays) == 2 * (2 + 4 * (epochs - 1))          # two graphs per replayed step
    for e, g in zip(eager.history, graphed.history):
        for key in ("train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err", "lr"):
            assert g[key] == e[key], key
    for (name, e), (_, g) in zip(eager.model.state_dict().items(), graphed.model.state_dict().items()):
        assert np.array_equal(np.asarray(e), np.asarray(g)), name
    with pytest.raises(ValueError, match="cuda_graph=True needs device 'sim' or 'cuda'"):
        vc.train("A", data=str(root), epochs=1, batch_size=4, crop=32, scale=32, width=1 / 16, fc_width=16,
                 device="cpu", verbose=False, stats_sample=10, num_workers=1, cuda_graph=True)


def test_a_block_one_graph_made_and_another_read_lives_as_long_as_either_graph():
    x = vc.tensor(np.arange(-8, 8, dtype=np.float32).reshape(4, 4), device=DEV)
    first, second = Graph(), Graph()
    with first.capture(DEV):
        a = F.relu(x)
    first.replay()
    with second.capture(DEV):
        b = a + a
        del a                                    # freed while the second graph, which reads it, is captured
    del first                                    # the block stays: the second graph still holds it
    fills = [vc.tensor(np.full((4, 4), 100.0 + i, np.float32), device=DEV) for i in range(6)]
    second.replay()
    np.testing.assert_array_equal(b.numpy(), 2 * np.maximum(np.arange(-8, 8).reshape(4, 4), 0))
    for i, t in enumerate(fills):
        np.testing.assert_array_equal(t.numpy(), np.full((4, 4), 100.0 + i, np.float32))


def test_a_capture_into_another_graphs_pool_reuses_the_blocks_that_one_freed():
    x = vc.tensor(np.arange(-8, 8, dtype=np.float32).reshape(4, 4), device=DEV)
    results = {}
    for share in (False, True):
        first, second = Graph(), Graph()
        with first.capture(DEV):
            a = F.relu(x)
            doubled = a + a
            freed = a._data.data_ptr
            del a                                # its block goes back to first's pool
        with second.capture(DEV, pool=first if share else None):
            b = x + x                            # the same size as a: handed a's block only from first's pool
        results[share] = b._data.data_ptr == freed
        for values in (np.arange(-8, 8), np.arange(16, 0, -1)):
            copy_into(x, values.reshape(4, 4).astype(np.float32))
            first.replay()
            second.replay()
            np.testing.assert_array_equal(doubled.numpy(), 2 * np.maximum(values.reshape(4, 4), 0))
            np.testing.assert_array_equal(b.numpy(), 2 * values.reshape(4, 4))
        del first                                # the shared pool lives on with the second graph
        second.replay()
        np.testing.assert_array_equal(b.numpy(), 2 * np.arange(16, 0, -1).reshape(4, 4))
        del second, doubled, b                   # nothing of this round left for the next one's captures
    assert results == {False: False, True: True}


@needs_sim_access_hooks
@pytest.mark.usefixtures("every_sim_check")
def test_a_replay_reading_a_reused_block_it_never_wrote_is_an_uninitialised_read():
    """The bug the per-replay poison makes visible: on cuda, the second graph would silently read what the
    first one's replay left in the block it reuses (here int64 labels 1, 1, 1, 1, written as relu's output)."""
    ones = np.zeros(8, np.int32)
    ones[::2] = 1                                # little-endian int64 [1, 1, 1, 1] as eight float32 words
    x = vc.tensor(ones.view(np.float32), device=DEV)
    logits = vc.tensor(np.zeros((4, 3), np.float32), device=DEV)
    first, second = Graph(), Graph()
    with first.capture(DEV):
        a = F.relu(x)                            # 32 bytes; relu keeps the denormal bit patterns
        kept = a + a
        del a
    with second.capture(DEV, pool=first):
        labels = vc.Tensor._from_engine(_C.int64_empty([4], DEV))   # a's block again; nothing writes it
        loss = F.cross_entropy(logits, labels)
    first.replay()
    with pytest.raises(RuntimeError, match="uninitialised device memory read"):
        second.replay()
    del kept, loss


def test_a_replayed_label_out_of_range_gives_a_nan_loss_not_a_wild_read():
    """A replay cannot range-check the labels copied into its label tensor (vc.train checks them on the host);
    the kernel must not index outside the logits row with them."""
    logits = vc.tensor(np.zeros((4, 5), np.float32), device=DEV, requires_grad=True)
    labels = _labels([0, 1, 2, 3])
    g = Graph()
    with g.capture(DEV):
        loss = F.cross_entropy(logits, labels)
        loss.backward()
    g.replay()
    assert loss.item() == pytest.approx(np.log(5.0))
    for bad in ([0, 1, 5, 3], [0, -1, 2, 3], [0, 1, 2, 2**40]):
        copy_into(labels, np.array(bad, np.int64))
        g.replay()
        assert np.isnan(loss.item()), bad
        assert np.isfinite(logits.grad.numpy()).all()


def test_pool_sharing_is_refused_when_it_cannot_work():
    x = vc.tensor(np.ones((2, 2), np.float32), device=DEV)
    with pytest.raises(TypeError, match="pool must be a vggcore.Graph"):
        with Graph().capture(DEV, pool="first"):
            pass
    empty = Graph()
    with pytest.raises(ValueError, match="pool= must be a captured graph .ready., got one that is empty"):
        with Graph().capture(DEV, pool=empty):
            pass
    g = Graph()
    with pytest.raises(ValueError, match="pool= must be another graph"):
        with g.capture(DEV, pool=g):
            pass
    ready = Graph()
    with ready.capture(DEV):
        y = x + x
    if any(d.startswith("cuda") for d in vc.devices()):
        with pytest.raises(ValueError, match="pool= is a graph of sim, not of cuda:0"):
            with Graph().capture("cuda:0", pool=ready):
                pass
    ready.replay()
    np.testing.assert_array_equal(y.numpy(), 2 * np.ones((2, 2)))


def test_the_cli_flag_reaches_train():
    from vggcore import cli
    assert cli.build_parser().parse_args(["train", "--cuda-graph"]).cuda_graph is True
    assert cli.build_parser().parse_args(["train"]).cuda_graph is False
