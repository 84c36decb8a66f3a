"""The one source of randomness for parameter initialisation and dropout seeds.

``manual_seed(s)`` makes both reproducible. Dropout draws a fresh 64-bit seed per call from this generator; the
mask itself is a pure function of (seed, element index) computed by the kernels (csrc/rng.h), so a given seed gives
the same mask on every device.
"""

import contextlib

import numpy as np

_generator = np.random.default_rng(0)
# Rows of the global batch held by lower data-parallel ranks: dropout offsets its mask's element index by
# them, so rank r draws the mask the single process draws for the same images (see vggcore/_parallel.py).
_row_offset = 0


def manual_seed(seed):
    """Reseeds vggcore's generator (initialisation and dropout)."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
    _generator = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)


def generator():
    """The current numpy Generator (used by layer initialisers)."""
    return _generator


def next_seed():
    """A fresh 64-bit seed for one dropout call."""
    return int(_generator.integers(0, 2**63 - 1, dtype=np.int64))


@contextlib.contextmanager
def batch_row_offset(rows):
    """Within the block, dropout treats row 0 of its input as row ``rows`` of the global batch."""
    global _row_offset
    previous, _row_offset = _row_offset, int(rows)
    try:
        yield
    finally:
        _row_offset = previous


def row_offset():
    return _row_offset


def get_state():
    """The generator's state, a JSON-serialisable dict (checkpoints store it)."""
    return _generator.bit_generator.state


def set_state(state):
    """Restores a state from get_state(); a damaged one is a ValueError saying so, not numpy's internals."""
    try:
        _generator.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise ValueError(f"random state: not a state saved by vggcore ({error})") from None
