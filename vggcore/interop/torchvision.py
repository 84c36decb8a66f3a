"""torchvision's VGG state dicts in and out, without torch.

torchvision's ``vgg11/13/16/19`` keep the conv stack in ``features`` (a Sequential of conv, ReLU and max-pool
modules, so the convs sit at indices such as 0, 2, 5, 7, ...) and the FC layers at ``classifier.0``, ``.3``
and ``.6``. Conv weights are (K, C, R, S) and fc6 reads the last feature map flattened in (C, H, W) order;
vggcore's are (K, R, S, C) and (H, W, C). Both conversions are pure transposes, so they are exact.

A ``.pth`` written by ``torch.save`` is a zip holding one pickle (``*/data.pkl``) whose tensors refer to raw
storages (``*/data/<key>``). It is read here with an unpickler that can build only plain containers and
tensors: any other global (``os.system``, ``builtins.eval``, a pickled Module, ...) raises
``pickle.UnpicklingError`` before anything runs, so a malicious file cannot execute code.
"""

from __future__ import annotations

import collections
import fractions
import io
import math
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..checkpoint import bfloat16_to_float32

__all__ = ["from_torchvision", "to_torchvision", "save_torchvision", "read_pth", "read_state_dict",
           "TORCHVISION_MEAN", "TORCHVISION_STD"]

