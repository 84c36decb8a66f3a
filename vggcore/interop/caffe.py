"""The paper's own release (Caffe ``VGG_ILSVRC_16_layers.caffemodel`` / ``_19_``) in, and Caffe weights out.

A ``.caffemodel`` is one protobuf ``NetParameter`` message. This module reads and writes the protobuf wire
format itself (no ``protobuf`` package, no compiled caffe.proto), and only the few fields that carry weights:

    NetParameter      name = 1, layers = 2 (V1LayerParameter, the 2014 release's format), layer = 100
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  name = 4, type = 5 (enum: CONVOLUTION = 4, INNER_PRODUCT = 14), blobs = 6
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape), data = 5 (packed
                      float), shape = 7 (BlobShape: dim = 1, packed int64), double_data = 8
Every other field is skipped by its wire type.

Caffe's VGG takes BGR images minus the mean pixel (B, G, R) = (103.939, 116.779, 123.68), unscaled. vggcore
feeds RGB, so conv1_1's input channels are reversed on the way in (and back on the way out): exact, and the
model's preprocessing becomes mean_rgb = (123.68, 116.779, 103.939), input_scale 1. Conv weights are
(K, C, R, S) and fc6 reads (C, H, W), as in torchvision.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from .torchvision import _weights_file

__all__ = ["from_caffe", "to_caffe", "read_caffemodel", "write_caffemodel", "CAFFE_MEAN_BGR"]

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_V1_CONVOLUTION, _V1_INNER_PRODUCT = 4, 14


# ------------------------------------------------------------------------------------------------ wire format

def _varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("caffemodel: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("caffemodel: varint longer than 10 bytes")


def _fields(buf):
    """Yield (field number, wire type, value) of one message: ints for varints and fixed, memoryviews for
    length-delimited fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("caffemodel: a field runs past the end of its message (truncated file?)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"caffemodel: unsupported wire type {wire} (field {number}); not a protobuf file?")
        if pos > end:
            raise ValueError("caffemodel: truncated message")
        yield number, wire, value


def _packed_ints(wire, value):
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _blob(buf):
    legacy = {}
    shape, chunks, doubles = None, [], []
    for number, wire, value in _fields(buf):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 5:
            chunks.append(np.frombuffer(value, "<f4") if wire == 2 else np.frombuffer(value, "<f4", count=1))
        elif number == 8:
            doubles.append(np.frombuffer(value, "<f8") if wire == 2 else np.frombuffer(value, "<f8", count=1))
        elif number == 7 and wire == 2:
            dims = []
            for n, w, v in _fields(value):
                if n == 1:
                    dims.extend(_packed_ints(w, v))
            shape = tuple(int(d) for d in dims)
    if shape is None:
        shape = tuple(int(legacy.get(i, 0)) for i in (1, 2, 3, 4))
    data = np.concatenate(chunks) if chunks else (np.concatenate(doubles) if doubles else np.zeros(0, np.float32))
    if int(np.prod(shape)) != data.size:
        raise ValueError(f"caffemodel: a blob of shape {shape} holds {data.size} values")
    return data.astype(np.float32).reshape(shape)


def read_caffemodel(path) -> list:
    """[(layer name, layer type, [blobs as float32 arrays])] of the layers that carry blobs, in file order."""
    path = _weights_file("from_caffe", path)
    buf = memoryview(path.read_bytes())
    layers = []
    for number, wire, value in _fields(buf):
        if wire != 2 or number not in (2, 100):
            continue
        name, kind, blobs = None, None, []
        name_field, type_field, blob_field = (1, 2, 7) if number == 100 else (4, 5, 6)
        for n, w, v in _fields(value):
            if n == name_field and w == 2:
                name = bytes(v).decode("utf-8", "replace")
            elif n == type_field:
                kind = bytes(v).decode("utf-8", "replace") if w == 2 else {
                    _V1_CONVOLUTION: "Convolution", _V1_INNER_PRODUCT: "InnerProduct"}.get(v, f"V1 type {v}")
            elif n == blob_field and w == 2:
                blobs.append(_blob(v))
        if blobs:
            layers.append((name, kind, blobs))
    if not layers:
        raise ValueError(f"from_caffe: {path} holds no layers with weights; is it a .caffemodel (binary), not a "
                         ".prototxt (text)?")
    return layers


def _key(number, wire):
    return _enc_varint((number << 3) | wire)


def _enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number, payload):
    return _key(number, 2) + _enc_varint(len(payload)) + payload


