"""augment_crops (device-side augmentation) on every device, against Pillow and the CPU transform.

The op resamples each packed uint8 image's region to crop x crop with Pillow's BILINEAR box filter but keeps
float32 between its passes and does not round; Pillow rounds to uint8 after each pass. Each of Pillow's roundings
moves a value by at most half a level and its vertical weights are non-negative and sum to 1, so the two differ
by at most 1 level plus Pillow's 22-bit fixed-point coefficient error (about 1e-3 level): PIL_TOLERANCE. A region
that resamples nothing (integer offsets, one source pixel per output pixel) must be exact everywhere.
"""

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import _C, data

DEVICES = list(vc.devices())
PIL_TOLERANCE = 1.01          # pixel levels (before input_scale)


def pack(images, regions, flips, shifts):
    """(pixels, plans) of augment_crops from (h, w, 3) uint8 arrays and per-image plan parts."""
    rows, offset = [], 0
    for img, region, flip, shift in zip(images, regions, flips, shifts):
        h, w, _ = img.shape
        rows.append([offset, h, w, *region, float(flip), *shift])
        offset += img.size
    pixels = np.concatenate([i.reshape(-1) for i in images]) if images else np.zeros(0, np.uint8)
    return pixels, np.array(rows, np.float64).reshape(-1, 11)


def run(device, pixels, plans, crop, input_scale=1.0, dtype="float32"):
    out = _C.augment_crops(_C.Tensor.from_numpy(pixels, device), _C.Tensor.from_numpy(plans, "cpu"), crop,
                           input_scale, dtype)
    assert out.device == device and out.shape == (len(plans), crop, crop, 3)
    return out.numpy()


def random_case(rng, n, crop, max_side=40):
    """n images of random odd and even sizes (some 1 pixel) with regions that shrink and enlarge."""
    images, regions = [], []
    for k in range(n):
        h, w = (1, 1) if k % 7 == 3 else (int(rng.integers(1, max_side)), int(rng.integers(1, max_side)))
        images.append(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
        x1, y1 = rng.uniform(x0 + 1e-3 + 0.2 * (w - x0), w), rng.uniform(y0 + 1e-3 + 0.2 * (h - y0), h)
        regions.append((x0, y0, x1, y1))
    flips = rng.integers(0, 2, size=n)
    shifts = rng.uniform(-20, 140, size=(n, 3))
    return images, regions, flips, shifts


@pytest.mark.parametrize("device", DEVICES)
def test_plain_crop_is_exact(device):
    """Integer regions of crop x crop source pixels: a crop, flip and integer shift, exact on every device."""
    rng = np.random.default_rng(0)
    crop = 5
    images = [rng.integers(0, 256, size=s + (3,), dtype=np.uint8) for s in ((5, 5), (9, 7), (6, 13))]
    corners = [(0, 0), (2, 4), (8, 1)]
    regions = [(x, y, x + crop, y + crop) for x, y in corners]
    flips = [1, 0, 1]
    shifts = [[3, -2, 100], [0, 0, 0], [255, 1, 7]]
    pixels, plans = pack(images, regions, flips, shifts)
    for input_scale in (1.0, 0.5):
        got = run(device, pixels, plans, crop, input_scale)
        for k, ((x, y), img) in enumerate(zip(corners, images)):
            want = img[y:y + crop, x:x + crop].astype(np.float32)
            if flips[k]:
                want = want[:, ::-1]
            want = (want - np.float32(shifts[k])) * np.float32(input_scale)
            np.testing.assert_array_equal(got[k], want)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
def test_gpu_kernel_matches_cpu_twin(device):
    """Random sizes (1-pixel images, odd sides), shrinking by non-integer factors and enlarging, one batch
    mixing them, more images than one grid pass covers (32 per pass)."""
    rng = np.random.default_rng(1)
    for n, crop in ((12, 9), (41, 3)):
        pixels, plans = pack(*random_case(rng, n, crop))
        scale = 1 / 255
        cpu = run("cpu", pixels, plans, crop, scale)
        np.testing.assert_allclose(run(device, pixels, plans, crop, scale), cpu, rtol=0, atol=1e-5)


def test_against_pillow():
    """The op on the cpu vs Pillow's resize(box) + mirror + shift, within PIL_TOLERANCE levels."""
    rng = np.random.default_rng(2)
    images, regions, flips, shifts = random_case(rng, 24, 11, max_side=60)
    images.append(rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8))   # shrink by about 8
    regions.append((3.25, 1.5, 130.0, 96.75))
    flips = np.append(flips, 1)
    shifts = np.vstack([shifts, [10, 20, 30]])
    crop = 11
    pixels, plans = pack(images, regions, flips, shifts)
    got = run("cpu", pixels, plans, crop)
    worst = 0.0
    for k, img in enumerate(images):
        ref = np.asarray(Image.fromarray(img).resize((crop, crop), Image.BILINEAR, box=regions[k]), np.float32)
        if flips[k]:
            ref = ref[:, ::-1]
        worst = max(worst, float(np.abs(got[k] + np.float32(shifts[k]) - ref).max()))
    assert worst <= PIL_TOLERANCE
    assert worst > 0.2          # the comparison sees the rounding it allows for (not a vacuous bound)


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "cpu"])
def test_bfloat16_output(device):
    rng = np.random.default_rng(3)
    pixels, plans = pack(*random_case(rng, 3, 6))
    f32 = run(device, pixels, plans, 6, 1 / 255)
    bf16 = run(device, pixels, plans, 6, 1 / 255, dtype="bfloat16")
    rounded = vc.tensor(f32).to(dtype="bfloat16").to(dtype="float32").numpy()
    np.testing.assert_array_equal(bf16, rounded)