# torchvision's ImageNet normalisation: RGB in [0, 1], then (x - mean) / std per channel.
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# The side torchvision evaluates its ImageNet weights at: Resize(256), CenterCrop(224).
TORCHVISION_TEST_SCALE = 256

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _NoState:
    """Refuses pickle's BUILD opcode, which would otherwise set attributes of the reader's own objects."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"read_pth: the pickle sets the state of a {type(self).__name__[1:]}, "
                                     "which torch never does")


class _Storage(_NoState):
    """A torch storage named by the pickle: its element type, key (file in the zip) and element count."""

    __slots__ = ("dtype", "key", "numel", "_reader", "_array")

    def __init__(self, dtype, key, numel, reader):
        self.dtype, self.key, self.numel, self._reader = dtype, key, int(numel), reader
        self._array = None

    def array(self):
        if self._array is None:
            raw = self._reader(self.key)
            bf16 = self.dtype == "bfloat16"
            dt = np.dtype(np.uint16 if bf16 else self.dtype)     # bfloat16: its bits, widened below
            dt = dt if dt.itemsize == 1 else dt.newbyteorder(self._reader.byteorder)
            if len(raw) < dt.itemsize * self.numel:
                raise ValueError(f"read_pth: {self._reader.path}: storage {self.key} holds {len(raw)} bytes, "
                                 f"{self.numel} elements of {'bfloat16' if bf16 else dt} need "
                                 f"{dt.itemsize * self.numel}")
            self._array = np.frombuffer(raw, dtype=dt, count=self.numel)
            if bf16:
                self._array = bfloat16_to_float32(self._array)
        return self._array


class _Tensor(_NoState):
    """A tensor named by the pickle, read from its storage only after unpickling, when its key in the state
    dict is known (so errors can name it) and its size has been checked against the storage."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self, name, path):
        storage, offset, size, stride = self.storage, self.offset, self.size, self.stride
        count = math.prod(size)
        if count > storage.numel - offset:
            # only a view whose elements overlap (stride 0, from expand()) can name more elements than its
            # storage holds; copying it out would let a tiny file allocate any amount of memory
            raise ValueError(f"read_pth: {path}: tensor {name!r} of shape {size} (stride {stride}) has {count} "
                             f"elements but its storage {storage.key} holds {storage.numel} (from offset {offset}): "
                             "an expanded or overlapping view; save a contiguous copy (tensor.contiguous().clone())")
        if count == 0:
            return np.zeros(size, storage.array().dtype.newbyteorder("="))
        flat = storage.array()
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise pickle.UnpicklingError(f"read_pth: {path}: tensor {name!r} of size {size}, stride {stride}, "
                                         f"offset {offset} reaches past its storage of {flat.size} elements")
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=tuple(s * flat.itemsize for s in stride), writeable=False)
        return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """A strided view of ``storage`` (torch._utils._rebuild_tensor_v2's arguments), read after unpickling."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("read_pth: a tensor refers to something that is not a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError(f"read_pth: invalid tensor geometry size={size} stride={stride}")
    return _Tensor(storage, offset, size, stride)


def _materialise(obj, path, name=""):
    """``obj`` with every tensor read into a numpy array, named by its key path (``state_dict/features.0.weight``)."""
    if isinstance(obj, _Tensor):
        return obj.array(name or "<the file's object>", path)
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            obj[key] = _materialise(value, path, f"{name}/{key}" if name else str(key))
    elif isinstance(obj, list):
        obj[:] = [_materialise(v, path, f"{name}/{i}" if name else str(i)) for i, v in enumerate(obj)]
    elif isinstance(obj, tuple):
        obj = tuple(_materialise(v, path, f"{name}/{i}" if name else str(i)) for i, v in enumerate(obj))
    elif isinstance(obj, _Storage):
        raise ValueError(f"read_pth: {path}: {name or 'the file'} is a bare storage, not a tensor")
    return obj


def _rebuild_parameter(data, *_ignored):
    return data


def _empty_hooks(*args):
    if args:
        raise pickle.UnpicklingError("read_pth: unexpected arguments to OrderedDict")
    return collections.OrderedDict()


# The only globals a state dict's pickle may name. Everything else is refused.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, reader):
        super().__init__(file)
        self._reader = reader

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(
            f"read_pth: the file names the Python object {module}.{name}, which a state dict of tensors never "
            "needs; refusing to build it (a pickled model or arbitrary code). Save model.state_dict() instead")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"read_pth: unsupported persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not (isinstance(dtype, str) or isinstance(dtype, type)) or dtype not in _STORAGE_DTYPES.values():
            raise pickle.UnpicklingError(f"read_pth: unsupported storage type {dtype!r}")
        return _Storage(dtype, str(key), numel, self._reader)


# torch.save stores its members uncompressed. A member someone deflated again shrinks to about 1/1.1 for weights,
# but deflate can also pack a gigabyte of zeros into a megabyte, so a tiny file could make read_pth allocate any
# amount of memory: a compressed member expanding past both bounds below is refused before it is read.
MAX_EXPANSION_RATIO = 256
MAX_EXPANDED_BYTES = 64 << 20


class _ZipReader:
    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str, path):
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path

    def __call__(self, key):
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise ValueError(f"read_pth: {self.path} has no storage {key!r} ({name})") from None
        check_expansion(info, self.path)
        return self.archive.read(info)


def check_expansion(info: zipfile.ZipInfo, path):
    """Refuse a compressed zip member whose declared size is a decompression bomb's (see MAX_EXPANSION_RATIO)."""
    if info.compress_type == zipfile.ZIP_STORED or info.file_size <= MAX_EXPANDED_BYTES:
        return
    if info.file_size > MAX_EXPANSION_RATIO * max(info.compress_size, 1):
        raise ValueError(f"read_pth: {path}: member {info.filename} is compressed {info.compress_size} bytes that "
                         f"expand to {info.file_size} (more than {MAX_EXPANSION_RATIO}x): refusing it as a "
                         "decompression bomb; torch.save writes members uncompressed, re-save the weights with it")


