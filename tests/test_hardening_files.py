"""Hardening: nothing read from a file or produced by a model lies. Damaged checkpoints are refused naming the
tensor, old ones load with a warning, 16-bit and float images keep their brightness, a failed Module.to moves
nothing, and NaN scores are an error rather than a class-0 prediction."""

import json
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import checkpoint, data
from vggcore.evaluation import evaluate, predict_loader

DEVICES = vc.devices()


# ---- checkpoints ------------------------------------------------------------------------------------------------

def _state():
    return {"model": {"conv1_1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
                      "conv1_1.bias": np.array([1.5, -2.0], np.float32)},
            "epoch": 3, "labels": np.arange(4, dtype=np.int32)}


def _read(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])


def _write(path, header, body, resign=True):
    """Writes the edited file; resign: with the metadata checksum recomputed, as a program that writes a lying
    header consistently would (so the deeper checks are the ones tested)."""
    meta = header.get("__metadata__")
    if resign and isinstance(meta, dict) and "vggcore_crc32" in meta:
        try:
            sums = json.loads(meta["vggcore_crc32"])
        except ValueError:
            sums = None
        if isinstance(sums, dict) and "__metadata__" in sums:
            sums["__metadata__"] = checkpoint._metadata_checksum(meta)
            meta["vggcore_crc32"] = json.dumps(sums)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(body))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ck.safetensors"
    checkpoint.save_state(path, _state())
    return path


def test_every_tensor_has_a_checksum_and_round_trips(saved):
    header, _ = _read(saved)
    sums = json.loads(header["__metadata__"]["vggcore_crc32"])
    assert sorted(sums) == sorted(header)      # every tensor, and "__metadata__" for the other metadata entries
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a verified file loads without any warning
        state = checkpoint.load_state(saved)
    np.testing.assert_array_equal(state["model"]["conv1_1.weight"], _state()["model"]["conv1_1.weight"])


def test_flipped_bit_in_tensor_data_is_refused_naming_the_tensor(saved):
    header, body = _read(saved)
    begin, _ = header["model/conv1_1.bias"]["data_offsets"]
    body[begin + 2] ^= 0x10
    _write(saved, header, body)
    with pytest.raises(ValueError, match=r"tensor 'model/conv1_1.bias' fails its checksum"):
        checkpoint.load_state(saved)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(vggcore=m["vggcore"].replace('["epoch",3]', '["epoch",7]')),        # a flipped digit
    lambda m: m.update(vggcore=m["vggcore"].replace('"epoch"', '"Epoch"')),            # a flipped case bit
    lambda m: m.update(format="vggcore-checkpoint-9"),
    lambda m: m.update(extra="added"),
])
def test_changed_metadata_is_refused(saved, edit):
    header, body = _read(saved)
    before = dict(header["__metadata__"])
    edit(header["__metadata__"])
    assert header["__metadata__"] != before
    _write(saved, header, body, resign=False)
    with pytest.raises(ValueError, match="the metadata fails its checksum"):
        checkpoint.load_state(saved)


@pytest.mark.parametrize("change, message", [
    # same byte size, other dtype: the resumed run would read float bits as ints (or the reverse)
    (lambda h: h["model/conv1_1.weight"].update(dtype="I32"), "'model/conv1_1.weight' fails its checksum"),
    (lambda h: h["model/conv1_1.weight"].update(shape=[3, 2, 2, 2]), "'model/conv1_1.weight' fails its checksum"),
    (lambda h: h["model/conv1_1.weight"].update(shape=[-2, 3, 2, -2]), "'model/conv1_1.weight' has an invalid shape"),
    (lambda h: h["model/conv1_1.weight"].update(shape=[2, 3, 2, 2.5]), "'model/conv1_1.weight' has an invalid shape"),
    (lambda h: h["model/conv1_1.weight"].update(dtype="Q99"), "'model/conv1_1.weight' has unknown dtype"),
    (lambda h: h["model/conv1_1.bias"].update(data_offsets=[8, 0]), "'model/conv1_1.bias' has invalid data offsets"),
    (lambda h: h["model/conv1_1.bias"].update(data_offsets=[-8, 0]), "'model/conv1_1.bias' has invalid data offsets"),
    (lambda h: h.update({"extra": "not an entry"}), "bad header entry for tensor 'extra'"),
    (lambda h: h.update({"__metadata__": {"vggcore": 5}}), "__metadata__ entry must map strings to strings"),
])
def test_header_that_does_not_add_up_is_refused(saved, change, message):
    header, body = _read(saved)
    change(header)
    _write(saved, header, body)
    with pytest.raises(ValueError, match=message):
        checkpoint.load_state(saved)


def test_overlapping_offsets_are_refused(saved):
    header, body = _read(saved)
    # labels (16 bytes) made to alias the first 16 bytes of another tensor's data, the file made consistent
    names = sorted(k for k in header if k != "__metadata__")
    size = {n: header[n]["data_offsets"][1] - header[n]["data_offsets"][0] for n in names}
    victim = next(n for n in names if n != "labels" and size[n] >= 16)
    begin = header[victim]["data_offsets"][0]
    header["labels"]["data_offsets"] = [begin, begin + 16]
    _write(saved, header, body)
    with pytest.raises(ValueError, match=r"overlaps tensor|belong to no tensor"):
        checkpoint.load_file(saved)


