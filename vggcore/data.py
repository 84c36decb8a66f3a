"""Image folders, the paper's augmentation and a prefetching batch loader (NumPy and Pillow only).

Pipeline of one training image (Simonyan & Zisserman, sec. 3.1, with AlexNet's colour shift):

    decode (Pillow, RGB) -> isotropic rescale, smallest side S (fixed, or S ~ U{Smin..Smax} per image)
    -> random crop x crop -> random horizontal flip -> + PCA colour shift -> - mean RGB -> * input_scale

Evaluation images are rescaled to Q and centre-cropped (or kept whole for dense evaluation). Batches are
NHWC float32 arrays. Every random choice for an image comes from a generator seeded by
(seed, epoch, position in the epoch), so batches are identical run to run whatever the thread timing.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
import warnings
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS", "CorruptImageWarning", "ImageFolder", "check_same_classes", "load_rgb", "rescale",
    "compute_stats", "TrainTransform", "EvalTransform", "DataLoader", "default_workers",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_INPUT_SCALE = 1.0 / 255.0


class CorruptImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def default_workers() -> int:
    """Decoding threads: one per core, at least 2 so decoding overlaps compute, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


class ImageFolder:
    """``root/<class>/<image>`` files, classes being the sorted subfolder names (as torchvision's ImageFolder).

    Raises FileNotFoundError for a missing root, NotADirectoryError for a file, and ValueError for a folder
    with no class subfolders or a class subfolder with no image files, all before any image is decoded.
    Undecodable files found later are skipped: ``load`` warns once per file (CorruptImageWarning naming it)
    and records it in ``skipped``.
    """

    def __init__(self, root, extensions=IMAGE_EXTENSIONS):
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
            files = sorted(p for p in folder.iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)
            if not files:
                raise ValueError(f"class folder {folder} holds no images (looked for {', '.join(extensions)})")
            self.samples.extend((str(p), label) for p in files)
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
            with self._lock:
                self.skipped.add(path)
        return img

    def warn_skipped(self):
        """Issue one CorruptImageWarning per newly skipped file (called from the consuming thread)."""
        with self._lock:
            new = sorted(self.skipped - self._warned)
            self._warned.update(new)
        for path in new:
            warnings.warn(f"skipping {path}: the file cannot be decoded as an image "
                          f"({len(self.skipped)} skipped so far)", CorruptImageWarning, stacklevel=3)


def check_same_classes(train: ImageFolder, val: ImageFolder):
    """Raise ValueError naming the differences when the two folders do not hold the same classes."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(f"the classes of {val.root} differ from those of {train.root}: "
                         f"only in train: {only_train or 'none'}; only in val: {only_val or 'none'}")


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


def _scale_range(scale):
    """(Smin, Smax) from an int S or a pair; validates it."""
    if isinstance(scale, (int, np.integer)):
        lo = hi = int(scale)
    else:
        try:
            lo, hi = (int(s) for s in scale)
        except (TypeError, ValueError):
            raise ValueError(f"scale must be an int S or a pair (Smin, Smax), got {scale!r}") from None
    if lo < 1 or hi < lo:
        raise ValueError(f"scale must satisfy 1 <= Smin <= Smax, got {scale!r}")
    return lo, hi


# ----------------------------------------------------------------------------------------------------- stats

def compute_stats(folder: ImageFolder, sample: int = 2000, seed: int = 0, cache=True) -> dict:
    """Mean RGB and the eigen decomposition of the RGB covariance, from up to ``sample`` training images.

    Returns ``{"mean_rgb": [3] (0..255 units), "eigval": [3], "eigvec": [[3]x3] (columns are eigenvectors)}``;
    the covariance is of pixels scaled to [0, 1], the convention of the usual AlexNet colour-shift
    implementations. With ``cache`` the result is stored under the cache folder, keyed by the folder's path,
    its file list and the sampled files' sizes and times, so a second run reuses it.
    """
    rng = np.random.default_rng([seed, 0x57A75])
    n = len(folder)
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    key = None
    if cache:
        h = hashlib.sha1()
        h.update(json.dumps([str(folder.root.resolve()), n, sample, seed]).encode())
        for i in idx:
            path = folder.samples[i][0]
            try:
                st = os.stat(path)
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
        key = h.hexdigest()
        from .datasets import cache_dir
        cache_file = cache_dir() / "stats" / f"{key}.json"
        try:
            return json.loads(cache_file.read_text())
        except (OSError, ValueError):
            pass

    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    for i in idx:
        img = folder.load(int(i))
        if img is None:
            continue
        px = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        if len(px) > 65536:        # bound the cost of very large images
            px = px[rng.choice(len(px), size=65536, replace=False)]
        total += px.sum(0)
        outer += px.T @ px
        count += len(px)
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

class TrainTransform:
    """The paper's training augmentation of one decoded image; returns a (crop, crop, 3) float32 array.

    scale: S (single-scale training) or (Smin, Smax) (scale jittering, S drawn per image).
    colour_std: std of the AlexNet colour-shift coefficients (0.1); 0 or eigval None disables it.
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

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        s = int(rng.integers(self.smin, self.smax + 1))
        arr = np.asarray(rescale(img, s))
        h, w = arr.shape[:2]
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        arr = arr[y:y + self.crop, x:x + self.crop]
        if self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        out = arr.astype(np.float32)
        shift = self.mean_rgb
        if self.colour_std > 0:
            alpha = rng.normal(0.0, self.colour_std, size=3)
            shift = self.mean_rgb - (self.colour_basis @ alpha).astype(np.float32)
        out -= shift
        if self.input_scale != 1.0:
            out *= self.input_scale
        return out


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

    def __call__(self, img: Image.Image, rng=None) -> np.ndarray:
        arr = np.asarray(rescale(img, self.scale))
        if self.crop is not None:
            h, w = arr.shape[:2]
            y, x = (h - self.crop) // 2, (w - self.crop) // 2
            arr = arr[y:y + self.crop, x:x + self.crop]
        if self.flip:
            arr = arr[:, ::-1]
        out = arr.astype(np.float32) - self.mean_rgb
        if self.input_scale != 1.0:
            out *= self.input_scale
        return out


