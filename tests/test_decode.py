"""JPEG decode behind vggcore.decode's interface: the header reader against Pillow, the CPU implementation against
today's packed pixels, the fallback of the files a device decoder cannot take, the choice of decoder ("cpu",
"nvjpeg", "auto") and its errors. The nvJPEG tests themselves run only where a cuda device and libnvjpeg are.
"""

import ctypes
import io

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import _C
from vggcore import data as vdata
from vggcore import decode as vdecode

MEAN = [118.0, 111.0, 102.0]
EIGVAL = [0.2, 0.02, 0.005]
EIGVEC = np.linalg.qr(np.arange(1.0, 10.0).reshape(3, 3) + np.eye(3))[0]


def _photo(rng, h, w):
    """Smooth colour field, a few hard-edged rectangles and mild noise: JPEG content that is not noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([80 + 100 * np.sin(x / (w + 1) * 3 + c) * np.cos(y / (h + 1) * 2 - c) for c in range(3)], -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, max(1, h - 2)), rng.integers(0, max(1, w - 2))
        img[y0:y0 + h // 3 + 1, x0:x0 + w // 4 + 1] += rng.uniform(-60, 60, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img + 40, 0, 255).astype(np.uint8)


def _jpeg_bytes(pixels, mode="RGB", **save):
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def _exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6            # orientation: rotate 90 CW to display
    return exif.tobytes()


# Sizes (h, w) and save options: odd sizes, 1-pixel sides, every subsampling Pillow writes, restart markers,
# EXIF (orientation), ICC, comments, optimised Huffman tables, quality extremes.
HEADER_CASES = [
    ((1, 1), {}), ((7, 13), {"subsampling": 0}), ((13, 7), {"subsampling": 1}), ((17, 5), {"subsampling": 2}),
    ((333, 257), {"quality": 95}), ((257, 333), {"quality": 5, "optimize": True}),
    ((64, 48), {"exif": _exif_rotated()}), ((48, 64), {"restart_marker_blocks": 2}),
    ((31, 33), {"comment": b"vggcore test"}), ((40, 41), {"icc_profile": b"\0" * 300}),
    ((1, 300), {"subsampling": 2}), ((300, 1), {}), ((65, 129), {"progressive": True}),
    ((65, 129), {"progressive": True, "subsampling": 0}),
]


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_header_reader_agrees_with_pillow(mode):
    rng = np.random.default_rng(1)
    for (h, w), save in HEADER_CASES:
        data = _jpeg_bytes(_photo(rng, h, w), mode, **save)
        head = vdecode.jpeg_header(data)
        with Image.open(io.BytesIO(data)) as im:
            assert head is not None, (h, w, save, mode)
            assert (head.width, head.height) == im.size == (w, h), (save, mode)
            assert head.components == len(im.getbands())
            assert head.progressive == bool(im.info.get("progressive")), save
            assert head.precision == 8
        # Exactly the 3-component baseline JPEGs go to a device decoder (Pillow writes YCbCr with chroma 1x1).
        assert head.device_decodable == (mode == "RGB" and not save.get("progressive", False)), (save, mode)


def test_header_reader_rejects_what_is_not_a_jpeg_frame():
    rng = np.random.default_rng(2)
    data = _jpeg_bytes(_photo(rng, 20, 30))
    png = io.BytesIO()
    Image.fromarray(_photo(rng, 20, 30)).save(png, "PNG")
    sof = data.index(b"\xff\xc0")
    for bad in (b"", b"\xff\xd8", png.getvalue(), b"\xff\xd8\xff\xd9", data[:sof], data[:sof + 6],
                bytes(range(256)), b"\xff\xd8\x00\x00" + data[2:]):
        assert vdecode.jpeg_header(bad) is None


def test_header_reader_marker_details():
    """Fill bytes before a marker are skipped; an Adobe APP14 colour transform of 0 (RGB-coded: libjpeg does no
    YCbCr conversion) and component ids 'R', 'G', 'B' keep a JPEG on the CPU; a 12-bit frame too."""
    rng = np.random.default_rng(3)
    data = _jpeg_bytes(_photo(rng, 21, 22))
    filled = data[:2] + b"\xff\xff\xff" + data[2:]
    assert vdecode.jpeg_header(filled)[:2] == (22, 21)
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"          # transform byte last: 0
    head = vdecode.jpeg_header(data[:2] + adobe + data[2:])
    assert head.adobe_transform == 0 and not head.device_decodable
    head = vdecode.jpeg_header(data[:2] + adobe[:-1] + b"\x01" + data[2:])
    assert head.adobe_transform == 1 and head.device_decodable
    sof = data.index(b"\xff\xc0")
    ids = bytearray(data)
    for k, cid in enumerate(b"RGB"):
        ids[sof + 10 + 3 * k] = cid
    assert vdecode.jpeg_header(bytes(ids)).component_ids == (82, 71, 66)
    assert not vdecode.jpeg_header(bytes(ids)).device_decodable
    twelve = bytearray(data)
    twelve[sof + 4] = 12
    assert vdecode.jpeg_header(bytes(twelve)).precision == 12 and not vdecode.jpeg_header(bytes(twelve)).device_decodable


# ---- the device path's packing, run with the CPU implementation --------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Baseline JPEGs of odd sizes (all below twice S: no DCT-scale decode), one with an EXIF orientation, and the
    files a device decoder does not get: PNG, grayscale, CMYK and progressive JPEGs, a PNG named .jpg."""
    root = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(4)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir()
        for i in range(6):
            h, w = 41 + 6 * i + c, 57 - 3 * i
            (d / f"{i}.jpg").write_bytes(_jpeg_bytes(_photo(rng, h, w), subsampling=i % 3, quality=70 + 4 * i))
        (d / "exif.jpg").write_bytes(_jpeg_bytes(_photo(rng, 45, 60), exif=_exif_rotated()))
        (d / "grey.jpg").write_bytes(_jpeg_bytes(_photo(rng, 50, 47), "L"))
        (d / "cmyk.jpg").write_bytes(_jpeg_bytes(_photo(rng, 44, 52), "CMYK"))
        (d / "prog.jpg").write_bytes(_jpeg_bytes(_photo(rng, 49, 51), progressive=True))
        Image.fromarray(_photo(rng, 43, 46)).save(d / "png.png")
        Image.fromarray(_photo(rng, 46, 43)).save(d / "named.jpg", "PNG")
    return vdata.ImageFolder(root)


