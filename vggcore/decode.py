"""JPEG decoding into the packed device buffer of ``augment_batch``: the header reader, the decoder interface, its
CPU implementation (Pillow, then an upload) and nvJPEG's (the nvidia-nvjpeg wheel, loaded at run time).

With a device decoder the loader threads only read each file's bytes and its JPEG header (the size the crop plan
needs); the batch's bytes go to the training thread, where ``JpegDecoder.decode_into`` writes every image as
interleaved RGB uint8 (h, w, 3) at its offset of one (bytes,) uint8 device tensor, the layout of PackedBatch that
augment_crops reads. Files a device decoder cannot take (not a JPEG, grayscale, CMYK, progressive, 12-bit, RGB-coded
or unusually subsampled JPEGs, see ``JpegHeader.device_decodable``) are decoded on the loader threads as before, and
an image the decoder fails on at run time is decoded again by the CPU implementation.

Orientation: neither path applies the EXIF orientation tag (Pillow's open does not, nvJPEG does not), so both
give the pixels in stored order, as the CPU transform always has.

nvJPEG is called through ctypes rather than a C++ loader: the library needs no header at build time and no CUDA
build (the search and the "not found" path are the same code on every machine and are tested without a GPU), its
calls release the GIL, and the per-batch overhead of a few ctypes calls is microseconds against milliseconds of
decode. It writes on vggcore's own stream (``_C.cuda_stream``), so its output is ordered before augment_crops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import io
import os
import threading
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image

__all__ = ["JpegHeader", "jpeg_header", "JpegDecoder", "CpuJpegDecoder", "NvjpegDecoder", "nvjpeg_available",
           "nvjpeg_status"]

# Start-of-frame markers (0xC4 DHT, 0xC8 JPG and 0xCC DAC share the range but are not frames).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Luma sampling factors of the chroma subsamplings nvJPEG names (444, 422, 420, 440, 411, 410), chroma at 1x1.
_DEVICE_LUMA_SAMPLING = frozenset({(1, 1), (2, 1), (2, 2), (1, 2), (4, 1), (4, 2)})


class JpegHeader(NamedTuple):
    """What a JPEG's markers before its first scan say: frame size, components, coding process."""
    width: int
    height: int
    components: int
    sof: int                # the frame marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    precision: int          # bits per sample
    sampling: tuple         # (horizontal, vertical) factors per component
    component_ids: tuple
    adobe_transform: int    # the Adobe APP14 colour transform (0 none, 1 YCbCr, 2 YCCK), -1 without APP14

    @property
    def progressive(self) -> bool:
        return self.sof in (0xC2, 0xC6, 0xCA, 0xCE)

    @property
    def device_decodable(self) -> bool:
        """A baseline or extended Huffman 8-bit YCbCr JPEG with a chroma subsampling nvJPEG names: the images a
        device decoder gets; everything else is decoded on the CPU."""
        ycbcr = self.adobe_transform in (-1, 1) and self.component_ids != (82, 71, 66)       # not 'R', 'G', 'B'
        return (self.sof in (0xC0, 0xC1) and self.precision == 8 and self.components == 3 and ycbcr
                and self.width > 0 and self.height > 0 and self.sampling[0] in _DEVICE_LUMA_SAMPLING
                and self.sampling[1] == (1, 1) and self.sampling[2] == (1, 1))


