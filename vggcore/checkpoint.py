"""Checkpoints as safetensors files, written by hand (no dependency) and readable by the ``safetensors`` package.

File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header length N,
N bytes of UTF-8 JSON, then the raw little-endian tensor bytes. The JSON maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header) and holds
``"__metadata__"``, a flat string-to-string map.

``save_state``/``load_state`` store any nested structure of dicts, lists, numbers, strings and NumPy arrays:
arrays become tensors named by their path (``model/conv1_1.weight``), everything else is kept as JSON in the
metadata entry ``"vggcore"`` with ``{"__tensor__": name}`` where an array was. Round trips are bit-exact.

Every file written here also stores, in the metadata entry ``"vggcore_crc32"``, a CRC-32 per tensor over its
name, dtype, shape and bytes, so a flipped bit or a tensor re-declared with another dtype or shape is refused on
load, naming the tensor; its entry ``"__metadata__"`` is a CRC-32 of the other metadata entries (the training
state's JSON), so a changed epoch, rate or class name is refused too. Headers are checked too: known dtypes,
non-negative shapes, offsets that match the shape and tile the data section without overlaps or holes. vggcore
checkpoints without checksums (written before they existed) still load, with a warning that their data could not
be verified; files written by other programs (no vggcore metadata, e.g. torchvision weights saved by
``safetensors.torch``) never had them and load without one. BF16 tensors, which other programs write and NumPy has
no dtype for, are read as float32 (exactly: a bfloat16 is the top half of a float32).

Writes are atomic: a temporary file in the target's folder is written, flushed and fsynced, renamed over the
target with ``os.replace``, and the folder is fsynced, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

__all__ = ["save_file", "load_file", "save_state", "load_state", "atomic_write_bytes", "read_metadata",
           "check_output_path"]

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
# what is read: the written dtypes, and BF16 (as its uint16 bits, widened to float32 by load_file)
_READ_DTYPES = dict(_DTYPES, BF16=np.uint16)
_CODES = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items()}
_CODES[np.dtype(np.bool_)] = "BOOL"
_METADATA_KEY = "vggcore"
_CHECKSUM_KEY = "vggcore_crc32"
_METADATA_ENTRY = "__metadata__"   # the checksum list's entry for the metadata (no tensor can have this name)
_MAX_HEADER = 100_000_000


def bfloat16_to_float32(bits):
    """float32 values of bfloat16 ``bits`` (uint16 array): the top half of a float32, so the widening is exact."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()   # mkstemp creates 0600; checkpoints get the usual permissions


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return                       # platforms without directory handles (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_path(op, path) -> Path:
    """``path`` as a Path if a file can be created there, else ValueError naming ``op``: the path is a directory,
    or one of its parents is a file (mkdir would fail with a bare FileExistsError / NotADirectoryError)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{op}: {path} is a directory; pass the path of the file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{op}: cannot write {path}: {parent} is a file, not a folder")
            break
    return path


def _atomic_write(path, write):
    path = Path(path)
    missing = []                     # the folders this write creates, deepest first: removed again if it fails
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        for folder in missing:
            try:
                os.rmdir(folder)
            except OSError:
                break                # a folder someone else filled meanwhile stays, and so do its parents
        if isinstance(error, OSError) and error.filename is None and error.errno:
            # a failed write (ENOSPC, EIO) names no file: name the checkpoint being written
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    _atomic_write(path, lambda f: f.write(data))


def save_file(path, tensors: dict, metadata: dict | None = None):
    """Write ``{name: array}`` (and a string-to-string ``metadata`` map) as a safetensors file, atomically."""
    header = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"save_file: metadata keys and values must be strings (bad keys: {bad})")
        header["__metadata__"] = dict(metadata)
    arrays = []
    checksums = {}
    offset = 0
    for name in sorted(tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"save_file: invalid tensor name {name!r}")
        arr = np.asarray(tensors[name])
        code = _CODES.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder != "|" else arr.dtype)
        if code is None:
            raise TypeError(f"save_file: tensor {name!r} has unsupported dtype {arr.dtype}")
        arr = np.require(arr, dtype=arr.dtype.newbyteorder("<"), requirements="C")
        nbytes = arr.nbytes
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        checksums[name] = _checksum(name, code, arr.shape, memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
        arrays.append(arr)
        offset += nbytes
    meta = header.setdefault("__metadata__", {})
    checksums[_METADATA_ENTRY] = _metadata_checksum(meta)
    meta[_CHECKSUM_KEY] = json.dumps(checksums, separators=(",", ":"))
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)          # pad so the data starts 8-byte aligned, as safetensors does

    def write(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")

    _atomic_write(path, write)


def _checksum(name, code, shape, data) -> str:
    """CRC-32 of a tensor's declaration and bytes: a changed dtype or shape fails it as a changed byte does."""
    crc = zlib.crc32(f"{name}|{code}|{list(shape)}|".encode("utf-8"))
    return f"{zlib.crc32(data, crc):08x}"


