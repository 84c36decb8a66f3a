"""Checkpoint files: safetensors layout written by hand, bit-exact round trips, atomic replacement."""

import json
import os
import struct

import numpy as np
import pytest

from vggcore import checkpoint


def _state():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 2)).astype(np.float32)
    w.flat[0], w.flat[1], w.flat[2], w.flat[3] = np.nan, np.inf, -np.inf, -0.0
    return {
        "model": {"conv1_1.weight": w, "conv1_1.bias": rng.standard_normal(5),
                  "fc8.weight": rng.standard_normal((3, 7)).astype(np.float32)},
        "optimizer": {"lr": 0.01, "state": {0: {"momentum_buffer": np.zeros((2, 2), np.float32)}}},
        "epoch": 3,
        "rng": {"bit_generator": "PCG64", "state": {"state": 2 ** 127 + 12345, "inc": 7}},
        "history": [{"epoch": 1, "train_loss": 2.25, "val_top1_err": 0.5}, {"epoch": 2, "train_loss": float("inf")}],
        "pair": (256, 512),
        "none": None,
        "labels": np.arange(4, dtype=np.int64),
        "mask": np.array([True, False]),
        "scalar": np.float32(1.5),
        "zero_d": np.array(2.0),
        "empty": np.zeros((0, 3), np.float32),
    }


def _assert_same(a, b, where="/"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}{k}/")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}{i}/")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), f"{where}: bytes differ"
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def test_round_trip_is_bit_exact(tmp_path):
    state = _state()
    path = tmp_path / "ck.safetensors"
    checkpoint.save_state(path, state)
    _assert_same(state, checkpoint.load_state(path))


def test_file_layout_is_safetensors(tmp_path):
    path = tmp_path / "ck.safetensors"
    checkpoint.save_state(path, _state())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values())
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "tensor data must be contiguous"
    info = header["model/conv1_1.weight"]
    assert info["dtype"] == "F32" and info["shape"] == [5, 3, 3, 2]
    begin, end = info["data_offsets"]
    w = np.frombuffer(raw[8 + n + begin:8 + n + end], dtype="<f4").reshape(5, 3, 3, 2)
    assert w.tobytes() == _state()["model"]["conv1_1.weight"].tobytes()


def test_readable_by_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    path = tmp_path / "ck.safetensors"
    state = _state()
    checkpoint.save_state(path, state)
    tensors = st.load_file(str(path))
    assert tensors["model/fc8.weight"].tobytes() == state["model"]["fc8.weight"].tobytes()
    assert tensors["model/conv1_1.bias"].dtype == np.float64
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert json.loads(meta["vggcore"])  # the JSON skeleton is plain metadata


def test_reads_files_written_by_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "ext.safetensors"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    st.save_file({"a": a, "b": np.arange(3, dtype=np.int64)}, str(path), metadata={"k": "v"})
    tensors, meta = checkpoint.load_file(path)
    assert np.array_equal(tensors["a"], a) and tensors["b"].dtype == np.int64 and meta == {"k": "v"}
    with pytest.raises(ValueError, match="not a vggcore checkpoint"):
        checkpoint.load_state(path)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    checkpoint.save_state(path, {"epoch": 1})
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_state(path, {"epoch": 2, "w": np.ones(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"], "the temporary file must be removed"
    assert checkpoint.load_state(path) == {"epoch": 1}


def test_truncated_and_garbage_files_raise(tmp_path):
    path = tmp_path / "ck.safetensors"
    checkpoint.save_state(path, {"w": np.ones((100,), np.float32)})
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-8])
    with pytest.raises(ValueError, match="truncated"):
        checkpoint.load_state(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a safetensors file"):
        checkpoint.load_state(tmp_path / "junk.safetensors")


def test_unsupported_values_raise(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        checkpoint.save_state(tmp_path / "x.safetensors", {"f": object()})
    with pytest.raises(TypeError, match="unsupported dtype"):
        checkpoint.save_file(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})
    assert not list(tmp_path.iterdir())


def _write_foreign(path, tensors, metadata=None):
    """A safetensors file as another program writes it: {name: (dtype code, shape, raw bytes)}, no checksums."""
    header, body = {}, b""
    for name, (code, shape, raw) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def test_bf16_tensors_read_as_float32_exactly(tmp_path):
    # 1, -2.5, the largest finite, inf, the smallest subnormal, -0, nan: a bfloat16 is a float32's top 16 bits
    bits = np.array([0x3F80, 0xC020, 0x7F7F, 0x7F80, 0x0001, 0x8000, 0x7FC1], dtype="<u2")
    path = tmp_path / "bf16.safetensors"
    _write_foreign(path, {"w": ("BF16", [7, 1], bits.tobytes()), "b": ("F32", [2], np.ones(2, "<f4").tobytes())})
    tensors, _ = checkpoint.load_file(path)
    w = tensors["w"]
    assert w.dtype == np.float32 and w.shape == (7, 1)
    assert np.array_equal(w.reshape(-1).view(np.uint32), bits.astype(np.uint32) << 16)
    assert w[0, 0] == 1.0 and w[1, 0] == -2.5 and np.isinf(w[3, 0]) and w[4, 0] == np.float32(2.0 ** -133)
    _write_foreign(path, {"w": ("BF16", [3], bits[:2].tobytes())})          # 4 bytes where 3 elements need 6
    with pytest.raises(ValueError, match=r"tensor 'w' data offsets 0..4 do not fit its shape \(3,\) BF16"):
        checkpoint.load_file(path)


def test_only_vggcore_files_without_checksums_warn(tmp_path):
    import warnings
    path = tmp_path / "foreign.safetensors"
    _write_foreign(path, {"a": ("F32", [2], np.ones(2, "<f4").tobytes())}, {"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # another program's file never had checksums: nothing to say
        tensors, meta = checkpoint.load_file(path)
    assert np.array_equal(tensors["a"], [1, 1]) and meta == {"format": "pt"}
    checkpoint.save_state(path, {"w": np.ones(2, np.float32)})
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + header_len])
    meta = header.pop("__metadata__")
    del meta["vggcore_crc32"]                   # an older vggcore's checkpoint: still said
    _write_foreign(path, {"w": ("F32", [2], np.ones(2, "<f4").tobytes())}, meta)
    with pytest.warns(UserWarning, match="no per-tensor checksums"):
        assert np.array_equal(checkpoint.load_state(path)["w"], [1, 1])