def test_bfloat16_on_cpu_is_refused():
    pixels, plans = pack([np.zeros((4, 4, 3), np.uint8)], [(0, 0, 4, 4)], [0], [[0, 0, 0]])
    with pytest.raises(TypeError, match="augment_crops: dtype bfloat16"):
        run("cpu", pixels, plans, 4, dtype="bfloat16")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    img = np.zeros((6, 8, 3), np.uint8)
    pixels, plans = pack([img], [(0, 0, 8, 6)], [0], [[0, 0, 0]])

    def call(pix=pixels, pl=plans, crop=4):
        return _C.augment_crops(_C.Tensor.from_numpy(pix, device), _C.Tensor.from_numpy(pl, "cpu"), crop, 1.0)

    with pytest.raises(TypeError, match="augment_crops: images must be uint8"):
        call(pix=pixels.astype(np.float32))
    with pytest.raises(TypeError, match="augment_crops: plans must be float64"):
        call(pl=plans.astype(np.float32))
    with pytest.raises(ValueError, match="augment_crops: plans must have shape"):
        call(pl=plans[:, :10].copy())
    with pytest.raises(ValueError, match="augment_crops: crop must be in"):
        call(crop=0)
    for bad in ((0, 0, 8.5, 6), (-1, 0, 4, 4), (3, 0, 3, 6), (0, 2, 8, 1)):
        outside = plans.copy()
        outside[0, 3:7] = bad
        with pytest.raises(ValueError, match=r"augment_crops: plans\[0\]: region"):
            call(pl=outside)
    past = plans.copy()
    past[0, 0] = 1                      # one byte further: the image ends past the buffer
    with pytest.raises(ValueError, match=r"augment_crops: plans\[0\]: the 6x8x3 image at offset 1 ends at byte 145"):
        call(pl=past)
    flip = plans.copy()
    flip[0, 7] = 0.5
    with pytest.raises(ValueError, match=r"augment_crops: plans\[0\]: flip must be 0 or 1"):
        call(pl=flip)
    out = call()                        # the process is alive and the op still works
    assert out.shape == (1, 4, 4, 3)


def test_host_binding_checks_out():
    pixels, plans = pack([np.zeros((4, 4, 3), np.uint8)], [(0, 0, 4, 4)], [0], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"augment_crops: out must have shape \(1, 4, 4, 3\)"):
        _C.augment_crops_host(pixels, plans, 4, 1.0, np.empty((1, 4, 4, 4), np.float32))
    with pytest.raises(TypeError, match="augment_crops: out must be a writeable"):
        _C.augment_crops_host(pixels, plans, 4, 1.0, np.empty((1, 4, 4, 3), np.float64))


