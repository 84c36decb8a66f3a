"""``python -m vggcore`` (or ``vggcore``): train, eval and info.

    python -m vggcore train                       # the built-in shapes dataset, a small VGG-A, a few CPU minutes
    python -m vggcore train --data DIR --config D --init-from runs/A/best.safetensors --scale 256,512
    python -m vggcore eval runs/A/best.safetensors --data DIR/val --dense --flip --scales 256,384,512
    python -m vggcore eval runs/D/best.safetensors runs/E/best.safetensors --data DIR/val --multi-crop --dense
    python -m vggcore predict photo.jpg --model vgg16.pth --labels imagenet_classes.txt --topk 5
    python -m vggcore info
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
import warnings
from fractions import Fraction

__all__ = ["main", "build_parser"]


_INT_MAX = 2**63 - 1   # larger ints overflow the engine's int64 (OverflowError deep inside, not a message)


def _scale(text):
    """'256' -> 256, '256,512' -> (256, 512)."""
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be S or Smin,Smax (integers), got {text!r}") from None
    if any(v > _INT_MAX for v in values):
        raise argparse.ArgumentTypeError(f"scale must be below 2**63, got {text!r}")
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"scale must be S or Smin,Smax, got {text!r}")


def _scales(text):
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("scales is empty")
    if min(values) < 1 or max(values) > _INT_MAX:
        raise argparse.ArgumentTypeError(f"scales must be positive and below 2**63, got {text!r}")
    return values


def _path(text):
    """A file or folder name; an empty one (`--checkpoint-dir ""`) would silently mean the default."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def _positive_number(text):
    """A float or a fraction such as 1/8."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.25 or 1/4, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _int_at_least(minimum):
    """An argparse type: an integer >= minimum (0 or a negative would otherwise be silently accepted)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if value > _INT_MAX:
            raise argparse.ArgumentTypeError(f"must be below 2**63, got {value}")
        return value
    return parse


