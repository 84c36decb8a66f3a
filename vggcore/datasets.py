"""The embedded dataset: ten procedurally drawn shape classes written as a real ImageFolder of PNG files.

Nothing is downloaded. ``generate(root)`` writes ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``;
every image is a function of (seed, split, class, index) only, so the same arguments give the same bytes on
every machine. Each image has a noisy, smoothly shaded background and one shape of a random colour, size,
position and rotation. ``ensure_dataset()`` generates the default set once into the cache folder
(``$VGGCORE_CACHE`` or ``~/.cache/vggcore``) and is what ``vggcore.train(data=None)`` uses.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "generate", "ensure_dataset", "cache_dir", "render"]

CLASSES = ("arrow", "bar", "circle", "crescent", "cross", "frame", "ring", "square", "star", "triangle")

# Bump when the drawing code changes, so cached copies made by an older version are not reused.
_VERSION = 2
_SUPERSAMPLE = 4          # shapes are drawn at 4x and downsampled: anti-aliased edges
_SPLIT_IDS = {"train": 0, "val": 1}


def cache_dir() -> Path:
    """The folder vggcore caches generated data in: ``$VGGCORE_CACHE``, else ``~/.cache/vggcore``."""
    env = os.environ.get("VGGCORE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vggcore"


def _polygon(n_points, radius, angle, inner=None):
    """Vertices of a regular polygon (or a star when ``inner`` radius is given) around the origin."""
    pts = []
    count = 2 * n_points if inner is not None else n_points
    for i in range(count):
        r = radius if (inner is None or i % 2 == 0) else inner
        a = angle + 2 * math.pi * i / count
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _shape_mask(name, big, cx, cy, radius, angle):
    """An 'L' mask (255 inside the shape) of side ``big`` with the shape centred at (cx, cy)."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)

    def poly(points):
        draw.polygon([(cx + x, cy + y) for x, y in points], fill=255)

    def disc(r, fill=255, dx=0.0, dy=0.0):
        draw.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=fill)

    r = radius
    if name == "circle":
        disc(r)
    elif name == "ring":
        disc(r)
        disc(r * 0.55, fill=0)
    elif name == "square":
        poly(_polygon(4, r, angle))
    elif name == "frame":
        poly(_polygon(4, r * 1.05, angle))
        draw_inner = _polygon(4, r * 0.6, angle)
        draw.polygon([(cx + x, cy + y) for x, y in draw_inner], fill=0)
    elif name == "triangle":
        poly(_polygon(3, r, angle))
    elif name == "star":
        poly(_polygon(5, r * 1.1, angle, inner=r * 0.45))
    elif name == "cross":
        w = r * 0.32
        poly(_rotate([(-r, -w), (r, -w), (r, w), (-r, w)], angle))
        poly(_rotate([(-w, -r), (w, -r), (w, r), (-w, r)], angle))
    elif name == "bar":
        w = r * 0.28
        poly(_rotate([(-r * 1.1, -w), (r * 1.1, -w), (r * 1.1, w), (-r * 1.1, w)], angle))
    elif name == "crescent":
        disc(r)
        off = r * 0.5
        disc(r * 0.85, fill=0, dx=off * math.cos(angle), dy=off * math.sin(angle))
    elif name == "arrow":
        w, head = r * 0.25, r * 0.3
        pts = [(-r, -w), (head, -w), (head, -r * 0.7), (r, 0.0), (head, r * 0.7), (head, w), (-r, w)]
        poly(_rotate(pts, angle))
    else:
        raise ValueError(f"unknown shape class {name!r}; known: {', '.join(CLASSES)}")
    return mask


