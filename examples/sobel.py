"""The Sobel operator as a 3x3 convolution with fixed weights: the seed idea behind learned conv filters.

    python examples/sobel.py photo.jpg edges.png     # writes the gradient magnitude as a grey PNG
    python examples/sobel.py                         # draws a test image (a built-in shape) first

A conv layer computes exactly this kind of weighted 3x3 neighbourhood sum; the difference in a VGG net is that
its 3x3 weights are learned rather than written down.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import vggcore as vc
import vggcore.nn.functional as F

# Two output channels: horizontal gradient (responds to vertical edges) and vertical gradient.
# Weight layout (K, R, S, C) = (out channels, kernel rows, kernel columns, in channels).
SOBEL = np.zeros((2, 3, 3, 1), np.float32)
SOBEL[0, :, :, 0] = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
SOBEL[1, :, :, 0] = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]


def sobel_edges(gray: np.ndarray, device="cpu") -> np.ndarray:
    """(H, W) grey levels -> (H, W) gradient magnitude (borders replicated so edges of the frame stay quiet)."""
    padded = np.pad(np.asarray(gray, np.float32), 1, mode="edge")
    x = vc.tensor(padded[None, :, :, None], device=device)            # NHWC, one grey channel
    g = F.conv2d(x, vc.tensor(SOBEL, device=device)).numpy()[0]       # (H, W, 2): gx, gy
    return np.sqrt((g ** 2).sum(axis=-1))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        src = Path(argv[0])
        gray = np.asarray(Image.open(src).convert("L"), np.float32)
        out = Path(argv[1]) if len(argv) > 1 else src.with_name(src.stem + "_edges.png")
    else:
        from vggcore.datasets import render
        gray = np.asarray(Image.fromarray(render("star", 128, np.random.default_rng(0))).convert("L"), np.float32)
        Image.fromarray(gray.astype(np.uint8)).save("sobel_input.png")
        out = Path("sobel_edges.png")
    edges = sobel_edges(gray)
    scaled = np.zeros_like(edges) if edges.max() == 0 else edges * (255.0 / edges.max())
    Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)).save(out)
    print(f"wrote {out} ({edges.shape[1]}x{edges.shape[0]}, max gradient {edges.max():.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
