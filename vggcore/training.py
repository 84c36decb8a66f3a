"""The paper's training recipe (Simonyan & Zisserman, sec. 3.1): ``vggcore.train(...)``.

Mini-batch SGD with momentum 0.9 and weight decay 5e-4, dropout 0.5 on fc6 and fc7, learning rate 1e-2
divided by 10 when the validation top-1 error stops improving (``lr_patience`` epochs without improvement),
random crops of images rescaled to S (fixed or jittered in [Smin, Smax]), random flips and the AlexNet colour
shift. Every epoch ends with a validation pass (centre crop at Q = S, or (Smin + Smax) / 2 when jittering),
one summary line and a checkpoint.

Checkpoints (``checkpoint_dir/last.safetensors``, and ``best.safetensors`` for the best validation top-1
error) hold the model with its class names and preprocessing, the optimizer state, the epoch, vggcore's
random generator state, the schedule state and the history; ``resume=True`` continues from ``last`` and
reproduces the uninterrupted run exactly (the data order and augmentation of an epoch are functions of the
seed and the epoch number alone). A NaN or infinite loss stops training with FloatingPointError before the
weights are updated, leaving the last good checkpoint in place; an epoch whose weights or validation scores are
not finite is never checkpointed, so "the last good checkpoint" really is one. ``best`` is written before
``last``, so a crash between the two writes never loses a best model that ``last`` already counts.

A new run refuses a checkpoint folder that already holds one (``resume=True`` continues it, ``overwrite=True``
replaces it); the folder is checked for writability before the first epoch, and temporary files left by a killed
write are removed (vggcore/_rundir.py).

Learning-rate plateau rule (vggcore/_schedule.py): epochs without a better validation top-1 error are counted
only once the net has started to learn, i.e. once its best error is below 0.9 times the error of guessing the
most frequent class; a thin net that sits at chance for its first epochs keeps its rate until it takes off.

The training loop only talks to the device through vggcore tensors, so the same code runs on cpu, sim and cuda.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _graph_step
from . import _parallel
from . import prefetch as _prefetch
from . import checkpoint as _ckpt
from . import data as _data
from . import datasets as _datasets
from . import random as _random
from . import _rundir
from . import _schedule
from ._checks import NonFiniteScores, check_bool, check_int, check_real, check_rescaled_image_fits, nonfinite_parameters
from .evaluation import predict_loader, resolve_device, topk_errors
from .models import config_name, describe, from_description, init_from as _init_from, vgg as _vgg
from .models import fine_tune_from as _fine_tune_from

__all__ = ["train", "TrainResult", "PAPER_DEFAULTS", "BUILTIN_DEFAULTS"]

# Defaults of the arguments left as None: the paper's settings for your own data, and a small net and small
# images for the built-in shapes dataset so that ``python -m vggcore train`` finishes in minutes on a CPU.
# The built-in preset departs from the paper where a thin net needs it: He initialisation (Glorot's shrinks the
# signal through 11 thin ReLU layers and training stalls at chance) and no dropout (with 128-wide FC layers,
# dropout 0.5 keeps the net at chance for many epochs). The same holds for a thin net on your own data, so
# there the default init is He's too (THIN_NET_INIT): at width 0.25 on 32-pixel inputs, Glorot's initial logits
# have std 0.03 (A) down to 0.0006 (E) for unit-variance inputs, He's 0.4 to 3.
PAPER_DEFAULTS = {"epochs": 74, "batch_size": 256, "scale": 256, "crop": 224, "width": 1.0, "fc_width": 4096,
                  "init": "glorot", "dropout": 0.5}
BUILTIN_DEFAULTS = {"epochs": 12, "batch_size": 32, "scale": (32, 40), "crop": 32, "width": 0.25,
                    "fc_width": 128, "init": "he", "dropout": 0.0}
THIN_NET_INIT = "he"          # default init below full width (width < 1), whatever the data
CHECKPOINT_FORMAT = "vggcore-train-1"
_CURVES_NOTE_GIVEN = []          # non-empty once the "curves.png needs matplotlib" note was given
# Settings that must stay as they were when a run is resumed (the rest may change, e.g. epochs, device).
_RUN_KEYS = ("config", "batch_size", "momentum", "weight_decay", "nesterov", "scale", "crop", "width", "fc_width",
             "dropout", "init", "seed", "lr_patience", "lr_factor", "max_lr_drops", "eval_scale", "flip",
             "colour_std", "input_scale", "stats_sample")


_PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def _matmul_precision(value):
    """vc.set_float32_matmul_precision(value) inside, the previous setting restored after."""
    import vggcore as vc
    previous = vc.get_float32_matmul_precision()
    vc.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        vc.set_float32_matmul_precision(previous)


def _precision_scope(precision, device):
    """The global setting a run's precision needs, as a context manager; ValueError where it cannot run.

    The run's precision argument, not the process-wide vc.set_float32_matmul_precision, decides what its float32
    conv/linear do: "tf32" sets "high" for the run, "fp32" and "bf16" set "highest" (a caller's earlier "high"
    would otherwise run TF32 kernels in an "fp32" run that history and checkpoints record as fp32). The caller's
    setting is restored when the run ends."""
    if precision == "bf16" and device == "cpu":
        raise ValueError("train: precision='bf16' needs device 'sim' or 'cuda' (the cpu kernels compute float32 "
                         "and float64 only); use precision='fp32' on the cpu")
    return _matmul_precision("high" if precision == "tf32" else "highest")


# What a resumed run reads from `last`.
_RESUME_KEYS = ("epoch", "model", "model_info", "optimizer", "rng", "schedule", "history", "settings", "stats")


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model (on the training device) and one dict per epoch."""
    model: object
    history: list = field(default_factory=list)
    checkpoint: str | None = None        # the last checkpoint written, if any
    best_val_top1_err: float = float("nan")

    def __repr__(self):
        last = self.history[-1] if self.history else {}
        return (f"TrainResult(epochs={len(self.history)}, val_top1_err={last.get('val_top1_err', float('nan')):.4f}, "
                f"best_val_top1_err={self.best_val_top1_err:.4f}, checkpoint={self.checkpoint!r})")


