"""The training transform as it was before crop-first resampling, the oracle of tests/test_pipeline.py and the
"before" side of bench/pipeline.py: rescale the whole image, then crop, flip, colour shift (the same draws in the
same order as data.TrainTransform)."""
import numpy as np

from vggcore import data


def rescale_whole_image(tf, img, rng):
    """The whole image rescaled to a smallest side drawn from [tf.smin, tf.smax], as a uint8 array."""
    return np.asarray(data.rescale(img, int(rng.integers(tf.smin, tf.smax + 1))))


def crop_and_augment(tf, arr, rng):
    """A random tf.crop square of arr, flipped with probability 1/2 (tf.flip), minus the mean and colour shift."""
    hh, ww = arr.shape[:2]
    y = int(rng.integers(0, hh - tf.crop + 1))
    x = int(rng.integers(0, ww - tf.crop + 1))
    arr = arr[y:y + tf.crop, x:x + tf.crop]
    if tf.flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    out = arr.astype(np.float32)
    shift = tf.mean_rgb
    if tf.colour_std > 0:
        alpha = rng.normal(0.0, tf.colour_std, size=3)
        shift = tf.mean_rgb - (tf.colour_basis @ alpha).astype(np.float32)
    out -= shift
    out *= tf.input_scale
    return out


def whole_image_transform(tf, img, rng):
    return crop_and_augment(tf, rescale_whole_image(tf, img, rng), rng)
