"""Small checks shared by evaluation and training: a model whose outputs or weights are not finite has no
prediction to score and no state worth calling good; and arguments checked by name (ints, finite reals, bools)
where Python's own conversions would silently change them."""

import numbers
import os

import numpy as np


class NonFiniteScores(ValueError):
    """A model produced NaN or infinite class scores."""


def check_finite_scores(scores: np.ndarray, op: str = "evaluate") -> np.ndarray:
    """Returns ``scores`` (a batch of class scores) if every value is finite, else raises ValueError.

    NaN has no rank, so any top-k rule would silently turn a NaN row into some class (sorting puts NaN last,
    making every such image a "class 0" prediction); a NaN or infinite score is an error, never a prediction.
    """
    finite = np.isfinite(scores)
    if not finite.all():
        rows = int((~finite.reshape(len(scores), -1).all(axis=1)).sum()) if len(scores) else 0
        raise NonFiniteScores(f"{op}: the model's class scores are not finite (NaN or inf) for {rows} of {len(scores)} "
                         f"images in a batch; its weights have probably diverged (no image is scored as a "
                         f"prediction from them)")
    return scores


def nonfinite_parameters(model) -> list:
    """Names of the model's parameters holding any NaN or infinite value (empty when all are finite)."""
    return [name for name, param in model.named_parameters() if not np.isfinite(param.numpy()).all()]


# ---- argument checks shared by the Python entry points (train, evaluate, vgg, export_onnx) ----------------------
# Python's own conversions accept what a user did not mean (int(1e30), float(True), bool("no")) or fail with
# messages that name neither the function nor the argument (float([]), int(nan)); these name both.

def check_int(op, name, value, minimum=None, maximum=2**63 - 1):
    """``value`` as an int in [minimum, maximum]; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{op}: {name} must be <= {maximum}, got {value}")
    return value


def check_real(op, name, value):
    """``value`` as a finite float; bools, strings, None and non-finite numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):   # Fraction(1, 4) is fine
        raise TypeError(f"{op}: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    return value


def check_bool(op, name, value):
    """``value`` as a bool: True/False (or NumPy's), never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_rescaled_image_fits(op: str, smallest_side: int):
    """Refuses a rescale whose images cannot fit in this machine's memory (MemoryError naming ``op`` and the bytes).

    An image rescaled to smallest side S holds about 2 S^2 RGB pixels (aspect ratios up to 2), float32 where dense
    evaluation or the transform converts it, and Pillow makes working copies while resizing: a size that cannot
    fit is refused up front instead of growing until the OOM killer ends the process.
    """
    need = 4 * 2 * 3 * smallest_side * smallest_side
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return                                  # unknown: nothing to compare against
    if need > ram:
        raise MemoryError(f"{op}: scale {smallest_side} means rescaled images of about {need / 2**30:.0f} GiB each, "
                          f"more than this machine's {ram / 2**30:.0f} GiB of memory")
