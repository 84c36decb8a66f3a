"""Contract tests (DESIGN.md section 2): vc.train and vc.evaluate. Helpers and the PyTorch oracle: contract_helpers.py."""
import math

import numpy as np
import pytest

import vggcore as vc

from contract_helpers import *  # noqa: F401,F403


CLASSES = ["circle", "square", "stripes"]


def _make_image(cls, i, g):
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in g.integers(0, 80, 3))
    img = Image.new("RGB", (40, 40), bg)
    dr = ImageDraw.Draw(img)
    col = [(230, 40, 40), (40, 230, 40), (40, 40, 230)][CLASSES.index(cls)]
    o = int(g.integers(0, 6))
    if cls == "circle":
        dr.ellipse([6 + o, 6 + o, 30 + o, 30 + o], fill=col)
    elif cls == "square":
        dr.rectangle([5 + o, 5 + o, 28 + o, 28 + o], fill=col)
    else:
        for y in range(0, 40, 8):
            dr.rectangle([0, y + o % 4, 39, y + o % 4 + 3], fill=col)
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    g = rng(60)
    for split, n in (("train", 10), ("val", 4)):
        for cls in CLASSES:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                _make_image(cls, i, g).save(d / f"{i}.png")
    return root


TRAIN_KW = dict(config="A", batch_size=4, scale=(32, 40), crop=32, width=1 / 16, fc_width=16, device="cpu", seed=0)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck_full")
    res = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(ck), **TRAIN_KW)
    return res, ck


def test_train_result_and_history(trained):
    res, ck = trained
    assert res.model is not None
    h = res.history
    assert isinstance(h, list) and len(h) == 2
    for e in h:
        for key in ("epoch", "lr", "train_loss", "val_top1_err", "val_top5_err", "images_per_s"):
            assert key in e, f"history lacks {key}: {e}"
        assert math.isfinite(e["train_loss"]) and e["train_loss"] > 0
        assert 0.0 <= e["val_top1_err"] <= 1.0 and 0.0 <= e["val_top5_err"] <= e["val_top1_err"]
        assert e["images_per_s"] > 0
        assert e["lr"] > 0
    assert h[0]["epoch"] < h[1]["epoch"]
    assert h[0]["lr"] == pytest.approx(1e-2)
    assert h[-1]["val_top5_err"] == 0.0  # 3 classes: top-5 always right
    assert any(ck.iterdir()), "no checkpoint written"
    # the model is a usable module with 3 classes
    res.model.eval()
    y = res.model(vc.tensor(np.zeros((1, 32, 32, 3), np.float32)))
    assert y.shape == (1, 3)


def test_train_resume_reproduces(folder, trained, tmp_path):
    res_full, _ = trained
    ck = tmp_path / "ck"
    r1 = vc.train(data=str(folder), epochs=1, checkpoint_dir=str(ck), **TRAIN_KW)
    assert len(r1.history) == 1
    assert r1.history[0]["train_loss"] == pytest.approx(res_full.history[0]["train_loss"], rel=1e-6)
    r2 = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(ck), resume=True, **TRAIN_KW)
    assert len(r2.history) == 2
    for a, b in zip(r2.history, res_full.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_top1_err"] == pytest.approx(b["val_top1_err"])


def test_evaluate(folder, trained):
    res, _ = trained
    val = str(folder / "val")
    r = vc.evaluate(res.model, data=val, crop=32, scale=32, dense=False)
    assert set(("top1_err", "top5_err", "n")) <= set(r)
    assert r["n"] == 12
    assert 0 <= r["top1_err"] <= 1 and r["top5_err"] == 0.0
    # dense evaluation of a crop-sized image equals single-crop evaluation
    rd = vc.evaluate(res.model, val, crop=32, scale=32, dense=True)
    assert rd["n"] == 12 and rd["top1_err"] == pytest.approx(r["top1_err"])
    rf = vc.evaluate(res.model, val, crop=32, scale=40, dense=True, flip=True)
    assert rf["n"] == 12 and 0 <= rf["top1_err"] <= 1
    rm = vc.evaluate(res.model, val, crop=32, scale=[32, 40], dense=False, flip=False)
    assert rm["n"] == 12 and 0 <= rm["top1_err"] <= 1
    rc = vc.evaluate(res.model, val, crop=32, scale=36, device="cpu")
    assert rc["n"] == 12


def test_model_left_usable_after_evaluate_dense(folder, trained):
    res, _ = trained
    m = res.model
    vc.evaluate(m, str(folder / "val"), crop=32, scale=40, dense=True)
    m.eval()
    y = m(vc.tensor(np.zeros((2, 32, 32, 3), np.float32)))
    assert y.shape == (2, 3)


def test_train_deterministic_for_seed(folder, trained, tmp_path):
    res_full, _ = trained
    r = vc.train(data=str(folder), epochs=2, checkpoint_dir=str(tmp_path / "again"), **TRAIN_KW)
    assert [e["train_loss"] for e in r.history] == [e["train_loss"] for e in res_full.history]


def test_train_fixed_scale_and_no_checkpoint_dir(folder):
    kw = dict(TRAIN_KW, scale=36)
    r = vc.train(data=str(folder), epochs=1, **kw)
    assert len(r.history) == 1 and math.isfinite(r.history[0]["train_loss"])


def test_train_init_from_model(folder, trained):
    res_a, _ = trained
    kw = dict(TRAIN_KW, config="B")
    r = vc.train(data=str(folder), epochs=1, init_from=res_a.model, **kw)
    la, lb = by_layer(res_a.model), by_layer(r.model)
    assert "conv1_1" in lb and "fc8" in lb and len(r.history) == 1


@pytest.mark.parametrize("broken", ["missing", "empty", "class_without_images", "val_classes_differ"])
def test_train_bad_data_folder(folder, tmp_path, broken):
    import shutil

    root = tmp_path / "d"
    if broken != "missing":
        shutil.copytree(folder, root)
    if broken == "empty":
        shutil.rmtree(root)
        root.mkdir()
    elif broken == "class_without_images":
        for f in (root / "train" / "circle").iterdir():
            f.unlink()
    elif broken == "val_classes_differ":
        (root / "val" / "square").rename(root / "val" / "triangle")
    with pytest.raises((ValueError, TypeError, FileNotFoundError, OSError)) as ei:
        vc.train(data=str(root), epochs=1, **TRAIN_KW)
    assert str(ei.value)


def test_evaluate_default_preprocessing_and_missing_folder(folder, trained):
    res, _ = trained
    r = vc.evaluate(res.model, str(folder / "val"))  # the model carries crop/scale/mean
    assert r["n"] == 12
    with pytest.raises((ValueError, TypeError, FileNotFoundError, OSError)):
        vc.evaluate(res.model, str(folder / "nope"))


def test_checkpoint_reload_evaluates_the_same(folder, trained):
    res, ck = trained
    load = getattr(vc.models, "load", None)
    if load is None:
        pytest.skip("no documented loader")
    files = sorted(p for p in ck.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    assert files, f"no .safetensors checkpoint in {list(ck.rglob('*'))}"
    last = [f for f in files if "last" in f.name] or files
    m = load(str(last[0]))
    val = str(folder / "val")
    a = vc.evaluate(res.model, val, crop=32, scale=32)
    b = vc.evaluate(m, val, crop=32, scale=32)
    assert a == b

