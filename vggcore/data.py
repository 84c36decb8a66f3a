"""Image folders, the paper's augmentation and a prefetching batch loader (NumPy and Pillow only).

Pipeline of one training image (Simonyan & Zisserman, sec. 3.1, with AlexNet's colour shift):

    decode (Pillow, RGB) -> isotropic rescale, smallest side S (fixed, or S ~ U{Smin..Smax} per image)
    -> random crop x crop -> random horizontal flip -> + PCA colour shift -> - mean RGB -> * input_scale

Evaluation images are rescaled to Q and centre-cropped (or kept whole for dense evaluation). Batches are
NHWC float32 arrays. Every random choice for an image comes from a generator seeded by
(seed, epoch, position in the epoch), so batches are identical run to run whatever the thread timing.
The random choices are made from the image file's header, before decoding, so that only the crop's source
region is resampled and a large JPEG can be decoded at a reduced scale (see ``load_planned``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import threading
import unicodedata
import warnings
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS", "CorruptImageWarning", "ImageFolder", "check_same_classes", "class_differences", "load_rgb",
    "rescale", "compute_stats", "TrainTransform", "EvalTransform", "DataLoader", "default_workers", "load_planned",
    "PackedBatch", "load_packed", "load_encoded", "augment_batch",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_INPUT_SCALE = 1.0 / 255.0


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def default_workers() -> int:
    """Decoding threads: one per core, at least 2 so decoding overlaps compute, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


def _image_files(folder: Path, extensions) -> list:
    """The image files under ``folder``, subfolders included, in torchvision's order (its ``make_dataset``:
    ``sorted(os.walk(folder, followlinks=True))``, then the sorted names of each folder's files).

    Hidden names (a leading ".") are skipped, folders and files. A folder whose real path was already walked
    (a symbolic link back to a parent, or two links to one folder) is not walked again: torchvision would
    list its images once per path, or loop until the paths grow too long. Only regular files and symbolic
    links whose target is missing are listed: a broken link is then skipped, with a warning, when it fails to
    open, like any unreadable file, rather than vanishing from the count; a FIFO or socket named ``x.png``
    (which would block the reader) is left out.
    """
    walked, found = set(), []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files = []
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path)):
                files.append(path)
        found.append((dirpath, sorted(files)))
    return [path for _, files in sorted(found) for path in files]


class ImageFolder:
    """``root/<class>/**/<image>`` files, classes being the sorted subfolder names (as torchvision's ImageFolder).

    A class's images are every image file under its folder, subfolders included (followed through symbolic
    links, as torchvision's ``os.walk(..., followlinks=True)``; a folder reached twice through links is read
    once), in torchvision's order: folder by folder (sorted paths), files sorted within each. Names starting
    with "." (``.DS_Store``, ``._0.jpg``, ``.git/``) are skipped, files and folders alike. A symbolic link whose
    target is missing is listed like any file and skipped as undecodable when it is read.

    Raises TypeError for a root that is not a path, FileNotFoundError for a missing root, NotADirectoryError for
    a file, and ValueError for a folder with no class subfolders or a class subfolder with no image files, all
    before any image is decoded. Undecodable files found later are skipped: ``load`` warns once per file
    (CorruptImageWarning naming it) and records it in ``skipped``.
    """

    def __init__(self, root, extensions=IMAGE_EXTENSIONS):
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"ImageFolder: root must be a folder path (str or os.PathLike), got "
                            f"{type(root).__name__} {root!r}")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"data folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"data folder {self.root} is not a directory")
        extensions = tuple(e.lower() for e in extensions)
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"data folder {self.root} has no class subfolders; expected "
                             f"{self.root}/<class name>/<image files>")
        self.classes = [p.name for p in class_dirs]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for label, folder in enumerate(class_dirs):
            files = _image_files(folder, extensions)
            if not files:
                raise ValueError(f"class folder {folder} holds no images, in it or in its subfolders (looked for "
                                 f"{', '.join(extensions)}; names starting with '.' are skipped)")
            self.samples.extend((path, label) for path in files)
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)
        self.skipped = set()
        self._warned = set()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.samples)

    def __repr__(self):
        return f"ImageFolder({str(self.root)!r}, {len(self.classes)} classes, {len(self)} images)"

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def load(self, index):
        """The decoded RGB ``PIL.Image`` of sample ``index``, or None when the file cannot be decoded."""
        path = self.samples[index][0]
        img = load_rgb(path)
        if img is None:
            self.mark_skipped(path)
        return img

    def mark_skipped(self, path):
        """Record ``path`` as undecodable (thread-safe); ``warn_skipped`` names it later."""
        with self._lock:
            self.skipped.add(path)

    def warn_skipped(self):
        """Issue one CorruptImageWarning per newly skipped file (called from the consuming thread)."""
        with self._lock:
            new = sorted(self.skipped - self._warned)
            self._warned.update(new)
        for path in new:
            warnings.warn(f"skipping {path}: the file cannot be decoded as an image "
                          f"({len(self.skipped)} skipped so far)", CorruptImageWarning, stacklevel=3)


