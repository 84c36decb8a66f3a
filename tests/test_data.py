"""The embedded dataset, ImageFolder checks, the paper's augmentation and the prefetching loader."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggcore import data, datasets


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


def _folder(root, classes=("a", "b"), per_class=3, size=(12, 10)):
    for ci, c in enumerate(classes):
        for i in range(per_class):
            _write(root / c / f"{i}.png", np.full(size + (3,), 40 * ci + i, np.uint8))
    return root


def _coordinate_image(h=40, w=40):
    """R encodes the column, G the row, B is constant: where a crop came from and whether it was flipped."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 6, y * 6, np.full_like(x, 77)], -1).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ datasets

def test_generated_dataset_is_a_deterministic_image_folder(tmp_path):
    a = datasets.generate(tmp_path / "a", train_per_class=2, val_per_class=1, size=24, seed=5)
    b = datasets.generate(tmp_path / "b", train_per_class=2, val_per_class=1, size=24, seed=5)
    c = datasets.generate(tmp_path / "c", train_per_class=2, val_per_class=1, size=24, seed=6)
    train, val = data.ImageFolder(a / "train"), data.ImageFolder(a / "val")
    assert train.classes == sorted(datasets.CLASSES) == val.classes
    assert len(train) == 20 and len(val) == 10
    img = np.asarray(Image.open(train.samples[0][0]))
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8
    for (pa, _), (pb, _) in zip(train.samples, data.ImageFolder(b / "train").samples):
        assert open(pa, "rb").read() == open(pb, "rb").read()
    pc = data.ImageFolder(c / "train").samples[0][0]
    assert open(train.samples[0][0], "rb").read() != open(pc, "rb").read()
    with pytest.raises(FileExistsError):
        datasets.generate(tmp_path / "a")


def test_ensure_dataset_uses_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = datasets.ensure_dataset(train_per_class=1, val_per_class=1, size=16)
    assert root.parent == tmp_path / "cache" and (root / "dataset.json").is_file()
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert datasets.ensure_dataset(train_per_class=1, val_per_class=1, size=16) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "no temporary folders left"


# ------------------------------------------------------------------------------------------- ImageFolder

def test_image_folder_lists_sorted_classes_and_images(tmp_path):
    root = _folder(tmp_path / "d", classes=("zebra", "apple"), per_class=2)
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / "UPPER.PNG").write_bytes((root / "apple" / "0.png").read_bytes())
    f = data.ImageFolder(root)
    assert f.classes == ["apple", "zebra"]
    assert [p.split("/")[-1] for p, _ in f.samples] == ["0.png", "1.png", "UPPER.PNG", "0.png", "1.png"]
    assert list(f.targets) == [0, 0, 0, 1, 1]


def test_missing_empty_and_imageless_folders_raise_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        data.ImageFolder(tmp_path / "empty")
    root = _folder(tmp_path / "d")
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*[/\\]c holds no images"):
        data.ImageFolder(root)


def test_train_and_val_classes_must_match(tmp_path):
    train = data.ImageFolder(_folder(tmp_path / "train", classes=("cat", "dog")))
    val = data.ImageFolder(_folder(tmp_path / "val", classes=("cat", "cow")))
    with pytest.raises(ValueError, match=r"only in train: \['dog'\]; only in val: \['cow'\]"):
        data.check_same_classes(train, val)
    data.check_same_classes(train, data.ImageFolder(tmp_path / "train"))