def _transform():
    return vdata.TrainTransform(32, (36, 44), MEAN, EIGVAL, EIGVEC)


def _images(batch, device):
    """{plan row's shift (identifies the image): (its plan row without the offset, its pixels)} after decode."""
    images, plans = batch.device_images(device)
    flat = images.numpy()
    out = {}
    for row in plans:
        off, h, w = int(row[0]), int(row[1]), int(row[2])
        out[tuple(row[8:])] = (tuple(row[1:]), flat[off:off + h * w * 3].reshape(h, w, 3))
    return out


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_cpu_decoder_gives_todays_packed_pixels(folder, device):
    """decode=CpuJpegDecoder (the device path with Pillow's decode) packs exactly the pixels and plans of
    decode="cpu", the baseline JPEGs as bytes decoded into the device buffer, the others decoded on the threads;
    the augmented batches are then identical."""
    kwargs = dict(shuffle=True, seed=7, num_workers=2, device_augment=True)
    ref = list(vdata.DataLoader(folder, 7, _transform(), decode="cpu", **kwargs).epoch(1))
    got = list(vdata.DataLoader(folder, 7, _transform(), decode=vdecode.CpuJpegDecoder(), **kwargs).epoch(1))
    assert len(ref) == len(got) == 4
    encoded = 0
    for (xr, yr), (xg, yg) in zip(ref, got):
        assert not xr.encoded and xg.encoded
        assert all(e[1] % 256 == 0 for e in xg.encoded) and xg.nbytes >= len(xg.pixels)
        encoded += len(xg.encoded)
        np.testing.assert_array_equal(yr, yg)
        a, b = _images(xr, device), _images(xg, device)
        assert a.keys() == b.keys() and len(a) == len(yr)
        for key in a:
            assert a[key][0] == b[key][0]
            np.testing.assert_array_equal(a[key][1], b[key][1])
        np.testing.assert_array_equal(vdata.augment_batch(xr, device).numpy(), vdata.augment_batch(xg, device).numpy())
        assert xg.kept.all()
    # 6 baseline JPEGs and the EXIF one per class went as bytes; the 5 others per class were decoded on threads.
    assert encoded == 14