def class_differences(ours, theirs, our_name: str, their_name: str) -> str:
    """'only in <our_name>: [...]; only in <their_name>: [...]' for two lists of class names, for error messages.

    Names that print alike but differ are shown with ``ascii()`` so that the difference is visible: names equal
    after Unicode normalisation (NFC 'caf\\xe9' against NFD 'cafe\\u0301', as copying a folder from macOS can
    make; a note then says so), and names holding invisible or control characters. Otherwise they print as
    Python strings (``repr``).
    """
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    normalised = {unicodedata.normalize("NFC", n) for n in only_ours}
    same_when_normalised = any(unicodedata.normalize("NFC", n) in normalised for n in only_theirs)
    show = ascii if same_when_normalised or not all(n.isprintable() for n in only_ours + only_theirs) else repr
    text = (f"only in {our_name}: {show(only_ours) if only_ours else 'none'}; "
            f"only in {their_name}: {show(only_theirs) if only_theirs else 'none'}")
    if same_when_normalised:
        text += (" (some names differ only in their Unicode normalisation, e.g. NFC against NFD as a macOS copy "
                 "can make: they are different folder names, so rename one side's folders to the other's form)")
    elif not only_ours and not only_theirs:
        text += " (same names, different order)"
    return text


def check_same_classes(train: ImageFolder, val: ImageFolder):
    """Raise ValueError naming the differences when the two folders do not hold the same classes."""
    if train.classes != val.classes:
        raise ValueError(f"the classes of {val.root} differ from those of {train.root}: "
                         f"{class_differences(train.classes, val.classes, 'train', 'val')}")


def load_rgb(path):
    """Decode an image file into an RGB ``PIL.Image``; None when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any decoded image, by the image's real range. PIL's own convert("RGB") clips 16-bit, 32-bit
    integer and float pixels to 0..255, so a 16-bit PNG at 1.5% grey (value ~1000) would load as white. Here
    16-bit images (modes I;16*, or mode I with values in 0..65535, as Pillow opens 16-bit PNGs) map 0..65535 to
    0..255; float images in 0..1 map to 0..255, in 0..255 stay, and otherwise (like wider integer images) their
    min..max maps to 0..255; non-finite float pixels become 0."""
    mode = im.mode
    if mode not in ("I", "F") and not mode.startswith("I;16"):
        return im.convert("RGB")
    values = np.asarray(im, dtype=np.float64)
    if mode == "F":
        values = np.where(np.isfinite(values), values, 0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        values = values * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        values = values * 255.0
    elif not (mode == "F" and lo >= 0 and hi <= 255):
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def rescale(img: Image.Image, smallest_side: int) -> Image.Image:
    """Isotropic rescale so that the smaller side becomes ``smallest_side`` pixels (bilinear, antialiased)."""
    w, h = img.size
    if min(w, h) == smallest_side:
        return img
    if w <= h:
        size = (smallest_side, max(1, round(h * smallest_side / w)))
    else:
        size = (max(1, round(w * smallest_side / h)), smallest_side)
    return img.resize(size, Image.BILINEAR)


def _scale_range(scale, op="TrainTransform"):
    """(Smin, Smax) from an int S or a pair of ints; validates it (``op`` names the caller in the errors).

    Only ints (Python's or NumPy's) are taken, as evaluate takes its Q: int() would truncate a float pair
    (36.9, 48.2) to (36, 48) and read the string "48" as the pair ('4', '8'). TypeError for another type,
    ValueError for a wrong length or range.
    """
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if isinstance(scale, np.ndarray):
        scale = scale.tolist()
    if is_int(scale):
        lo = hi = int(scale)
    else:
        if isinstance(scale, (str, bytes)) or not isinstance(scale, (list, tuple)):
            raise TypeError(f"{op}: scale must be an int S or a pair (Smin, Smax) of ints, got "
                            f"{type(scale).__name__} {scale!r}")
        if len(scale) != 2:
            raise ValueError(f"{op}: scale must be an int S or a pair (Smin, Smax) of ints, got {len(scale)} "
                             f"values {scale!r}")
        if not all(is_int(s) for s in scale):
            raise TypeError(f"{op}: scale must be an int S or a pair (Smin, Smax) of ints, got {scale!r} "
                            f"({', '.join(type(s).__name__ for s in scale)})")
        lo, hi = (int(s) for s in scale)
    if lo < 1 or hi < lo:
        raise ValueError(f"{op}: scale must satisfy 1 <= Smin <= Smax, got {scale!r}")
    return lo, hi


# ----------------------------------------------------------------------------------------------------- stats

def _stats_cache_file(folder, idx, sample, seed):
    h = hashlib.sha1()
    h.update(json.dumps([str(folder.root.resolve()), len(folder), sample, seed]).encode())
    for i in idx:
        path = folder.samples[i][0]
        try:
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}|missing\n".encode())
    from .datasets import cache_dir
    return cache_dir() / "stats" / f"{h.hexdigest()}.json"


def _pixel_sums(px):
    """Sum and sum of outer products of an (N, 3) uint8 pixel sample, in float64.

    Every partial sum is an integer below 2**53 (N <= 65536 pixels of at most 255**2 per product), so these
    float64 sums are exact whatever the summation order: the result does not depend on how BLAS splits them.
    """
    px = px.astype(np.float64)
    return px.sum(0), px.T @ px, len(px)