def render(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of shape class ``name``, drawn with the random numbers of ``rng``."""
    # Background: a random base colour, a linear shading and per-pixel noise.
    base = rng.uniform(0, 255, size=3)
    gx, gy = rng.uniform(-40, 40, size=(2, 3))
    ramp = np.linspace(-0.5, 0.5, size)
    bg = base + ramp[None, :, None] * gx + ramp[:, None, None] * gy
    bg = bg + rng.normal(0, rng.uniform(3, 12), size=(size, size, 3))

    # Foreground colour: far from the background's base colour, with a clear brightness difference too.
    for _ in range(1000):
        fg = rng.uniform(0, 255, size=3)
        if np.linalg.norm(fg - base) > 150 and abs(fg.mean() - base.mean()) > 50:
            break
    radius = rng.uniform(0.26, 0.38) * size
    margin = radius * 0.9
    cx = rng.uniform(size / 2 - (size / 2 - margin) * 0.5, size / 2 + (size / 2 - margin) * 0.5)
    cy = rng.uniform(size / 2 - (size / 2 - margin) * 0.5, size / 2 + (size / 2 - margin) * 0.5)
    angle = rng.uniform(0, 2 * math.pi)

    big = size * _SUPERSAMPLE
    mask = _shape_mask(name, big, cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, radius * _SUPERSAMPLE, angle)
    alpha = np.asarray(mask.resize((size, size), Image.BILINEAR), dtype=np.float64)[..., None] / 255.0
    fg_img = fg + rng.normal(0, 6, size=(size, size, 3))
    img = bg * (1 - alpha) + fg_img * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _image_seed(seed, split, class_index, index):
    return np.random.SeedSequence([seed, _SPLIT_IDS[split], class_index, index, _VERSION])


def generate(root, train_per_class: int = 500, val_per_class: int = 100, size: int = 40, seed: int = 0,
             classes=CLASSES) -> Path:
    """Write the shape dataset as an ImageFolder under ``root`` (``train/`` and ``val/``) and return ``root``.

    The files are written into a temporary sibling folder that is renamed into place at the end, so an
    interrupted run never leaves a half-written dataset at ``root``. ``root`` must not exist yet.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"generate: {root} already exists; remove it or pick another folder")
    if size < 8:
        raise ValueError(f"generate: size must be at least 8 pixels, got {size}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("generate: train_per_class and val_per_class must be at least 1")
    classes = tuple(classes)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / _OWNER).write_text(f"{os.getpid()}\n")
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for ci, name in enumerate(classes):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng(_image_seed(seed, split, CLASSES.index(name), i))
                    Image.fromarray(render(name, size, rng)).save(folder / f"{name}_{i:05d}.png")
        info = {"generator": "vggcore.datasets", "version": _VERSION, "size": size, "seed": seed,
                "train_per_class": train_per_class, "val_per_class": val_per_class, "classes": list(classes)}
        (tmp / "dataset.json").write_text(json.dumps(info, indent=1) + "\n")
        (tmp / _OWNER).unlink()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


_OWNER = ".generating-pid"


def _remove_abandoned(root: Path):
    """Removes half-generated siblings ``.<name>.*`` of ``root`` left by a generator that was killed: those
    whose owner process (the pid written inside) no longer exists. A generator still running is left alone."""
    for tmp in root.parent.glob(f".{root.name}.*"):
        try:
            pid = int((tmp / _OWNER).read_text().strip())
        except (OSError, ValueError):
            pid = None
        # No pid yet: either from a generator that predates the pid file, or one that has just made its folder.
        try:
            alive = pid is None and time.time() - tmp.stat().st_mtime < 60
        except OSError:
            continue
        if pid is not None:
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        if not alive and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_dataset(root=None, train_per_class: int = 500, val_per_class: int = 100, size: int = 40,
                   seed: int = 0) -> Path:
    """The embedded dataset's folder, generated on first use (in the cache folder when ``root`` is None)."""
    if root is None:
        name = f"shapes-v{_VERSION}-{size}px-{train_per_class}x{val_per_class}-seed{seed}"
        root = cache_dir() / name
    root = Path(root)
    marker = root / "dataset.json"
    if marker.is_file():
        return root
    if root.exists():
        raise FileExistsError(f"ensure_dataset: {root} exists but holds no generated dataset (no dataset.json)")
    try:
        return generate(root, train_per_class, val_per_class, size, seed)
    except FileExistsError:
        if marker.is_file():       # another process generated it at the same time
            return root
        raise