def _weights_file(op, path) -> Path:
    """``path`` as a Path, if it is an existing file (else FileNotFoundError, or IsADirectoryError, naming ``op``)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{op}: {path} is a directory, not a weights file")
    if not path.is_file():
        raise FileNotFoundError(f"{op}: {path} does not exist")
    return path


def read_pth(path) -> dict:
    """The object in a ``torch.save`` zip file (torch >= 1.6), built from tensors and plain containers only.

    Tensors come back as NumPy arrays (bfloat16 as float32). Raises ``pickle.UnpicklingError`` for a file
    that names any other Python object, ValueError for a file that is not a torch zip archive or is damaged
    (truncated, failing a CRC, a garbled pickle, a tensor that is an expanded view larger than its storage, a
    compressed member that would expand more than 256x past 64 MiB: a decompression bomb),
    FileNotFoundError for a missing file.
    """
    path = _weights_file("read_pth", path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):       # a zip whose end (the central directory) is missing: cut short
            raise ValueError(f"read_pth: {path} is a damaged or truncated zip archive (its central directory, at "
                             "the end of the file, is missing or unreadable); copy or download it again")
        if head.startswith(b"\x80"):     # a bare pickle (protocol 2+): torch's legacy format
            raise ValueError(f"read_pth: {path} is not a torch zip archive but a bare pickle, as torch < 1.6 (or "
                             "_use_new_zipfile_serialization=False) writes, which is not supported; re-save it with "
                             "a recent torch")
        raise ValueError(f"read_pth: {path} is not a torch zip archive (nor a legacy torch pickle: it starts with "
                         f"{head!r})")
    try:
        return _read_pth_archive(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        # a damaged archive (a member failing its CRC-32, a truncated stream): named, as any other bad file
        raise ValueError(f"read_pth: {path} is a damaged zip archive ({error})") from None


def _read_pth_archive(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"read_pth: {path} holds {len(pickles)} top-level data.pkl entries, expected 1")
        prefix = pickles[0][:-len("data.pkl")]
        try:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        except KeyError:
            byteorder = "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"read_pth: {path} has an unknown byteorder {byteorder!r}")
        reader = _ZipReader(archive, prefix, "<" if byteorder == "little" else ">", path)
        check_expansion(archive.getinfo(pickles[0]), path)
        try:
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), reader).load()
        except pickle.UnpicklingError as error:
            text = str(error)        # the refusals above start "read_pth: "; pickle's own errors do not
            text = text[len("read_pth: "):] if text.startswith("read_pth: ") else f"its {pickles[0]} is damaged ({text})"
            raise pickle.UnpicklingError(f"read_pth: {path}: {text}") from None
        except (ValueError, EOFError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as error:
            # pickle's own errors for a garbled stream (an unknown protocol, data cut short, a bad opcode argument)
            raise ValueError(f"read_pth: {path}: its {pickles[0]} is damaged or not written by torch "
                             f"({type(error).__name__}: {error})") from None
        try:
            return _materialise(obj, path)
        except RecursionError:
            raise ValueError(f"read_pth: {path}: its {pickles[0]} is nested too deeply") from None


def read_state_dict(source) -> dict:
    """``{name: numpy array}`` from a state dict (numpy arrays or torch tensors) or a .pth/.safetensors path."""
    if isinstance(source, (str, os.PathLike)):
        path = _weights_file("from_torchvision", source)
        if path.suffix.lower() == ".safetensors":
            from ..checkpoint import load_file
            obj, _ = load_file(path)
        else:
            obj = read_pth(path)
    elif isinstance(source, dict):
        obj = source
    else:
        raise TypeError(f"from_torchvision: source must be a state dict or a .pth/.safetensors path, "
                        f"got {type(source).__name__}")
    if isinstance(obj, dict) and not any(str(k).startswith(("features.", "module.features.")) for k in obj):
        for wrapper in ("state_dict", "model", "model_state_dict"):   # common training-checkpoint wrappers
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"from_torchvision: expected a state dict, the file holds a {type(obj).__name__}")
    out = collections.OrderedDict()
    for key, value in obj.items():
        key = str(key)
        if key.startswith("module."):                  # saved from DataParallel/DistributedDataParallel
            key = key[len("module."):]
        if hasattr(value, "detach") and hasattr(value, "cpu"):      # a torch tensor
            value = value.detach().cpu()
            value = value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
        out[key] = np.asarray(value)
    return out


# ------------------------------------------------------------------------------------------- layout mapping

def _feature_indices(config):
    """[(torchvision features index, vggcore conv name)] of a configuration, as torchvision's make_layers
    numbers them: conv, ReLU per conv and one max-pool per stage."""
    from ..models.vgg import CONFIGS
    out, index = [], 0
    for stage, convs in enumerate(CONFIGS[config], start=1):
        i = 0
        for item in convs:
            if item == "LRN":
                raise ValueError("to_torchvision: configuration A-LRN has a local response norm layer, which "
                                 "torchvision's VGG does not have")
            i += 1
            out.append((index, f"conv{stage}_{i}"))
            index += 2
        index += 1
    return out


_CLASSIFIER = (("classifier.0", "fc6"), ("classifier.3", "fc7"), ("classifier.6", "fc8"))


def _infer(sd, input_size=None):
    """(config, width, fc_width, input_size, num_classes) from torchvision-layout keys and shapes; input_size, when
    given, is checked against fc6's input map (else it is 32 * the map's side)."""
    from ..models.vgg import CONFIGS, param_shapes
    keys = list(sd)
    if any("running_mean" in k or "running_var" in k for k in keys):
        raise ValueError("from_torchvision: the state dict has batch-norm layers (torchvision's vgg*_bn); only "
                         "the plain vgg11/13/16/19 layouts (the paper's nets) are supported")
    unknown = [k for k in keys if not (k.startswith("features.") or k.startswith("classifier."))]
    if unknown:
        raise ValueError(f"from_torchvision: not a torchvision VGG state dict: unexpected keys such as "
                         f"{unknown[:3]} (expected features.N.weight/bias and classifier.0/3/6.weight/bias)")
    conv = {}
    for k in keys:
        parts = k.split(".")
        if len(parts) != 3 or parts[2] not in ("weight", "bias") or not parts[1].isdigit():
            raise ValueError(f"from_torchvision: unexpected key {k!r}")
        if parts[0] == "features":
            conv.setdefault(int(parts[1]), set()).add(parts[2])
    classifier = sorted({int(k.split(".")[1]) for k in keys if k.startswith("classifier.")})
    if classifier != [0, 3, 6]:
        raise ValueError(f"from_torchvision: classifier layers {classifier}, torchvision's VGG has 0, 3 and 6")
    for tv, name in _CLASSIFIER:
        for kind in ("weight", "bias"):
            if f"{tv}.{kind}" not in sd:
                raise ValueError(f"from_torchvision: the state dict has no {tv}.{kind} ({name}'s {kind})")
    for index, kinds in conv.items():
        if kinds != {"weight", "bias"}:
            raise ValueError(f"from_torchvision: features.{index} lacks its {({'weight', 'bias'} - kinds).pop()}")
    indices = sorted(conv)
    if not indices:
        raise ValueError("from_torchvision: the state dict has no conv layers (features.N.weight)")
    stages, current = [], []
    for pos, index in enumerate(indices):
        w = sd[f"features.{index}.weight"]
        if w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise ValueError(f"from_torchvision: features.{index}.weight has shape {tuple(w.shape)}, "
                             "expected a square conv kernel (K, C, R, R)")
        if pos and index - indices[pos - 1] == 3:      # conv, ReLU, pool: a new stage
            stages.append(current)
            current = []
        elif pos and index - indices[pos - 1] != 2:
            raise ValueError(f"from_torchvision: conv layers at features.{indices[pos - 1]} and features.{index}: "
                             "not torchvision's VGG layout (conv, ReLU per layer, a max-pool per stage)")
        current.append(int(w.shape[2]))
    stages.append(current)
    config = None
    for name, spec in CONFIGS.items():
        if name == "A-LRN":
            continue
        pattern = [[item[0] for item in convs if item != "LRN"] for convs in spec]
        if pattern == stages:
            config = name
            break
    if config is None:
        raise ValueError(f"from_torchvision: conv layers per stage {[len(s) for s in stages]} (kernels {stages}) "
                         "match none of the configurations A, B, C, D, E")
    expected_indices = [index for index, _ in _feature_indices(config)]
    if indices != expected_indices:
        # the stage pattern fits but the numbering is shifted (features.0 is always conv1_1 in torchvision)
        missing = sorted(set(expected_indices) - set(indices))
        raise ValueError(f"from_torchvision: VGG-{config}'s conv layers are features.{expected_indices} in "
                         f"torchvision's layout, the state dict has features.{indices} (no "
                         f"features.{missing[0]}.weight)")
    width = _infer_width(config, [int(sd[f"features.{index}.weight"].shape[0]) for index in indices])
    fc6 = sd["classifier.0.weight"]
    fc8 = sd["classifier.6.weight"]
    if fc6.ndim != 2 or fc8.ndim != 2:
        raise ValueError(f"from_torchvision: classifier weights must be 2-D, got {tuple(fc6.shape)} and "
                         f"{tuple(fc8.shape)}")
    fc_width, num_classes = int(fc6.shape[0]), int(fc8.shape[0])
    c5 = int(sd[f"features.{indices[-1]}.weight"].shape[0])
    side = int(round(np.sqrt(fc6.shape[1] / c5)))
    if side < 1 or side * side * c5 != fc6.shape[1]:
        raise ValueError(f"from_torchvision: classifier.0.weight has {fc6.shape[1]} inputs, not a square map of "
                         f"{c5} channels")
    if input_size is None:
        input_size = 32 * side
    elif input_size // 32 != side:
        raise ValueError(f"from_torchvision: input_size={input_size} gives a {input_size // 32}x{input_size // 32} map "
                         f"at fc6, but classifier.0.weight reads a {side}x{side} map of {c5} channels (input_size "
                         f"{32 * side} to {32 * side + 31})")
    expected = param_shapes(config, num_classes=num_classes, width=width, fc_width=fc_width, input_size=input_size)
    for index, name in _feature_indices(config):
        for kind in ("weight", "bias"):
            got = tuple(sd[f"features.{index}.{kind}"].shape)
            want = expected[f"{name}.{kind}"]
            want = (want[0], want[3], want[1], want[2]) if kind == "weight" else want
            if got != want:
                raise ValueError(f"from_torchvision: features.{index}.{kind} ({name}) has shape {got}; VGG-{config} "
                                 f"at width {width:g} (inferred from the conv channels) needs {want}")
    for tv, name in _CLASSIFIER:
        for kind in ("weight", "bias"):
            got, want = tuple(sd[f"{tv}.{kind}"].shape), expected[f"{name}.{kind}"]
            if got != want:
                raise ValueError(f"from_torchvision: {tv}.{kind} ({name}) has shape {got}, expected {want}")
    return config, width, fc_width, input_size, num_classes


def _simplest_between(lo, hi):
    """The fraction with the smallest denominator strictly between ``lo`` and ``hi`` (0 <= lo < hi, Fractions;
    hi None is infinity): the Stern-Brocot search, one continued-fraction term per step."""
    n = math.floor(lo) + 1
    if hi is None or n < hi:
        return fractions.Fraction(n)
    whole = n - 1
    return whole + 1 / _simplest_between(1 / (hi - whole), None if lo == whole else 1 / (lo - whole))


def _infer_width(config, channels):
    """The width with which vgg() gives every conv layer of ``config`` the ``channels`` found in the weights.

    vgg() rounds each layer's channels separately, max(1, round(base * width)), so conv1_1's channels / 64 is
    not always the width the net was built with (width 0.3: conv1_1 has 19 channels, 19 / 64 gives conv3_1
    round(256 * 0.296875) = 76 channels where the net has round(256 * 0.3) = 77). Each layer allows an interval
    of widths; their intersection holds the original width. c1 / 64 is kept when it works (the widths 1, 1/2,
    1/8, ... that always round-tripped); otherwise the simplest fraction inside, which is the original width
    whenever that was a simple one such as 0.3 or 1/3. Every candidate is checked with vgg()'s own rounding.
    """
    from ..models.vgg import CONFIGS, _channels
    bases = [item[1] for convs in CONFIGS[config] for item in convs if item != "LRN"]
    names = [name for _, name in _feature_indices(config)]
    lo, hi = fractions.Fraction(0), None       # widths every layer so far allows (endpoints by half-to-even)
    lo_layer = hi_layer = None
    for name, base, k in zip(names, bases, channels):
        low = fractions.Fraction(0) if k == 1 else fractions.Fraction(2 * k - 1, 2 * base)
        high = fractions.Fraction(2 * k + 1, 2 * base)   # 1 channel: any width that rounds below 1.5 channels
        if low > lo:
            lo, lo_layer = low, (name, k)
        if hi is None or high < hi:
            hi, hi_layer = high, (name, k)
    per_stage, pos = [], 0
    for convs in CONFIGS[config]:
        n = sum(1 for item in convs if item != "LRN")
        per_stage.append(channels[pos:pos + n])
        pos += n
    if lo > hi:
        raise ValueError(f"from_torchvision: no width reproduces the conv channels per stage {per_stage} of VGG-{config}: "
                         f"vgg() gives each layer round(base * width) channels (bases 64, 128, 256, 512, 512), and "
                         f"{lo_layer[0]}'s {lo_layer[1]} channels need width >= {float(lo):.6g} while "
                         f"{hi_layer[0]}'s {hi_layer[1]} channels need width <= {float(hi):.6g}")
    candidates = [channels[0] / 64.0]
    if lo < hi:
        candidates.append(float(_simplest_between(lo, hi)))
    candidates += [float((lo + hi) / 2), float(lo), float(hi)]
    for width in candidates:
        if width > 0 and all(_channels(base, width) == k for base, k in zip(bases, channels)):
            return width
    raise ValueError(f"from_torchvision: no width reproduces the conv channels per stage {per_stage} of VGG-{config} "
                     f"(vgg() gives each layer round(base * width) channels, bases 64, 128, 256, 512, 512)")


def from_torchvision(source, num_classes=None, input_size=None):
    """A VGG from torchvision-layout weights (``features.N.*``, ``classifier.{0,3,6}.*``).

    source: a state dict (name -> numpy array or torch tensor) or the path of a ``.pth`` (read without torch
    and without running pickled code) or ``.safetensors`` file. The configuration (A, B, D, E; C's 1x1 convs
    too), width, fc width and classes come from the keys and shapes. The model's preprocessing is
    torchvision's: RGB scaled to [0, 1], minus the mean, divided by the std per channel; evaluated at Q=256.
    num_classes: when given and different from the weights', fc8 is replaced by a freshly initialised layer
    of that size (for fine-tuning; class names are then unset).
    input_size: the image side the net takes. torchvision's layout does not record it: fc6 only gives the side
    of the last feature map (input_size // 32), so the default is 32 * that side (224 for torchvision's own
    weights). A net built for, say, 100 pixels (a 3x3 map) comes back at 96 unless input_size=100 is passed; a
    size whose map is not fc6's is a ValueError.
    """
    from .._checks import check_int
    from ..models.vgg import VGG
    if num_classes is not None:
        num_classes = check_int("from_torchvision", "num_classes", num_classes, 1)
    if input_size is not None:
        input_size = check_int("from_torchvision", "input_size", input_size, 32)   # five 2x2 max-pools
    sd = read_state_dict(source)
    config, width, fc_width, input_size, classes = _infer(sd, input_size)
    model = VGG(config, num_classes=classes, width=width, fc_width=fc_width, input_size=input_size, init=None)
    state = {}
    for index, name in _feature_indices(config):
        state[f"{name}.weight"] = np.ascontiguousarray(sd[f"features.{index}.weight"].transpose(0, 2, 3, 1))
        state[f"{name}.bias"] = sd[f"features.{index}.bias"]
    side, c5 = model.feature_side, model.feature_channels
    fc6 = sd["classifier.0.weight"]
    state["fc6.weight"] = np.ascontiguousarray(
        fc6.reshape(fc_width, c5, side, side).transpose(0, 2, 3, 1).reshape(fc_width, -1))
    for tv, name in _CLASSIFIER:
        state.setdefault(f"{name}.weight", sd[f"{tv}.weight"])
        state[f"{name}.bias"] = sd[f"{tv}.bias"]
    model.load_state_dict({k: np.asarray(v, dtype=np.float32) for k, v in state.items()})
    model.mean_rgb = [255.0 * m for m in TORCHVISION_MEAN]
    model.input_scale = 1.0 / 255.0
    model.std_rgb = list(TORCHVISION_STD)
    model.test_scale = TORCHVISION_TEST_SCALE
    if num_classes is not None and num_classes != classes:
        model = model.with_num_classes(num_classes)
    return model


def to_torchvision(model) -> dict:
    """``{torchvision key: numpy array}``: the exact inverse of ``from_torchvision`` (NCHW conv weights, fc6's
    columns in (C, H, W) order). Raises ValueError for A-LRN (torchvision has no LRN layer). The weights expect
    the model's own preprocessing (``model.preprocess``: mean_rgb, input_scale, std_rgb), which for a net
    trained by vggcore is not torchvision's normalisation; feed torch the same inputs."""
    config = model.config
    indices = _feature_indices(config)
    state = model.state_dict()
    out = collections.OrderedDict()
    for index, name in indices:
        w = state[f"{name}.weight"]
        out[f"features.{index}.weight"] = np.ascontiguousarray(w.transpose(0, 3, 1, 2))
        out[f"features.{index}.bias"] = state[f"{name}.bias"]
    side, c5, fcw = model.feature_side, model.feature_channels, model.fc_width
    fc6 = state["fc6.weight"].reshape(fcw, side, side, c5)
    out["classifier.0.weight"] = np.ascontiguousarray(fc6.transpose(0, 3, 1, 2).reshape(fcw, -1))
    out["classifier.0.bias"] = state["fc6.bias"]
    out["classifier.3.weight"] = np.ascontiguousarray(state["fc7.weight"].reshape(fcw, fcw))
    out["classifier.3.bias"] = state["fc7.bias"]
    out["classifier.6.weight"] = np.ascontiguousarray(state["fc8.weight"].reshape(model.num_classes, fcw))
    out["classifier.6.bias"] = state["fc8.bias"]
    return out


def save_torchvision(model, path):
    """Write ``to_torchvision(model)`` to ``path``, atomically: ``.safetensors`` without torch
    (``safetensors.torch.load_file`` reads it), ``.pth`` with ``torch.save`` (needs torch; ``torch.load(path)``
    then gives the state dict)."""
    from ..checkpoint import atomic_write_bytes, check_output_path, save_file
    path = check_output_path("save_torchvision", path)
    state = to_torchvision(model)
    if path.suffix.lower() == ".safetensors":
        save_file(path, state)
        return path
    try:
        import torch
    except ImportError:
        raise ImportError("save_torchvision: writing a .pth needs torch; write a .safetensors file instead, "
                          "which torch users read with safetensors.torch.load_file") from None
    buffer = io.BytesIO()          # written whole, then atomically, as every other file vggcore writes
    torch.save(collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items()), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path
