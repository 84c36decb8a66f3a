"""vggcore.train / vggcore.evaluate / the CLI on tiny nets and the generated shapes dataset."""

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
import vggcore.models as models
from vggcore import checkpoint, data, datasets
from vggcore.cli import main as cli_main
from vggcore.evaluation import evaluate, predict_loader
from vggcore.training import TrainResult, train

train_module = importlib.import_module("vggcore.training")
TINY = dict(config="A", width=1 / 16, fc_width=32, crop=32, scale=(32, 40), batch_size=16, init="he",
            dropout=0.0, num_workers=2, verbose=False, progress=False, stats_sample=100)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small copy of the built-in dataset: 10 classes x (12 train, 4 val) images of 40 pixels."""
    return datasets.generate(tmp_path_factory.mktemp("data") / "shapes", train_per_class=12, val_per_class=4,
                             size=40, seed=1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))


def test_history_checkpoint_and_reload(shapes, tmp_path):
    result = train(data=shapes, epochs=2, checkpoint_dir=tmp_path / "ck", save_filters=True, **TINY)
    assert isinstance(result, TrainResult)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for key in ("epoch", "lr", "train_loss", "val_top1_err", "val_top5_err", "images_per_s"):
        assert all(np.isfinite(h[key]) for h in result.history), key
    assert 0 <= result.history[-1]["val_top1_err"] <= 1
    last = tmp_path / "ck" / "last.safetensors"
    assert result.checkpoint == str(last) and (tmp_path / "ck" / "best.safetensors").is_file()
    assert (tmp_path / "ck" / "conv1_1_filters.png").is_file()
    state = checkpoint.load_state(last)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert set(state) >= {"model", "optimizer", "rng", "history", "schedule", "settings", "model_info"}
    assert json.loads(checkpoint.read_metadata(last)["vggcore"])        # plain JSON metadata
    model = result.model
    assert model.class_names == sorted(datasets.CLASSES) and len(model.mean_rgb) == 3
    back = models.load(last)
    x = vc.tensor(np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32))
    assert np.array_equal(back.eval()(x).numpy(), model.eval()(x).numpy())
    # a reloaded checkpoint evaluates with nothing else given
    assert evaluate(str(last), shapes / "val", num_workers=1)["n"] == 40


def test_resume_reproduces_the_uninterrupted_run(shapes, tmp_path, monkeypatch):
    kwargs = dict(TINY, data=shapes, epochs=3, dropout=0.5, lr=0.02)
    full = train(checkpoint_dir=tmp_path / "full", **kwargs)

    steps = {"n": 0}
    real_step = vc.optim.SGD.step
    per_epoch = -(-120 // TINY["batch_size"])

    def crashing_step(self):
        steps["n"] += 1
        if steps["n"] == 2 * per_epoch + 3:              # in the middle of epoch 3
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(vc.optim.SGD, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(checkpoint_dir=tmp_path / "cut", **kwargs)
    monkeypatch.setattr(vc.optim.SGD, "step", real_step)
    assert checkpoint.load_state(tmp_path / "cut" / "last.safetensors")["epoch"] == 2

    resumed = train(checkpoint_dir=tmp_path / "cut", resume=True, **kwargs)
    timing = ("images_per_s", "epoch_time_s", "val_time_s", "data_wait_s", "input_bound")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in resumed.history]
    expected = [{k: v for k, v in h.items() if k not in timing} for h in full.history]
    assert strip == expected
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a), "the resumed weights equal the uninterrupted run's"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path, monkeypatch):
    import vggcore.nn.functional as F
    real = F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target):
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] > 10 else loss    # epoch 1 has 8 batches

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    ck = tmp_path / "ck"
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 2, batch 3.*last good checkpoint"):
        train(data=shapes, epochs=3, checkpoint_dir=ck, **TINY)
    assert checkpoint.load_state(ck / "last.safetensors")["epoch"] == 1
    assert not [p for p in ck.iterdir() if p.name.endswith(".tmp")]


def test_data_errors_are_raised_before_training(shapes, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(data=tmp_path / "nowhere", **TINY)
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="must hold train/<class>"):
        train(data=tmp_path / "flat", **TINY)

    def folder(name, train_classes, val_classes, empty=None):
        root = tmp_path / name
        for split, classes in (("train", train_classes), ("val", val_classes)):
            for c in classes:
                (root / split / c).mkdir(parents=True)
                if c != empty:
                    Image.new("RGB", (40, 40), (9, 9, 9)).save(root / split / c / "x.png")
        return root

    with pytest.raises(ValueError, match=r"only in train: \['dog'\]; only in val: \['cow'\]"):
        train(data=folder("mismatch", ["cat", "dog"], ["cat", "cow"]), checkpoint_dir=tmp_path / "ck", **TINY)
    with pytest.raises(ValueError, match=r"class folder .*dog holds no images"):
        train(data=folder("empty", ["cat", "dog"], ["cat", "dog"], empty="dog"), checkpoint_dir=tmp_path / "ck",
              **TINY)
    assert not (tmp_path / "ck").exists(), "nothing is written when the data is wrong"


def test_corrupt_training_file_is_skipped_and_named(shapes, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    bad = root / "train" / "circle" / "zz_broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.warns(data.CorruptImageWarning, match=str(bad).replace("\\", "\\\\")):
        result = train(data=root, epochs=1, **TINY)
    assert result.history[0]["skipped_files"] == 1


def test_dense_evaluation_equals_single_crop_on_crop_sized_images(shapes, tmp_path):
    vc.manual_seed(0)
    net = models.vgg("A", num_classes=10, width=1 / 16, fc_width=32, input_size=32, init="he").eval()
    net.class_names, net.mean_rgb = sorted(datasets.CLASSES), [128.0, 128.0, 128.0]
    # 32-pixel copies of the val images: Q = 32 makes the whole image one crop
    root = tmp_path / "val32"
    for path, label in data.ImageFolder(shapes / "val").samples:
        dest = root / net.class_names[label] / path.split("/")[-1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).resize((32, 32)).save(dest)
    single = evaluate(net, root, scale=32, num_workers=1)
    dense = evaluate(net, root, scale=32, dense=True, num_workers=1)
    assert single == dense and single["n"] == 40
    folder = data.ImageFolder(root)
    tf = data.EvalTransform(32, net.mean_rgb, crop=32)
    p_single, y1 = predict_loader(net, data.DataLoader(folder, 8, tf), "cpu")
    p_dense, y2 = predict_loader(net.to_fully_convolutional().eval(), data.DataLoader(folder, 8, tf), "cpu",
                                 dense=True)
    np.testing.assert_allclose(p_dense, p_single, rtol=1e-4, atol=1e-6)
    assert np.array_equal(y1, y2)
    multi = evaluate(net, shapes / "val", scale=[32, 40, 48], dense=True, flip=True, num_workers=1)
    assert multi["n"] == 40 and 0 <= multi["top5_err"] <= multi["top1_err"] <= 1
    flip = evaluate(net, shapes / "val", scale=36, flip=True, num_workers=1)
    assert 0 <= flip["top1_err"] <= 1
    ragged = tmp_path / "ragged"                      # whole images of different sizes and aspect ratios
    for i, (path, label) in enumerate(data.ImageFolder(shapes / "val").samples):
        dest = ragged / net.class_names[label] / path.split("/")[-1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).resize([(40, 52), (48, 40), (40, 40)][i % 3]).save(dest)
    batched = evaluate(net, ragged, scale=[40, 44], dense=True, batch_size=8, num_workers=2)
    one_by_one = evaluate(net, ragged, scale=[40, 44], dense=True, batch_size=1, num_workers=1)
    assert batched == one_by_one and batched["n"] == 40


def test_evaluate_rejects_other_classes(shapes, tmp_path):
    net = models.vgg("A", **{"num_classes": 10, "width": 1 / 16, "fc_width": 32, "input_size": 32})
    net.class_names = [f"k{i}" for i in range(10)]
    with pytest.raises(ValueError, match="differ from the model's"):
        evaluate(net, shapes / "val")


def test_cli_train_eval_info(shapes, tmp_path, capsys):
    ck = tmp_path / "run"
    args = ["train", "--data", str(shapes), "--epochs", "1", "--batch-size", "16", "--width", "1/16",
            "--fc-width", "32", "--crop", "32", "--scale", "32,40", "--checkpoint-dir", str(ck), "--workers", "2",
            "--stats-sample", "50", "--no-progress"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "val top-1 err" in out and "img/s" in out
    assert cli_main(args[:4] + ["3"] + args[5:-1] + ["--resume", "--quiet", "--progress"]) == 0
    assert checkpoint.load_state(ck / "last.safetensors")["epoch"] == 3
    captured = capsys.readouterr()
    assert "epoch   2/3" not in captured.out and "\repoch 3/3 [" in captured.err   # quiet, with a progress bar
    assert cli_main(["eval", str(ck / "last.safetensors"), "--data", str(shapes / "val"), "--dense", "--flip",
                     "--scales", "32,40"]) == 0
    assert "dense + flip, Q=32,40: top-1 err" in capsys.readouterr().out
    assert cli_main(["info"]) == 0
    info = capsys.readouterr().out
    assert "vggcore" in info and "cpu" in info and "CUDA" in info
    assert cli_main(["train", "--data", str(tmp_path / "missing")]) == 1
    assert "error:" in capsys.readouterr().err


def test_cli_help_lists_every_train_argument():
    import inspect
    from vggcore.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    dests = {a.dest for a in sub._actions}
    params = set(inspect.signature(train).parameters) - {"verbose"}
    assert params <= dests, params - dests


def test_python_dash_m_info(tmp_path):
    # From an empty folder: `python -m` puts the current folder on sys.path, and a checkout's vggcore/ (no _C)
    # would shadow the installed package.
    proc = subprocess.run([sys.executable, "-m", "vggcore", "info"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "devices:" in proc.stdout


@pytest.mark.slow
def test_default_run_on_the_builtin_dataset_is_accurate(tmp_path):
    """What `python -m vggcore train` does: generate the data, train the small VGG-A, val top-1 error < 10%."""
    result = train(checkpoint_dir=tmp_path / "ck", verbose=False, progress=False)
    assert result.best_val_top1_err < 0.10, result.history
