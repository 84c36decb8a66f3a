"""The sim backend's elementwise and SGD kernels on buffers that start 1..3 floats past a 16-byte boundary.

Every tensor of the Python API starts 64-byte aligned, so only this test-only entry point (_C.sim_offset_call) runs
the launchers' other branch: the scalar loop alone, chosen when a pointer does not allow float4 accesses. With
VGG_SIM_CHECKS on, a float4 access at such an address is an emulator error (a GPU faults on it).
"""
import numpy as np
import pytest

import vggcore as vc
from vggcore import _C

pytestmark = pytest.mark.skipif("sim" not in vc.devices(), reason="needs the sim backend")

SIZES = [1, 7, 37, 1030]  # 1030 = 257 float4 groups + a tail of 2
OFFSETS = [0, 1, 2, 3]    # floats past a 64-byte boundary: 8 bytes (offset 2) is not enough for float4


def ints(n, seed):
    return np.random.default_rng(seed).integers(-8, 9, size=n).astype(np.float32)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_sim_elementwise_at_an_offset(n, offset):
    a, b = ints(n, 1), ints(n, 2)
    np.testing.assert_array_equal(_C.sim_offset_call("relu", a, b, offset), np.maximum(a, 0))
    np.testing.assert_array_equal(_C.sim_offset_call("add", a, b, offset), a + b)
    np.testing.assert_array_equal(_C.sim_offset_call("fill", a, b, offset), np.full(n, a[0], np.float32))


@pytest.mark.parametrize("n", SIZES)
def test_sim_dropout_mask_same_at_every_offset(n):
    # Offset 0 draws the masks of 4-element groups in the float4 body and the rest in the scalar tail; offsets 1-3
    # draw every element's mask in the scalar loop: element i must get the same mask either way.
    a = np.arange(1, n + 1, dtype=np.float32)
    masks = []
    for offset in OFFSETS:
        y = _C.sim_offset_call("dropout", a, a, offset)
        kept = y != 0
        np.testing.assert_array_equal(y[kept], 2 * a[kept])  # p = 0.5: kept elements scaled by 2, exactly
        masks.append(kept)
    for offset, kept in zip(OFFSETS[1:], masks[1:]):
        np.testing.assert_array_equal(kept, masks[0], err_msg=f"offset {offset}")
    if n >= 1000:
        assert 0.4 < masks[0].mean() < 0.6


@pytest.mark.parametrize("n", SIZES)
def test_sim_dropout_mask_follows_the_philox_offset(n):
    # Element i at Philox offset k draws the mask of element i + k at offset 0. Offsets not divisible by 4 must take
    # the scalar loop (a float4 group draws one Philox block, which needs the group to start at a multiple of 4).
    a = np.arange(1, n + 7, dtype=np.float32)
    base = _C.sim_offset_call("dropout", a, a, 0, rng_offset=0) != 0
    for k in (1, 2, 3, 4, 6):
        part = a[k:k + n]
        y = _C.sim_offset_call("dropout", part, part, 0, rng_offset=k)
        np.testing.assert_array_equal(y[y != 0], 2 * part[y != 0])
        np.testing.assert_array_equal(y != 0, base[k:k + n], err_msg=f"Philox offset {k}")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_sim_sgd_at_an_offset(n, offset):
    # Two momentum steps, lr = momentum = 0.5, no weight decay: exact in float32 for these small integers.
    p, g = ints(n, 3), ints(n, 4)
    buf = g.astype(np.float64)
    want = p - 0.5 * buf
    buf = 0.5 * buf + g
    want = want - 0.5 * buf
    np.testing.assert_array_equal(_C.sim_offset_call("sgd", p, g, offset), want.astype(np.float32))


def test_sim_offset_call_rejects_bad_arguments():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="op must be"):
        _C.sim_offset_call("relu6", a, a, 0)
    with pytest.raises(ValueError, match="offset must be"):
        _C.sim_offset_call("relu", a, a, 16)
    with pytest.raises(ValueError, match="one size"):
        _C.sim_offset_call("add", a, np.zeros(3, np.float32), 0)
