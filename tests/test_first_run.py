"""What a new user sees on their own small photo folder: statistics with progress, ETAs, honest top-k, notes."""

import importlib
import io
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vggcore import data
from vggcore.training import train

train_module = importlib.import_module("vggcore.training")
TINY = dict(config="A", width=1 / 16, fc_width=16, crop=32, scale=(32, 40), batch_size=8, init="he", dropout=0.0,
            num_workers=2, stats_sample=100)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """4 classes x (4 train, 2 val) 48x40 JPEGs."""
    root = tmp_path_factory.mktemp("photos")
    for split, n in (("train", 4), ("val", 2)):
        for c in range(4):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([c, i, len(split)])
                y, x = np.mgrid[0:40, 0:48] / 48
                img = rng.uniform(40, 200, 3) + 60 * (x if c % 2 else y)[..., None] + rng.normal(0, 8, (40, 48, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))


def test_first_run_on_four_classes_says_what_it_does(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # as if matplotlib were not installed
    monkeypatch.setattr(train_module, "_CURVES_NOTE_GIVEN", [])
    result = train(data=photos, epochs=2, checkpoint_dir=tmp_path / "ck", verbose=True, progress=True, **TINY)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("computing the preprocessing statistics (mean RGB, colour PCA) of 16 of 16 training "
                               "images on 2 threads")
    assert lines[1].startswith("preprocessing statistics done in")
    assert "preprocessing statistics: images 16/16" in err
    assert sum("top-5 error not reported: the data has 4 classes" in line for line in lines) == 1
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("top-5" not in e and "data wait" in e for e in epochs)
    assert sum("curves.png is not written: matplotlib is not installed (pip install .[plot]" in line
               for line in lines) == 1, "said once, not every epoch"
    assert not (tmp_path / "ck" / "curves.png").exists()
    assert "ETA" in err and "(run " in err
    for h in result.history:
        assert h["val_top5_reported"] is False and h["val_top5_err"] == 0.0     # kept: the contract's key
        assert 0 <= h["data_wait_s"] <= h["epoch_time_s"] and 0 <= h["input_bound"] <= 1 and h["val_time_s"] > 0

    again = train(data=photos, epochs=1, checkpoint_dir=tmp_path / "ck2", verbose=True, progress=False, **TINY)
    out, _ = capsys.readouterr()
    assert "cached in" in out.splitlines()[0] and "preprocessing statistics done" not in out
    assert again.history[0]["val_top5_reported"] is False


def test_input_bound_time_counts_the_wait_for_a_slow_loader(photos, tmp_path, monkeypatch):
    real = data.load_planned

    def slow(*args, **kwargs):
        time.sleep(0.25)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "load_planned", slow)
    result = train(data=photos, epochs=1, verbose=False, progress=False, **TINY)
    h = result.history[0]
    # The loader starts inside the loop's first wait, and the first batch (8 images on 2 threads, 0.25 s each)
    # cannot be ready in under 1 s: at least that much of the epoch is waiting for data.
    assert 1.0 <= h["data_wait_s"] <= h["epoch_time_s"], h
    assert h["input_bound"] == pytest.approx(h["data_wait_s"] / h["epoch_time_s"])
    monkeypatch.undo()      # the same run with the real loader waits less
    quick = train(data=photos, epochs=1, verbose=False, progress=False, **TINY)
    assert quick.history[0]["data_wait_s"] < h["data_wait_s"]


def test_progress_bar_etas():
    stream = io.StringIO()
    bar = train_module._Progress(True, 10, 1, 3, stream=stream)
    bar.update(5, 0.5, 0.25, 100.0, elapsed=10.0, data_frac=0.2, force=True)
    line = stream.getvalue()
    # 5 of 10 batches in 10 s: 10 s left in this epoch; two more epochs at this pace, 20 s each.
    assert "5/10" in line and "data wait 20%" in line and "ETA 10 s (run 50 s)" in line
    stream = io.StringIO()
    bar = train_module._Progress(True, 10, 3, 3, stream=stream, last_epoch_s=100.0, last_val_s=30.0)
    bar.update(8, 0.5, 0.25, 100.0, elapsed=80.0, force=True)
    # The last epoch: 20 s of training left and its 30 s validation pass, as long as the previous epoch's.
    assert "ETA 20 s (run 50 s)" in stream.getvalue()
    assert train_module._duration(3727) == "1:02:07" and train_module._duration(187) == "3:07"
