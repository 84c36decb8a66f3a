"""Full-size check of torchvision interop (too heavy for the test suite: ~0.5 GB of weights, 15.5 GMAC).

Builds torchvision's VGG-16 module structure in torch (torchvision itself is not needed) with random weights,
saves its state dict with torch.save, loads the .pth in a fresh interpreter where torch cannot be imported,
and compares vggcore's logits with torch's on two random 224x224 images.

    python examples/torchvision_vgg16_check.py [--keep DIR]
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class TorchvisionVGG16(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", default=None, help="folder for the .pth and arrays (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="vgg16-check-"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = TorchvisionVGG16().eval()
    pth = folder / "vgg16_random.pth"
    torch.save(model.state_dict(), pth)
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.save(folder / "x.npy", x)
    code = (
        "import sys, time; sys.modules['torch'] = None\n"
        "import numpy as np, vggcore as vc\n"
        f"t = time.perf_counter(); m = vc.models.from_torchvision({str(pth)!r}).eval()\n"
        "print(f'load {time.perf_counter() - t:.1f} s: VGG-{m.config}, {m.num_parameters():,} parameters')\n"
        f"x = np.load({str(folder / 'x.npy')!r})\n"
        "with vc.no_grad(): y = m(vc.tensor(x)).numpy()\n"
        f"np.save({str(folder / 'y.npy')!r}, y)\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=folder)
    got = np.load(folder / "y.npy")
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"max |vggcore - torch| / max |torch| = {err:.2e} over {want.size} logits "
          f"({time.perf_counter() - t0:.1f} s without torch)")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