def _enc_blob(arr, legacy):
    arr = np.ascontiguousarray(arr, dtype="<f4")
    out = b""
    if legacy:
        dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
        for number, d in zip((1, 2, 3, 4), dims):
            out += _key(number, 0) + _enc_varint(int(d))
    else:
        out += _len_field(7, _len_field(1, b"".join(_enc_varint(int(d)) for d in arr.shape)))
    return out + _len_field(5, arr.tobytes())


def write_caffemodel(path, layers, name="VGG", legacy=False):
    """Write [(name, type, [arrays])] as a NetParameter: ``layer`` messages, or with ``legacy`` the V1 ``layers``
    of the 2014 release (types Convolution and InnerProduct only)."""
    chunks = [_len_field(1, name.encode())]
    for lname, kind, blobs in layers:
        if legacy:
            code = {"Convolution": _V1_CONVOLUTION, "InnerProduct": _V1_INNER_PRODUCT}[kind]
            body = _len_field(4, lname.encode()) + _key(5, 0) + _enc_varint(code)
            body += b"".join(_len_field(6, _enc_blob(b, True)) for b in blobs)
            chunks.append(_len_field(2, body))
        else:
            body = _len_field(1, lname.encode()) + _len_field(2, kind.encode())
            body += b"".join(_len_field(7, _enc_blob(b, False)) for b in blobs)
            chunks.append(_len_field(100, body))
    from ..checkpoint import atomic_write_bytes
    atomic_write_bytes(path, b"".join(chunks))


# ---------------------------------------------------------------------------------------------- VGG mapping

def _prototxt_input_size(path):
    text = Path(path).read_text(errors="replace")
    dims = [int(d) for d in re.findall(r"\binput_dim\s*:\s*(\d+)", text)]
    if not dims:
        dims = [int(d) for d in re.findall(r"\bdim\s*:\s*(\d+)", text)][:4]
    if len(dims) >= 4:
        if dims[2] != dims[3]:
            raise ValueError(f"from_caffe: {path} declares a non-square input {dims[2]}x{dims[3]}")
        return dims[2]
    return None