def compute_stats(folder: ImageFolder, sample: int = 2000, seed: int = 0, cache=True, num_workers=None,
                  progress=None, log=None) -> dict:
    """Mean RGB and the eigen decomposition of the RGB covariance, from up to ``sample`` training images.

    Returns ``{"mean_rgb": [3] (0..255 units), "eigval": [3], "eigvec": [[3]x3] (columns are eigenvectors)}``;
    the covariance is of pixels scaled to [0, 1], the convention of the usual AlexNet colour-shift
    implementations. Images with more than 65,536 pixels contribute a random sample of 65,536 of them. With
    ``cache`` the result is stored under the cache folder, keyed by the folder's path, its file list and the
    sampled files' sizes and times, so a second run reuses it.

    Images are decoded and summed on ``num_workers`` threads (default: one per core, as the loader); the
    random pixel samples are drawn in file order on the calling thread, so the result is the same for any
    number of threads. ``progress(done, total)`` is called as images are done; ``log(message)`` receives one
    line saying what is computed (or that the cache was used).
    """
    rng = np.random.default_rng([seed, 0x57A75])
    n = len(folder)
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    cache_file = None
    if cache:
        cache_file = _stats_cache_file(folder, idx, sample, seed)
        try:
            stats = json.loads(cache_file.read_text())
            if log is not None:
                log(f"preprocessing statistics (mean RGB, colour PCA) of {len(idx)} training images: "
                    f"cached in {cache_file}")
            return stats
        except (OSError, ValueError):
            pass

    workers = default_workers() if num_workers is None else max(1, int(num_workers))
    if log is not None:
        log(f"computing the preprocessing statistics (mean RGB, colour PCA) of {len(idx)} of {n} training "
            f"images on {workers} thread{'s' if workers > 1 else ''}" + (" (cached for later runs)" if cache else ""))

    def decode(i):
        img = folder.load(int(i))
        return None if img is None else np.asarray(img).reshape(-1, 3)

    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    window = 4 * workers           # decoded images waiting for the calling thread: bounded memory
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vggcore-stats") as pool:
        decoded, summed = deque(), deque()
        todo = iter(idx)
        for i in itertools.islice(todo, window):
            decoded.append(pool.submit(decode, i))
        done = 0
        while decoded:
            px = decoded.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                decoded.append(pool.submit(decode, nxt))
            if px is not None:
                if len(px) > 65536:        # bound the cost of very large images
                    px = np.take(px, rng.choice(len(px), size=65536, replace=False), axis=0)
                summed.append(pool.submit(_pixel_sums, px))
            while summed and (summed[0].done() or len(summed) > window):
                s, o, c = summed.popleft().result()
                total += s
                outer += o
                count += c
            done += 1
            if progress is not None:
                progress(done, len(idx))
        for f in summed:
            s, o, c = f.result()
            total += s
            outer += o
            count += c
    folder.warn_skipped()
    if count == 0:
        raise ValueError(f"compute_stats: none of the {len(idx)} sampled images of {folder.root} could be decoded")
    mean = total / count
    cov = (outer / count - np.outer(mean, mean)) / (255.0 ** 2)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    stats = {"mean_rgb": mean.tolist(), "eigval": np.maximum(eigval[order], 0).tolist(),
             "eigvec": eigvec[:, order].tolist()}
    if cache:
        from .checkpoint import atomic_write_bytes
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cache_file, json.dumps(stats).encode())
        except OSError:
            pass                    # a read-only cache folder only costs recomputation
    return stats


# ------------------------------------------------------------------------------------------------ transforms

class _Plan(tuple):
    """An image's random choices, made before it is decoded: (scaled size, crop box, flip, colour shift)."""
    __slots__ = ()

    def __new__(cls, scaled, box, flip, shift):
        return super().__new__(cls, (scaled, box, flip, shift))

    scaled = property(lambda self: self[0])     # (w, h) of the whole image rescaled to S
    box = property(lambda self: self[1])        # (x0, y0, x1, y1) of the crop in the rescaled image
    flip = property(lambda self: self[2])
    shift = property(lambda self: self[3])      # float32 [3] subtracted from the pixels


def _scaled_size(w, h, smallest_side):
    """(w, h) after the isotropic rescale that makes the smaller side ``smallest_side``."""
    if min(w, h) == smallest_side:
        return w, h
    if w <= h:
        return smallest_side, max(1, round(h * smallest_side / w))
    return max(1, round(w * smallest_side / h)), smallest_side


def _resample_crop(img: Image.Image, scaled, box, flip=False) -> np.ndarray:
    """``box`` of ``img`` rescaled to ``scaled`` (then mirrored when ``flip``), as a uint8 array, resampling
    only the box's source region.

    The bilinear (antialiased) filter is the one of ``rescale``; Pillow reads the box's coordinates in single
    precision, so a sample position can move by about 1e-5 pixel and a value by one level (in some pixels)
    against rescaling the whole image and cropping it. ``img`` may be smaller than the size ``scaled`` was
    planned for (a JPEG decoded at 1/2, 1/4 or 1/8 scale): the box is mapped proportionally.
    """
    w, h = img.size
    x0, y0, x1, y1 = box
    if tuple(scaled) == (w, h):
        region = img.crop(box) if tuple(box) != (0, 0, w, h) else img
    else:
        region = img.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=_source_region((w, h), scaled, box))
    if flip:                # mirrored by Pillow on uint8: cheaper than a reversed-stride float conversion
        region = region.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(region)


def _source_region(size, scaled, box):
    """The crop ``box`` of the image rescaled to ``scaled``, mapped back into the pixels of the image of ``size``
    = (w, h) that is resampled: (x0, y0, x1, y1) as floats (the box itself when no rescale is planned)."""
    w, h = size
    x0, y0, x1, y1 = box
    if tuple(scaled) == (w, h):
        return float(x0), float(y0), float(x1), float(y1)
    sx, sy = w / scaled[0], h / scaled[1]
    return x0 * sx, y0 * sy, min(x1 * sx, w), min(y1 * sy, h)


