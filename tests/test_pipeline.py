"""The input pipeline: exact fast statistics, crop-first resampling, JPEG draft, in-place batches, prefetch bytes."""

import warnings

import numpy as np
import pytest
from PIL import Image

from vggcore import data

from pipeline_reference import whole_image_transform

# compute_stats of stats_fixture() as computed by the single-threaded implementation that preceded the threaded
# one (fancy indexing of float64 pixels), pinned here: (sample, seed) -> stats.
PINNED = {
    (100, 0): {"mean_rgb": [59.90502043944814, 124.43202058544419, 155.24199759106503],
               "eigval": [0.12279822080825509, 0.04127623196797309, 0.013149762773929735],
               "eigvec": [[-0.09742650096959155, -0.989307557286707, -0.10852941538693775],
                          [-0.702329763397375, 0.1456058350005734, -0.6968011511614864],
                          [-0.7051531609196751, -0.008336540601116521, 0.7090060096612698]]},
    (5, 3): {"mean_rgb": [58.67766583359367, 146.2902999062793, 160.12803941476622],
             "eigval": [0.1492895925939376, 0.05257861203772034, 0.008291514297252254],
             "eigvec": [[-0.11594069485178937, -0.9931449258614994, -0.014863092304136686],
                        [-0.6522342622830859, 0.08741102667156403, -0.7529606759454718],
                        [-0.749098272846309, 0.07760456592095713, 0.6578976432294744]]},
}


def stats_fixture(root):
    """Two classes of smooth, noisy PNGs, three larger than the 65,536-pixel sampling bound, one corrupt file."""
    sizes = [(320, 240), (96, 80), (300, 260), (64, 64), (256, 300), (120, 90)]
    for i, (w, h) in enumerate(sizes):
        rng = np.random.default_rng([7, i])
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        base = rng.uniform(20, 230, size=3)
        slope = rng.uniform(-120, 120, size=(2, 3))
        img = base + x[..., None] * slope[0] + y[..., None] * slope[1] + rng.normal(0, 15, (h, w, 3))
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))


def test_threaded_statistics_equal_the_pinned_single_threaded_values(tmp_path):
    folder = data.ImageFolder(stats_fixture(tmp_path / "d"))
    for (sample, seed), expected in PINNED.items():
        single = None
        for workers in (1, 3):
            calls = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", data.CorruptImageWarning)
                got = data.compute_stats(folder, sample=sample, seed=seed, cache=False, num_workers=workers,
                                         progress=lambda d, t: calls.append((d, t)))
            # The sums are exact integers in float64, so the threads' result is bit-identical to one thread's in
            # the same run, and the mean to the pinned one; the eigen-decomposition is LAPACK's, whose last bit
            # differs between numpy builds (numpy 2.4.6's eigh moved two eigvec entries by one ulp), so the pinned
            # eigenvalues and eigenvectors hold to a few ulps.
            single = single or got
            assert got == single, (sample, seed, workers)
            assert got["mean_rgb"] == expected["mean_rgb"], (sample, seed, workers)
            for key in ("eigval", "eigvec"):
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-14, atol=1e-15,
                                           err_msg=f"{key} {(sample, seed, workers)}")
            total = min(sample, len(folder))
            assert calls[-1] == (total, total) and [d for d, _ in calls] == list(range(1, total + 1))


def test_statistics_say_what_they_do_and_use_the_cache(tmp_path):
    folder = data.ImageFolder(stats_fixture(tmp_path / "d"))
    lines = []
    with pytest.warns(data.CorruptImageWarning):
        first = data.compute_stats(folder, sample=100, log=lines.append, num_workers=2)
    assert len(lines) == 1 and "computing the preprocessing statistics" in lines[0] and "7 of 7" in lines[0]
    calls = []
    assert data.compute_stats(folder, sample=100, log=lines.append, progress=lambda d, t: calls.append(d)) == first
    assert "cached in" in lines[1] and not calls