def test_cpu_transform_float_conversion_unchanged():
    """_crop_to_float (the CPU twin's fused flip, shift and scale) gives _to_float's values after Pillow's mirror."""
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, size=(13, 13, 3), dtype=np.uint8)
    shift = np.float32([123.68, 116.78, 103.94])
    plan = data._Plan((13, 13), (0, 0, 13, 13), True, shift)
    for flip in (False, True):
        mirrored = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if flip else arr
        want = data._to_float(mirrored, plan, 1 / 255, None)
        np.testing.assert_array_equal(data._crop_to_float(arr, flip, shift, 1 / 255, None), want)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 images in 2 classes: JPEGs of 40x30 and 30x40 (decoded whole, resampled) and 40x40 PNGs."""
    root = tmp_path_factory.mktemp("augment") / "photos"
    rng = np.random.default_rng(5)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(6):
            size = ((40, 30), (30, 40), (40, 40))[k % 3]
            y, x = np.mgrid[0:size[1], 0:size[0]]
            smooth = np.stack([x * 5, y * 6, (x + y) * 3], -1) + rng.integers(0, 40, size=(size[1], size[0], 3))
            img = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
            img.save(root / c / (f"{k}.jpg" if k % 3 < 2 else f"{k}.png"), quality=90)
    return data.ImageFolder(root)


@pytest.mark.parametrize("device", DEVICES)
def test_loader_same_crops_and_flips_as_cpu_transform(photos, device):
    """Same seed: the packed batches augmented on the device equal the CPU transform's batches (exactly where the
    plan resamples nothing, within PIL_TOLERANCE levels elsewhere), flips included."""
    mean = [120.0, 110.0, 100.0]
    eig = dict(eigval=[0.05, 0.01, 0.002], eigvec=np.eye(3).tolist())
    for scale in (30, (24, 36)):
        tf = data.TrainTransform(16, scale, mean, **eig, input_scale=1 / 255)
        cpu = data.DataLoader(photos, 5, tf, shuffle=True, seed=3, num_workers=2)
        dev = data.DataLoader(photos, 5, tf, shuffle=True, seed=3, num_workers=2, device_augment=True)
        flips = 0
        for (x_cpu, y_cpu), (packed, y_dev) in zip(cpu.epoch(1), dev.epoch(1)):
            np.testing.assert_array_equal(y_cpu, y_dev)
            assert isinstance(packed, data.PackedBatch) and packed.shape == x_cpu.shape
            x_dev = data.augment_batch(packed, device).numpy()
            plain = (packed.plans[:, 5] - packed.plans[:, 3] == 16) & (packed.plans[:, 3] % 1 == 0) \
                & (packed.plans[:, 4] % 1 == 0)
            np.testing.assert_array_equal(x_dev[plain], x_cpu[plain])
            np.testing.assert_allclose(x_dev, x_cpu, rtol=0, atol=PIL_TOLERANCE / 255)
            flips += int(packed.plans[:, 7].sum())
        if scale == 30:
            assert 0 < flips < len(photos)      # both flips were drawn, so the flip comparison is not vacuous
        cpu.close()
        dev.close()


def test_loader_device_augment_needs_a_crop(photos):
    with pytest.raises(ValueError, match="device_augment=True needs"):
        data.DataLoader(photos, 4, data.EvalTransform(32, [0, 0, 0]), device_augment=True)


@pytest.mark.filterwarnings("ignore:train. curves.png is not written")
def test_train_with_device_augment(tmp_path, monkeypatch):
    """vc.train(device_augment=True) trains from packed batches (the CPU twin on the cpu); the CLI flag reaches it."""
    from vggcore import datasets
    from vggcore.cli import build_parser
    from vggcore.training import train
    monkeypatch.setenv("VGGCORE_CACHE", str(tmp_path / "cache"))
    root = datasets.generate(tmp_path / "shapes", train_per_class=4, val_per_class=2, size=40, seed=1)
    seen = []
    real = data.augment_batch

    def spy(batch, device="cpu", dtype="float32"):
        seen.append((len(batch), device))
        return real(batch, device, dtype)

    monkeypatch.setattr(data, "augment_batch", spy)
    result = train(config="A", data=root, epochs=1, width=1 / 16, fc_width=16, crop=32, scale=(32, 40),
                   batch_size=16, init="he", dropout=0.0, num_workers=2, verbose=False, progress=False,
                   stats_sample=20, device="cpu", device_augment=True, checkpoint_dir=tmp_path / "ck")
    assert np.isfinite(result.history[0]["train_loss"])
    n_train = 4 * len(data.ImageFolder(root / "train").classes)
    assert sum(n for n, _ in seen) == n_train and {d for _, d in seen} == {"cpu"}
    args = build_parser().parse_args(["train", "--device-augment"])
    assert args.device_augment is True
    assert build_parser().parse_args(["train"]).device_augment is False