def _crop_to_float(arr, flip, shift, input_scale, out):
    """A square uint8 crop (c, c, 3), mirrored when ``flip``, minus ``shift``, times ``input_scale``, as float32
    into ``out`` (allocated when None).

    The same float32 values as mirroring with Pillow and then ``_to_float`` (uint8 -> float32 exactly, the
    subtraction and the product each rounded once), in one pass of the augment_crops CPU twin on a region that
    resamples nothing: 0.10 ms instead of 0.41 ms for a 224 crop (NumPy's three passes), and no Pillow mirror.
    """
    from . import _C
    c = arr.shape[0]
    if out is None:
        out = np.empty((c, c, 3), np.float32)
    row = np.array([[0, c, c, 0, 0, c, c, 1 if flip else 0, shift[0], shift[1], shift[2]]], np.float64)
    _C.augment_crops_host(np.ascontiguousarray(arr).reshape(-1), row, c, input_scale, out[None])
    return out


def _to_float(arr, plan, input_scale, out):
    """arr - shift, times input_scale, as float32 into ``out`` (allocated when None)."""
    if out is None:
        out = np.empty(arr.shape, np.float32)
    np.copyto(out, arr, casting="unsafe")       # exact: uint8 -> float32; faster than a mixed-type subtract
    np.subtract(out, plan.shift, out=out)
    if input_scale != 1.0:
        np.multiply(out, input_scale, out=out)
    return out


class TrainTransform:
    """The paper's training augmentation of one decoded image; returns a (crop, crop, 3) float32 array.

    scale: S (single-scale training) or (Smin, Smax) (scale jittering, S drawn per image).
    colour_std: std of the AlexNet colour-shift coefficients (0.1); 0 or eigval None disables it.

    The random choices (S, crop offset, flip, colour coefficients, drawn in that order) are made by ``plan``
    from the image's size alone, so the loader can make them before decoding; only the crop's source region
    is then resampled (``_resample_crop``), and a JPEG at least twice S is decoded at a reduced DCT scale.
    """

    def __init__(self, crop, scale, mean_rgb, eigval=None, eigvec=None, flip=True, colour_std=0.1,
                 input_scale=DEFAULT_INPUT_SCALE):
        self.crop = int(crop)
        self.smin, self.smax = _scale_range(scale)
        if self.crop < 1:
            raise ValueError(f"crop must be positive, got {crop}")
        if self.smin < self.crop:
            raise ValueError(f"scale S={self.smin} is smaller than the crop {self.crop}: the smallest image "
                             "side must be at least the crop size")
        self.mean_rgb = np.asarray(mean_rgb, dtype=np.float32).reshape(3)
        self.flip = bool(flip)
        self.colour_std = float(colour_std) if eigval is not None else 0.0
        if self.colour_std > 0:
            # Per-unit-alpha shift along each eigenvector, in 0..255 pixel units.
            self.colour_basis = (np.asarray(eigvec, dtype=np.float64).reshape(3, 3)
                                 * np.asarray(eigval, dtype=np.float64).reshape(1, 3) * 255.0)
        self.input_scale = float(input_scale)

    @property
    def output_shape(self):
        return (self.crop, self.crop, 3)

    def plan(self, size, rng: np.random.Generator) -> _Plan:
        """The random choices for an image of ``size`` = (w, h)."""
        s = int(rng.integers(self.smin, self.smax + 1))
        w2, h2 = _scaled_size(size[0], size[1], s)
        y = int(rng.integers(0, h2 - self.crop + 1))
        x = int(rng.integers(0, w2 - self.crop + 1))
        flip = self.flip and rng.random() < 0.5
        shift = self.mean_rgb
        if self.colour_std > 0:
            alpha = rng.normal(0.0, self.colour_std, size=3)
            shift = self.mean_rgb - (self.colour_basis @ alpha).astype(np.float32)
        return _Plan((w2, h2), (x, y, x + self.crop, y + self.crop), flip, shift)

    def apply(self, img: Image.Image, plan: _Plan, out=None) -> np.ndarray:
        """The transformed image of ``plan``, written into ``out`` (crop, crop, 3) float32 when given."""
        return _crop_to_float(_resample_crop(img, plan.scaled, plan.box), plan.flip, plan.shift, self.input_scale,
                              out)

    def __call__(self, img: Image.Image, rng: np.random.Generator, out=None) -> np.ndarray:
        return self.apply(img, self.plan(img.size, rng), out)


class EvalTransform:
    """Test-time preprocessing: rescale to Q, then a centre crop (``crop``) or the whole image (crop=None)."""

    def __init__(self, scale, mean_rgb, crop=None, flip=False, input_scale=DEFAULT_INPUT_SCALE):
        self.scale = int(scale)
        self.crop = None if crop is None else int(crop)
        if self.crop is not None and self.scale < self.crop:
            raise ValueError(f"test scale Q={self.scale} is smaller than the crop {self.crop}")
        self.mean_rgb = np.asarray(mean_rgb, dtype=np.float32).reshape(3)
        self.flip = bool(flip)
        self.input_scale = float(input_scale)

    @property
    def output_shape(self):
        """(crop, crop, 3), or None for whole images (their size varies)."""
        return None if self.crop is None else (self.crop, self.crop, 3)

    def plan(self, size, rng=None) -> _Plan:
        w2, h2 = _scaled_size(size[0], size[1], self.scale)
        box = (0, 0, w2, h2)
        if self.crop is not None:
            y, x = (h2 - self.crop) // 2, (w2 - self.crop) // 2
            box = (x, y, x + self.crop, y + self.crop)
        return _Plan((w2, h2), box, self.flip, self.mean_rgb)

    def apply(self, img: Image.Image, plan: _Plan, out=None) -> np.ndarray:
        if self.crop is None and img.size != tuple(plan.scaled):
            img = img.resize(plan.scaled, Image.BILINEAR)                 # exactly ``rescale``
        if self.crop is not None:
            return _crop_to_float(_resample_crop(img, plan.scaled, plan.box), plan.flip, plan.shift,
                                  self.input_scale, out)
        return _to_float(_resample_crop(img, img.size if self.crop is None else plan.scaled, plan.box, plan.flip),
                         plan, self.input_scale, out)

    def __call__(self, img: Image.Image, rng=None, out=None) -> np.ndarray:
        return self.apply(img, self.plan(img.size), out)