def test_checkpoint_naming_a_missing_tensor_is_refused(saved):
    header, body = _read(saved)
    meta = header["__metadata__"]
    meta["vggcore"] = meta["vggcore"].replace('"__tensor__":"labels"', '"__tensor__":"nowhere"')
    _write(saved, header, body)
    with pytest.raises(ValueError, match="names a tensor 'nowhere' that the file does not hold"):
        checkpoint.load_state(saved)


def test_deeply_nested_metadata_is_a_value_error(saved):
    header, body = _read(saved)
    header["__metadata__"]["vggcore"] = "[" * 100000 + "]" * 100000
    _write(saved, header, body)
    with pytest.raises(ValueError, match="nested too deeply"):
        checkpoint.load_state(saved)
    _write(saved, {"deep": json.loads("[" * 50 + "]" * 50)}, b"")
    with pytest.raises(ValueError, match="bad header entry for tensor 'deep'"):
        checkpoint.load_file(saved)


def test_old_checkpoint_without_checksums_loads_and_says_so(saved):
    header, body = _read(saved)
    del header["__metadata__"]["vggcore_crc32"]
    _write(saved, header, body)
    with pytest.warns(UserWarning, match="no per-tensor checksums"):
        state = checkpoint.load_state(saved)
    np.testing.assert_array_equal(state["labels"], np.arange(4))


def test_checksums_detect_a_swapped_pair_of_equal_tensors(tmp_path):
    # two tensors of the same dtype and shape whose data ranges are swapped: each checksum covers the name
    path = tmp_path / "pair.safetensors"
    checkpoint.save_file(path, {"a": np.zeros(4, np.float32), "b": np.ones(4, np.float32)})
    header, body = _read(path)
    header["a"]["data_offsets"], header["b"]["data_offsets"] = header["b"]["data_offsets"], header["a"]["data_offsets"]
    _write(path, header, body)
    with pytest.raises(ValueError, match="fails its checksum"):
        checkpoint.load_file(path)


# ---- images ---------------------------------------------------------------------------------------------------------

def test_16bit_png_keeps_its_brightness(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((6, 5), 983, np.uint16)).save(path)   # 1.5% grey
    rgb = np.asarray(data.load_rgb(path))
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.uint8
    assert np.all(rgb == 4), rgb[0, 0]                              # 983 / 65535 * 255 = 3.8
    ramp = np.linspace(0, 65535, 5).astype(np.uint16)[None].repeat(2, 0)
    Image.fromarray(ramp).save(path)
    np.testing.assert_array_equal(np.asarray(data.load_rgb(path))[0, :, 0], [0, 64, 127, 191, 255])   # 32767 -> 127.498


@pytest.mark.parametrize("values, want", [
    ([0.0, 0.25, 1.0], [0, 64, 255]),              # a 0..1 float image
    ([0.0, 100.0, 255.0], [0, 100, 255]),          # already in 0..255
    ([-1.0, 0.0, 3.0], [0, 64, 255]),              # any other range: min..max
    ([np.nan, 0.5, 1.0], [0, 128, 255]),           # non-finite pixels become 0
])
def test_float_images_convert_by_their_range(tmp_path, values, want):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.array([values], np.float32)).save(path)
    np.testing.assert_array_equal(np.asarray(data.load_rgb(path))[0, :, 1], want)


def test_8bit_images_are_unchanged(tmp_path):
    path = tmp_path / "rgb.png"
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(np.asarray(data.load_rgb(path)), pixels)


# ---- Module.to ------------------------------------------------------------------------------------------------------

def test_module_to_that_fails_moves_nothing():
    if "sim" not in DEVICES:
        pytest.skip("no sim device in this build")
    net = vc.nn.Sequential(vc.nn.Linear(3, 4), vc.nn.ReLU(), vc.nn.Linear(4, 2))
    params = list(net.parameters())
    # the last parameter is float64, which sim cannot hold: the move fails at the end
    params[-1]._data = vc.tensor(params[-1].numpy().astype(np.float64))._data
    with pytest.raises(TypeError):
        net.to("sim")
    assert [p.device for p in net.parameters()] == ["cpu"] * len(params)
    with pytest.raises(ValueError):
        net.to("nowhere")
    assert [p.device for p in net.parameters()] == ["cpu"] * len(params)


def test_module_to_moves_parameters_and_gradients_together():
    if "sim" not in DEVICES:
        pytest.skip("no sim device in this build")
    net = vc.nn.Linear(3, 2)
    out = net(vc.tensor(np.ones((1, 3), np.float32)))
    (out * 1.0).backward(np.ones((1, 2), np.float32))
    net.to("sim")
    assert {p.device for p in net.parameters()} == {"sim"}
    assert {p.grad.device for p in net.parameters()} == {"sim"}


# ---- NaN scores ------------------------------------------------------------------------------------------------------

class _NaNNet:
    """Stands in for a diverged model: every class score is NaN."""
    num_classes = 3

    def __call__(self, x):
        return vc.tensor(np.full((x.shape[0], 3), np.nan, np.float32))


def test_nan_scores_are_an_error_not_a_class_zero_prediction():
    loader = [(np.zeros((2, 4, 4, 3), np.float32), np.array([0, 0]))]
    with pytest.raises(ValueError, match=r"class scores are not finite .* 2 of 2 images"):
        predict_loader(_NaNNet(), loader, "cpu")


def test_failed_checkpoint_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno
    import os as os_module

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fsync", disk_full)
    with pytest.raises(OSError) as info:
        checkpoint.save_state(tmp_path / "last.safetensors", _state())
    assert info.value.errno == errno.ENOSPC and info.value.filename.endswith("last.safetensors")
    assert list(tmp_path.iterdir()) == []