def test_corrupt_and_empty_files_are_skipped_named_once_and_counted(tmp_path):
    root = _folder(tmp_path / "d", per_class=3)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "b" / "empty.jpg").write_bytes(b"")
    folder = data.ImageFolder(root)
    assert len(folder) == 8
    loader = data.DataLoader(folder, 3, data.EvalTransform(10, [0, 0, 0], crop=8), num_workers=2)
    with pytest.warns(data.CorruptImageWarning) as record:
        seen = sum(len(y) for x, y in loader.epoch(0))
    assert seen == 6
    named = sorted(str(w.message).split(":")[0] for w in record)
    assert named == sorted([f"skipping {root / 'a' / 'broken.png'}", f"skipping {root / 'b' / 'empty.jpg'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the second epoch warns no more
        assert sum(len(y) for x, y in loader.epoch(1)) == 6
    assert folder.num_skipped == 2


def test_images_in_nested_subfolders_are_found_in_torchvision_order(tmp_path):
    root = _folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    _write(root / "a" / "more" / "x.png", np.zeros((10, 12, 3)))
    _write(root / "a" / "more" / "deeper" / "y.png", np.zeros((10, 12, 3)))
    _write(root / "a" / "z.png", np.zeros((10, 12, 3)))
    _write(root / "a" / ".hidden" / "h.png", np.zeros((10, 12, 3)))      # hidden folders stay skipped
    _write(root / "b" / ".h.png", np.zeros((10, 12, 3)))
    (root / "b" / "loop").symlink_to(root / "b", target_is_directory=True)   # walked once, no endless paths
    (root / "nested_only" / "inner").mkdir(parents=True)
    _write(root / "nested_only" / "inner" / "n.png", np.zeros((10, 12, 3)))
    f = data.ImageFolder(root)
    assert f.classes == ["a", "b", "nested_only"]
    rel = [str(Path(p).relative_to(root)) for p, _ in f.samples]
    # torchvision's make_dataset: sorted(os.walk(class_dir, followlinks=True)), the files sorted in each folder
    assert rel == ["a/0.png", "a/1.png", "a/z.png", "a/more/x.png", "a/more/deeper/y.png", "b/0.png", "b/1.png",
                   "nested_only/inner/n.png"]
    assert list(f.targets) == [0, 0, 0, 0, 0, 1, 1, 2]
    assert data.ImageFolder(root).samples == f.samples
    (root / "c" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"[/\\]c holds no images, in it or in its subfolders"):
        data.ImageFolder(root)


def test_nested_images_reach_the_statistics_and_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    _write(root / "a" / "0.png", np.full((10, 12, 3), 0))
    _write(root / "a" / "sub" / "1.png", np.full((10, 12, 3), 200))      # only the nested image is bright
    folder = data.ImageFolder(root)
    stats = data.compute_stats(folder, sample=10, cache=False, num_workers=1)
    assert stats["mean_rgb"] == pytest.approx([100.0] * 3)
    loader = data.DataLoader(folder, 2, data.EvalTransform(10, [0, 0, 0], crop=8, input_scale=1.0), num_workers=1)
    (x, y), = list(loader.epoch(0))
    assert x.shape == (2, 8, 8, 3) and sorted(x[:, 0, 0, 0]) == [0.0, 200.0]


def test_broken_symlink_is_a_skipped_file_with_a_warning(tmp_path):
    root = _folder(tmp_path / "d", per_class=2)
    (root / "a" / "broken.png").symlink_to(tmp_path / "gone.png")
    folder = data.ImageFolder(root)
    assert len(folder) == 5
    loader = data.DataLoader(folder, 5, data.EvalTransform(10, [0, 0, 0], crop=8), num_workers=1)
    with pytest.warns(data.CorruptImageWarning, match=r"skipping .*broken\.png"):
        assert sum(len(y) for x, y in loader.epoch(0)) == 4
    assert folder.skipped == {str(root / "a" / "broken.png")}


def test_class_names_that_print_alike_are_shown_with_ascii(tmp_path):
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    train = data.ImageFolder(_folder(tmp_path / "train", classes=("a", nfc)))
    val = data.ImageFolder(_folder(tmp_path / "val", classes=("a", nfd)))
    with pytest.raises(ValueError) as info:
        data.check_same_classes(train, val)
    message = str(info.value)
    assert "only in train: ['caf\\xe9']; only in val: ['cafe\\u0301']" in message
    assert "Unicode normalisation" in message
    # names that differ visibly keep their plain form
    assert data.class_differences(["caf\u00e9"], ["tea"], "x", "y") == "only in x: ['caf\u00e9']; only in y: ['tea']"
    assert "'a\\u200b'" in data.class_differences(["a\u200b"], ["a"], "x", "y")          # a zero-width space


def test_scale_must_be_ints(tmp_path):
    for scale, error in (((36.9, 48.2), TypeError), ("48", TypeError), (40.0, TypeError), (True, TypeError),
                         ((40, 48, 56), ValueError), ((40, True), TypeError)):
        with pytest.raises(error, match="TrainTransform: scale must be an int S or a pair"):
            data.TrainTransform(crop=32, scale=scale, mean_rgb=[0, 0, 0])
    assert data.TrainTransform(crop=32, scale=np.array([40, 48]), mean_rgb=[0, 0, 0]).smax == 48
    assert data.TrainTransform(crop=32, scale=np.int64(40), mean_rgb=[0, 0, 0]).smin == 40


# ---------------------------------------------------------------------------------------------- transforms

def test_rescale_is_isotropic_to_the_smallest_side():
    img = Image.new("RGB", (60, 40))
    assert data.rescale(img, 32).size == (48, 32)
    assert data.rescale(Image.new("RGB", (40, 60)), 20).size == (20, 30)
    assert data.rescale(img, 40) is img


def test_crop_bounds_and_flip_rate():
    img = _coordinate_image()
    tf = data.TrainTransform(crop=32, scale=40, mean_rgb=[0, 0, 0], input_scale=1.0)
    n, flips, xs, ys = 2000, 0, set(), set()
    for i in range(n):
        out = tf(img, np.random.default_rng(i))
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        row = out[0, :, 0] / 6
        flipped = row[0] > row[-1]
        flips += flipped
        x0, y0 = int(row.min()), int(out[0, 0, 1] / 6)
        assert np.array_equal(np.sort(row), np.arange(x0, x0 + 32)), "a crop is a contiguous window"
        xs.add(x0), ys.add(y0)
    assert abs(flips / n - 0.5) < 4 * np.sqrt(0.25 / n)
    assert xs == set(range(9)) and ys == set(range(9)), "every offset 0..S-crop occurs, none beyond"


def test_scale_jitter_draws_every_scale_in_range():
    img = _coordinate_image(40, 40)
    tf = data.TrainTransform(crop=16, scale=(16, 24), mean_rgb=[0, 0, 0], flip=False, input_scale=1.0)
    seen = set()
    for i in range(400):
        rng = np.random.default_rng(i)
        s = int(np.random.default_rng(i).integers(16, 25))
        seen.add(s)
        out = tf(img, rng)
        assert out.shape == (16, 16, 3)
        slope = np.diff(out[8, 2:-2, 0]).mean()      # R rises 6 per source column: 6 * 40 / S per output column
        assert abs(slope - 240 / s) < 0.5, (s, slope)
    assert seen == set(range(16, 25))
    with pytest.raises(ValueError, match="smaller than the crop"):
        data.TrainTransform(crop=32, scale=(24, 48), mean_rgb=[0, 0, 0])
    with pytest.raises(ValueError, match="Smin <= Smax"):
        data.TrainTransform(crop=8, scale=(48, 24), mean_rgb=[0, 0, 0])


def test_colour_shift_follows_the_pca_variances():
    img = Image.new("RGB", (8, 8), (100, 150, 200))
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))
    eigval = np.array([0.2, 0.02, 0.005])
    tf = data.TrainTransform(crop=8, scale=8, mean_rgb=[0, 0, 0], eigval=eigval, eigvec=q, flip=False,
                             input_scale=1.0)
    n = 3000
    shifts = np.stack([tf(img, np.random.default_rng(i))[0, 0] - [100, 150, 200] for i in range(n)])
    assert np.ptp(tf(img, np.random.default_rng(0)), axis=(0, 1)).max() < 1e-3, "one shift per image"
    alphas = (shifts @ q) / (eigval * 255.0)
    assert np.allclose(alphas.std(0), 0.1, rtol=0.08), alphas.std(0)
    assert np.allclose(alphas.mean(0), 0.0, atol=0.01)
    assert abs(np.corrcoef(alphas.T)[0, 1]) < 0.1