def test_fallback_files_are_decoded_on_the_threads(folder):
    """PNG, grayscale, CMYK, progressive and a PNG named .jpg never reach a device decoder."""
    loader = vdata.DataLoader(folder, len(folder), _transform(), device_augment=True, decode=vdecode.CpuJpegDecoder())
    (batch, _), = list(loader.epoch(0))
    sent = {e[4].rsplit("/", 1)[-1] for e in batch.encoded}
    assert sent == {f"{i}.jpg" for i in range(6)} | {"exif.jpg"}


def test_orientation_is_ignored_by_both_paths(folder):
    """The EXIF-rotated JPEG packs as stored (w x h as in its frame header), as Pillow's open gives it."""
    path = next(p for p, _ in folder.samples if p.endswith("exif.jpg"))
    rng = np.random.default_rng(0)
    got = vdata.load_encoded(folder, [p for p, _ in folder.samples].index(path), _transform(), rng)
    assert isinstance(got, vdata._Encoded) and got[1][1:3].tolist() == [45, 60]


class _FailsEveryOther(vdecode.JpegDecoder):
    """A decoder that refuses items 0, 2, 4, ... (as nvJPEG refuses what it cannot take) and decodes the rest."""
    name = "test"

    def decode_into(self, images, items):
        rest = [k for k in range(len(items)) if k % 2]
        missed = vdecode.CpuJpegDecoder().decode_into(images, [items[k] for k in rest])
        assert not missed
        return [k for k in range(len(items)) if k % 2 == 0]


def test_images_a_decoder_refuses_are_decoded_by_the_cpu(folder):
    kwargs = dict(shuffle=True, seed=3, num_workers=1, device_augment=True)
    ref = list(vdata.DataLoader(folder, 9, _transform(), decode="cpu", **kwargs).epoch(0))
    got = list(vdata.DataLoader(folder, 9, _transform(), decode=_FailsEveryOther(), **kwargs).epoch(0))
    for (xr, _), (xg, _) in zip(ref, got):
        np.testing.assert_array_equal(vdata.augment_batch(xr, "sim").numpy(), vdata.augment_batch(xg, "sim").numpy())