def _finite(lo, hi=math.inf, lo_open=False, hi_open=False):
    """An argparse type: a finite float in the given interval (nan passes no comparison, so it is refused here
    rather than silently accepted)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not math.isfinite(value) or not inside:
            interval = (f"{'>' if lo_open else '>='} {lo:g}" if hi == math.inf else
                        f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")
            raise argparse.ArgumentTypeError(f"expected a finite number {interval}, got {text!r}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the flag and the value, not the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _Parser(prog="python -m vggcore",
                                     description="Train and evaluate the VGG networks of Simonyan & Zisserman.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,predict,info}")

    t = sub.add_parser("train", help="train a VGG configuration (default: built-in shapes dataset, small VGG-A)",
                       description="Train a VGG configuration with the paper's recipe. Without --data, the "
                                   "built-in shapes dataset is generated into the cache folder ($VGGCORE_CACHE or "
                                   "~/.cache/vggcore) and a small VGG-A is trained on 32-pixel crops.")
    t.add_argument("--config", default="A", help="A, A-LRN, B, C, D, E or an alias (vgg11 ... vgg19); default A")
    t.add_argument("--data", default=None, type=_path,
                   help="folder with train/<class>/* and val/<class>/*; default: built-in")
    t.add_argument("--epochs", type=_int_at_least(1), default=None, help="default 74 (paper) or 12 (built-in data)")
    t.add_argument("--batch-size", type=_int_at_least(1), default=None,
                   help="default 256 (paper) or 32 (built-in data)")
    t.add_argument("--lr", type=_finite(0, lo_open=True), default=1e-2, help="initial learning rate (default 0.01)")
    t.add_argument("--momentum", type=_finite(0, 1, hi_open=True), default=0.9)
    t.add_argument("--weight-decay", type=_finite(0), default=5e-4)
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    t.add_argument("--scale", type=_scale, default=None,
                   help="training scale S, or Smin,Smax for scale jittering (default 256, or 32,40 built-in)")
    t.add_argument("--crop", type=_int_at_least(1), default=None,
                   help="crop size, the net's input (default 224, or 32 built-in)")
    t.add_argument("--width", type=_positive_number, default=None,
                   help="channel width multiplier, e.g. 0.5 or 1/4 (default 1, or 1/4 built-in)")
    t.add_argument("--fc-width", type=_int_at_least(1), default=None,
                   help="size of fc6 and fc7 (default 4096, or 128 built-in)")
    t.add_argument("--dropout", type=_finite(0, 1, hi_open=True), default=None,
                   help="on fc6 and fc7 (default 0.5, or 0 built-in)")
    t.add_argument("--init", choices=("glorot", "normal", "he"), default=None,
                   help="weight initialisation (default glorot, or he for thin nets, width < 1, "
                        "such as the built-in data's)")
    t.add_argument("--init-from", default=None, type=_path,
                   help="a trained net A to initialise from (paper 3.1), or weights of the same configuration "
                        "to fine-tune (vggcore checkpoint, torchvision .pth, .caffemodel; fc8 replaced when the "
                        "class count differs)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or sim (default auto)")
    t.add_argument("--seed", type=_int_at_least(0), default=0)
    t.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="fp32 (default); tf32: TF32 tensor cores for float32 conv/linear; bf16: mixed precision "
                        "(bfloat16 activations, float32 weights; sim/cuda only)")
    t.add_argument("--checkpoint-dir", default=None, type=_path,
                   help="where checkpoints and curves go (default runs/vgg-<config>)")
    run = t.add_mutually_exclusive_group()      # one continues the folder's run, the other deletes it
    run.add_argument("--resume", action="store_true",
                     help="continue from CHECKPOINT_DIR/last.safetensors (a new run when the folder holds no run; "
                          "refused when it holds a best.safetensors but no last.safetensors)")
    run.add_argument("--overwrite", action="store_true",
                     help="start a new run in a CHECKPOINT_DIR that already holds one, deleting its checkpoints "
                          "(without --resume or --overwrite such a folder is refused; not with --resume)")
    t.add_argument("--lr-patience", type=_int_at_least(1), default=3,
                   help="epochs without a better val top-1 error before the lr is divided by 10 (default 3)")
    t.add_argument("--lr-factor", type=_finite(0, 1, lo_open=True), default=0.1)
    t.add_argument("--max-lr-drops", type=_int_at_least(0), default=3)
    t.add_argument("--eval-scale", type=_int_at_least(1), default=None,
                   help="validation Q (default S or (Smin+Smax)/2)")
    t.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    t.add_argument("--colour-std", type=_finite(0), default=0.1, help="AlexNet colour shift std (0 disables)")
    t.add_argument("--input-scale", type=_finite(0, lo_open=True), default=1 / 255,
                   help="pixels are (RGB - mean) * input_scale")
    t.add_argument("--stats-sample", type=_int_at_least(1), default=2000,
                   help="images sampled for mean RGB and colour PCA")
    t.add_argument("--workers", dest="num_workers", type=_int_at_least(1), default=None, help="decoding threads")
    t.add_argument("--prefetch", type=_int_at_least(0), default=2,
                   help="batches whose host-to-device copies run ahead of the compute on sim/cuda (default 2)")
    t.add_argument("--pin-memory", dest="pin_memory", action="store_true", default=None,
                   help="assemble batches in page-locked memory (default: on for cuda)")
    t.add_argument("--no-pin-memory", dest="pin_memory", action="store_false")
    t.add_argument("--device-augment", action="store_true",
                   help="decode on the CPU only; crop, resample, flip and colour shift on the training device")
    t.add_argument("--decode", choices=("auto", "cpu", "nvjpeg"), default="auto",
                   help="with --device-augment: where JPEGs are decoded: nvjpeg on the cuda device (needs the "
                        "nvjpeg extra), cpu threads, or auto (nvjpeg when it loads and the device is cuda)")
    t.add_argument("--cuda-graph", action="store_true",
                   help="on sim/cuda, capture the training step once and replay it for every full batch")
    t.add_argument("--save-filters", action="store_true", help="write a grid image of conv1_1's filters")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="draw the in-place progress bar even when stderr is not a terminal")
    t.add_argument("--no-progress", dest="progress", action="store_false")

    e = sub.add_parser("eval", help="evaluate a checkpoint (or an ensemble of several) on an image folder",
                       description="Top-1/top-5 error on DIR/<class>/* images, the paper's test protocol: single "
                                   "crop, dense, multi-crop (5x5 crops and their mirrors per scale), dense + "
                                   "multi-crop, several scales; several checkpoints average their posteriors.")
    e.add_argument("checkpoint", nargs="+", type=_path,
                   help="weights: a training checkpoint (best.safetensors), a torchvision .pth or a .caffemodel; "
                        "several = an ensemble")
    e.add_argument("--data", default=None, type=_path,
                   help="image folder with one subfolder per class (default: the val set the checkpoint names)")
    e.add_argument("--scales", type=_scales, default=None, help="test scales Q, e.g. 256 or 256,384,512")
    e.add_argument("--crop", type=_int_at_least(1), default=None,
                   help="single-crop size (default the net's input size)")
    e.add_argument("--dense", action="store_true", help="dense (fully convolutional) evaluation")
    e.add_argument("--multi-crop", action="store_true",
                   help="5x5 grid of crops and their mirrors per scale (50 views); with --dense, both averaged")
    e.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=_int_at_least(1), default=32)
    e.add_argument("--workers", dest="num_workers", type=_int_at_least(1), default=None)
    e.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress line even when stderr is not a terminal")
    e.add_argument("--no-progress", dest="progress", action="store_false")

    p = sub.add_parser("predict", help="class probabilities of image files",
                       description="Top classes and their probabilities for each image, as text or JSON.")
    p.add_argument("images", nargs="+", type=_path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", required=True, type=_path, action="append", metavar="WEIGHTS",
                   help="a training checkpoint (.safetensors), a torchvision .pth/.safetensors or a .caffemodel; "
                        "repeat --model for an ensemble")
    p.add_argument("--topk", type=_int_at_least(1), default=5, help="classes shown per image (default 5)")
    p.add_argument("--labels", default=None, type=_path,
                   help="text file with one class name per line, for weights that carry none (torchvision's)")
    p.add_argument("--scales", type=_scales, default=None, help="test scales Q (default the model's)")
    p.add_argument("--crop", type=_int_at_least(1), default=None)
    p.add_argument("--dense", action="store_true", help="dense (fully convolutional) evaluation")
    p.add_argument("--multi-crop", action="store_true", help="5x5 grid of crops and their mirrors per scale")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32)

    sub.add_parser("info", help="version, build and devices")
    return parser


def _cmd_train(args):
    from .models import config_name
    from .training import train
    kwargs = vars(args).copy()
    kwargs.pop("command")
    quiet = kwargs.pop("quiet")
    if kwargs["checkpoint_dir"] is None:
        # The same folder for every run of a config: a second run is refused by train() unless --resume or
        # --overwrite says what to do with the first one.
        kwargs["checkpoint_dir"] = f"runs/vgg-{config_name(args.config)}"
    t0 = time.perf_counter()
    result = train(verbose=not quiet, **kwargs)
    elapsed = time.perf_counter() - t0
    from . import distributed
    if result.history and distributed.rank() == 0:      # under mpirun, rank 0 alone prints
        last = result.history[-1]
        top5 = f", top-5 err {last['val_top5_err']:.4f}" if last.get("val_top5_reported", True) else ""
        print(f"done in {elapsed:.0f} s: val top-1 err {last['val_top1_err']:.4f} (best "
              f"{result.best_val_top1_err:.4f}){top5}; checkpoints in {kwargs['checkpoint_dir']}")
    return 0


def _saved_val_folder(path):
    """DIR/val of the data folder a vggcore checkpoint names, or None."""
    from pathlib import Path
    from .checkpoint import load_state, read_metadata
    if not str(path).endswith(".safetensors") or "vggcore" not in read_metadata(path):
        return None
    state = load_state(path)
    saved = state.get("data") if isinstance(state, dict) else None
    return str(Path(saved) / "val") if saved else None




def _check_weights_file(path, op):
    """ValueError when ``path`` is a folder, naming the run's checkpoints in it (a common slip: the run folder
    given instead of its best.safetensors); anything else is left to load_weights."""
    from pathlib import Path
    folder = Path(path)
    if not folder.is_dir():
        return
    from ._rundir import RUN_FILES
    inside = [str(folder / name) for name in reversed(RUN_FILES) if (folder / name).is_file()]
    hint = (f"; did you mean {' or '.join(inside)}?" if inside
            else "; give a weights file (a training checkpoint such as best.safetensors, a .pth or a .caffemodel)")
    raise ValueError(f"{op}: {path} is a directory, not a weights file{hint}")


def _cmd_eval(args):
    from .evaluation import evaluate, protocol_settings
    from .interop import load_weights
    for path in args.checkpoint:
        _check_weights_file(path, "eval")
    models = [load_weights(path) for path in args.checkpoint]
    data = args.data
    if data is None:
        data = _saved_val_folder(args.checkpoint[0])
        if data is None:
            raise ValueError("eval: --data is required (the checkpoint names no data folder)")
    scale = args.scales if args.scales is None or len(args.scales) > 1 else args.scales[0]
    model = models if len(models) > 1 else models[0]
    kw = dict(crop=args.crop, scale=scale, dense=args.dense, flip=args.flip, multi_crop=args.multi_crop)
    settings = protocol_settings(model, **kw)
    t0 = time.perf_counter()
    res = evaluate(model, data, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                   progress=args.progress, **kw)
    top5 = (f"top-5 err {res['top5_err']:.4f}" if res["top5_reported"]
            else "top-5 err n/a (reported only above 5 classes)")
    name = " + ".join(args.checkpoint)
    ensemble = f", ensemble of {settings['models']}" if settings["models"] > 1 else ""
    print(f"{name}: {settings['method']}, Q={','.join(str(q) for q in settings['scales'])}: top-1 err "
          f"{res['top1_err']:.4f}  {top5}  ({res['n']} images, crop {settings['crop']}, "
          f"{settings['views_per_image']} view(s) per image{ensemble}, {time.perf_counter() - t0:.1f} s)")
    if res.get("skipped"):
        print(f"{res['skipped']} file(s) could not be decoded and were skipped")
    return 0


def _read_labels(path, num_classes):
    from pathlib import Path
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"predict: {path} names {len(names)} classes, the model has {num_classes}")
    return names


def _cmd_predict(args):
    import json
    import numpy as np
    from .evaluation import predict_images
    from .interop import load_weights
    if args.topk < 1:
        raise ValueError(f"predict: --topk must be positive, got {args.topk}")
    for path in args.model:
        _check_weights_file(path, "predict")
    models = [load_weights(path) for path in args.model]
    model = models if len(models) > 1 else models[0]
    classes = models[0].num_classes
    names = (_read_labels(args.labels, classes) if args.labels else models[0].class_names
             or [f"class {i}" for i in range(classes)])
    scale = args.scales if args.scales is None or len(args.scales) > 1 else args.scales[0]
    probs = predict_images(model, args.images, crop=args.crop, scale=scale, dense=args.dense, flip=args.flip,
                           multi_crop=args.multi_crop, device=args.device, batch_size=args.batch_size)
    k = min(args.topk, classes)
    results = []
    for path, p in zip(args.images, probs):
        order = np.lexsort((np.arange(classes), -np.nan_to_num(p, nan=-1.0)))[:k]
        results.append({"image": str(path), "top": [{"class": names[i], "index": int(i), "prob": float(p[i])}
                                                    for i in order]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['prob']:7.4f}  {t['class']}")
    return 0


def _cmd_info(args):
    import platform
    import numpy
    import vggcore as vc
    from . import _C
    def flag(name):
        fn = getattr(_C, name, None)
        return bool(fn()) if callable(fn) else None

    devices = vc.devices()
    print(f"vggcore {vc.__version__}")
    print(f"python {platform.python_version()}, numpy {numpy.__version__}, {platform.platform()}")
    cuda_built, sim_built = flag("cuda_compiled"), flag("sim_compiled")
    yes = {True: "yes", False: "no", None: "unknown"}
    print(f"build: CUDA compiled: {yes[cuda_built]}; SIMT emulator (sim): {yes[sim_built]}")
    gpu = "none"
    if vc.cuda_available():
        names = getattr(_C, "cuda_device_name", None)
        gpu = ", ".join(d for d in devices if d.startswith("cuda"))
        if callable(names):
            try:
                gpu += f" ({names(0)})"
            except Exception:
                pass
    print(f"GPU: {gpu}")
    print(f"devices: {', '.join(devices)}")
    print(f"default device (auto): {vc.default_device()}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict, "info": _cmd_info}[args.command]
    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError, RecursionError, ImportError,
            pickle.UnpicklingError) as error:
        # Every error a user can cause ends as one line (no traceback): the op or flag, and the value.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous_format


def _one_line_warning(message, category, filename, lineno, line=None):
    """A warning as the CLI prints it: "warning: <message>" on one line. Python's default format adds the
    source file, the line number and the source line, which point into vggcore rather than at the user's
    input (the Python API keeps them)."""
    return f"warning: {' '.join(str(message).split())}\n"


def _one_line(error):
    if isinstance(error, OSError) and error.strerror:     # from the OS: "<file>: <reason>", not "[Errno 21] ..."
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    elif isinstance(error, RecursionError):
        text = "the input is nested too deeply"
    else:
        text = str(error) or type(error).__name__ or "out of memory"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