def test_mean_subtraction_and_input_scale():
    img = Image.new("RGB", (10, 14), (10, 20, 30))
    out = data.EvalTransform(10, mean_rgb=[1, 2, 3], crop=8, input_scale=0.5)(img)
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out[3, 3], np.float32([4.5, 9, 13.5]))
    whole = data.EvalTransform(10, mean_rgb=[0, 0, 0], crop=None)(img)
    assert whole.shape == (14, 10, 3)


def test_centre_crop_and_eval_flip():
    img = _coordinate_image(40, 40)
    out = data.EvalTransform(40, [0, 0, 0], crop=32, input_scale=1.0)(img)
    assert out[0, 0, 0] / 6 == 4 and out[0, 0, 1] / 6 == 4
    flipped = data.EvalTransform(40, [0, 0, 0], crop=32, flip=True, input_scale=1.0)(img)
    assert np.array_equal(flipped, out[:, ::-1])


def test_compute_stats_mean_and_principal_axis(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "d"
    for i in range(4):
        _write(root / "x" / f"r{i}.png", np.full((6, 6, 3), (255, 0, 0), np.uint8))
        _write(root / "x" / f"b{i}.png", np.full((6, 6, 3), (0, 0, 255), np.uint8))
    folder = data.ImageFolder(root)
    stats = data.compute_stats(folder)
    assert np.allclose(stats["mean_rgb"], [127.5, 0, 127.5])
    top = np.array(stats["eigvec"])[:, 0]
    assert np.allclose(np.abs(top), [2 ** -0.5, 0, 2 ** -0.5], atol=1e-6)
    assert np.isclose(stats["eigval"][0], 0.5) and np.allclose(stats["eigval"][1:], 0, atol=1e-9)

    def no_decoding(index):
        raise AssertionError("the cached statistics should be used")

    monkeypatch.setattr(folder, "load", no_decoding)
    assert data.compute_stats(folder) == stats


# ------------------------------------------------------------------------------------------------- loader

def _gen_loader(root, **kw):
    folder = data.ImageFolder(root)
    tf = data.TrainTransform(crop=20, scale=(20, 28), mean_rgb=[120, 120, 120], eigval=[0.1, 0.01, 0.001],
                             eigvec=np.eye(3))
    return data.DataLoader(folder, 7, tf, shuffle=True, **kw)


def test_loader_is_deterministic_whatever_the_threads(tmp_path):
    root = datasets.generate(tmp_path / "g", train_per_class=3, val_per_class=1, size=28) / "train"
    a = [b for b in _gen_loader(root, seed=3, num_workers=1, prefetch=1).epoch(2)]
    b = [b for b in _gen_loader(root, seed=3, num_workers=4, prefetch=8).epoch(2)]
    assert len(a) == len(b) == 5 and sum(len(y) for _, y in a) == 30
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == np.float32 and xa.shape[1:] == (20, 20, 3) and ya.dtype == np.int64
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    other = [y for _, y in _gen_loader(root, seed=3).epoch(3)]
    assert not all(np.array_equal(p, q) for p, q in zip(other, [y for _, y in a])), "each epoch reshuffles"
    assert sorted(np.concatenate(other)) == sorted(data.ImageFolder(root).targets)


def test_loader_without_shuffle_keeps_folder_order(tmp_path):
    root = _folder(tmp_path / "d", per_class=3)
    folder = data.ImageFolder(root)
    loader = data.DataLoader(folder, 4, data.EvalTransform(10, [0, 0, 0], crop=10, input_scale=1.0))
    batches = list(loader)
    assert len(loader) == 2 and [len(y) for _, y in batches] == [4, 2]
    assert list(np.concatenate([y for _, y in batches])) == [0, 0, 0, 1, 1, 1]
    assert batches[0][0][1, 0, 0, 0] == 1, "second image of class a has value 1"
    assert len(data.DataLoader(folder, 4, loader.transform, drop_last=True)) == 1