# ---------------------------------------------------------------------------------------------------- loader

class DataLoader:
    """Batches ``(x, y)`` of an ImageFolder: x NHWC float32, y int64, prepared by a pool of threads.

    ``loader.epoch(e)`` iterates epoch ``e``: its order (when shuffling) and every image's augmentation come
    from generators seeded by ``(seed, e)`` and ``(seed, e, position)``, so the batches do not depend on
    thread timing, and resuming at epoch ``e`` reproduces them. Up to ``prefetch`` batches are prepared
    ahead of the consumer. Undecodable files are left out of their batch (so a batch can be short) and
    warned about once each from the consuming thread. ``iter(loader)`` is ``loader.epoch(0)``. With
    ``ragged=True`` a batch whose images differ in size comes as a list of (H, W, 3) arrays instead.
    """

    def __init__(self, folder: ImageFolder, batch_size: int, transform, *, shuffle=False, seed=0,
                 num_workers=None, prefetch=None, drop_last=False, ragged=False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.folder = folder
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_workers = default_workers() if num_workers is None else max(1, int(num_workers))
        self.prefetch = 2 * self.num_workers if prefetch is None else max(1, int(prefetch))
        self.drop_last = bool(drop_last)
        self.ragged = bool(ragged)
        self._pool = None

    def __len__(self):
        n = len(self.folder)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of epoch ``epoch``, in the order they are batched."""
        n = len(self.folder)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch), 0x0DE5]).permutation(n)

    def _make_batch(self, epoch, start, indices):
        xs, ys = [], []
        for pos, i in enumerate(indices):
            img = self.folder.load(int(i))
            if img is None:
                continue
            rng = np.random.default_rng([self.seed, int(epoch), start + pos])
            xs.append(self.transform(img, rng))
            ys.append(self.folder.samples[int(i)][1])
        if not xs:
            return None
        shapes = {x.shape for x in xs}
        if len(shapes) > 1 and self.ragged:
            return xs, np.asarray(ys, dtype=np.int64)
        if len(shapes) > 1:
            raise ValueError(f"images of one batch have different shapes {sorted(shapes)}; use a crop, "
                             "or ragged=True for whole images of different sizes")
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    def epoch(self, epoch: int = 0):
        order = self.order(epoch)
        starts = list(range(0, len(order), self.batch_size))
        if self.drop_last and len(order) % self.batch_size:
            starts = starts[:-1]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="vggcore-data")
        pending = deque()
        try:
            for start in starts:
                pending.append(self._pool.submit(self._make_batch, epoch, start, order[start:start + self.batch_size]))
                if len(pending) >= self.prefetch:
                    batch = pending.popleft().result()
                    self.folder.warn_skipped()
                    if batch is not None:
                        yield batch
            while pending:
                batch = pending.popleft().result()
                self.folder.warn_skipped()
                if batch is not None:
                    yield batch
        finally:
            for f in pending:
                f.cancel()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
