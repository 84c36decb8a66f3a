"""Top-1 and top-5 error of trained nets on an ImageFolder: the paper's whole test protocol (sec. 3.2, 4.1-4.4,
Tables 3 to 7), and class posteriors of single images (``predict_images``, behind ``python -m vggcore predict``).

Per image, for each test scale Q (the image isotropically rescaled so its smaller side is Q):

* single crop: the centre crop x crop (and its mirror with ``flip``), one forward pass each;
* dense: the fully convolutional net on the whole rescaled image (and its mirror with ``flip``), the class
  score map averaged (the paper's sum-pooling) before the soft-max;
* multi-crop: a 5x5 grid of crop x crop crops spread evenly over the rescaled image (corners included) and
  the mirror of each: 50 views per scale.

Soft-max posteriors are averaged over the views of a method (over scales, flips and crops alike; each scale
contributes the same number of views). ``dense`` and ``multi_crop`` together average the two methods'
posteriors (the paper's "multi-crop & dense"); a list of models averages the models' posteriors (ConvNet
fusion, Table 6 / 7). Each image is decoded once: the decoded image is rescaled per Q on the loader's threads,
and crops and mirrors are taken in memory; crops go through the net in batches of ``batch_size``.

Top-k errors: top-5 is reported only when there are more than 5 classes (with 5 or fewer every label is
among the 5 best scores and the number says nothing): ``top5_err`` is still there, as the contract promises,
and is exactly 0, but ``top5_reported`` is False and the CLI prints "n/a". NaN or infinite
class scores are never a prediction: the forward pass raises ``vggcore._checks.NonFiniteScores`` (a
ValueError) naming how many images of the batch are affected (``topk_errors`` itself counts a non-finite
row as wrong for every k).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from collections import deque

import numpy as np

from . import data as _data
from ._checks import check_bool, check_finite_scores, check_int, check_rescaled_image_fits

__all__ = ["evaluate", "predict_images", "protocol_settings", "topk_errors", "multi_crop_offsets", "GRID"]

GRID = 5          # multi-crop: GRID x GRID positions per scale, each with its mirror


def topk_errors(probs: np.ndarray, labels: np.ndarray, k=(1, 5)):
    """Fractions of rows whose label is not among the k highest scores, for each k (k capped at the classes).

    A row with any non-finite score counts as wrong for every k.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    finite = np.isfinite(probs).all(axis=1) if probs.ndim == 2 else np.ones(len(labels), bool)
    safe = np.where(np.isfinite(probs), probs, 0.0) if probs.size else probs
    # Sort by descending score, ties broken by class index, so the result does not depend on the sort.
    order = np.lexsort((np.broadcast_to(np.arange(probs.shape[1]), probs.shape), -safe), axis=1)
    out = []
    for kk in k:
        kk = min(kk, probs.shape[1])
        hit = (order[:, :kk] == labels[:, None]).any(axis=1) & finite
        out.append(float(1.0 - hit.mean()) if len(labels) else float("nan"))
    return out


def _softmax(z):
    with np.errstate(invalid="ignore", over="ignore"):
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def resolve_device(device, model=None):
    """"auto" -> the model's device when it is not the cpu, else the first GPU if any, else "cpu"."""
    import vggcore as vc
    if device is None or device == "auto":
        if model is not None:
            current = next(iter(model.parameters())).device
            if current != "cpu":
                return current
        return vc.default_device()
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda:0' or 'auto', got {type(device).__name__}")
    available = vc.devices()
    if device == "cuda":
        device = "cuda:0"
    if device not in available:
        raise ValueError(f"device {device!r} is not available in this build/machine; available: {available}")
    return device


def _forward_scores(model, x_np, device):
    """Class scores of one NHWC batch as a float64 numpy array: (N, classes) or (N, h, w, classes)."""
    import vggcore as vc
    # The images in the model's dtype: a model converted with Module.to(dtype=...) (bfloat16 on sim/cuda, float64
    # on the cpu) takes its input in that dtype, as every op refuses mixed dtypes.
    # A model without parameters (or a plain callable) gets float32.
    params = model.parameters() if hasattr(model, "parameters") else ()
    dtype = next((p.dtype for p in params), "float32")
    with vc.no_grad():
        return check_finite_scores(model(vc.tensor(x_np, dtype=dtype, device=device)).numpy().astype(np.float64))