def from_caffe(caffemodel, prototxt=None, num_classes=None, input_size=None):
    """A VGG from the paper's Caffe release (VGG_ILSVRC_16_layers / _19_layers) or any caffemodel whose layers
    are named conv{stage}_{i}, fc6, fc7, fc8 (the configuration comes from those names and shapes).

    BGR weights become RGB (conv1_1's input channels reversed) and the preprocessing is Caffe's mean pixel,
    unscaled. prototxt (the deploy file, optional) only confirms the input size. num_classes and input_size: as
    in ``from_torchvision`` (a different class count replaces fc8 with a freshly initialised layer; input_size
    defaults to 32 * the side of fc6's input map).
    """
    from .._checks import check_int
    from .torchvision import from_torchvision
    if num_classes is not None:
        num_classes = check_int("from_caffe", "num_classes", num_classes, 1)
    layers = read_caffemodel(caffemodel)
    by_name = {}
    for name, kind, blobs in layers:
        if name in by_name:
            raise ValueError(f"from_caffe: layer {name!r} appears twice in {caffemodel}")
        by_name[name] = blobs
    conv_names = [n for n in by_name if re.fullmatch(r"conv\d+_\d+", n or "")]
    missing = [n for n in ("fc6", "fc7", "fc8") if n not in by_name]
    if not conv_names or missing:
        raise ValueError(f"from_caffe: {caffemodel} is not a VGG net: expected layers conv1_1 ... and fc6, fc7, fc8 "
                         f"(found {sorted(by_name)[:8]})")
    # Rebuild torchvision's feature indices from the stage structure the conv names give, then reuse its checks.
    per_stage = {}
    for n in conv_names:
        s, i = (int(v) for v in n[4:].split("_"))
        per_stage.setdefault(s, []).append(i)
    if sorted(per_stage) != list(range(1, len(per_stage) + 1)) or any(
            sorted(v) != list(range(1, len(v) + 1)) for v in per_stage.values()):
        raise ValueError(f"from_caffe: conv layers {sorted(conv_names)} are not numbered conv<stage>_<i> from 1")
    sd, index = {}, 0
    for s in sorted(per_stage):
        for i in range(1, len(per_stage[s]) + 1):
            blobs = by_name[f"conv{s}_{i}"]
            if len(blobs) != 2:
                raise ValueError(f"from_caffe: conv{s}_{i} has {len(blobs)} blobs, expected weight and bias")
            w, b = blobs
            if s == 1 and i == 1:
                if w.shape[1] != 3:
                    raise ValueError(f"from_caffe: conv1_1 takes {w.shape[1]} channels, expected 3 (BGR)")
                w = w[:, ::-1]                          # BGR -> RGB input channels
            sd[f"features.{index}.weight"] = np.ascontiguousarray(w)
            sd[f"features.{index}.bias"] = b.reshape(-1)
            index += 2
        index += 1
    for tv, name in (("classifier.0", "fc6"), ("classifier.3", "fc7"), ("classifier.6", "fc8")):
        blobs = by_name[name]
        if len(blobs) != 2:
            raise ValueError(f"from_caffe: {name} has {len(blobs)} blobs, expected weight and bias")
        w, b = blobs
        sd[f"{tv}.weight"] = w.reshape(w.shape[-2], w.shape[-1]) if w.ndim > 2 else w
        sd[f"{tv}.bias"] = b.reshape(-1)
    model = from_torchvision(sd, input_size=input_size)
    # from_torchvision names torchvision's preprocessing; these weights expect Caffe's.
    model.mean_rgb = [float(v) for v in CAFFE_MEAN_BGR[::-1]]
    model.input_scale = 1.0
    model.std_rgb = None
    model.test_scale = 256
    if prototxt is not None:
        size = _prototxt_input_size(prototxt)
        if size is not None and size != model.input_size:
            raise ValueError(f"from_caffe: {prototxt} declares {size}x{size} inputs, the weights' fc6 fits "
                             f"{model.input_size}x{model.input_size}")
    if num_classes is not None and num_classes != model.num_classes:
        model = model.with_num_classes(num_classes)
    return model


def to_caffe(model, path, legacy=False):
    """Write ``model`` as a caffemodel with layers conv1_1 ... fc8 (BGR conv1_1, Caffe's layouts), the exact
    inverse of ``from_caffe``. The file carries weights only; Caffe users subtract ``model.mean_rgb`` (as BGR)."""
    from .torchvision import _feature_indices, to_torchvision
    sd = to_torchvision(model)
    if model.std_rgb is not None or model.input_scale != 1.0:
        warnings.warn("to_caffe: this model's preprocessing is not Caffe's (mean pixel only); Caffe users must "
                      f"also scale by input_scale={model.input_scale:g}" +
                      ("" if model.std_rgb is None else f" and divide by std {model.std_rgb}"), stacklevel=2)
    layers = []
    for index, name in _feature_indices(model.config):
        w = sd[f"features.{index}.weight"]
        if name == "conv1_1":
            w = np.ascontiguousarray(w[:, ::-1])
        layers.append((name, "Convolution", [w, sd[f"features.{index}.bias"]]))
    for tv, name in (("classifier.0", "fc6"), ("classifier.3", "fc7"), ("classifier.6", "fc8")):
        layers.append((name, "InnerProduct", [sd[f"{tv}.weight"], sd[f"{tv}.bias"]]))
    write_caffemodel(path, layers, name=f"VGG_{model.config}", legacy=legacy)
    return Path(path)