def test_crop_first_resampling_matches_rescaling_the_whole_image():
    gen = np.random.default_rng(0)
    q, _ = np.linalg.qr(gen.standard_normal((3, 3)))
    exact = 0
    for t in range(40):
        w, h = int(gen.integers(40, 140)), int(gen.integers(40, 140))
        img = Image.fromarray(gen.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        lo = int(gen.integers(32, 100))
        scale = [lo, (lo, lo + 60), min(w, h)][t % 3]      # downscale, upscale, and no rescale at all
        tf = data.TrainTransform(32, scale, [100, 110, 120], eigval=[0.1, 0.02, 0.01], eigvec=q, input_scale=1.0)
        got = tf(img, np.random.default_rng([5, t]))
        ref = whole_image_transform(tf, img, np.random.default_rng([5, t]))
        # Same crop, flip and colour shift; Pillow's single-precision box moves a sample by ~1e-5 pixel, so a
        # value can round to the neighbouring level (never further).
        assert np.abs(got - ref).max() <= 1.0 + 1e-4, (w, h, scale)
        assert np.mean(got != ref) < 0.5
        if scale == min(w, h):
            assert np.array_equal(got, ref), "without a rescale the crop is exact"
            exact += 1
    assert exact


def test_eval_centre_crop_and_whole_image_paths():
    gen = np.random.default_rng(1)
    img = Image.fromarray(gen.integers(0, 256, size=(70, 90, 3), dtype=np.uint8))
    whole = data.EvalTransform(48, [1, 2, 3], crop=None, input_scale=1.0)(img)
    assert np.array_equal(whole, np.asarray(data.rescale(img, 48), np.float32) - np.float32([1, 2, 3]))
    crop = data.EvalTransform(48, [1, 2, 3], crop=40, flip=True, input_scale=1.0)(img)
    h, w = whole.shape[:2]
    ref = whole[(h - 40) // 2:(h - 40) // 2 + 40, (w - 40) // 2:(w - 40) // 2 + 40][:, ::-1]
    assert crop.shape == (40, 40, 3) and np.abs(crop - ref).max() <= 1.0 + 1e-4


def _photo(w, h, seed):
    """Smooth, photo-like content (JPEG-friendly): gradients and a soft blob."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rng = np.random.default_rng(seed)
    img = (rng.uniform(40, 200, 3) + x[..., None] * rng.uniform(-80, 80, 3) + y[..., None] * rng.uniform(-80, 80, 3)
           + 50 * np.exp(-((x - 0.5) ** 2 + (y - 0.4) ** 2) * 20)[..., None])
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_large_jpeg_is_decoded_at_a_reduced_dct_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin
    (tmp_path / "d" / "c").mkdir(parents=True)
    _photo(800, 600, 0).save(tmp_path / "d" / "c" / "big.jpg", quality=95)
    _photo(120, 90, 1).save(tmp_path / "d" / "c" / "small.jpg", quality=95)
    folder = data.ImageFolder(tmp_path / "d")
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real(self, mode, size)
        drafts.append((self.size, size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    tf = data.TrainTransform(64, 64, [0, 0, 0], flip=False, input_scale=1.0)
    big = data.load_planned(folder, 0, tf, np.random.default_rng(3))
    assert drafts == [((100, 75), (85, 64))], "800x600 for S=64 (85x64) decodes at 1/8 scale, still >= 85x64"
    small = data.load_planned(folder, 1, tf, np.random.default_rng(3))
    assert len(drafts) == 1, "a JPEG smaller than 2 S is decoded in full"
    assert big.shape == small.shape == (64, 64, 3)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", real)
    full = tf(data.load_rgb(folder.samples[0][0]), np.random.default_rng(3))
    # A different antialiased downscale of the same smooth picture: the same crop, within a few levels.
    assert np.abs(big - full).mean() < 2.0


def _png_folder(root, n=11, size=(30, 26)):
    for i in range(n):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, size=size[::-1] + (3,), dtype=np.uint8)).save(
            root / f"c{i % 3}" / f"{i}.png")
    return data.ImageFolder(root)


def test_batches_are_the_transform_of_each_image_in_place_and_recycled(tmp_path):
    folder = _png_folder(tmp_path / "d")
    tf = data.TrainTransform(20, (20, 28), [120, 120, 120], eigval=[0.1, 0.01, 0.001], eigvec=np.eye(3))
    plain = data.DataLoader(folder, 4, tf, shuffle=True, seed=2, num_workers=3)
    batches = [(x.copy(), y) for x, y in plain.epoch(1)]
    order = plain.order(1)
    for b, (x, y) in enumerate(batches):
        for k in range(len(y)):
            pos = 4 * b + k
            img = folder.load(int(order[pos]))
            assert np.array_equal(x[k], tf(img, np.random.default_rng([2, 1, pos]))), "seeded by global position"
            assert y[k] == folder.samples[int(order[pos])][1]
    reused = data.DataLoader(folder, 4, tf, shuffle=True, seed=2, num_workers=2, reuse_buffers=True, prefetch=1)
    ids = set()
    for (x, y), (xe, ye) in zip(reused.epoch(1), batches):
        ids.add(id(x.base))
        assert np.array_equal(x, xe) and np.array_equal(y, ye)
    assert len(ids) <= 2, "one batch ahead + the one held: two arrays, recycled"


def test_prefetch_is_capped_by_bytes(tmp_path):
    folder = _png_folder(tmp_path / "d", n=12)
    tf = data.EvalTransform(24, [0, 0, 0], crop=24)
    batch_bytes = 3 * 24 * 24 * 3 * 4
    assert data.DataLoader(folder, 3, tf).batches_ahead == 4
    loader = data.DataLoader(folder, 3, tf, prefetch_bytes=2 * batch_bytes + 1, reuse_buffers=True)
    assert loader.batch_bytes == batch_bytes and loader.batches_ahead == 2
    tiny = data.DataLoader(folder, 3, tf, prefetch_bytes=1, reuse_buffers=True)
    assert tiny.batches_ahead == 1, "at least one batch ahead"
    submitted = []
    real = tiny._submit

    def counting(*args):
        submitted.append(args[1])
        return real(*args)

    tiny._submit = counting
    for i, (x, y) in enumerate(tiny.epoch(0)):
        assert len(submitted) <= i + 2, "never more than one batch beyond the one being consumed"
    assert len(submitted) == 4
    assert data.DataLoader(folder, 3, data.EvalTransform(24, [0, 0, 0])).batches_ahead == 4, "whole images"


def test_undecodable_files_shorten_their_batch(tmp_path):
    folder_root = tmp_path / "d"
    _png_folder(folder_root, n=6)
    (folder_root / "c0" / "2x.png").write_bytes(b"\x89PNG broken")
    (folder_root / "c1" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    folder = data.ImageFolder(folder_root)
    loader = data.DataLoader(folder, 4, data.EvalTransform(24, [0, 0, 0], crop=24), num_workers=2)
    with pytest.warns(data.CorruptImageWarning):
        batches = list(loader)
    ys = np.concatenate([y for _, y in batches])
    assert sum(len(y) for _, y in batches) == 6 and folder.num_skipped == 2
    good = [label for path, label in folder.samples if "2x" not in path and "bad" not in path]
    assert list(ys) == good
    assert all(x.shape[0] == len(y) for x, y in batches)