# ---------------------------------------------------------------------------------------------------- loader

# Test-only switch: False lets a pinned loader reuse a buffer whose copy has not completed (the bug the emulator
# must catch). Never turn it off outside tests.
_WAIT_FOR_COPIES = True

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif")


def _decode_planned(folder: ImageFolder, index: int, transform, rng):
    """(decoded RGB image, plan) of sample ``index`` for a transform with ``plan``; None when undecodable.

    A JPEG's plan is made from its header, and a JPEG whose smaller side is at least twice the planned one is
    decoded at the largest DCT scale (1/2, 1/4, 1/8) that keeps it at least that size (``Image.draft``).
    """
    path = folder.samples[index][0]
    if not path.lower().endswith(_JPEG_EXTENSIONS):
        img = folder.load(index)
        return None if img is None else (img, transform.plan(img.size, rng))
    try:
        im = Image.open(path)
    except _DECODE_ERRORS:
        folder.mark_skipped(path)
        return None
    if im.format != "JPEG":             # named .jpg but something else: the general path
        im.close()
        img = folder.load(index)
        return None if img is None else (img, transform.plan(img.size, rng))
    try:
        plan = transform.plan(im.size, rng)
        if min(im.size) >= 2 * min(plan.scaled):
            im.draft("RGB", tuple(plan.scaled))
        im.load()
        img = im if im.mode == "RGB" else im.convert("RGB")
    except _DECODE_ERRORS:
        im.close()
        folder.mark_skipped(path)
        return None
    return img, plan


def load_planned(folder: ImageFolder, index: int, transform, rng, out=None):
    """Decode sample ``index`` and apply ``transform`` with ``rng``; None when the file cannot be decoded.

    A transform with ``plan``/``apply`` makes its random choices from the file's header; a JPEG whose smaller
    side is at least twice the planned one is then decoded at the largest DCT scale (1/2, 1/4, 1/8) that
    keeps it at least that size (``Image.draft``), which changes the pixels a little against a full decode
    (a different, also antialiased, downscale). Other formats go through ``folder.load``. A plain callable
    ``transform(img, rng)`` gets the fully decoded image.
    """
    if not hasattr(transform, "plan"):
        img = folder.load(index)
        return None if img is None else transform(img, rng)
    got = _decode_planned(folder, index, transform, rng)
    return None if got is None else transform.apply(got[0], got[1], out)


# ------------------------------------------------------------------------------------ device-side augmentation

_PLAN_COLUMNS = 11      # offset, height, width, x0, y0, x1, y1, flip, shift_r, shift_g, shift_b


def load_packed(folder: ImageFolder, index: int, transform, rng):
    """Sample ``index`` decoded but not augmented: (pixels (h, w, 3) uint8, plan row (11,) float64), or None.

    The plan is ``load_planned``'s (same ``rng`` draws, same DCT-scale decode), as a row of ``augment_batch``'s
    plans: the crop's source region in the decoded pixels, the flip and the colour shift (mean included).
    """
    got = _decode_planned(folder, index, transform, rng)
    if got is None:
        return None
    img, plan = got
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels, _plan_row(pixels.shape[0], pixels.shape[1], plan)


def _plan_row(h, w, plan):
    """The plan row (offset 0) of an image decoded to h x w pixels."""
    row = np.empty(_PLAN_COLUMNS, np.float64)
    row[:3] = 0, h, w
    row[3:7] = _source_region((w, h), plan.scaled, plan.box)
    row[7] = 1.0 if plan.flip else 0.0
    row[8:] = plan.shift
    return row


class _Encoded(tuple):
    """A JPEG left for a device decoder: its file's bytes, its plan row (full-size decode) and its path."""
    __slots__ = ()

    def __new__(cls, data, row, path):
        return super().__new__(cls, (data, row, path))


def load_encoded(folder: ImageFolder, index: int, transform, rng):
    """Sample ``index`` for a device decoder: its bytes and plan row (an ``_Encoded``) when the file is a JPEG the
    decoder takes (``JpegHeader.device_decodable``), else ``load_packed``'s decoded pixels and row; None when it
    cannot be read or decoded.

    The plan is drawn from the header's size with the same ``rng`` draws as ``load_packed``; the region is in the
    full-size image's pixels, since a device decoder has no DCT-scale decode (where ``load_packed`` decodes a JPEG
    at least twice the planned size at 1/2, 1/4 or 1/8 scale, the device path resamples the full image: the same
    crop and flip, a slightly different downscale)."""
    from .decode import jpeg_header
    path = folder.samples[index][0]
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        folder.mark_skipped(path)
        return None
    head = jpeg_header(data)
    if head is None or not head.device_decodable:
        return load_packed(folder, index, transform, rng)
    plan = transform.plan((head.width, head.height), rng)
    return _Encoded(data, _plan_row(head.height, head.width, plan), path)