def predict_loader(model, loader, device, dense=False):
    """(softmax posteriors (N, classes), labels (N,)) of every batch the loader yields."""
    probs, labels = [], []
    for x, y in loader:
        # A ragged batch (whole images of different sizes) goes through the net one image at a time.
        parts = [xi[None] for xi in x] if isinstance(x, list) else [x]
        for part in parts:
            scores = _forward_scores(model, part, device)
            if dense:
                scores = scores.mean(axis=(1, 2))     # average the class score map (the paper's sum-pooling)
            probs.append(_softmax(scores))
        labels.append(y)
    if not probs:
        return np.zeros((0, model.num_classes)), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(labels)


def _folder_for(models, data_root):
    """The ImageFolder of ``data_root``, checked against every model: a model that names its classes must name
    the folder's, in its order (the posteriors are averaged and scored by class index); one without names
    (torchvision's or Caffe's weights) must have as many classes."""
    if isinstance(data_root, _data.ImageFolder):
        folder = data_root
    elif isinstance(data_root, (str, os.PathLike)):
        folder = _data.ImageFolder(data_root)
    else:
        raise TypeError(f"evaluate: data must be a folder path (str or os.PathLike) or a vggcore.data.ImageFolder, "
                        f"got {type(data_root).__name__} {data_root!r}")
    for i, model in enumerate(models):
        which = "the model" if len(models) == 1 else f"model {i} of the ensemble"
        names = getattr(model, "class_names", None)
        if names is not None:
            if list(names) != folder.classes:
                whose = "the model's" if len(models) == 1 else f"those of {which}"
                raise ValueError(f"evaluate: the classes of {folder.root} differ from {whose}: "
                                 + _data.class_differences(list(names), folder.classes, which, "the data"))
        elif len(folder.classes) != model.num_classes:
            raise ValueError(f"evaluate: {folder.root} has {len(folder.classes)} classes, {which} "
                             f"{model.num_classes} (and no class names)")
    return folder


def _default_scale(model, crop):
    s = getattr(model, "train_scale", None)
    if s is None:
        t = getattr(model, "test_scale", None)
        return max(int(t), crop) if t else crop
    if isinstance(s, (list, tuple)):
        return int(round(0.5 * (s[0] + s[1])))   # the paper's Q for jittered training
    return int(s)


def multi_crop_offsets(size: int, crop: int, n: int = GRID):
    """The n top (or left) offsets of a crop x crop window over a side of ``size`` pixels, evenly spread from
    0 to size - crop (both ends included)."""
    if size < crop:
        raise ValueError(f"multi-crop: a side of {size} pixels is smaller than the crop {crop}")
    return [int(round(i * (size - crop) / (n - 1))) for i in range(n)]


# ------------------------------------------------------------------------------------------- the protocol

class _Net:
    """One model of the evaluation: its plain net (crops) and its fully convolutional net (dense)."""

    def __init__(self, model, crop, dense, device):
        self.model = model
        self.home = next(iter(model.parameters())).device
        self.was_training = model.training
        self.crop = crop
        self.device = device
        self.plain = model
        if self.home != device:
            model.to(device)
        model.eval()
        self.fcn = model.to_fully_convolutional().eval() if dense else None   # made on the model's device

    def restore(self):
        if self.home != self.device:
            self.model.to(self.home)
        self.model.train(self.was_training)

    def posteriors(self, images, batch_size, net=None):
        """Soft-max posteriors (len(images), classes) of uint8 RGB views of one size, in batches."""
        net = self.plain if net is None else net
        out = []
        for start in range(0, len(images), batch_size):
            x = self.model.preprocess(np.stack(images[start:start + batch_size]))
            scores = _forward_scores(net, x, self.device)
            if scores.ndim == 4:
                scores = scores.mean(axis=(1, 2))      # average the class score map (the paper's sum-pooling)
            out.append(_softmax(scores))
        return np.concatenate(out)


def _centre(arr, crop):
    h, w = arr.shape[:2]
    y, x = (h - crop) // 2, (w - crop) // 2
    return arr[y:y + crop, x:x + crop]


