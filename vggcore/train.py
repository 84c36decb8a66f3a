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
weights are updated, leaving the last good checkpoint in place.

The training loop only talks to the device through vggcore tensors, so the same code runs on cpu, sim and cuda.
"""

from __future__ import annotations

import io
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _parallel
from . import checkpoint as _ckpt
from . import data as _data
from . import datasets as _datasets
from . import random as _random
from .evaluate import predict_loader, resolve_device, topk_errors
from .models import config_name, describe, from_description, init_from as _init_from, load as _load_model, vgg as _vgg

__all__ = ["train", "TrainResult", "PAPER_DEFAULTS", "BUILTIN_DEFAULTS"]

# Defaults of the arguments left as None: the paper's settings for your own data, and a small net and small
# images for the built-in shapes dataset so that ``python -m vggcore train`` finishes in minutes on a CPU.
# The built-in preset departs from the paper where a thin net needs it: He initialisation (Glorot's shrinks the
# signal through 11 thin ReLU layers and training stalls at chance) and no dropout (with 128-wide FC layers,
# dropout 0.5 keeps the net at chance for many epochs).
PAPER_DEFAULTS = {"epochs": 74, "batch_size": 256, "scale": 256, "crop": 224, "width": 1.0, "fc_width": 4096,
                  "init": "glorot", "dropout": 0.5}
BUILTIN_DEFAULTS = {"epochs": 12, "batch_size": 32, "scale": (32, 40), "crop": 32, "width": 0.25,
                    "fc_width": 128, "init": "he", "dropout": 0.0}
CHECKPOINT_FORMAT = "vggcore-train-1"
# Settings that must stay as they were when a run is resumed (the rest may change, e.g. epochs, device).
_RUN_KEYS = ("config", "batch_size", "momentum", "weight_decay", "nesterov", "scale", "crop", "width", "fc_width",
             "dropout", "init", "seed", "lr_patience", "lr_factor", "max_lr_drops", "eval_scale", "flip",
             "colour_std", "input_scale", "stats_sample")


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


class _Progress:
    """A one-line progress bar rewritten in place with carriage returns (stderr, terminals only by default)."""

    def __init__(self, enabled, total, epoch, epochs, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total, self.epoch, self.epochs = total, epoch, epochs
        self.last = 0.0

    def update(self, done, loss, err, ips, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\repoch {self.epoch}/{self.epochs} [{bar}] {done}/{self.total} loss {loss:.4f} "
                          f"top-1 err {err:.3f} {ips:.0f} img/s ")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def _parse_scale(scale):
    lo, hi = _data._scale_range(scale)
    return lo if lo == hi else (lo, hi)


def _resolve_data(data):
    if data is None:
        return _datasets.ensure_dataset()
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"train: data folder {root} does not exist")
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"train: {root} must hold train/<class>/* and val/<class>/* image folders; "
                                f"missing: {', '.join(str(root / d) for d in missing)}")
    return root


def _load_init_from(init_from):
    if hasattr(init_from, "state_dict"):
        return init_from
    return _load_model(init_from)


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
    """Loss and error curves as a PNG when matplotlib is installed (the optional 'plot' extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="val loss")
    ax1.set_xlabel("epoch"), ax1.legend()
    ax2.plot(epochs, [h["train_top1_err"] for h in history], "o-", label="train top-1 err")
    ax2.plot(epochs, [h["val_top1_err"] for h in history], "o-", label="val top-1 err")
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
          verbose=True, progress=None) -> TrainResult:
    """Train configuration ``config`` on ``data`` the way the paper did; returns TrainResult(model, history).

    data: a folder holding train/<class>/*.{jpg,png,...} and val/<class>/...; None: the built-in shapes set
    (generated once into the cache folder). epochs, batch_size, scale, crop, width, fc_width, init, dropout
    default to the paper's settings (74, 256, 256, 224, 1.0, 4096, "glorot", 0.5) for your data, and to a
    small, fast net on 32-pixel crops for the built-in set (PAPER_DEFAULTS and BUILTIN_DEFAULTS). scale: S, or (Smin, Smax) for scale
    jittering. device: "auto" (a GPU when there is one), "cpu", "cuda:0", "sim". init_from: a trained net A
    (model or checkpoint path) whose first four conv layers and three FC layers initialise this net.
    checkpoint_dir: where last.safetensors and best.safetensors go each epoch; resume=True continues the run
    saved there. lr_patience: epochs without a better validation top-1 error before lr *= lr_factor (at most
    max_lr_drops times). eval_scale: the validation Q (default S, or (Smin + Smax) / 2). colour_std: std of the
    AlexNet colour shift (0 turns it off). input_scale: pixels are (RGB - mean) * input_scale; 1/255 keeps
    Glorot-initialised activations in a range where lr=1e-2 is stable (the paper's Caffe models used 1.0).
    verbose prints one line per epoch; progress draws an in-place bar (default: when stderr is a terminal).
    """
    import vggcore as vc
    from .nn import functional as F

    preset = BUILTIN_DEFAULTS if data is None else PAPER_DEFAULTS
    given = {"epochs": epochs, "batch_size": batch_size, "scale": scale, "crop": crop, "width": width,
             "fc_width": fc_width, "init": init, "dropout": dropout}
    settings = {k: (preset[k] if v is None else v) for k, v in given.items()}
    settings["scale"] = _parse_scale(settings["scale"])
    settings["dropout"] = float(settings["dropout"])
    settings.update(config=config_name(config), lr=float(lr), momentum=float(momentum),
                    weight_decay=float(weight_decay), nesterov=bool(nesterov),
                    seed=int(seed), lr_patience=int(lr_patience), lr_factor=float(lr_factor),
                    max_lr_drops=int(max_lr_drops), flip=bool(flip), colour_std=float(colour_std),
                    input_scale=float(input_scale), stats_sample=int(stats_sample))
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
    settings["eval_scale"] = int(eval_scale)
    if settings["eval_scale"] < settings["crop"]:
        raise ValueError(f"train: eval_scale {eval_scale} is smaller than the crop {settings['crop']}")

    # Data parallel when started by mpirun/srun with several ranks: batch_size stays the global batch.
    group = _parallel.start_if_launched()
    if group is not None:
        _parallel.check_batch_size(settings["batch_size"], group.size)      # before reading any data
        device = _parallel.device_for_rank(device)
        verbose = verbose and group.rank == 0
        progress = bool(progress) and group.rank == 0

    # Everything that can be wrong with the data is found here, before any training.
    root = _resolve_data(data)
    train_folder = _data.ImageFolder(root / "train")
    val_folder = _data.ImageFolder(root / "val")
    _data.check_same_classes(train_folder, val_folder)
    device = resolve_device(device)

    ckpt_dir = Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None
    last_path = ckpt_dir / "last.safetensors" if ckpt_dir else None
    state = None
    if resume:
        if ckpt_dir is None:
            raise ValueError("train: resume=True needs checkpoint_dir")
        state = (_parallel.load_checkpoint(group, last_path, _ckpt.load_state) if group is not None
                 else _ckpt.load_state(last_path) if last_path.is_file() else None)
        if state is not None:
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"train: {last_path} is not a vggcore training checkpoint")
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
            if state["model_info"]["class_names"] != train_folder.classes:
                raise ValueError(f"train: the classes of {root / 'train'} differ from the checkpoint's "
                                 f"{state['model_info']['class_names']}")
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
        stats = _data.compute_stats(train_folder, sample=settings["stats_sample"], seed=settings["seed"])
        model = _vgg(settings["config"], num_classes=len(train_folder.classes), width=settings["width"],
                           fc_width=settings["fc_width"], input_size=settings["crop"], dropout=settings["dropout"],
                           init=settings["init"])
        model.class_names = list(train_folder.classes)
        model.mean_rgb = [float(v) for v in stats["mean_rgb"]]
        model.input_scale = settings["input_scale"]
        model.train_scale = settings["scale"]
        if init_from is not None:
            _init_from(model, _load_init_from(init_from))
    model.to(device)
    dp = _parallel.DataParallel(group, model) if group is not None else None
    optimizer = vc.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                             weight_decay=settings["weight_decay"], nesterov=settings["nesterov"])
    history, start_epoch = [], 0
    schedule = {"best_val_top1_err": float("inf"), "bad_epochs": 0, "lr_drops": 0}
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
    if dp is None:
        train_loader = _data.DataLoader(train_folder, settings["batch_size"], train_tf, shuffle=True,
                                        seed=settings["seed"], num_workers=num_workers)
        val_loader = _data.DataLoader(val_folder, settings["batch_size"], val_tf, num_workers=num_workers)
    else:
        train_loader = _parallel.ShardedLoader(train_folder, settings["batch_size"], train_tf, group.rank, group.size,
                                               keep_empty=True, shuffle=True, seed=settings["seed"],
                                               num_workers=num_workers)
        val_loader = _parallel.ShardedLoader(val_folder, settings["batch_size"], val_tf, group.rank, group.size,
                                             keep_empty=False, num_workers=num_workers)
    n_epochs = int(settings["epochs"])
    if progress is None:
        progress = verbose and sys.stderr.isatty()
    if verbose and start_epoch < n_epochs:
        params = model.num_parameters()
        print(f"training VGG-{settings['config']} ({params:,} parameters, width {settings['width']:g}, "
              f"fc {settings['fc_width']}) on {len(train_folder)} images of {len(train_folder.classes)} classes "
              f"from {root}, device {device}, crop {settings['crop']}, scale {settings['scale']}, "
              f"batch {settings['batch_size']}" + (f", resuming after epoch {start_epoch}" if start_epoch else ""))

    result = TrainResult(model=model, history=history,
                         checkpoint=str(last_path) if state is not None else None,
                         best_val_top1_err=schedule["best_val_top1_err"])
    try:
        for epoch in range(start_epoch, n_epochs):
            lr_now = optimizer.lr
            model.train()
            bar = _Progress(progress, len(train_loader), epoch + 1, n_epochs)
            t0 = time.perf_counter()
            seen, loss_sum, wrong, batches = 0, 0.0, 0, 0
            for x_np, y_np in train_loader.epoch(epoch):
                if dp is not None:
                    # This rank's share of the global batch; the loss is NaN on every rank when any rank's is.
                    step = dp.train_step(model, optimizer, x_np, y_np, device, (settings["crop"], settings["crop"], 3))
                    if step is None:
                        continue
                    loss_value, n, batch_wrong = step
                else:
                    x = vc.tensor(x_np, device=device)
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
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    n = len(y_np)
                    batch_wrong = int((logits.numpy().argmax(axis=1) != y_np).sum())
                seen += n
                batches += 1
                loss_sum += loss_value * n
                wrong += batch_wrong
                bar.update(batches, loss_sum / max(seen, 1), wrong / max(seen, 1), seen / (time.perf_counter() - t0))
            if dp is not None:
                seen, loss_sum, wrong = dp.sum([seen, loss_sum, wrong], "epoch totals")
                seen, wrong = int(seen), int(wrong)
            train_time = time.perf_counter() - t0
            bar.close()
            if seen == 0:
                raise ValueError(f"train: no training image of {train_folder.root} could be decoded")

            model.eval()
            probs, labels = predict_loader(model, val_loader.epoch(0), device)
            n_val = len(labels)
            if n_val:
                top1, top5 = topk_errors(probs, labels)
                val_loss = float(-np.mean(np.log(np.maximum(probs[np.arange(n_val), labels], 1e-30))))
            if dp is not None:      # each rank evaluated its shards: sum the counts
                sums = dp.sum([n_val, top1 * n_val, top5 * n_val, val_loss * n_val] if n_val else [0, 0, 0, 0],
                              "validation totals")
                n_val = int(sums[0])
                if n_val:
                    top1, top5, val_loss = (float(v) / n_val for v in sums[1:])
            if n_val == 0:
                raise ValueError(f"train: no validation image of {val_folder.root} could be decoded")

            improved = top1 < schedule["best_val_top1_err"] - 1e-9
            if improved:
                schedule["best_val_top1_err"], schedule["bad_epochs"] = top1, 0
            else:
                schedule["bad_epochs"] += 1
                if schedule["bad_epochs"] >= settings["lr_patience"] and schedule["lr_drops"] < settings["max_lr_drops"]:
                    optimizer.lr = optimizer.lr * settings["lr_factor"]
                    schedule["lr_drops"] += 1
                    schedule["bad_epochs"] = 0
            entry = {"epoch": epoch + 1, "lr": lr_now, "train_loss": loss_sum / seen, "train_top1_err": wrong / seen,
                     "val_loss": val_loss, "val_top1_err": top1, "val_top5_err": top5,
                     "images_per_s": seen / train_time, "epoch_time_s": train_time,
                     "skipped_files": train_folder.num_skipped + val_folder.num_skipped}
            history.append(entry)
            result.best_val_top1_err = schedule["best_val_top1_err"]
            if verbose:
                note = f"  -> lr {optimizer.lr:g}" if optimizer.lr != lr_now else ""
                print(f"epoch {epoch + 1:3d}/{n_epochs}  train loss {entry['train_loss']:.4f}  "
                      f"val top-1 err {top1:.4f}  top-5 err {top5:.4f}  lr {lr_now:g}  "
                      f"{entry['images_per_s']:.0f} img/s{note}", flush=True)

            if ckpt_dir is not None and (dp is None or dp.is_main):
                ckpt = {"format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": model.state_dict(),
                        "model_info": describe(model), "optimizer": optimizer.state_dict(),
                        "rng": _random.get_state(), "schedule": dict(schedule), "history": history,
                        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
                        "stats": stats, "data": str(root)}
                _ckpt.save_state(last_path, ckpt)
                if improved:
                    _ckpt.save_state(ckpt_dir / "best.safetensors", ckpt)
                result.checkpoint = str(last_path)
                try:
                    _plot(history, ckpt_dir / "curves.png")
                except Exception as error:          # a plotting problem must never stop training
                    warnings.warn(f"train: could not write curves.png: {error}", stacklevel=2)
                if save_filters:
                    _save_filters(model, ckpt_dir / "conv1_1_filters.png")
            elif ckpt_dir is not None:
                result.checkpoint = str(last_path)
    except Exception as error:
        if dp is not None:
            dp.fail(error)      # ends the job unless every rank raised this error together
        raise
    finally:
        train_loader.close()
        val_loader.close()
    if save_filters and ckpt_dir is None:
        warnings.warn("train: save_filters needs checkpoint_dir; no filter image written", stacklevel=2)
    if train_folder.num_skipped and verbose:
        print(f"{train_folder.num_skipped} training file(s) could not be decoded and were skipped")
    model.eval()
    return result