def _duration(seconds):
    """'42 s', '3:07', '1:02:03' for an ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    m, sec = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _eta(elapsed, done, total):
    """Seconds left when ``done`` of ``total`` units took ``elapsed`` seconds; None before the first unit."""
    if done <= 0:
        return None
    return elapsed / done * (total - done)


class _Progress:
    """A one-line progress bar rewritten in place with carriage returns (stderr, terminals only by default).

    It shows the epoch's ETA and the run's: the rest of this epoch, plus its validation pass and the epochs
    after it at the duration of the previous epoch (train + validation), or of this one's pace when it is the
    first. ``data`` is the fraction of the epoch's time spent waiting for the loader (input-bound time).
    """

    def __init__(self, enabled, total, epoch, epochs, stream=None, last_epoch_s=None, last_val_s=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.last_epoch_s, self.last_val_s = last_epoch_s, last_val_s
        self.last = 0.0
        self.width = 0

    def run_eta(self, elapsed, done):
        """Seconds left in the run, or None before the first batch."""
        left = _eta(elapsed, done, self.total)
        if left is None:
            return None
        val = self.last_val_s or 0.0
        per_epoch = self.last_epoch_s if self.last_epoch_s is not None else elapsed / done * self.total + val
        return left + val + (self.epochs - self.epoch) * per_epoch

    def update(self, done, loss, err, ips, elapsed=None, data_frac=None, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"\repoch {self.epoch}/{self.epochs} [{bar}] {done}/{self.total} loss {loss:.4f} "
                f"top-1 err {err:.3f} {ips:.0f} img/s")
        if data_frac is not None:
            line += f" data wait {100 * data_frac:.0f}%"
        if elapsed is not None and done:
            line += f" ETA {_duration(_eta(elapsed, done, self.total))}"
            if self.epochs > self.epoch or self.last_val_s:
                line += f" (run {_duration(self.run_eta(elapsed, done))})"
        self.width = max(self.width, len(line))
        self.stream.write(line.ljust(self.width) + " ")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r" + " " * (self.width + 1) + "\r")
            self.stream.flush()


class _CountBar:
    """'<what> 340/2000 (3.1 s, ETA 9 s)' rewritten in place on stderr; a callable(done, total)."""

    def __init__(self, enabled, what, stream=None):
        self.enabled, self.what = enabled, what
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.calls = 0

    def __call__(self, done, total):
        self.calls += 1
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        elapsed = time.perf_counter() - self.t0
        self.stream.write(f"\r{self.what} {done}/{total} ({elapsed:.1f} s, ETA "
                          f"{_duration(_eta(elapsed, done, total))})   ")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _check_numbers(settings, max_lr_drops, stats_sample):
    """Refuses values that would otherwise be accepted and silently do nothing or something else (NaN fails
    every comparison, so `colour_std=nan` passed a `< 0` test and then turned every pixel into NaN)."""
    def finite(key, lo, hi=math.inf, lo_open=False, hi_open=False):
        v = settings[key]
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            interval = (f"{'>' if lo_open else '>='} {lo:g}" if hi == math.inf else
                        f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
            raise ValueError(f"train: {key} must be a finite number {interval}, got {v!r}")
    finite("lr", 0, lo_open=True)
    finite("momentum", 0, 1, hi_open=True)
    finite("weight_decay", 0)
    finite("dropout", 0, 1, hi_open=True)
    finite("colour_std", 0)
    finite("input_scale", 0, lo_open=True)
    for key, given, least in (("max_lr_drops", max_lr_drops, 0), ("stats_sample", stats_sample, 1)):
        if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < least:
            raise ValueError(f"train: {key} must be an int >= {least}, got {given!r}")
    s = settings["scale"]
    check_rescaled_image_fits("train", max(s if isinstance(s, int) else s[1], settings.get("eval_scale") or 0))


def _parse_scale(scale):
    lo, hi = _data._scale_range(scale, op="train")
    return lo if lo == hi else (lo, hi)


def _resolve_data(data):
    if data is None:
        return _datasets.ensure_dataset()
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"train: data must be a folder path (str or os.PathLike) or None for the built-in set, "
                        f"got {type(data).__name__} {data!r}")
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"train: data folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"train: data folder {root} is not a directory")
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"train: {root} must hold train/<class>/* and val/<class>/* image folders; "
                                f"missing: {', '.join(str(root / d) for d in missing)}")
    return root


def _load_init_from(init_from):
    if hasattr(init_from, "state_dict"):
        return init_from
    from .interop import load_weights           # vggcore checkpoints, torchvision .pth/.safetensors, .caffemodel
    return load_weights(init_from)


def _save_filters(model, path):
    """A grid image of conv1_1's filters (each rescaled to 0..255), enlarged 8x; Pillow only."""
    from PIL import Image
    w = model.conv1_1.weight.numpy()                  # (K, 3, 3, 3)
    k = w.shape[0]
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    r, s = w.shape[1:3]
    grid = np.full((rows * (r + 1) + 1, cols * (s + 1) + 1, 3), 255, np.uint8)
    for i in range(k):
        f = w[i]
        f = (f - f.min()) / max(float(f.max() - f.min()), 1e-12)
        y, x = divmod(i, cols)
        grid[1 + y * (r + 1):1 + y * (r + 1) + r, 1 + x * (s + 1):1 + x * (s + 1) + s] = (f * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(grid).resize((grid.shape[1] * 8, grid.shape[0] * 8), Image.NEAREST).save(png, format="PNG")
    _ckpt.atomic_write_bytes(path, png.getvalue())


def _plot(history, path):
    """Loss and error curves as a PNG when matplotlib is installed (the optional 'plot' extra); False without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax1.set_xlabel("epoch"), ax1.legend()
    ax2.plot(epochs, [h["train_top1_err"] for h in history], "o-", label="train top-1 err")
    ax2.plot(epochs, [h["val_top1_err"] for h in history], "o-", label="val top-1 err")
    if all(h.get("val_top5_reported", True) for h in history):
        ax2.plot(epochs, [h["val_top5_err"] for h in history], "o-", label="val top-5 err")
    ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True


def train(config="A", data=None, epochs=None, batch_size=None, lr=1e-2, momentum=0.9, weight_decay=5e-4,
          scale=None, crop=None, width=None, fc_width=None, device="auto", seed=0, init_from=None,
          checkpoint_dir=None, resume=False, *, nesterov=False, dropout=None, init=None, lr_patience=3,
          lr_factor=0.1, max_lr_drops=3, eval_scale=None, flip=True, colour_std=0.1,
          input_scale=_data.DEFAULT_INPUT_SCALE, stats_sample=2000, num_workers=None, save_filters=False,
          verbose=True, progress=None, precision="fp32", overwrite=False, prefetch=2,
          pin_memory=None, device_augment=False, decode="auto", cuda_graph=False) -> TrainResult:
    """Train configuration ``config`` on ``data`` the way the paper did; returns TrainResult(model, history).

    data: a folder holding train/<class>/*.{jpg,png,...} and val/<class>/... (a class's images may sit in subfolders
    of its folder, as torchvision's ImageFolder finds them); None: the built-in shapes set (generated once into the
    cache folder). TypeError when data is neither; FileNotFoundError, NotADirectoryError or ValueError naming the
    path for a folder that is missing, a file, or not laid out so. epochs, batch_size, scale, crop, width, fc_width,
    init, dropout default to the paper's settings (74, 256, 256, 224, 1.0, 4096, "glorot", 0.5) for your data (with
    "he" init for a thin net, width < 1, where Glorot's stalls at chance), and to a small, fast net on 32-pixel
    crops for the built-in set (PAPER_DEFAULTS and BUILTIN_DEFAULTS). scale: an int S, or a pair of ints (Smin,
    Smax) for scale jittering (floats, bools and strings are refused, as evaluate refuses them). device: "auto" (a
    GPU when there is one), "cpu", "cuda:0", "sim". init_from: a trained net A (model or checkpoint path) whose first
    four conv layers and three FC layers initialise this net; or weights of the same configuration (a vggcore
    checkpoint, torchvision .pth/.safetensors, Caffe .caffemodel) to fine-tune: every layer is copied, fc8 replaced
    when the class count differs, and the weights' preprocessing kept (mean, scale; torchvision's std folded into
    conv1_1).
    checkpoint_dir: where last.safetensors and best.safetensors go each epoch (with the data folder's absolute
    path); resume=True continues the run saved in its last.safetensors (a new run when the folder holds no run;
    FileExistsError when it holds a best.safetensors but no last); a folder that already holds a run is refused
    unless resume=True or overwrite=True (which deletes that run's checkpoints); both together are a ValueError.
    lr_patience: epochs without a better validation top-1 error, counted from the first real improvement over
    chance, before lr *= lr_factor (at most max_lr_drops times). eval_scale: the validation Q (default S, or
    (Smin + Smax) / 2). colour_std: std of the AlexNet colour shift (0 turns it off). input_scale: pixels are
    (RGB - mean) * input_scale; 1/255 keeps Glorot-initialised activations in a range where lr=1e-2 is stable (the
    paper's Caffe models used 1.0).
    verbose prints what is done before training (the preprocessing statistics, with progress) and one line per
    epoch; progress draws in-place bars with ETAs (default: when stderr is a terminal).

    history: one dict per epoch with epoch, lr, train_loss, train_top1_err, val_loss, val_top1_err,
    val_top5_err, val_top5_reported (False when the data has 5 classes or fewer: every label is then in the
    top 5, val_top5_err is 0 by construction and the log leaves it out), images_per_s,
    epoch_time_s (the training pass), val_time_s, data_wait_s (time the loop waited for the loader) and
    input_bound (data_wait_s / epoch_time_s: near 0 the computation is the bottleneck, near 1 the input
    pipeline is; more num_workers helps only the latter), skipped_files. data_wait_s counts only the time the
    loop waited for a batch that was not ready: with prefetching, a batch's host-to-device copy that runs during
    the previous batch's compute is not in it.
    prefetch: training batches whose host-to-device copies are kept in flight ahead of the compute on sim and cuda
    (vggcore.prefetch.DevicePrefetcher; 0 copies each batch when it is used). pin_memory: the loader assembles
    batches in page-locked host memory, which the copies need to run asynchronously (default: on for cuda).
    precision: "fp32" (default): exact float32 conv/linear (vc.set_float32_matmul_precision("highest") for the
    run, whatever the caller set; restored after); "tf32": float32 conv/linear may use TF32 tensor cores (sets
    vc.set_float32_matmul_precision("high") for the run, restored after; on the cpu, which is exact float32,
    it changes nothing); "bf16": mixed precision on sim/cuda (activations and their gradients in bfloat16,
    float32 master weights, momentum, loss and softmax, no loss scaling; checkpoints stay float32).
    device_augment: the loader threads only decode; the crop's resampling, flip and colour shift run on the
    training device (``data.augment_batch``; the CPU twin on the cpu), from the same random draws as the CPU
    transform, within about one pixel level of it (Pillow rounds between its passes, the op does not). In a
    data-parallel run every rank augments its own share of the global batch on its own device (the same images,
    crops and flips as one process with the same seed).
    decode (with device_augment): "nvjpeg" decodes the JPEGs on the cuda device (nvJPEG, the nvjpeg extra; other
    files and any image it fails on are decoded by Pillow); "cpu" decodes on the loader threads; "auto"
    (default): nvjpeg when the library loads and the device is cuda, else cpu. See vggcore.decode.
    cuda_graph: on sim and cuda, the training step (forward, loss, backward, SGD) of a full batch is captured
    once, after two eager steps, and replayed for every later full batch (vggcore.Graph: one graph launch instead
    of a launch per kernel, which pays where the layers are small); a short last batch runs eagerly. The history
    and weights are those of the eager loop. Off by default (its speed is not measured yet). ValueError on the cpu
    and for data-parallel runs (whose gradient all-reduces run on a side stream, outside the graph). Tested
    with precision="bf16" too; with device_augment a batch that lost undecodable images runs eagerly.
    """
    import vggcore as vc
    from .nn import functional as F

    preset = BUILTIN_DEFAULTS if data is None else PAPER_DEFAULTS
    given = {"epochs": epochs, "batch_size": batch_size, "scale": scale, "crop": crop, "width": width,
             "fc_width": fc_width, "init": init, "dropout": dropout}
    settings = {k: (preset[k] if v is None else v) for k, v in given.items()}
    # checked conversions: float(True), int(1e30) and bool("no") would silently train something else
    if init is None and check_real("train", "width", settings["width"]) < 1:
        settings["init"] = THIN_NET_INIT
    settings["scale"] = _parse_scale(settings["scale"])
    settings["dropout"] = check_real("train", "dropout", settings["dropout"])
    settings.update(config=config_name(config), lr=check_real("train", "lr", lr),
                    momentum=check_real("train", "momentum", momentum),
                    weight_decay=check_real("train", "weight_decay", weight_decay),
                    nesterov=check_bool("train", "nesterov", nesterov), seed=check_int("train", "seed", seed, 0),
                    lr_patience=check_int("train", "lr_patience", lr_patience),
                    lr_factor=check_real("train", "lr_factor", lr_factor),
                    max_lr_drops=check_int("train", "max_lr_drops", max_lr_drops),
                    flip=check_bool("train", "flip", flip), colour_std=check_real("train", "colour_std", colour_std),
                    input_scale=check_real("train", "input_scale", input_scale),
                    stats_sample=check_int("train", "stats_sample", stats_sample))
    for key in ("epochs", "batch_size", "crop", "fc_width"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], (int, np.integer)) or settings[key] < 1:
            raise ValueError(f"train: {key} must be a positive int, got {settings[key]!r}")
    if not 0 < settings["lr_factor"] <= 1:
        raise ValueError(f"train: lr_factor must be in (0, 1], got {lr_factor}")
    if settings["lr_patience"] < 1:
        raise ValueError(f"train: lr_patience must be at least 1, got {lr_patience}")
    smin = settings["scale"] if isinstance(settings["scale"], int) else settings["scale"][0]
    if smin < settings["crop"]:
        raise ValueError(f"train: scale {settings['scale']} is smaller than the crop {settings['crop']}")
    if eval_scale is None:
        s = settings["scale"]
        eval_scale = s if isinstance(s, int) else int(round(0.5 * (s[0] + s[1])))
    settings["eval_scale"] = check_int("train", "eval_scale", eval_scale)
    if settings["eval_scale"] < settings["crop"]:
        raise ValueError(f"train: eval_scale {eval_scale} is smaller than the crop {settings['crop']}")
    _check_numbers(settings, max_lr_drops, stats_sample)
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"train: prefetch must be an int >= 0 (batches copied ahead), got {prefetch!r}")
    device_augment = bool(device_augment)
    cuda_graph = check_bool("train", "cuda_graph", cuda_graph)
    resume, overwrite = check_bool("train", "resume", resume), check_bool("train", "overwrite", overwrite)
    if resume and overwrite:
        # resume continues the run in checkpoint_dir, overwrite deletes it: honouring either one silently
        # would do the opposite of what the other asked for
        raise ValueError("train: resume=True and overwrite=True conflict (resume continues the run in "
                         "checkpoint_dir, overwrite deletes its checkpoints and starts a new one); pass only one")

    if precision not in _PRECISIONS:
        raise ValueError(f"train: precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    settings["precision"] = precision

    # Data parallel when started by mpirun/srun with several ranks: batch_size stays the global batch.
    group = _parallel.start_if_launched()
    if group is not None and cuda_graph:
        raise ValueError("train: cuda_graph=True is not supported in data-parallel runs (mpirun/srun): the gradient "
                         "all-reduces run on a side stream, outside the graph")
    if group is not None:
        _parallel.check_batch_size(settings["batch_size"], group.size)      # before reading any data
        device = _parallel.device_for_rank(device)
        verbose = verbose and group.rank == 0
        progress = bool(progress) and group.rank == 0

    # Everything that can be wrong with the data is found here, before any training.
    root = _resolve_data(data)
    # The checkpoint names the data by its absolute path, so that `eval CKPT` finds its val/ from any directory.
    data_path = str(root.resolve())
    train_folder = _data.ImageFolder(root / "train")
    val_folder = _data.ImageFolder(root / "val")
    _data.check_same_classes(train_folder, val_folder)
    device = resolve_device(device)
    decoder = _data._resolve_decoder(decode, device_augment, device, op="train")
    precision_scope = _precision_scope(precision, device)
    if cuda_graph and device == "cpu":
        raise ValueError("train: cuda_graph=True needs device 'sim' or 'cuda' (a graph of device work); the cpu runs "
                         "each op as it is called")

    ckpt_dir = Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None
    last_path = ckpt_dir / "last.safetensors" if ckpt_dir else None
    if ckpt_dir is not None:
        _rundir.prepare(ckpt_dir, resume=resume, overwrite=overwrite)
    state = None
    if resume:
        if ckpt_dir is None:
            raise ValueError("train: resume=True needs checkpoint_dir")
        state = (_parallel.load_checkpoint(group, last_path, _ckpt.load_state) if group is not None
                 else _ckpt.load_state(last_path) if last_path.is_file() else None)
        if state is not None:
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"train: {last_path} is not a vggcore training checkpoint")
            lacking = [k for k in _RESUME_KEYS if k not in state]
            if lacking:
                raise ValueError(f"train: {last_path} is an incomplete training checkpoint (no {', '.join(lacking)})")
            saved = state["settings"]
            for key in _RUN_KEYS + ("lr",):  # lr: the run's initial rate; the schedule's current rate comes back too
                ours, theirs = settings.get(key), saved.get(key)
                if isinstance(ours, tuple):
                    ours = list(ours)
                if isinstance(theirs, tuple):
                    theirs = list(theirs)
                if ours != theirs:
                    warnings.warn(f"train: resuming with the checkpoint's {key}={theirs!r} (not {ours!r})",
                                  stacklevel=2)
            for key in _RUN_KEYS + ("lr",):
                settings[key] = saved[key]
            if isinstance(settings["scale"], list):
                settings["scale"] = tuple(settings["scale"])
            saved_names = state["model_info"]["class_names"]
            if saved_names != train_folder.classes:
                differences = _data.class_differences(saved_names, train_folder.classes, "the checkpoint", "the data")
                raise ValueError(f"train: the classes of {root / 'train'} differ from the checkpoint's: {differences}")
        elif verbose:
            print(f"no checkpoint at {last_path}; starting a new run")

    if group is not None:
        _parallel.check_batch_size(settings["batch_size"], group.size)      # a resumed run's batch_size too

    # Model, preprocessing statistics, optimizer.
    if state is not None:
        model = from_description(state["model_info"], state["model"])
        stats = state["stats"]
    else:
        vc.manual_seed(settings["seed"])
        if progress is None:
            progress = verbose and sys.stderr.isatty()
        stats_bar = _CountBar(progress, "preprocessing statistics: images")
        t_stats = time.perf_counter()
        stats = _data.compute_stats(train_folder, sample=settings["stats_sample"], seed=settings["seed"],
                                    num_workers=num_workers, progress=stats_bar,
                                    log=(lambda m: print(m, flush=True)) if verbose else None)
        if verbose and stats_bar.calls:
            print(f"preprocessing statistics done in {time.perf_counter() - t_stats:.1f} s", flush=True)
        model = _vgg(settings["config"], num_classes=len(train_folder.classes), width=settings["width"],
                           fc_width=settings["fc_width"], input_size=settings["crop"], dropout=settings["dropout"],
                           init=settings["init"])
        model.class_names = list(train_folder.classes)
        model.mean_rgb = [float(v) for v in stats["mean_rgb"]]
        model.input_scale = settings["input_scale"]
        model.train_scale = settings["scale"]
        if init_from is not None:
            source = _load_init_from(init_from)
            if source.config == model.config:
                # Fine-tuning: all layers (fc8 replaced when the classes differ) and the weights' preprocessing.
                _fine_tune_from(model, source)
                settings["input_scale"] = model.input_scale
            else:
                _init_from(model, source)               # the paper's staged initialisation from net A
    model.to(device)
    dp = _parallel.DataParallel(group, model) if group is not None else None
    optimizer = vc.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                             weight_decay=settings["weight_decay"], nesterov=settings["nesterov"])
    history, start_epoch = [], 0
    schedule = _schedule.initial_state()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        schedule = dict(state["schedule"])
        _random.set_state(state["rng"])

    train_tf = _data.TrainTransform(settings["crop"], settings["scale"], model.mean_rgb, stats["eigval"],
                                    stats["eigvec"], flip=settings["flip"], colour_std=settings["colour_std"],
                                    input_scale=settings["input_scale"])
    val_tf = _data.EvalTransform(settings["eval_scale"], model.mean_rgb, crop=settings["crop"],
                                 input_scale=settings["input_scale"])
    # The loop copies each batch to the device before asking for the next (the DevicePrefetcher does, at once or
    # asynchronously from pinned buffers that the loader reuses only after their copy): the loader recycles arrays.
    if pin_memory is None:
        pin_memory = device.startswith("cuda")
    if dp is None:
        train_loader = _data.DataLoader(train_folder, settings["batch_size"], train_tf, shuffle=True,
                                        seed=settings["seed"], num_workers=num_workers, reuse_buffers=True,
                                        pin_memory=bool(pin_memory) and device != "cpu" and not device_augment,
                                        device_augment=device_augment, decode=decoder or "cpu")
        val_loader = _data.DataLoader(val_folder, settings["batch_size"], val_tf, num_workers=num_workers)
    else:
        train_loader = _parallel.ShardedLoader(train_folder, settings["batch_size"], train_tf, group.rank, group.size,
                                               keep_empty=True, shuffle=True, seed=settings["seed"],
                                               num_workers=num_workers, device_augment=device_augment,
                                               decode=decoder or "cpu")
        val_loader = _parallel.ShardedLoader(val_folder, settings["batch_size"], val_tf, group.rank, group.size,
                                             keep_empty=False, num_workers=num_workers)
    n_epochs = int(settings["epochs"])
    num_classes = len(train_folder.classes)
    report_top5 = num_classes > 5         # top-k only for k below the number of classes
    curves_note = False
    if progress is None:
        progress = verbose and sys.stderr.isatty()
    if verbose and start_epoch < n_epochs:
        params = model.num_parameters()
        print(f"training VGG-{settings['config']} ({params:,} parameters, width {settings['width']:g}, "
              f"fc {settings['fc_width']}) on {len(train_folder)} images of {len(train_folder.classes)} classes "
              f"from {root}, device {device}, crop {settings['crop']}, scale {settings['scale']}, "
              f"batch {settings['batch_size']}" + (f", resuming after epoch {start_epoch}" if start_epoch else ""))
        if not report_top5:
            print(f"top-5 error not reported: the data has {num_classes} classes, so every image's label is "
                  "among its top 5")

    result = TrainResult(model=model, history=history,
                         checkpoint=str(last_path) if state is not None else None,
                         best_val_top1_err=schedule["best_val_top1_err"])
    compute = F.autocast("bfloat16") if precision == "bf16" else contextlib.nullcontext()
    graphed = (_graph_step.GraphedStep(model, optimizer, device, compute, settings["batch_size"])
               if cuda_graph else None)
    try:
        precision_scope.__enter__()
        for epoch in range(start_epoch, n_epochs):
            lr_now = optimizer.lr
            model.train()
            prev = history[-1] if history else {}
            bar = _Progress(progress, len(train_loader), epoch + 1, n_epochs,
                            last_epoch_s=(prev["epoch_time_s"] + prev["val_time_s"]) if "val_time_s" in prev else None,
                            last_val_s=prev.get("val_time_s"))
            t0 = time.perf_counter()
            seen, loss_sum, wrong, batches, wait = 0, 0.0, 0, 0, 0.0
            batches_iter = train_loader.epoch(epoch)
            if dp is None and not device_augment:      # packed batches are uploaded by augment_batch
                # Time in next() is time waiting for a batch not ready yet (data wait); copies issued ahead run
                # during the compute of the batches before them and are not counted.
                # On the cpu there is nothing to overlap: depth 0 asks for each batch when it is used, as before.
                batches_iter = _prefetch.DevicePrefetcher(batches_iter, device, prefetch if device != "cpu" else 0)
            while True:
                t_wait = time.perf_counter()
                try:
                    x_batch, y_np = next(batches_iter)
                except StopIteration:
                    break
                wait += time.perf_counter() - t_wait
                if dp is not None:
                    # This rank's share of the global batch; the loss is NaN on every rank when any rank's is.
                    with compute:
                        step = dp.train_step(model, optimizer, x_batch, y_np, device,
                                             (settings["crop"], settings["crop"], 3))
                    if step is None:
                        continue
                    loss_value, n, batch_wrong = step
                else:
                    # already on the device (the prefetcher), or augmented there from the packed batch
                    x = x_batch
                    if device_augment:
                        x = _data.augment_batch(x_batch, device)
                        y_np = y_np[x_batch.kept]       # without the images no decoder could decode
                        if not len(y_np):
                            continue
                    if graphed is not None:
                        loss_value = graphed.forward(x, y_np)
                    else:
                        with compute:
                            logits = model(x)
                            loss = F.cross_entropy(logits, y_np)
                        loss_value = loss.item()
                if not math.isfinite(loss_value):
                    where = f"epoch {epoch + 1}, batch {batches + 1}"
                    kept = (f"the last good checkpoint {last_path} (epoch {start_epoch if not history else history[-1]['epoch']}) is kept"
                            if last_path is not None and last_path.is_file() else "no checkpoint was written")
                    error = FloatingPointError(f"train: the loss became {loss_value} at {where} (lr {lr_now:g}); "
                                               f"the weights were not updated; {kept}. Try a lower lr.")
                    error.collective = dp is not None       # every rank raises it together
                    raise error
                if dp is None:
                    if graphed is not None:
                        logits_np = graphed.update()
                    else:
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                        logits_np = logits.numpy()
                    n = len(y_np)
                    batch_wrong = int((logits_np.argmax(axis=1) != y_np).sum())
                seen += n
                batches += 1
                loss_sum += loss_value * n
                wrong += batch_wrong
                elapsed = time.perf_counter() - t0
                bar.update(batches, loss_sum / max(seen, 1), wrong / max(seen, 1), seen / elapsed, elapsed,
                           wait / elapsed)
            if dp is None:
                batches_iter.close()
            if dp is not None:
                seen, loss_sum, wrong = dp.sum([seen, loss_sum, wrong], "epoch totals")
                seen, wrong = int(seen), int(wrong)
            train_time = time.perf_counter() - t0
            bar.close()
            if seen == 0:
                raise ValueError(f"train: no training image of {train_folder.root} could be decoded")

            model.eval()
            t_val = time.perf_counter()
            try:
                with compute:
                    probs, labels = predict_loader(model, val_loader.epoch(0), device)
            except NonFiniteScores:
                probs = labels = None
            bad = nonfinite_parameters(model)
            if probs is None or bad:
                what = f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad else "validation scores"
                kept = (f"the last good checkpoint {last_path} is kept" if last_path is not None and
                        last_path.is_file() else "no checkpoint was written")
                raise FloatingPointError(f"train: after epoch {epoch + 1} (lr {lr_now:g}) the {what} are not finite; "
                                         f"this epoch is not checkpointed and {kept}. Try a lower lr.")
            n_val = len(labels)
            top1 = top5 = val_loss = 0.0
            if n_val:
                top1, top5 = topk_errors(probs, labels)
                val_loss = float(-np.mean(np.log(np.maximum(probs[np.arange(n_val), labels], 1e-30))))
            if dp is not None:      # each rank evaluated its shards: sum the counts
                sums = dp.sum([n_val, top1 * n_val, top5 * n_val, val_loss * n_val], "validation totals")
                n_val = int(sums[0])
                if n_val:
                    top1, top5, val_loss = (float(v) / n_val for v in sums[1:])
            if n_val == 0:
                raise ValueError(f"train: no validation image of {val_folder.root} could be decoded")
            val_time = time.perf_counter() - t_val

            # chance from the whole validation set, so every rank takes the same lr decision
            chance = _schedule.chance_error(val_folder.targets)
            improved, drop = _schedule.step(schedule, top1, chance, settings["lr_patience"], settings["max_lr_drops"])
            if drop:
                optimizer.lr = optimizer.lr * settings["lr_factor"]
            entry = {"epoch": epoch + 1, "lr": lr_now, "train_loss": loss_sum / seen, "train_top1_err": wrong / seen,
                     "val_loss": val_loss, "val_top1_err": top1, "val_top5_err": top5,
                     "val_top5_reported": report_top5,
                     "images_per_s": seen / train_time, "epoch_time_s": train_time, "val_time_s": val_time,
                     "data_wait_s": wait, "input_bound": wait / train_time,
                     "skipped_files": train_folder.num_skipped + val_folder.num_skipped, "precision": precision}
            history.append(entry)
            result.best_val_top1_err = schedule["best_val_top1_err"]
            if verbose:
                note = f"  -> lr {optimizer.lr:g}" if optimizer.lr != lr_now else ""
                top5_text = f"  top-5 err {top5:.4f}" if report_top5 else ""
                print(f"epoch {epoch + 1:3d}/{n_epochs}  train loss {entry['train_loss']:.4f}  "
                      f"val top-1 err {top1:.4f}{top5_text}  lr {lr_now:g}  "
                      f"{entry['images_per_s']:.0f} img/s  data wait {100 * entry['input_bound']:.0f}%{note}",
                      flush=True)

            if ckpt_dir is not None and (dp is None or dp.is_main):
                ckpt = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                        "model_info": describe(model), "optimizer": optimizer.state_dict(),
                        "rng": _random.get_state(), "schedule": dict(schedule), "history": history,
                        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
                        "stats": stats, "data": data_path, "precision": precision}
                # best first: `last` records this epoch's improvement, so it must not exist without that best
                if improved:
                    _ckpt.save_state(ckpt_dir / "best.safetensors", ckpt)
                _ckpt.save_state(last_path, ckpt)
                result.checkpoint = str(last_path)
                try:
                    plotted = _plot(history, ckpt_dir / "curves.png")
                except Exception as error:          # a plotting problem must never stop training
                    plotted = True
                    warnings.warn(f"train: could not write curves.png: {error}", stacklevel=2)
                if not plotted and not curves_note and not _CURVES_NOTE_GIVEN:
                    curves_note = True
                    _CURVES_NOTE_GIVEN.append(True)     # once per process, however many runs
                    message = ("curves.png is not written: matplotlib is not installed "
                               "(pip install .[plot] from the repository, or pip install matplotlib)")
                    if verbose:
                        print(message, flush=True)
                    else:
                        warnings.warn(f"train: {message}", stacklevel=2)
                if save_filters:
                    _save_filters(model, ckpt_dir / "conv1_1_filters.png")
            elif ckpt_dir is not None:
                result.checkpoint = str(last_path)
    except Exception as error:
        if dp is not None:
            dp.fail(error)      # ends the job unless every rank raised this error together
        raise
    finally:
        precision_scope.__exit__(None, None, None)
        train_loader.close()
        val_loader.close()
    if save_filters and ckpt_dir is None:
        warnings.warn("train: save_filters needs checkpoint_dir; no filter image written", stacklevel=2)
    if train_folder.num_skipped and verbose:
        print(f"{train_folder.num_skipped} training file(s) could not be decoded and were skipped")
    model.eval()
    return result