def _chunk_posteriors(net: _Net, items, scales, single, dense, multi, flip, batch_size):
    """Averaged posteriors (len(items), classes) of one model over the chosen methods, scales and views.

    items: one dict {Q: uint8 (H, W, 3) rescaled image} per image.
    """
    crop = net.crop
    flips = (False, True) if flip else (False,)
    methods = []
    if single:
        acc, count = 0.0, 0
        for q in scales:
            crops = [_centre(it[q], crop) for it in items]
            for mirrored in flips:
                acc = acc + net.posteriors([c[:, ::-1] if mirrored else c for c in crops], batch_size)
                count += 1
        methods.append(acc / count)
    if multi:
        rows = []
        for it in items:
            views = []
            for q in scales:
                arr = it[q]
                ys = multi_crop_offsets(arr.shape[0], crop)
                xs = multi_crop_offsets(arr.shape[1], crop)
                for y in ys:
                    for x in xs:
                        c = arr[y:y + crop, x:x + crop]
                        views.append(c)
                        views.append(c[:, ::-1])
            rows.append(net.posteriors(views, batch_size).mean(axis=0))
        methods.append(np.stack(rows))
    if dense:
        rows = []
        for it in items:
            acc = 0.0
            for q in scales:
                arr = it[q]
                views = [arr[:, ::-1] if mirrored else arr for mirrored in flips]
                acc = acc + net.posteriors(views, batch_size, net=net.fcn).sum(axis=0)
            rows.append(acc / (len(scales) * len(flips)))
        methods.append(np.stack(rows))
    return sum(methods) / len(methods)


