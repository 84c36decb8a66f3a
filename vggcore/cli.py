"""``python -m vggcore`` (or ``vggcore``): train, eval and info.

    python -m vggcore train                       # the built-in shapes dataset, a small VGG-A, a few CPU minutes
    python -m vggcore train --data DIR --config D --init-from runs/A/best.safetensors --scale 256,512
    python -m vggcore eval runs/A/best.safetensors --data DIR/val --dense --flip --scales 256,384,512
    python -m vggcore info
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction

__all__ = ["main", "build_parser"]


def _scale(text):
    """'256' -> 256, '256,512' -> (256, 512)."""
    parts = [p for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be S or Smin,Smax (integers), got {text!r}") from None
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
    return values


def _positive_number(text):
    """A float or a fraction such as 1/8."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.25 or 1/4, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m vggcore",
                                     description="Train and evaluate the VGG networks of Simonyan & Zisserman.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,info}")

    t = sub.add_parser("train", help="train a VGG configuration (default: built-in shapes dataset, small VGG-A)",
                       description="Train a VGG configuration with the paper's recipe. Without --data, the "
                                   "built-in shapes dataset is generated into the cache folder ($VGGCORE_CACHE or "
                                   "~/.cache/vggcore) and a small VGG-A is trained on 32-pixel crops.")
    t.add_argument("--config", default="A", help="A, A-LRN, B, C, D, E or an alias (vgg11 ... vgg19); default A")
    t.add_argument("--data", default=None, help="folder with train/<class>/* and val/<class>/*; default: built-in")
    t.add_argument("--epochs", type=int, default=None, help="default 74 (paper) or 12 (built-in data)")
    t.add_argument("--batch-size", type=int, default=None, help="default 256 (paper) or 32 (built-in data)")
    t.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (default 0.01)")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    t.add_argument("--scale", type=_scale, default=None,
                   help="training scale S, or Smin,Smax for scale jittering (default 256, or 32,40 built-in)")
    t.add_argument("--crop", type=int, default=None, help="crop size, the net's input (default 224, or 32 built-in)")
    t.add_argument("--width", type=_positive_number, default=None,
                   help="channel width multiplier, e.g. 0.5 or 1/4 (default 1, or 1/4 built-in)")
    t.add_argument("--fc-width", type=int, default=None, help="size of fc6 and fc7 (default 4096, or 128 built-in)")
    t.add_argument("--dropout", type=float, default=None, help="on fc6 and fc7 (default 0.5, or 0 built-in)")
    t.add_argument("--init", choices=("glorot", "normal", "he"), default=None,
                   help="weight initialisation (default glorot, or he for the built-in data's thin net)")
    t.add_argument("--init-from", default=None, help="checkpoint of a trained net A to initialise from (paper 3.1)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or sim (default auto)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints and curves go (default runs/vgg-<config>)")
    t.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.safetensors")
    t.add_argument("--lr-patience", type=int, default=3,
                   help="epochs without a better val top-1 error before the lr is divided by 10 (default 3)")
    t.add_argument("--lr-factor", type=float, default=0.1)
    t.add_argument("--max-lr-drops", type=int, default=3)
    t.add_argument("--eval-scale", type=int, default=None, help="validation Q (default S or (Smin+Smax)/2)")
    t.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    t.add_argument("--colour-std", type=float, default=0.1, help="AlexNet colour shift std (0 disables)")
    t.add_argument("--input-scale", type=float, default=1 / 255, help="pixels are (RGB - mean) * input_scale")
    t.add_argument("--stats-sample", type=int, default=2000, help="images sampled for mean RGB and colour PCA")
    t.add_argument("--workers", dest="num_workers", type=int, default=None, help="decoding threads")
    t.add_argument("--save-filters", action="store_true", help="write a grid image of conv1_1's filters")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="draw the in-place progress bar even when stderr is not a terminal")
    t.add_argument("--no-progress", dest="progress", action="store_false")

    e = sub.add_parser("eval", help="evaluate a checkpoint on an image folder",
                       description="Top-1/top-5 error of a checkpoint on DIR/<class>/* images.")
    e.add_argument("checkpoint", help="a checkpoint written by training (last.safetensors, best.safetensors)")
    e.add_argument("--data", default=None,
                   help="image folder with one subfolder per class (default: the built-in val set)")
    e.add_argument("--scales", type=_scales, default=None, help="test scales Q, e.g. 256 or 256,384,512")
    e.add_argument("--crop", type=int, default=None, help="single-crop size (default the net's input size)")
    e.add_argument("--dense", action="store_true", help="dense (fully convolutional) evaluation")
    e.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--workers", dest="num_workers", type=int, default=None)

    sub.add_parser("info", help="version, build and devices")
    return parser


def _cmd_train(args):
    from .models import config_name
    from .train import train
    kwargs = vars(args).copy()
    kwargs.pop("command")
    quiet = kwargs.pop("quiet")
    if kwargs["checkpoint_dir"] is None:
        kwargs["checkpoint_dir"] = f"runs/vgg-{config_name(args.config)}"
    t0 = time.perf_counter()
    result = train(verbose=not quiet, **kwargs)
    elapsed = time.perf_counter() - t0
    from . import distributed
    if result.history and distributed.rank() == 0:      # under mpirun, rank 0 alone prints
        last = result.history[-1]
        print(f"done in {elapsed:.0f} s: val top-1 err {last['val_top1_err']:.4f} (best "
              f"{result.best_val_top1_err:.4f}), top-5 err {last['val_top5_err']:.4f}; checkpoints in "
              f"{kwargs['checkpoint_dir']}")
    return 0


def _cmd_eval(args):
    from .evaluate import evaluate
    from .models import load
    model = load(args.checkpoint)
    data = args.data
    if data is None:
        from .checkpoint import load_state
        saved = load_state(args.checkpoint).get("data")
        if not saved:
            raise ValueError("eval: --data is required (the checkpoint names no data folder)")
        from pathlib import Path
        data = str(Path(saved) / "val")
    scale = args.scales if args.scales is None or len(args.scales) > 1 else args.scales[0]
    t0 = time.perf_counter()
    res = evaluate(model, data, crop=args.crop, scale=scale, dense=args.dense, flip=args.flip,
                      device=args.device, batch_size=args.batch_size, num_workers=args.num_workers)
    how = ("dense" if args.dense else "single crop") + (" + flip" if args.flip else "")
    scales = args.scales or ["default"]
    print(f"{args.checkpoint}: {how}, Q={','.join(str(q) for q in scales)}: top-1 err {res['top1_err']:.4f}  "
          f"top-5 err {res['top5_err']:.4f}  ({res['n']} images, {time.perf_counter() - t0:.1f} s)")
    if res.get("skipped"):
        print(f"{res['skipped']} file(s) could not be decoded and were skipped")
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
    handler = {"train": _cmd_train, "eval": _cmd_eval, "info": _cmd_info}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, FileExistsError,
            FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