def jpeg_header(data) -> JpegHeader | None:
    """The header of the JPEG in ``data`` (bytes), read from its markers without decoding; None when ``data``
    is not a JPEG or its markers end before a frame header. The size is the one Pillow's ``Image.open`` gives."""
    view = memoryview(data)
    n = len(view)
    if n < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    i, adobe = 2, -1
    while i + 4 <= n:
        if view[i] != 0xFF:
            return None
        marker = view[i + 1]
        if marker == 0xFF:                          # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:      # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):                  # end of image, or a scan before any frame header
            return None
        length = (view[i + 2] << 8) | view[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        seg = view[i + 4:i + 2 + length]
        if marker == 0xEE and len(seg) >= 12 and bytes(seg[:5]) == b"Adobe":
            adobe = seg[11]
        elif marker in _SOF_MARKERS:
            if len(seg) < 6:
                return None
            count = seg[5]
            if len(seg) < 6 + 3 * count:
                return None
            ids = tuple(seg[6 + 3 * k] for k in range(count))
            sampling = tuple((seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(count))
            return JpegHeader(width=(seg[3] << 8) | seg[4], height=(seg[1] << 8) | seg[2], components=count,
                              sof=marker, precision=seg[0], sampling=sampling, component_ids=ids,
                              adobe_transform=adobe)
        i += 2 + length
    return None


class JpegDecoder:
    """Decodes JPEG bytes into a packed (bytes,) uint8 tensor on a device.

    ``decode_into(images, items)`` writes item k = (data, offset, height, width) as interleaved RGB (height, width,
    3) at byte ``offset`` of ``images``, and returns the positions of the items it could not decode (which the
    caller hands to the CPU implementation). ``check_device(device)`` raises ValueError where it cannot run."""

    name = "?"

    def check_device(self, device: str):
        pass

    def decode_into(self, images, items) -> list:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def decode_rgb_bytes(data, height, width):
    """Pillow's full decode of JPEG bytes to (height, width, 3) uint8, converted as the CPU transform converts
    (``convert("RGB")``); None when it fails or the decoded size is not (width, height)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            img = im if im.mode == "RGB" else im.convert("RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return pixels if pixels.shape == (height, width, 3) else None


class CpuJpegDecoder(JpegDecoder):
    """The interface on any device: Pillow decodes each image on the calling thread, and its pixels are copied
    into their place (``_C.write_bytes``). The fallback of every decoder, and what sim and cpu run."""

    name = "cpu"

    def decode_into(self, images, items) -> list:
        from . import _C
        failed = []
        for k, (data, offset, height, width) in enumerate(items):
            pixels = decode_rgb_bytes(data, height, width)
            if pixels is None:
                failed.append(k)
                continue
            _C.write_bytes(images, int(offset), pixels.reshape(-1))
        return failed


# ------------------------------------------------------------------------------------------------------ nvJPEG
_NVJPEG_OUTPUT_RGBI = 5
_NVJPEG_BACKEND_HARDWARE = 3
_NVJPEG_CSS_UNKNOWN = -1
_NVJPEG_CSS_NOT_IN_HARDWARE = (4, 5, 7)     # 411, 410, 410V: the hardware backend refuses them
_NVJPEG_MAX_COMPONENT = 4


class _NvjpegImage(ctypes.Structure):
    _fields_ = [("channel", ctypes.c_void_p * _NVJPEG_MAX_COMPONENT),
                ("pitch", ctypes.c_size_t * _NVJPEG_MAX_COMPONENT)]


_nvjpeg_lock = threading.Lock()
_nvjpeg_lib = None
_nvjpeg_reason = None


def _nvjpeg_candidates():
    """libnvjpeg from the nvidia-nvjpeg wheel (nvidia/cu13/lib, or the older nvidia/nvjpeg/lib), then the
    system's (LD_LIBRARY_PATH, ldconfig). VGGCORE_NVJPEG names a library file to use instead."""
    override = os.environ.get("VGGCORE_NVJPEG")
    if override:
        return [override]
    candidates = []
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        for sub in ("cu13", "cu12", "nvjpeg"):
            lib = os.path.join(base, sub, "lib")
            candidates += [os.path.join(lib, name) for name in ("libnvjpeg.so.13", "libnvjpeg.so.12")
                           if os.path.exists(os.path.join(lib, name))]
    found = ctypes.util.find_library("nvjpeg")
    candidates += [found] if found else []
    return candidates + ["libnvjpeg.so.13", "libnvjpeg.so.12"]


def _declare(lib):
    p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    for name, args in (("nvjpegCreateSimple", [ctypes.POINTER(p)]),
                       ("nvjpegCreateEx", [i, p, p, ctypes.c_uint, ctypes.POINTER(p)]),
                       ("nvjpegDestroy", [p]),
                       ("nvjpegJpegStateCreate", [p, ctypes.POINTER(p)]),
                       ("nvjpegJpegStateDestroy", [p]),
                       ("nvjpegGetImageInfo", [p, ctypes.c_char_p, sz, ctypes.POINTER(i), ctypes.POINTER(i),
                                               ctypes.POINTER(i), ctypes.POINTER(i)]),
                       ("nvjpegDecode", [p, p, ctypes.c_char_p, sz, i, ctypes.POINTER(_NvjpegImage), p]),
                       ("nvjpegDecodeBatchedInitialize", [p, p, i, i, i]),
                       ("nvjpegDecodeBatched", [p, p, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(sz),
                                                ctypes.POINTER(_NvjpegImage), p])):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _load_nvjpeg():
    """(library, None) or (None, why it is not available); looked for once per process."""
    global _nvjpeg_lib, _nvjpeg_reason
    with _nvjpeg_lock:
        if _nvjpeg_lib is None and _nvjpeg_reason is None:
            errors = []
            for path in _nvjpeg_candidates():
                try:
                    _nvjpeg_lib = _declare(ctypes.CDLL(path))
                    break
                except (OSError, AttributeError) as error:
                    errors.append(f"{path}: {error}")
            if _nvjpeg_lib is None:
                _nvjpeg_reason = ("the nvJPEG library was not found (pip install 'vggcore[nvjpeg]', i.e. "
                                  "nvidia-nvjpeg, or the system's libnvjpeg); tried " + "; ".join(errors))
        return _nvjpeg_lib, _nvjpeg_reason


def nvjpeg_status():
    """(True, path-free note) when libnvjpeg loads, else (False, why not)."""
    lib, reason = _load_nvjpeg()
    return (True, "nvJPEG loaded") if lib is not None else (False, reason)


def nvjpeg_available() -> bool:
    """Does libnvjpeg load in this process? (Never raises; a machine without it just decodes on the CPU.)"""
    return _load_nvjpeg()[0] is not None


class NvjpegDecoder(JpegDecoder):
    """nvJPEG's batched decode on the device's stream (the hardware JPEG engines where the GPU has them, else the
    default backend), straight into the packed buffer; a batch nvJPEG refuses is retried image by image, and an
    image it refuses (``nvjpegGetImageInfo`` disagreeing with the header, or a decode error) is returned as failed.

    nvJPEG's IDCT and chroma upsampling are not libjpeg's, so its pixels differ from Pillow's by a few levels
    (the bound is measured by tests/test_decode.py on a GPU)."""

    name = "nvjpeg"

    def __init__(self):
        lib, reason = _load_nvjpeg()
        if lib is None:
            raise ValueError(f"decode='nvjpeg': {reason}")
        self.lib = lib
        self._per_device = {}
        self._batch_size = {}         # per device: the batch size the batched decoder was initialised for
        self._warned = set()

    def check_device(self, device: str):
        if not str(device).startswith("cuda"):
            raise ValueError(f"decode='nvjpeg' decodes on a cuda device; the device is {device} (use decode='cpu' "
                             "or 'auto' there)")

    def _handles(self, index):
        """(single-image handle, its state, batched handle, its state) for cuda:index, made on first use."""
        got = self._per_device.get(index)
        if got is None:
            lib = self.lib
            single, batched = ctypes.c_void_p(), ctypes.c_void_p()
            self._status(lib.nvjpegCreateSimple(ctypes.byref(single)), "nvjpegCreateSimple")
            if lib.nvjpegCreateEx(_NVJPEG_BACKEND_HARDWARE, None, None, 0, ctypes.byref(batched)) != 0:
                batched = single
            states = []
            for handle in (single, batched):
                state = ctypes.c_void_p()
                self._status(lib.nvjpegJpegStateCreate(handle, ctypes.byref(state)), "nvjpegJpegStateCreate")
                states.append(state)
            got = self._per_device[index] = (single, states[0], batched, states[1])
        return got

    @staticmethod
    def _status(code, call):
        if code != 0:
            raise RuntimeError(f"nvJPEG: {call} failed with status {code}")

    def _subsampling(self, handle, data, height, width):
        """nvJPEG's chroma subsampling of the image, or None when nvJPEG's reading of it disagrees with ours."""
        n, css = ctypes.c_int(), ctypes.c_int()
        widths, heights = (ctypes.c_int * _NVJPEG_MAX_COMPONENT)(), (ctypes.c_int * _NVJPEG_MAX_COMPONENT)()
        code = self.lib.nvjpegGetImageInfo(handle, data, len(data), ctypes.byref(n), ctypes.byref(css), widths,
                                           heights)
        fits = code == 0 and n.value == 3 and css.value != _NVJPEG_CSS_UNKNOWN and (widths[0], heights[0]) == (
            width, height)
        return css.value if fits else None

    def decode_into(self, images, items) -> list:
        from . import _C
        device = images.device
        self.check_device(device)
        index = int(device.split(":")[1]) if ":" in device else 0
        stream = ctypes.c_void_p(_C.cuda_stream(index))
        try:
            single, single_state, batched, batched_state = self._handles(index)
        except RuntimeError as error:       # nvJPEG cannot start on this GPU: every image falls back to the CPU
            if index not in self._warned:
                self._warned.add(index)
                warnings.warn(f"{error}; decoding the JPEGs on the CPU instead", RuntimeWarning, stacklevel=3)
            return list(range(len(items)))
        take, alone, failed = [], [], []
        hardware = batched.value != single.value
        for k, (data, offset, height, width) in enumerate(items):
            css = self._subsampling(single, data, height, width)
            if css is None:
                failed.append(k)
            else:
                (alone if hardware and css in _NVJPEG_CSS_NOT_IN_HARDWARE else take).append(k)
        outputs = (_NvjpegImage * len(items))()
        for k, (_, offset, _, width) in enumerate(items):
            outputs[k].channel[0] = images.data_ptr + int(offset)
            outputs[k].pitch[0] = 3 * int(width)
        lib = self.lib
        if take:
            batch = (_NvjpegImage * len(take))(*[outputs[k] for k in take])
            datas = (ctypes.c_char_p * len(take))(*[items[k][0] for k in take])
            lengths = (ctypes.c_size_t * len(take))(*[len(items[k][0]) for k in take])
            ok = self._batch_size.get(index) == len(take) or lib.nvjpegDecodeBatchedInitialize(
                batched, batched_state, len(take), 1, _NVJPEG_OUTPUT_RGBI) == 0
            ok = ok and lib.nvjpegDecodeBatched(batched, batched_state, datas, lengths, batch, stream) == 0
            self._batch_size[index] = len(take) if ok else None     # a failed batch re-initialises the next one
            if not ok:              # one image the batch cannot take fails it all: image by image
                alone += take
        for k in alone:
            data = items[k][0]
            if lib.nvjpegDecode(single, single_state, data, len(data), _NVJPEG_OUTPUT_RGBI,
                                ctypes.byref(outputs[k]), stream) != 0:
                failed.append(k)
        return sorted(failed)
