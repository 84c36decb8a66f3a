"""The one source of randomness for parameter initialisation and dropout seeds.

``manual_seed(s)`` makes both reproducible. Dropout draws a fresh 64-bit seed per call from this generator; the
mask itself is a pure function of (seed, element index) computed by the kernels (csrc/rng.h), so a given seed gives
the same mask on every device.
"""

import numpy as np

_generator = np.random.default_rng(0)


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


def get_state():
    """The generator's state, a JSON-serialisable dict (checkpoints store it)."""
    return _generator.bit_generator.state


def set_state(state):
    """Restores a state from get_state(); a damaged one is a ValueError saying so, not numpy's internals."""
    try:
        _generator.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise ValueError(f"random state: not a state saved by vggcore ({error})") from None