def _metadata_checksum(metadata) -> str:
    """CRC-32 of the metadata entries other than the checksum list (the JSON of the training state lives there:
    epoch, lr, schedule, class names; a flipped digit in it must not load as a different run)."""
    crc = 0
    for key in sorted(k for k in metadata if k != _CHECKSUM_KEY):
        crc = zlib.crc32(f"{len(key)}|{key}|{len(metadata[key])}|{metadata[key]}|".encode("utf-8"), crc)
    return f"{crc:08x}"


def _read_header(f, path):
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER:
        raise ValueError(f"{path} is not a safetensors file (header length {n})")
    text = f.read(n)
    if len(text) != n:
        raise ValueError(f"{path} is truncated (header of {n} bytes expected)")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a safetensors file (bad JSON header: {e})") from None
    except RecursionError:
        raise ValueError(f"{path} is not a safetensors file (its JSON header is nested too deeply)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and (not isinstance(metadata, dict) or
                                 not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError(f"{path}: the __metadata__ entry must map strings to strings")
    return header, 8 + n


def read_metadata(path) -> dict:
    """The ``__metadata__`` map of a safetensors file, without reading its tensors."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    return dict(header.get("__metadata__") or {})


def load_file(path):
    """Read a safetensors file: returns ``(tensors: {name: array}, metadata: dict)``."""
    path = Path(path)
    with open(path, "rb") as f:
        header, start = _read_header(f, path)
        data = f.read()
    metadata = dict(header.pop("__metadata__", None) or {})
    checksums = _stored_checksums(path, metadata)
    entries = []
    for name, info in header.items():
        code, shape, begin, end = _header_entry(path, name, info)
        itemsize = np.dtype(_READ_DTYPES[code]).itemsize
        count = 1
        for extent in shape:
            count *= extent
        if end - begin != count * itemsize or end > len(data):
            raise ValueError(f"{path}: tensor {name!r} data offsets {begin}..{end} do not fit its shape "
                             f"{shape} {code} ({count * itemsize} bytes) or the file ({len(data)} data bytes); "
                             f"the file may be truncated")
        entries.append((begin, end, name, code, shape, count))
    _check_layout(path, entries, len(data))
    if checksums is None:
        if _METADATA_KEY in metadata or metadata.get("format", "").startswith("vggcore"):
            # a vggcore checkpoint from before the checksums; another program's file never had any to check
            warnings.warn(f"{path} has no per-tensor checksums (written by an older vggcore): its data cannot be "
                          f"verified", stacklevel=2)
    else:
        # files written before the metadata had a checksum (tensor checksums only) still load
        if _METADATA_ENTRY in checksums and checksums[_METADATA_ENTRY] != _metadata_checksum(metadata):
            raise ValueError(f"{path}: the metadata fails its checksum (the training state or another entry changed "
                             f"after the file was written): the file is damaged")
        unlisted = sorted(set(header) - set(checksums))
        missing = sorted(set(checksums) - set(header) - {_METADATA_ENTRY})
        if unlisted or missing:
            raise ValueError(f"{path}: the checksum list does not match the tensors (tensors without a checksum: "
                             f"{unlisted}, checksums without a tensor: {missing})")
    tensors = {}
    view = memoryview(data)
    for begin, end, name, code, shape, count in entries:
        if checksums is not None and _checksum(name, code, shape, view[begin:end]) != checksums[name]:
            raise ValueError(f"{path}: tensor {name!r} fails its checksum (its bytes, dtype or shape changed after "
                             f"it was written): the file is damaged")
        dtype = np.dtype(_READ_DTYPES[code]).newbyteorder("<")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
        if code == "BF16":
            tensors[name] = bfloat16_to_float32(arr)                 # a new float32 array
        else:
            tensors[name] = arr.astype(_DTYPES[code], copy=True)   # native byte order, owns its memory
    return tensors, metadata


def _stored_checksums(path, metadata):
    if _CHECKSUM_KEY not in metadata:
        return None
    try:
        checksums = json.loads(metadata[_CHECKSUM_KEY])
    except (ValueError, RecursionError):
        checksums = None
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise ValueError(f"{path}: the {_CHECKSUM_KEY} metadata entry is damaged")
    return checksums


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_entry(path, name, info):
    """(dtype code, shape, begin, end) of one header entry, refusing anything that is not a well-formed one."""
    if not isinstance(info, dict):
        raise ValueError(f"{path}: bad header entry for tensor {name!r}: {info!r}")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str) or code not in _READ_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unknown dtype {code!r} (known: {', '.join(_READ_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(e) for e in shape):
        raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape!r} (a list of integers >= 0)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise ValueError(f"{path}: tensor {name!r} has invalid data offsets {offsets!r} ([begin, end], "
                         f"0 <= begin <= end)")
    return code, tuple(shape), offsets[0], offsets[1]


def _check_layout(path, entries, data_bytes):
    """The tensors' byte ranges tile the data section: no two overlap, and no bytes lie outside all of them."""
    position, previous = 0, None
    for begin, end, name, *_ in sorted(entries, key=lambda e: (e[0], e[1])):
        if begin < position:
            raise ValueError(f"{path}: tensor {name!r} (bytes {begin}..{end}) overlaps tensor {previous!r}")
        if begin > position:
            raise ValueError(f"{path}: bytes {position}..{begin} before tensor {name!r} belong to no tensor")
        if end > begin:
            position, previous = end, name
    if position != data_bytes:
        raise ValueError(f"{path}: bytes {position}..{data_bytes} at the end of the file belong to no tensor")


# ----------------------------------------------------------------------------------- nested state <-> file

def _flatten(obj, prefix, tensors):
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
        name = prefix or "value"
        if name in tensors:  # e.g. {"a/b": x, "a": {"b": y}}: both would be stored as "a/b"
            raise ValueError(f"save_state: two tensors would share the name {name!r}; rename a key containing '/'")
        tensors[name] = np.asarray(obj)
        return {"__tensor__": name, **({"__scalar__": True} if isinstance(obj, np.generic) else {})}
    if isinstance(obj, dict):
        out = {}
        keys = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"save_state: dict keys must be str or int, got {k!r} at {prefix or '/'}")
            keys.append([k, _flatten(v, f"{prefix}/{k}" if prefix else str(k), tensors)])
        # Key order and int keys survive the JSON round trip as a list of [key, value] pairs.
        out["__dict__"] = keys
        return out
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}/{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    raise TypeError(f"save_state: cannot store {type(obj).__name__} at {prefix or '/'}")


def _unflatten(obj, tensors):
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise ValueError(f"load_state: the metadata names a tensor {obj['__tensor__']!r} that the file "
                                 f"does not hold")
            arr = tensors[obj["__tensor__"]]
            return arr[()] if obj.get("__scalar__") else arr
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        raise ValueError(f"load_state: unknown entry {obj!r}")
    return obj


def save_state(path, state):
    """Save a nested structure (dicts, lists, tuples, numbers, strings, None, NumPy arrays), atomically."""
    tensors = {}
    skeleton = _flatten(state, "", tensors)
    save_file(path, tensors, {_METADATA_KEY: json.dumps(skeleton, separators=(",", ":")),
                              "format": "vggcore-checkpoint-1"})


def load_state(path):
    """Read back what ``save_state`` wrote."""
    tensors, metadata = load_file(path)
    if _METADATA_KEY not in metadata:
        raise ValueError(f"{path} is a safetensors file but not a vggcore checkpoint (no '{_METADATA_KEY}' metadata)")
    try:
        skeleton = json.loads(metadata[_METADATA_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: the '{_METADATA_KEY}' metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: the '{_METADATA_KEY}' metadata is nested too deeply") from None
    try:
        return _unflatten(skeleton, tensors)
    except RecursionError:
        raise ValueError(f"{path}: the '{_METADATA_KEY}' metadata is nested too deeply") from None
    except (TypeError, AttributeError):
        raise ValueError(f"{path}: the '{_METADATA_KEY}' metadata is malformed") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