def test_a_jpeg_no_decoder_can_decode_is_left_out(tmp_path):
    """A JPEG whose header is fine but whose scan is cut short: Pillow (and so decode="cpu") skips it; the device
    path leaves its row out (``kept``) and names it in the folder's skipped files."""
    rng = np.random.default_rng(5)
    d = tmp_path / "c"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.jpg").write_bytes(_jpeg_bytes(_photo(rng, 40, 44)))
    whole = (d / "1.jpg").read_bytes()
    (d / "1.jpg").write_bytes(whole[:len(whole) // 3])
    with pytest.warns(vdata.CorruptImageWarning, match="1.jpg"):
        (x_ref, y_ref), = list(vdata.DataLoader(vdata.ImageFolder(tmp_path), 3, _transform(), device_augment=True,
                                                decode="cpu"))
    folder = vdata.ImageFolder(tmp_path)
    (x, y), = list(vdata.DataLoader(folder, 3, _transform(), device_augment=True, decode=vdecode.CpuJpegDecoder()))
    assert len(x) == 3 and len(y_ref) == 2
    out = vdata.augment_batch(x, "cpu").numpy()
    assert x.kept.tolist() == [True, False, True]
    np.testing.assert_array_equal(y[x.kept], y_ref)
    np.testing.assert_array_equal(out, vdata.augment_batch(x_ref, "cpu").numpy())
    assert any(p.endswith("1.jpg") for p in folder.skipped)


def test_large_jpeg_is_decoded_whole_by_a_device_decoder(tmp_path):
    """At least twice S, decode="cpu" decodes at a DCT scale (Image.draft); a device decoder has none and gets
    the full image: same draws, so the same crop box relative to the image, flip and shift."""
    rng = np.random.default_rng(6)
    d = tmp_path / "c"
    d.mkdir()
    (d / "big.jpg").write_bytes(_jpeg_bytes(_photo(rng, 190, 170)))
    folder = vdata.ImageFolder(tmp_path)
    tf = _transform()
    small = vdata.load_packed(folder, 0, tf, np.random.default_rng([1, 2, 3]))
    whole = vdata.load_encoded(folder, 0, tf, np.random.default_rng([1, 2, 3]))
    assert small[0].shape[:2] == (95, 85)                      # drafted to 1/2
    assert whole[1][1:3].tolist() == [190, 170]
    np.testing.assert_allclose(whole[1][3:7] / np.array([170, 190, 170, 190]),
                               small[1][3:7] / np.array([85, 95, 85, 95]), atol=1e-12)
    np.testing.assert_array_equal(whole[1][7:], small[1][7:])


# ---- choosing the decoder ---------------------------------------------------------------------------------------
@pytest.fixture
def no_nvjpeg(monkeypatch):
    monkeypatch.setattr(vdecode, "_nvjpeg_lib", None)
    monkeypatch.setattr(vdecode, "_nvjpeg_reason", None)
    monkeypatch.setenv("VGGCORE_NVJPEG", "/nonexistent/libnvjpeg.so.13")


@pytest.fixture
def fake_nvjpeg(monkeypatch):
    """A library object standing in for libnvjpeg: lets the choice of decoder be checked where none is installed."""
    monkeypatch.setattr(vdecode, "_nvjpeg_lib", object())
    monkeypatch.setattr(vdecode, "_nvjpeg_reason", None)


def test_explicit_nvjpeg_without_the_library_raises(folder, no_nvjpeg, tmp_path):
    assert not vdecode.nvjpeg_available()
    with pytest.raises(ValueError, match="nvJPEG library was not found.*nonexistent"):
        vdata.DataLoader(folder, 4, _transform(), device_augment=True, decode="nvjpeg")
    for split in ("train", "val"):
        (tmp_path / split / "c").mkdir(parents=True)
        (tmp_path / split / "c" / "0.jpg").write_bytes(_jpeg_bytes(_photo(np.random.default_rng(0), 40, 40)))
    with pytest.raises(ValueError, match="train: decode='nvjpeg'.*not found"):
        vc.train(data=str(tmp_path), device="cpu", device_augment=True, decode="nvjpeg", epochs=1, verbose=False)


def test_explicit_nvjpeg_needs_device_augment_and_cuda(folder, fake_nvjpeg):
    with pytest.raises(ValueError, match="needs device_augment=True"):
        vdata.DataLoader(folder, 4, _transform(), decode="nvjpeg")
    with pytest.raises(ValueError, match="needs device_augment=True"):
        vdata.DataLoader(folder, 4, _transform(), decode=vdecode.CpuJpegDecoder())
    with pytest.raises(ValueError, match="train: decode='nvjpeg' decodes on a cuda device; the device is sim"):
        vdata._resolve_decoder("nvjpeg", True, "sim", op="train")
    assert isinstance(vdata._resolve_decoder("nvjpeg", True, "cuda:0"), vdecode.NvjpegDecoder)
    with pytest.raises(ValueError, match="decode must be 'cpu', 'nvjpeg' or 'auto'"):
        vdata.DataLoader(folder, 4, _transform(), device_augment=True, decode="gpu")


def test_auto_picks_cpu_here(folder, fake_nvjpeg):
    """auto: nvjpeg only with the library, device_augment and a cuda device."""
    assert vdata._resolve_decoder("auto", True, "sim") is None
    assert vdata._resolve_decoder("auto", True, "cpu") is None
    assert vdata._resolve_decoder("auto", False, "cuda:0") is None
    assert isinstance(vdata._resolve_decoder("auto", True, "cuda:0"), vdecode.NvjpegDecoder)
    # A loader does not know where its batches go unless told: without augment_device, auto is cpu.
    assert vdata.DataLoader(folder, 4, _transform(), device_augment=True).decoder is None
    assert vdata.DataLoader(folder, 4, _transform(), device_augment=True, augment_device="sim").decoder is None
    loader = vdata.DataLoader(folder, 4, _transform(), device_augment=True, augment_device="cuda:0")
    assert isinstance(loader.decoder, vdecode.NvjpegDecoder)
    with pytest.raises(ValueError, match="DataLoader: decode='nvjpeg' decodes on a cuda device; the device is sim"):
        vdata.DataLoader(folder, 4, _transform(), device_augment=True, decode="nvjpeg", augment_device="sim")


def test_auto_without_the_library_is_cpu(folder, no_nvjpeg):
    assert vdata._resolve_decoder("auto", True, "cuda:0") is None
    assert vdata.DataLoader(folder, 4, _transform(), device_augment=True, augment_device="cuda:0").decoder is None


def test_nvjpeg_prototypes_load_from_the_wheel():
    """Where the nvjpeg extra is installed (even without a GPU: loading needs no driver), every function the
    decoder calls resolves."""
    if not vdecode.nvjpeg_available():
        pytest.skip("libnvjpeg is not installed (pip install 'vggcore[nvjpeg]')")
    lib = vdecode._load_nvjpeg()[0]
    for name in ("nvjpegCreateSimple", "nvjpegCreateEx", "nvjpegJpegStateCreate", "nvjpegGetImageInfo",
                 "nvjpegDecode", "nvjpegDecodeBatchedInitialize", "nvjpegDecodeBatched"):
        assert getattr(lib, name).restype is not None


def test_write_bytes_checks_its_arguments():
    t = _C.empty_bytes(8, "cpu")
    _C.write_bytes(t, 3, np.arange(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="5 bytes at offset 4 do not fit the tensor's 8 bytes"):
        _C.write_bytes(t, 4, np.arange(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="offset -1"):
        _C.write_bytes(t, -1, np.arange(1, dtype=np.uint8))
    with pytest.raises(TypeError, match="write_bytes: needs a"):
        _C.write_bytes(t, 0, np.arange(2, dtype=np.float32))
    assert t.numpy()[3:].tolist() == [0, 1, 2, 3, 4]


# ---- on a cuda device with libnvjpeg (bench/gpu_check.sh runs these) ----------------------------------------------
CUDA = [d for d in vc.devices() if d.startswith("cuda")]
needs_nvjpeg = pytest.mark.skipif(not CUDA or not vdecode.nvjpeg_available(),
                                  reason="needs a cuda device and libnvjpeg (the nvjpeg extra)")
# nvJPEG's IDCT and its chroma upsampling are not libjpeg-turbo's (Pillow): the bounds below, per subsampling,
# are the ones asserted; the test prints what it measured (bench/gpu_check.sh records it).
NVJPEG_BOUNDS = {0: (4, 0.75), 1: (48, 2.0), 2: (48, 2.0)}      # subsampling: (max |diff|, mean |diff|) levels


@needs_nvjpeg
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_nvjpeg_matches_pillow_per_image(subsampling, capsys):
    rng = np.random.default_rng(10 + subsampling)
    device = CUDA[0]
    sizes = [(375, 500), (500, 375), (224, 224), (97, 131), (33, 17), (1, 1)]
    datas = [_jpeg_bytes(_photo(rng, h, w), quality=90, subsampling=subsampling) for h, w in sizes]
    offsets = np.concatenate([[0], np.cumsum([h * w * 3 for h, w in sizes])])
    images = _C.empty_bytes(int(offsets[-1]), device)
    items = [(d, int(o), h, w) for d, o, (h, w) in zip(datas, offsets, sizes)]
    assert vdecode.NvjpegDecoder().decode_into(images, items) == []
    flat = images.numpy()
    worst, means = 0, []
    for (d, o, h, w) in items:
        ref = vdecode.decode_rgb_bytes(d, h, w).astype(np.int16)
        diff = np.abs(flat[o:o + h * w * 3].reshape(h, w, 3).astype(np.int16) - ref)
        worst, means = max(worst, int(diff.max())), means + [float(diff.mean())]
    with capsys.disabled():
        print(f"\nnvJPEG vs Pillow, subsampling {subsampling}: max |diff| {worst}, mean |diff| per image "
              + ", ".join(f"{m:.3f}" for m in means))
    bound_max, bound_mean = NVJPEG_BOUNDS[subsampling]
    assert worst <= bound_max and max(means) <= bound_mean


@needs_nvjpeg
def test_nvjpeg_loader_matches_the_cpu_loader(folder):
    """The whole path on the device: the same labels, plans and (within nvJPEG's bound, over the resampling)
    the same augmented batches as decode="cpu"."""
    device = CUDA[0]
    kwargs = dict(shuffle=True, seed=7, num_workers=2, device_augment=True)
    ref = list(vdata.DataLoader(folder, 7, _transform(), decode="cpu", **kwargs).epoch(1))
    got = list(vdata.DataLoader(folder, 7, _transform(), decode="nvjpeg", **kwargs).epoch(1))
    for (xr, yr), (xg, yg) in zip(ref, got):
        np.testing.assert_array_equal(yr, yg)
        a = vdata.augment_batch(xr, device).numpy()
        b = vdata.augment_batch(xg, device).numpy()
        assert xg.kept.all()
        assert np.abs(a - b).max() <= NVJPEG_BOUNDS[1][0] * _transform().input_scale + 1e-6


@pytest.mark.filterwarnings("ignore:train. curves.png is not written")
def test_train_with_jpeg_bytes_matches_decode_cpu(tmp_path):
    """vc.train on the cpu with the device decode path (CpuJpegDecoder) trains exactly as decode="cpu": the same
    batches, a truncated JPEG left out by both; the CLI's --decode reaches train."""
    from vggcore.cli import build_parser
    rng = np.random.default_rng(8)
    for split, count in (("train", 5), ("val", 2)):
        for c in range(2):
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(count):
                px = _photo(rng, 36 + 2 * i, 40 - i)
                px[..., c] = np.minimum(px[..., c].astype(int) + 60, 255)
                (d / f"{i}.jpg").write_bytes(_jpeg_bytes(px, subsampling=i % 3))
    bad = tmp_path / "data" / "train" / "c1" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    net = dict(config="A", width=1 / 16, fc_width=16, dropout=0.0, init="he", scale=(32, 36), crop=32, lr=0.02,
               epochs=1, batch_size=4, seed=2, device="cpu", num_workers=2, stats_sample=20, verbose=False,
               progress=False, device_augment=True)
    results = []
    for decode in ("cpu", vdecode.CpuJpegDecoder()):
        with pytest.warns(vdata.CorruptImageWarning):
            results.append(vc.train(data=str(tmp_path / "data"), decode=decode, **net))
    a, b = results
    assert a.history[0]["skipped_files"] == b.history[0]["skipped_files"] == 1
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    args = build_parser().parse_args(["train", "--data", "x", "--device-augment", "--decode", "nvjpeg"])
    assert args.decode == "nvjpeg" and args.device_augment


class _StandInNvjpeg:
    """libnvjpeg's functions as NvjpegDecoder calls them, decoding with Pillow into the output pointers (host
    memory on sim): checks the decoder's own logic (pointers, pitches, batching, routing, fallbacks) without a GPU.
    ``refuse``: JPEG bytes whose decode fails; ``batch_fails``: nvjpegDecodeBatched refuses every batch;
    ``as_411``: JPEG bytes reported as 4:1:1 (which the hardware backend does not take)."""

    def __init__(self, hardware, refuse=(), batch_fails=False, as_411=()):
        self.hardware, self.refuse, self.batch_fails = hardware, set(refuse), batch_fails
        self.as_411 = set(as_411)
        self.calls = {"batched": 0, "single": 0}

    @staticmethod
    def _set(ref, value):
        ref._obj.value = value

    def nvjpegCreateSimple(self, handle):
        self._set(handle, 1)
        return 0

    def nvjpegCreateEx(self, backend, dev, pinned, flags, handle):
        if not self.hardware:
            return 9
        self._set(handle, 2)
        return 0

    def nvjpegJpegStateCreate(self, handle, state):
        self._set(state, 10 + handle.value)
        return 0

    def nvjpegGetImageInfo(self, handle, data, length, n, css, widths, heights):
        head = vdecode.jpeg_header(data[:length])
        self._set(n, head.components)
        luma = head.sampling[0]
        self._set(css, 4 if data[:length] in self.as_411 else
                  {(1, 1): 0, (2, 1): 1, (2, 2): 2, (1, 2): 3, (4, 1): 4}.get(luma, -1))
        widths[0], heights[0] = head.width, head.height
        return 0

    def _decode(self, data, image):
        if data in self.refuse:
            return 4
        with Image.open(io.BytesIO(data)) as im:
            px = np.asarray(im.convert("RGB"))
        row = px.shape[1] * 3
        for y in range(px.shape[0]):
            ctypes.memmove(image.channel[0] + y * image.pitch[0], px[y].tobytes(), row)
        return 0

    def nvjpegDecodeBatchedInitialize(self, handle, state, n, threads, fmt):
        assert fmt == 5 and threads == 1
        self.initialised = (handle.value, n)
        return 0

    def nvjpegDecodeBatched(self, handle, state, datas, lengths, images, stream):
        self.calls["batched"] += 1
        assert self.initialised == (handle.value, len(lengths))
        if self.batch_fails:
            return 4
        pointers = ctypes.cast(datas, ctypes.POINTER(ctypes.c_void_p))
        codes = [self._decode(ctypes.string_at(pointers[j], lengths[j]), images[j]) for j in range(len(lengths))]
        return max(codes)

    def nvjpegDecode(self, handle, state, data, length, fmt, image, stream):
        self.calls["single"] += 1
        assert handle.value == 1 and fmt == 5
        return self._decode(data[:length], image._obj)


@pytest.mark.parametrize("case", ["hardware", "default backend", "batch refused", "image refused", "411 alone"])
def test_nvjpeg_decoder_logic_with_a_stand_in_library(folder, monkeypatch, case):
    """NvjpegDecoder's calls, run against a stand-in library on sim: the pixels land where the CPU implementation
    puts them; a refused batch is decoded image by image; a refused image is returned as failed (and then decoded
    by the CPU in device_images); nvJPEG's own reading of the header is what routes an image."""
    loader = vdata.DataLoader(folder, len(folder), _transform(), device_augment=True, decode=vdecode.CpuJpegDecoder())
    (batch, _), = list(loader.epoch(0))
    items = [e[:4] for e in batch.encoded]
    ref = _C.empty_bytes(batch.nbytes, "sim")
    _C.write_bytes(ref, 0, np.zeros(batch.nbytes, np.uint8))
    assert vdecode.CpuJpegDecoder().decode_into(ref, items) == []
    refused = items[3][0] if case == "image refused" else None
    lib = _StandInNvjpeg(hardware=case != "default backend", refuse=[refused] if refused else (),
                         batch_fails=case == "batch refused", as_411=[items[2][0]] if case == "411 alone" else ())
    monkeypatch.setattr(vdecode, "_nvjpeg_lib", lib)
    monkeypatch.setattr(vdecode, "_nvjpeg_reason", None)
    monkeypatch.setattr(vdecode.NvjpegDecoder, "check_device", lambda self, device: None)
    monkeypatch.setattr(_C, "cuda_stream", lambda index: 1234, raising=False)
    decoder = vdecode.NvjpegDecoder()
    got = _C.empty_bytes(batch.nbytes, "sim")
    _C.write_bytes(got, 0, np.zeros(batch.nbytes, np.uint8))
    failed = decoder.decode_into(got, items)
    a, b = ref.numpy(), got.numpy()
    if case == "image refused":
        assert failed == [3]
        off, h, w = items[3][1:]
        b[off:off + h * w * 3] = a[off:off + h * w * 3]
    else:
        assert failed == []
    np.testing.assert_array_equal(a, b)
    assert lib.calls["batched"] == 1
    singles = {"batch refused": len(items), "image refused": len(items), "411 alone": 1}
    assert lib.calls["single"] == singles.get(case, 0)
    # The whole path: device_images hands the refused image to the CPU and augments every row.
    batch.decoder = decoder
    out = vdata.augment_batch(batch, "sim").numpy()
    assert batch.kept.all()
    batch.decoder = vdecode.CpuJpegDecoder()
    np.testing.assert_array_equal(out, vdata.augment_batch(batch, "sim").numpy())
