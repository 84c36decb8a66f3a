"""Launch rules a GPU enforces that the emulator must enforce too: __launch_bounds__ (VGG_LAUNCH_BOUNDS) and the
opt-in above 48 KiB of dynamic shared memory (vgg_opt_in_dynamic_shared, cudaFuncSetAttribute on a GPU)."""
import pytest

from simt_module import S


def test_launch_bound_is_read_from_the_kernel():
    assert S.simt_selftest_launch_bound_of(64) == 64
    assert S.simt_selftest_launch_bound_of(97) == 97
    assert S.simt_selftest_launch_bound_of(0) == 0  # a kernel without __launch_bounds__


@pytest.mark.parametrize("bound", [64, 97])
def test_launch_within_bounds_runs(bound):
    assert S.simt_selftest_launch_bounds(bound, bound) == bound
    assert S.simt_selftest_launch_bounds(bound, 32) == 32


@pytest.mark.parametrize("bound", [64, 97])
def test_launch_over_bounds_raises(bound):
    with pytest.raises(RuntimeError, match=rf"{bound + 1} threads, more than the kernel's __launch_bounds__\({bound}\)"):
        S.simt_selftest_launch_bounds(bound, bound + 1)
    assert S.simt_selftest_launch_bounds(bound, bound) == bound  # the emulator still works


def test_dynamic_shared_within_48k_needs_no_opt_in():
    assert S.simt_selftest_big_shared_other(48 * 1024) == 12 * 1024


def test_dynamic_shared_over_48k_needs_opt_in():
    with pytest.raises(RuntimeError, match="must opt in"):
        S.simt_selftest_big_shared_other(48 * 1024 + 16)
    with pytest.raises(RuntimeError, match="must opt in"):
        S.simt_selftest_big_shared(100 * 1024, opt_in=64 * 1024)  # opted in, but to less
    assert S.simt_selftest_big_shared(64 * 1024, opt_in=64 * 1024) == 16 * 1024
    assert S.simt_selftest_big_shared(100 * 1024, opt_in=227 * 1024) == 25 * 1024
    with pytest.raises(RuntimeError, match="must opt in"):  # per kernel: the other one did not opt in
        S.simt_selftest_big_shared_other(64 * 1024)


def test_opt_in_above_227k_raises():
    with pytest.raises(RuntimeError, match="227 KiB"):
        S.simt_selftest_big_shared(1024, opt_in=227 * 1024 + 1)
