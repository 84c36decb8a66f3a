"""Top-1 and top-5 error of a trained net on an ImageFolder, the paper's ways (sec. 3.2, Tables 3 to 5).

* single crop: rescale to Q, take the centre crop x crop, one forward pass;
* dense: the fully convolutional net on the whole rescaled image, class scores averaged over the score map;
* flip: the soft-max posteriors of the image and its horizontal mirror are averaged;
* multi-scale: a list of Q; soft-max posteriors are averaged over the scales.
"""

from __future__ import annotations

import os

import numpy as np

from . import data as _data
from ._checks import check_finite_scores

__all__ = ["evaluate", "topk_errors"]


def topk_errors(probs: np.ndarray, labels: np.ndarray, k=(1, 5)):
    """Fractions of rows whose label is not among the k highest scores, for each k (k capped at the classes)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    # Sort by descending score, ties broken by class index, so the result does not depend on the sort.
    order = np.lexsort((np.broadcast_to(np.arange(probs.shape[1]), probs.shape), -probs), axis=1)
    out = []
    for kk in k:
        kk = min(kk, probs.shape[1])
        hit = (order[:, :kk] == labels[:, None]).any(axis=1)
        out.append(float(1.0 - hit.mean()) if len(labels) else float("nan"))
    return out


def _softmax(z):
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
    with vc.no_grad():
        return check_finite_scores(model(vc.tensor(x_np, device=device)).numpy().astype(np.float64))


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


def _folder_for(model, data_root):
    folder = data_root if isinstance(data_root, _data.ImageFolder) else _data.ImageFolder(data_root)
    names = getattr(model, "class_names", None)
    if names is not None:
        if list(names) != folder.classes:
            only_model = sorted(set(names) - set(folder.classes))
            only_data = sorted(set(folder.classes) - set(names))
            raise ValueError(f"evaluate: the classes of {folder.root} differ from the model's: only in the "
                             f"model: {only_model or 'none'}; only in the data: {only_data or 'none'}"
                             + ("" if only_model or only_data else " (same names, different order)"))
    elif len(folder.classes) != model.num_classes:
        raise ValueError(f"evaluate: {folder.root} has {len(folder.classes)} classes, the model {model.num_classes}")
    return folder


def _default_scale(model, crop):
    s = getattr(model, "train_scale", None)
    if s is None:
        return crop
    if isinstance(s, (list, tuple)):
        return int(round(0.5 * (s[0] + s[1])))   # the paper's Q for jittered training
    return int(s)


def evaluate(model, data, crop=None, scale=None, dense=False, flip=False, device="auto", batch_size=32,
             num_workers=None) -> dict:
    """Top-1/top-5 error of ``model`` on the ImageFolder ``data`` (``data/<class>/*``).

    model: a VGG (or the path of a vggcore checkpoint). crop: the single-crop size (default the model's
    input_size). scale: Q, or a list of Q for multi-scale evaluation (default: the training scale S, or
    (Smin + Smax) / 2 for a jittered model, else the crop). dense: evaluate the fully convolutional net on the
    whole rescaled image. flip: also evaluate the mirror image and average the posteriors.
    Returns ``{"top1_err", "top5_err", "n"}`` (and "skipped", the undecodable files left out).
    The model must carry its class names and mean RGB (trained or loaded models do); a model moved to another
    device for the evaluation is moved back afterwards.
    """
    if isinstance(model, (str, os.PathLike)):
        from .models import load
        model = load(model)
    crop = int(crop or model.input_size)
    if not dense and crop != model.input_size and not model.fully_convolutional:
        raise ValueError(f"evaluate: single-crop evaluation needs crop == the model's input_size "
                         f"({model.input_size}), got {crop}; use dense=True for other sizes")
    if scale is None:
        scales = [_default_scale(model, crop)]
    elif isinstance(scale, (int, np.integer)):
        scales = [int(scale)]
    else:
        scales = [int(q) for q in scale]
        if not scales:
            raise ValueError("evaluate: scale is an empty list")
    for q in scales:
        if q < crop and not dense:
            raise ValueError(f"evaluate: test scale Q={q} is smaller than the crop {crop}")
        if q < model.input_size and dense:
            raise ValueError(f"evaluate: dense evaluation needs Q >= the model's input_size "
                             f"({model.input_size}), got Q={q}")
    folder = _folder_for(model, data)
    mean_rgb = model.mean_rgb if model.mean_rgb is not None else [0.0, 0.0, 0.0]
    input_scale = getattr(model, "input_scale", _data.DEFAULT_INPUT_SCALE)

    home = next(iter(model.parameters())).device
    device = resolve_device(device, model)
    was_training = model.training
    net = model.to_fully_convolutional() if dense else model
    if net is not model or home != device:
        net.to(device)
    net.eval()
    try:
        total, labels = None, None
        for q in scales:
            for mirrored in ((False, True) if flip else (False,)):
                tf = _data.EvalTransform(q, mean_rgb, crop=None if dense else crop, flip=mirrored,
                                         input_scale=input_scale)
                loader = _data.DataLoader(folder, batch_size, tf, num_workers=num_workers, ragged=dense)
                try:
                    probs, y = predict_loader(net, loader, device, dense=dense)
                finally:
                    loader.close()
                total = probs if total is None else total + probs
                labels = y
        total /= len(scales) * (2 if flip else 1)
    finally:
        if net is model:
            if home != device:
                model.to(home)
            model.train(was_training)
    top1, top5 = topk_errors(total, labels)
    return {"top1_err": top1, "top5_err": top5, "n": int(len(labels)), "skipped": folder.num_skipped}
