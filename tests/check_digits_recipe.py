"""The default recipe on scikit-learn-digits-like data, end to end (minutes on a CPU; not part of the suite).

    python tests/check_digits_recipe.py [EPOCHS] [--sklearn]

Generates 1437 training and 360 validation images with tests/digits_like.py (or, with --sklearn and
scikit-learn installed, uses the real 8x8 digits upscaled to 36 pixels), trains VGG-A with width 0.25 and
fc 256 on 32-pixel crops of 36-pixel images with every other setting at its default (lr 1e-2, patience 3,
batch 256), prints one line per epoch, and exits 0 if the best validation top-1 error ends below 0.5 (chance is
0.9) with the rate never divided while the net was at chance.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sklearn_digits(root):
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    for rank, i in enumerate(order):
        split = "train" if rank < 1437 else "val"
        folder = Path(root) / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        image = (digits.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(image).resize((36, 36), Image.BILINEAR).convert("RGB").save(folder / f"{i:05d}.png")
    return Path(root)


def main():
    import vggcore as vc
    import digits_like
    epochs = int(next((a for a in sys.argv[1:] if a.isdigit()), 20))
    with tempfile.TemporaryDirectory() as tmp:
        root = (sklearn_digits(Path(tmp) / "digits") if "--sklearn" in sys.argv
                else digits_like.generate(Path(tmp) / "digits", train_images=1437, val_images=360))
        result = vc.train(data=root, width=0.25, fc_width=256, scale=36, crop=32, epochs=epochs, device="cpu",
                          progress=False)
    at_chance_lrs = [h["lr"] for h in result.history if h["val_top1_err"] > 0.81]
    ok = result.best_val_top1_err < 0.5 and all(lr == 0.01 for lr in at_chance_lrs)
    print(f"best val top-1 err {result.best_val_top1_err:.4f}; {'learns' if ok else 'DOES NOT LEARN'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