# A device decoder's images start at multiples of this many bytes (the alignment of a cudaMalloc block), in case
# its kernels write them with vector stores.
_DEVICE_IMAGE_ALIGN = 256


class PackedBatch:
    """Decoded images of one batch for ``augment_batch``: ``pixels`` (bytes,) uint8, every image's (h, w, 3)
    pixels one after the other; ``plans`` (N, 11) float64, one row per image (offset of its pixels, height,
    width, source region x0, y0, x1, y1, flip, colour shift r, g, b); the ``crop`` and ``input_scale``.

    With a device decoder (``DataLoader(decode=...)``) some images are still JPEG bytes: ``encoded`` lists them as
    (data, offset, height, width, path), their pixels to be written by ``decoder`` at ``offset``, past the decoded
    ``pixels`` (each at a multiple of 256 bytes); ``nbytes`` is the size of the whole packed buffer. ``kept`` is set by ``augment_batch``: the rows it
    augmented (an image no decoder could decode is left out, as the CPU path leaves it out of its batch)."""

    __slots__ = ("pixels", "plans", "crop", "input_scale", "encoded", "nbytes", "decoder", "folder", "kept")

    def __init__(self, pixels, plans, crop, input_scale, encoded=(), nbytes=None, decoder=None, folder=None):
        self.pixels, self.plans, self.crop, self.input_scale = pixels, plans, int(crop), float(input_scale)
        self.encoded = list(encoded)
        self.nbytes = int(len(pixels) if nbytes is None else nbytes)
        self.decoder, self.folder = decoder, folder
        self.kept = None

    def __len__(self):
        return len(self.plans)

    @property
    def shape(self):
        """The shape of the batch ``augment_batch`` makes: (N, crop, crop, 3)."""
        return (len(self.plans), self.crop, self.crop, 3)

    @classmethod
    def pack(cls, items, crop, input_scale, decoder=None, folder=None):
        """From ``load_packed``'s (pixels, row) pairs and ``load_encoded``'s results, in batch order: the decoded
        images' pixels first, then the places of the encoded ones."""
        decoded = [k for k, item in enumerate(items) if not isinstance(item, _Encoded)]
        encoded = [k for k, item in enumerate(items) if isinstance(item, _Encoded)]
        pixels = np.empty(sum(items[k][0].size for k in decoded), np.uint8)
        plans = np.empty((len(items), _PLAN_COLUMNS), np.float64)
        offset, jpegs = 0, []
        for k in decoded:
            p, row = items[k]
            pixels[offset:offset + p.size] = p.reshape(-1)
            plans[k] = row
            plans[k, 0] = offset
            offset += p.size
        for k in encoded:
            data, row, path = items[k]
            h, w = int(row[1]), int(row[2])
            offset = -(-offset // _DEVICE_IMAGE_ALIGN) * _DEVICE_IMAGE_ALIGN
            plans[k] = row
            plans[k, 0] = offset
            jpegs.append((data, offset, h, w, path))
            offset += h * w * 3
        return cls(pixels, plans, crop, input_scale, jpegs, offset, decoder, folder)

    def device_images(self, device):
        """The packed (bytes,) uint8 images on ``device`` and the plans of the images in it, which are all of
        them unless a JPEG could be decoded neither by the decoder nor by the CPU (``kept`` says which rows)."""
        from . import _C
        self.kept = np.ones(len(self.plans), bool)
        if not self.encoded:
            return _C.Tensor.from_numpy(self.pixels, device), self.plans
        from .decode import CpuJpegDecoder
        decoder = self.decoder if self.decoder is not None else CpuJpegDecoder()
        decoder.check_device(device)
        images = _C.empty_bytes(self.nbytes, device)
        _C.write_bytes(images, 0, self.pixels)
        items = [e[:4] for e in self.encoded]
        failed = decoder.decode_into(images, items)
        if failed and not isinstance(decoder, CpuJpegDecoder):
            retry = CpuJpegDecoder().decode_into(images, [items[j] for j in failed])
            failed = [failed[j] for j in retry]
        if failed:
            lost = {self.encoded[j][1] for j in failed}
            for j in failed:
                if self.folder is not None:
                    self.folder.mark_skipped(self.encoded[j][4])
            self.kept = np.array([int(row[0]) not in lost for row in self.plans], bool)
        return images, self.plans[self.kept]


def augment_batch(batch: PackedBatch, device="cpu", dtype="float32"):
    """The augmented batch (N, crop, crop, 3) of a PackedBatch as a vggcore Tensor on ``device``, computed there.

    Only the uint8 pixels travel to the device (1 byte per channel instead of 4); the op ``augment_crops``
    (csrc/augment.h) resamples each image's region to crop x crop (bilinear, antialiased when shrinking: Pillow's
    BILINEAR resize with a box), mirrors, subtracts the shift and multiplies by input_scale. It keeps float32
    between the two resampling passes and does not round, where Pillow rounds to uint8 after each pass: against
    the CPU transform (same seed, same crops and flips) a value differs by at most about one pixel level times
    input_scale (measured in tests/test_augment.py); a crop that resamples nothing (scaled size = decoded size) is
    exact. dtype: "float32", or "bfloat16" on sim and cuda (rounded once). On the cpu it runs the CPU twin.

    A batch with JPEG bytes (a loader with a device decoder) is decoded first, into the packed buffer on the device
    (``PackedBatch.device_images``); the result holds the rows of ``batch.kept``.
    """
    from . import _C
    from .tensor import Tensor
    device = str(device)
    pixels, plans = batch.device_images(device)
    out = _C.augment_crops(pixels, _C.Tensor.from_numpy(plans, "cpu"), batch.crop, batch.input_scale, dtype)
    return Tensor._from_engine(out)


def _resolve_decoder(decode, device_augment, device=None, op="DataLoader"):
    """The JpegDecoder for ``decode`` (None: decode on the loader threads with Pillow, as without device_augment).

    "cpu": None. "nvjpeg": an NvjpegDecoder; ValueError naming why where it cannot work (no device_augment, the
    library not found, a device given that is not cuda). "auto": nvjpeg when device_augment is on, the library
    loads and ``device`` is cuda, else None (also without a device: the loader cannot know where its batches go).
    A JpegDecoder instance is used as it is (needs device_augment)."""
    from . import decode as _decode
    if isinstance(decode, _decode.JpegDecoder):
        if not device_augment:
            raise ValueError(f"{op}: decode={decode!r} needs device_augment=True (the decoder writes the packed "
                             "batch that the device augmentation reads)")
        return decode
    if decode not in ("cpu", "nvjpeg", "auto"):
        raise ValueError(f"{op}: decode must be 'cpu', 'nvjpeg' or 'auto' (or a vggcore.decode.JpegDecoder), "
                         f"got {decode!r}")
    if decode == "cpu":
        return None
    if decode == "auto":
        if not device_augment or device is None or not str(device).startswith("cuda"):
            return None
        return _decode.NvjpegDecoder() if _decode.nvjpeg_available() else None
    if not device_augment:
        raise ValueError(f"{op}: decode='nvjpeg' needs device_augment=True (nvJPEG decodes into the packed batch "
                         "that the device augmentation reads)")
    try:
        decoder = _decode.NvjpegDecoder()
        if device is not None:
            decoder.check_device(device)
    except ValueError as error:
        raise ValueError(f"{op}: {error}") from None
    return decoder


class DataLoader:
    """Batches ``(x, y)`` of an ImageFolder: x NHWC float32, y int64, prepared by a pool of threads.

    ``loader.epoch(e)`` iterates epoch ``e``: its order (when shuffling) and every image's augmentation come
    from generators seeded by ``(seed, e)`` and ``(seed, e, position in the epoch)``, so the batches do not
    depend on thread timing or the number of threads, and resuming at epoch ``e`` reproduces them.

    The threads (``num_workers``, default one per core, 2 to 8) share the images of each batch, written
    straight into the batch's array. Batches are prepared ahead of the consumer, at most ``prefetch``
    (default 4) of them and at most ``prefetch_bytes`` (default 512 MiB) of them, at least one: with the
    paper's batch of 256 224-pixel crops (154 MB) that is 3 batches ahead, so the loader's arrays peak at
    about 4 batches (the 3 ahead and the one the consumer holds), whatever the number of threads. With
    ``reuse_buffers=True`` those arrays are recycled: a yielded batch stays valid only until the next one is
    requested (the training loop copies it to the device first); by default every batch is a new array.

    Undecodable files are left out of their batch (so a batch can be short) and warned about once each from
    the consuming thread. ``iter(loader)`` is ``loader.epoch(0)``. With ``ragged=True`` a batch whose images
    differ in size comes as a list of (H, W, 3) arrays instead.

    With ``pin_memory=True`` the batch arrays are page-locked host memory (``vggcore.pinned_empty``), the source
    the device prefetcher (vggcore.prefetch) copies from asynchronously; they are recycled as with
    ``reuse_buffers=True``, but a buffer is written again only once the copy that reads it has completed (each
    buffer's last copy is checked; a new buffer is made while fewer than ``batches_ahead + 4`` exist, after that
    the loader waits for the oldest one's copy). On a machine without a GPU pinned memory is ordinary aligned memory.
    ``close()`` ends the loader: a later ``epoch`` raises ValueError.

    With ``device_augment=True`` (a transform with a fixed crop) the threads only decode: x is a PackedBatch of
    the decoded uint8 images and their plans (the same random draws as the CPU transform's), which
    ``augment_batch(x, device)`` turns into the float batch on the device.

    ``decode`` (with device_augment): "cpu" decodes on the threads (Pillow); "nvjpeg" leaves the JPEGs that nvJPEG
    takes to the device (vggcore.decode: the threads read the bytes and the header, nvJPEG decodes them in
    ``augment_batch``; other files, and any image nvJPEG fails on, are decoded by Pillow); "auto" (default) is
    nvjpeg when the library loads and ``augment_device`` (the device ``augment_batch`` will run on) is cuda, else
    cpu. A ``vggcore.decode.JpegDecoder`` instance may be given instead (CpuJpegDecoder runs the device path's
    packing with Pillow's decode, on any device).
    """

    def __init__(self, folder: ImageFolder, batch_size: int, transform, *, shuffle=False, seed=0,
                 num_workers=None, prefetch=None, drop_last=False, ragged=False, prefetch_bytes=512 << 20,
                 reuse_buffers=False, pin_memory=False, device_augment=False, decode="auto", augment_device=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device_augment = bool(device_augment)
        self.decoder = _resolve_decoder(decode, self.device_augment, augment_device)
        if self.device_augment and (not hasattr(transform, "plan") or getattr(transform, "crop", None) is None):
            raise ValueError("DataLoader: device_augment=True needs a TrainTransform or an EvalTransform with a crop "
                             f"(a fixed output size), got {transform!r}")
        self.folder = folder
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = default_workers() if num_workers is None else max(1, int(num_workers))
        self.prefetch = 4 if prefetch is None else max(1, int(prefetch))
        self.prefetch_bytes = int(prefetch_bytes)
        self.drop_last = bool(drop_last)
        self.ragged = bool(ragged)
        self.pin_memory = bool(pin_memory)
        self.reuse_buffers = bool(reuse_buffers) or self.pin_memory
        self._shape = None if self.device_augment else getattr(transform, "output_shape", None)
        self._free = []
        self._pinned_made = 0
        self._pool = None
        self._closed = False

    def __len__(self):
        n = len(self.folder)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    @property
    def batch_bytes(self):
        """Bytes of one full batch's array, or None when the images' size is not fixed (packed batches: their
        decoded images vary in size; counted as float crops, of the order of a decoded image at S near the crop)."""
        if self.device_augment:
            return self.batch_size * int(np.prod(self.transform.output_shape)) * 4
        if self._shape is None:
            return None
        return self.batch_size * int(np.prod(self._shape)) * 4

    @property
    def batches_ahead(self) -> int:
        """How many batches are prepared ahead of the consumer (``prefetch`` capped by ``prefetch_bytes``)."""
        nbytes = self.batch_bytes
        if nbytes is None:
            return self.prefetch
        return max(1, min(self.prefetch, self.prefetch_bytes // nbytes))

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of epoch ``epoch``, in the order they are batched."""
        n = len(self.folder)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch), 0x0DE5]).permutation(n)

    def _fill(self, epoch, start, indices, lo, hi, buf, results):
        """Images lo..hi-1 of a batch: into buf[pos] (fixed shapes) or results[pos] (None: undecodable)."""
        for pos in range(lo, hi):
            rng = np.random.default_rng([self.seed, int(epoch), start + pos])
            if self.device_augment:
                load = load_packed if self.decoder is None else load_encoded
                results[pos] = load(self.folder, int(indices[pos]), self.transform, rng)
                continue
            out = None if buf is None else buf[pos]
            results[pos] = load_planned(self.folder, int(indices[pos]), self.transform, rng, out)

    def _take_buffer(self):
        """A batch array to fill: a recycled one (pinned: the oldest whose copy has completed), else a new one."""
        shape = (self.batch_size,) + tuple(self._shape)
        if not self.pin_memory:
            return self._free.pop() if self._free else np.empty(shape, np.float32)
        from . import _C
        for i, buf in enumerate(self._free):
            if not _WAIT_FOR_COPIES or _C.pinned_ready(buf):
                return self._free.pop(i)
        if not self._free or self._pinned_made < self.batches_ahead + 4:
            self._pinned_made += 1
            return _C.pinned_empty(list(shape), "float32")
        buf = self._free.pop(0)
        _C.pinned_wait(buf)             # every buffer is still being copied from: wait for the oldest
        return buf

    def _submit(self, epoch, start, indices):
        n = len(indices)
        buf = None
        if self._shape is not None:
            buf = self._take_buffer()
        results = [None] * n
        chunk = max(1, -(-n // self.num_workers))             # one piece per thread
        futures = [self._pool.submit(self._fill, epoch, start, indices, lo, min(n, lo + chunk), buf, results)
                   for lo in range(0, n, chunk)]
        return futures, indices, buf, results

    def _assemble(self, job):
        """The (x, y) of a finished batch, and the buffer to recycle once the consumer is done with it."""
        futures, indices, buf, results = job
        for f in futures:
            f.result()
        ok = np.array([r is not None for r in results], dtype=bool)
        labels = np.array([self.folder.samples[int(i)][1] for i in indices], dtype=np.int64)[ok]
        if not ok.any():
            return None, buf
        if self.device_augment:
            return (PackedBatch.pack([r for r in results if r is not None], self.transform.crop,
                                     self.transform.input_scale, self.decoder, self.folder), labels), None
        if buf is not None:
            if ok.all():
                return (buf[:len(indices)], labels), buf
            return (buf[:len(indices)][ok], labels), buf       # a copy: the buffer is free again at once
        xs = [r for r in results if r is not None]
        shapes = {x.shape for x in xs}
        if len(shapes) > 1 and self.ragged:
            return (xs, labels), None
        if len(shapes) > 1:
            raise ValueError(f"images of one batch have different shapes {sorted(shapes)}; use a crop, "
                             "or ragged=True for whole images of different sizes")
        return (np.stack(xs), labels), None

    def _check_open(self):
        if self._closed:
            raise ValueError("DataLoader: the loader is closed (close() was called); make a new DataLoader")

    def epoch(self, epoch: int = 0):
        self._check_open()
        order = self.order(epoch)
        starts = list(range(0, len(order), self.batch_size))
        if self.drop_last and len(order) % self.batch_size:
            starts = starts[:-1]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="vggcore-data")
        ahead = self.batches_ahead
        pending = deque()
        todo = iter(starts)
        try:
            for start in itertools.islice(todo, ahead):
                pending.append(self._submit(epoch, start, order[start:start + self.batch_size]))
            while pending:
                self._check_open()
                batch, buf = self._assemble(pending.popleft())
                self.folder.warn_skipped()
                start = next(todo, None)
                if batch is not None and buf is not None and batch[0].base is not buf:
                    self._free.append(buf)     # the batch was compacted into a new array
                    buf = None
                if batch is None and buf is not None:
                    self._free.append(buf)
                    buf = None
                if start is not None:
                    pending.append(self._submit(epoch, start, order[start:start + self.batch_size]))
                if batch is not None:
                    yield batch
                if buf is not None and self.reuse_buffers:
                    self._free.append(buf)
        finally:
            for job in pending:
                for f in job[0]:
                    f.cancel()

    def close(self):
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._free.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
