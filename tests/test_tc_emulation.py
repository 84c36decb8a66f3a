"""The emulator's tensor-core models (csrc/simt/tensor_core.cpp) through the wrappers of csrc/cuda/mma.cuh.

Each self-test kernel fills fragments from whole matrices with the PTX ISA layouts and the result is compared with
NumPy's product of the whole matrices, so a wrong lane table (in the emulator or in a kernel) gives wrong numbers.
"""
import numpy as np
import pytest

import vggcore as vc

pytestmark = pytest.mark.skipif("sim" not in vc.devices(), reason="needs the sim backend")
C = vc._C


def tf32_truncate(x):
    return (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_round(x):
    """cvt.rna.tf32.f32 on finite values: nearest, ties away from zero."""
    u = np.asarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def to_bf16_bits(x):
    """Round to nearest even (finite values)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def reference(a, b, c):
    return (np.matmul(a.astype(np.float64), b.astype(np.float64)) + c).astype(np.float32)


@pytest.mark.parametrize("schedule", ["linear", "reverse", "random:7"])
def test_mma_tf32_small_integers_exact(schedule):
    rng = np.random.default_rng(1)
    P = 4
    a = rng.integers(-8, 9, (P, 16, 8)).astype(np.float32)
    b = rng.integers(-8, 9, (P, 8, 8)).astype(np.float32)
    c = rng.integers(-50, 51, (P, 16, 8)).astype(np.float32)
    C.sim_set_schedule(schedule)
    try:
        d = C.tc_selftest_mma_tf32(a, b, c, False)
    finally:
        C.sim_set_schedule("linear")
    np.testing.assert_array_equal(d, reference(a, b, c))


@pytest.mark.parametrize("round_first", [False, True])
def test_mma_tf32_random_fragments_read_as_tf32(round_first):
    rng = np.random.default_rng(2)
    P = 2
    a = rng.standard_normal((P, 16, 8)).astype(np.float32)
    b = rng.standard_normal((P, 8, 8)).astype(np.float32)
    c = rng.standard_normal((P, 16, 8)).astype(np.float32)
    d = C.tc_selftest_mma_tf32(a, b, c, round_first)
    conv = tf32_round if round_first else tf32_truncate
    want = reference(conv(a), conv(b), c)
    # The model sums the exact products in float64 and rounds once; the hardware's adder may differ by a few ulp.
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-6)
    # Reading the full float32 operands would be a different (more precise) answer: the low bits are ignored.
    assert np.abs(d - reference(a, b, c)).max() > 1e-5


def test_tf32_conversion_rounds_where_the_hardware_truncates():
    # The tf32 ulp at 1 is 2^-10: 1 + 2^-11 + 2^-13 is past the half ulp, so cvt.rna gives 1 + 2^-10 while a
    # tensor core reading the raw float32 drops the low 13 bits and sees 1.
    x = np.float32(1 + 2**-11 + 2**-13)
    a = np.zeros((2, 16, 8), np.float32)
    b = np.zeros((2, 8, 8), np.float32)
    a[:, :, 0] = x
    b[:, 0, :] = 1
    c = np.zeros((2, 16, 8), np.float32)
    np.testing.assert_array_equal(C.tc_selftest_mma_tf32(a, b, c, False), 1.0)
    np.testing.assert_array_equal(C.tc_selftest_mma_tf32(a, b, c, True), np.float32(1 + 2**-10))


@pytest.mark.parametrize("schedule", ["linear", "reverse", "random:3"])
def test_mma_bf16_small_integers_exact(schedule):
    rng = np.random.default_rng(3)
    P = 4
    a = rng.integers(-16, 17, (P, 16, 16)).astype(np.float32)
    b = rng.integers(-16, 17, (P, 16, 8)).astype(np.float32)
    c = rng.integers(-100, 101, (P, 16, 8)).astype(np.float32)
    C.sim_set_schedule(schedule)
    try:
        d = C.tc_selftest_mma_bf16(to_bf16_bits(a), to_bf16_bits(b), c)
    finally:
        C.sim_set_schedule("linear")
    np.testing.assert_array_equal(d, reference(a, b, c))


def test_mma_bf16_random_fragments():
    rng = np.random.default_rng(4)
    a = to_bf16_bits(rng.standard_normal((2, 16, 16)))
    b = to_bf16_bits(rng.standard_normal((2, 16, 8)))
    c = rng.standard_normal((2, 16, 8)).astype(np.float32)
    d = C.tc_selftest_mma_bf16(a, b, c)
    np.testing.assert_allclose(d, reference(bf16_value(a), bf16_value(b), c), rtol=1e-6, atol=1e-6)


def test_bf16_rounding_is_nearest_even():
    # 1 + 2^-8 is exactly half a bf16 ulp above 1: ties to even gives 1; 1 + 3 * 2^-8 ties up to 1 + 2^-6.
    vals = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -1 - 2**-8], np.float32)
    np.testing.assert_array_equal(bf16_value(to_bf16_bits(vals)), np.float32([1, 1 + 2**-6, 1 + 2**-7, -1]))


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_lane_layout(count, trans):
    regs = np.array(C.tc_selftest_ldmatrix(count, trans), np.uint32).reshape(32, count)
    for lane in range(32):
        for i in range(count):
            lo, hi = int(regs[lane, i] & 0xFFFF), int(regs[lane, i] >> 16)
            if not trans:  # row lane // 4, columns 2 (lane % 4) and +1
                r, c = lane // 4, 2 * (lane % 4)
                want = (1000 * i + 10 * r + c, 1000 * i + 10 * r + c + 1)
            else:  # rows 2 (lane % 4) and +1 of column lane // 4
                r, c = 2 * (lane % 4), lane // 4
                want = (1000 * i + 10 * r + c, 1000 * i + 10 * (r + 1) + c)
            assert (lo, hi) == want, f"ldmatrix x{count} trans={trans} lane {lane} matrix {i}"


def cp_async_expected():
    src = np.arange(1, 64 * 8 + 1, dtype=np.float32).reshape(64, 8)
    for i in range(64):
        src[i, (i % 5):4] = 0  # zero-filled past src-size
    return np.roll(src, -1, axis=0)  # each thread reads its neighbour's copy


@pytest.mark.parametrize("schedule", ["linear", "reverse", "random:5"])
def test_cp_async_lands_at_the_wait_with_zero_fill(schedule):
    C.sim_set_schedule(schedule)
    try:
        got = np.array(C.tc_selftest_cp_async("wait_all"), np.uint32).view(np.float32).reshape(64, 8)
    finally:
        C.sim_set_schedule("linear")
    np.testing.assert_array_equal(got, cp_async_expected())


def test_cp_async_without_its_wait_reads_poison():
    poison = np.uint32(C.tc_async_poison())
    got = np.array(C.tc_selftest_cp_async("no_wait"), np.uint32).reshape(64, 8)
    assert (got == poison).all()
    assert np.isnan(got.view(np.float32)).all()


def test_cp_async_wait_group_leaves_the_newest_group_in_flight():
    poison = np.uint32(C.tc_async_poison())
    got = np.array(C.tc_selftest_cp_async("wait_older"), np.uint32).reshape(64, 8)
    want = cp_async_expected().view(np.uint32)
    np.testing.assert_array_equal(got[:, :4], want[:, :4])
    assert (got[:, 4:] == poison).all()


def test_cp_async_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="cp_async mode"):
        C.tc_selftest_cp_async("sometimes")


def test_fragment_layout_probe_script_on_sim(capsys):
    """bench/tc_probe.py (what gpu_check.sh runs on the hardware) passes against the emulator's model."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "tc_probe.py")
    spec = importlib.util.spec_from_file_location("tc_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main(["--device", "sim", "--quiet"]) == 0, capsys.readouterr().out
    assert "all lanes match" in capsys.readouterr().out