class _Progress:
    """An in-place 'images done, rate, ETA' line on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, enabled, total, what):
        self.enabled, self.total, self.what = bool(enabled) and total > 0, total, what
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last, self.next_mark = 0.0, 0.1

    def update(self, done, final=False):
        if not self.enabled:
            return
        now = time.perf_counter()
        frac = done / self.total
        if not final and (now - self.last < 0.5 or (not self.tty and frac < self.next_mark)):
            return
        self.last = now
        while frac >= self.next_mark:
            self.next_mark += 0.1
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        text = (f"{self.what}: {done}/{self.total} images  {rate:.1f} img/s  "
                + (f"{elapsed:.0f} s" if final else f"ETA {eta:.0f} s"))
        print(("\r" + text.ljust(70)) if self.tty else text, end="\n" if final or not self.tty else "",
              file=sys.stderr, flush=True)


def _as_models(model):
    from .interop import load_weights
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise ValueError("evaluate: the list of models is empty")
    out = []
    for m in models:
        if isinstance(m, (str, os.PathLike)):
            m = load_weights(m)
        if not hasattr(m, "preprocess") or not hasattr(m, "num_classes"):
            raise TypeError(f"evaluate: expected a VGG model or the path of its weights, got {type(m).__name__}")
        out.append(m)
    # Every member against the first one with names (not only against model 0, which may have none).
    named = [(i, m) for i, m in enumerate(out) if getattr(m, "class_names", None) is not None]
    for i, m in enumerate(out[1:], 1):
        if m.num_classes != out[0].num_classes:
            raise ValueError(f"evaluate: the ensemble's models have different class counts: model 0 has "
                             f"{out[0].num_classes}, model {i} {m.num_classes}")
    for i, m in named[1:]:
        j, ref = named[0]
        if list(m.class_names) != list(ref.class_names):
            raise ValueError(f"evaluate: the ensemble's models name their classes differently: "
                             + _data.class_differences(list(ref.class_names), list(m.class_names), f"model {j}",
                                                       f"model {i}"))
    return out


def _check_arguments(crop, scale, dense, flip, multi_crop, batch_size, num_workers):
    """Refuses what int()/bool() would silently turn into something else (crop=0 meaning "the default",
    crop=2.7 meaning 2, flip="no" meaning True) and scales whose rescaled images cannot fit in memory."""
    if crop is not None:
        check_int("evaluate", "crop", crop, 1)
    scales = [] if scale is None else [scale] if isinstance(scale, (int, np.integer, bool)) else scale
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
        raise TypeError(f"evaluate: scale must be an int Q or a list of them, got {type(scale).__name__} {scale!r}")
    scales = [check_int("evaluate", "scale", q, 1) for q in scales]
    for name, value in (("dense", dense), ("flip", flip), ("multi_crop", multi_crop)):
        check_bool("evaluate", name, value)
    check_int("evaluate", "batch_size", batch_size, 1)
    if num_workers is not None:
        check_int("evaluate", "num_workers", num_workers, 1)
    for q in scales:
        check_rescaled_image_fits("evaluate", q)


def _resolve_protocol(models, crop, scale, dense, multi_crop):
    crops = []
    for m in models:
        c = int(crop or m.input_size)
        if c != m.input_size and not m.fully_convolutional and (multi_crop or not dense):
            raise ValueError(f"evaluate: crop evaluation needs crop == the model's input_size ({m.input_size}), "
                             f"got {c}; use dense=True alone for other sizes")
        crops.append(c)
    if scale is None:
        scales = [_default_scale(models[0], crops[0])]
    elif isinstance(scale, (int, np.integer)):
        scales = [int(scale)]
    else:
        scales = [int(q) for q in scale]
        if not scales:
            raise ValueError("evaluate: scale is an empty list")
    for q in scales:
        for m, c in zip(models, crops):
            if q < c and (multi_crop or not dense):
                raise ValueError(f"evaluate: test scale Q={q} is smaller than the crop {c}")
            if q < m.input_size and dense:
                raise ValueError(f"evaluate: dense evaluation needs Q >= the model's input_size "
                                 f"({m.input_size}), got Q={q}")
    return crops, scales


def _describe(scales, crops, dense, multi_crop, flip, n_models):
    single = not dense and not multi_crop
    method = " + ".join((["single crop"] if single else []) + (["dense"] if dense else [])
                        + ([f"multi-crop {GRID}x{GRID}x2"] if multi_crop else [])
                        + (["flip"] if flip and (single or dense) else []))
    views = len(scales) * ((2 if flip else 1) * (single + dense) + (2 * GRID * GRID if multi_crop else 0))
    return {"scales": list(scales), "crop": crops[0], "dense": bool(dense), "multi_crop": bool(multi_crop),
            "flip": bool(flip), "models": n_models, "views_per_image": views * n_models, "method": method}


def _run(models, sources, load, scales, crops, dense, multi_crop, flip, device, batch_size, num_workers,
         progress, what):
    """Posteriors of every decodable source (ensemble-averaged) and the indices of the decoded ones."""
    single = not dense and not multi_crop
    device = resolve_device(device, models[0])
    nets = []
    try:
        for m, c in zip(models, crops):
            nets.append(_Net(m, c, dense, device))
        workers = _data.default_workers() if num_workers is None else max(1, int(num_workers))

        def prepare(i):
            img = load(i)                                     # the one decode of this image
            if img is None:
                return None
            return {q: np.asarray(_data.rescale(img, q)) for q in scales}

        n = len(sources)
        bar = _Progress(progress, n, what)
        probs, kept = [], []
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vggcore-eval") as pool:
            pending = deque()
            nxt = 0
            done = 0
            window = max(2 * batch_size, 2 * workers)
            chunk, chunk_idx = [], []

            def flush():
                if chunk:
                    p = sum(_chunk_posteriors(net, chunk, scales, single, dense, multi_crop, flip, batch_size)
                            for net in nets) / len(nets)
                    probs.append(p)
                    kept.extend(chunk_idx)
                    chunk.clear()
                    chunk_idx.clear()

            while nxt < n or pending:
                while nxt < n and len(pending) < window:
                    pending.append((nxt, pool.submit(prepare, nxt)))
                    nxt += 1
                i, fut = pending.popleft()
                item = fut.result()
                done += 1
                if item is not None:
                    chunk.append(item)
                    chunk_idx.append(i)
                if len(chunk) >= batch_size:
                    flush()
                    bar.update(done)
            flush()
            bar.update(done, final=True)
    finally:
        for net in nets:
            net.restore()
    classes = models[0].num_classes
    return (np.concatenate(probs) if probs else np.zeros((0, classes))), np.asarray(kept, dtype=np.int64)


def evaluate(model, data, crop=None, scale=None, dense=False, flip=False, device="auto", batch_size=32,
             num_workers=None, multi_crop=False, progress=None) -> dict:
    """Top-1/top-5 error of ``model`` (or a list of models: their averaged posteriors) on the ImageFolder ``data``.

    model: a VGG, the path of its weights (vggcore checkpoint, torchvision .pth, Caffe .caffemodel), or a
    list of those (an ensemble). data: a folder path or an ImageFolder; every model that names its classes must
    name the folder's, in order, and one without names must have as many (ValueError naming the model's index
    and the differing classes otherwise). crop: the crop size (default each model's input_size).
    scale: Q, or a list of Q (default: the training scale S, (Smin + Smax) / 2 for a jittered model, the
    model's test_scale, else the crop). dense: the fully convolutional net on the whole rescaled image.
    multi_crop: the 5x5 grid of crops and their mirrors per scale; with dense, both posteriors are averaged.
    flip: mirror views for single-crop and dense evaluation (multi-crop always has them). progress: an
    "images done, ETA" line on stderr (default: when stderr is a terminal).

    Returns ``{"top1_err", "top5_err", "top5_reported", "n", "skipped"}``: top5_reported is False for 5
    classes or fewer (top5_err is then 0 by construction and says nothing); ``protocol_settings`` with the same arguments names the scales, crop, methods and views used.
    Each image is decoded once whatever the number of scales, flips, crops and models. ValueError when no
    image of the folder can be decoded (there is no error rate to report).
    """
    _check_arguments(crop, scale, dense, flip, multi_crop, batch_size, num_workers)
    models = _as_models(model)
    crops, scales = _resolve_protocol(models, crop, scale, dense, multi_crop)
    folder = _folder_for(models, data)
    if progress is None:
        progress = sys.stderr.isatty()
    labels_all = np.array([label for _, label in folder.samples], dtype=np.int64)
    probs, kept = _run(models, folder.samples, folder.load, scales, crops, dense, multi_crop, flip, device,
                       batch_size, num_workers, progress, "eval")
    folder.warn_skipped()
    labels = labels_all[kept]
    if not len(labels):
        # no error rate to report, and a NaN one would read as a number (train raises the same way)
        raise ValueError(f"evaluate: no image of {folder.root} could be decoded ({folder.num_skipped} of "
                         f"{len(folder)} file(s) skipped, each named by a CorruptImageWarning)")
    classes = models[0].num_classes
    top1, top5 = topk_errors(probs, labels, k=(1, 5))
    return {"top1_err": top1, "top5_err": top5, "top5_reported": classes > 5, "n": int(len(labels)),
            "skipped": folder.num_skipped}


def protocol_settings(model, crop=None, scale=None, dense=False, flip=False, multi_crop=False) -> dict:
    """What ``evaluate`` with these arguments actually does: ``{"scales", "crop", "dense", "multi_crop", "flip",
    "models", "views_per_image" (forward-pass views per image, all models), "method" (text)}``."""
    models = _as_models(model)
    crops, scales = _resolve_protocol(models, crop, scale, dense, multi_crop)
    return _describe(scales, crops, dense, multi_crop, flip, len(models))


def predict_images(model, images, crop=None, scale=None, dense=False, flip=False, multi_crop=False,
                   device="auto", batch_size=32, num_workers=None):
    """Class posteriors (len(images), classes) of image files (or PIL images), with the same protocol and
    defaults as ``evaluate`` (model: a VGG, a weights path or a list of them). An undecodable file raises
    ValueError naming it."""
    _check_arguments(crop, scale, dense, flip, multi_crop, batch_size, num_workers)
    models = _as_models(model)
    crops, scales = _resolve_protocol(models, crop, scale, dense, multi_crop)
    images = list(images)

    def load(i):
        src = images[i]
        if isinstance(src, (str, os.PathLike)):
            if not os.path.isfile(src):
                raise FileNotFoundError(f"predict: {src} does not exist")
            img = _data.load_rgb(src)
            if img is None:
                raise ValueError(f"predict: {src} cannot be decoded as an image")
            return img
        return src.convert("RGB")

    probs, kept = _run(models, images, load, scales, crops, dense, multi_crop, flip, device, batch_size,
                       num_workers, False, "predict")
    return probs
