"""What the emulator diagnoses that a GPU gets wrong silently: shared and device memory races, reads of shared
memory no thread wrote, accesses outside device allocations and outside dynamic shared memory; and the poison
that makes the remaining ones show as NaN (csrc/simt/simt.h, docs/emulator.md).

Each bug kernel has a correct twin that must pass with every check on (no false positives)."""
import math
import struct

import pytest

from conftest import needs_sim_access_hooks
from simt_module import S

pytestmark = needs_sim_access_hooks

SCHEDULES = ["linear", "reverse", "random:3"]


@pytest.fixture(autouse=True)
def restore_settings():
    schedule, checks = S.sim_get_schedule(), S.sim_get_checks()
    yield
    S.sim_set_schedule(schedule)
    S.sim_set_checks(checks)


def test_checks_round_trip():
    S.sim_set_checks("races,bounds")
    assert S.sim_get_checks() == "races,bounds"
    S.sim_set_checks("all")
    assert S.sim_get_checks() == "races,uninit,bounds"
    S.sim_set_checks("")
    assert S.sim_get_checks() == ""
    with pytest.raises(ValueError, match="unknown check 'racy'"):
        S.sim_set_checks("racy")


def test_fresh_device_memory_is_poisoned():
    word = S.simt_selftest_fresh_word()
    assert word == 0x7FFFFFFF
    assert math.isnan(struct.unpack("<f", struct.pack("<I", word))[0])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_correct_shared_kernels_pass_every_check(schedule):
    S.sim_set_schedule(schedule)
    S.sim_set_checks("all")
    assert S.simt_selftest_shared_race(0) == 3
    assert S.simt_selftest_shared_race(5) == 3
    assert S.simt_selftest_shared_race(6) == 3 + 64  # atomicAdd from 64 threads
    assert S.simt_selftest_uninit(0) == [64.0] * 3


@pytest.mark.parametrize("kind, pattern", [
    (1, r"shared memory race on byte offset 0 of static shared array 's' \(256 bytes\): thread \((0|32),0,0\) "
        r"writes it and thread \((0|32),0,0\) wrote it, different warps"),
    (2, r"shared memory race on byte offset 4 of static shared array 's'.*thread \((0|40),0,0\).*different warps"),
    (3, r"shared memory race on byte offset 8 .*the same warp with no __syncwarp"),
    (4, r"shared memory race on byte offset 12 .*(writes|reads) it and thread"),
])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_shared_races_are_diagnosed(kind, pattern, schedule):
    S.sim_set_schedule(schedule)
    S.sim_set_checks("races")
    with pytest.raises(RuntimeError, match=r"kernel 'shared_race_kernel' block \(\d,0,0\).*" + pattern):
        S.simt_selftest_shared_race(kind)
    assert S.simt_selftest_shared_race(6) == 67  # the emulator still works


def test_lost_atomic_passes_without_the_check():
    # Under the whole-thread schedules a fiber runs until its next barrier, so it never interleaves a
    # read-modify-write and, without the race check, `+=` gives the atomic's result. Pinned here, so that a
    # VGG_SIM_SCHEDULE=interleave:N run of the suite tests the same claim.
    S.sim_set_checks("")
    for schedule in SCHEDULES:
        S.sim_set_schedule(schedule)
        assert S.simt_selftest_shared_race(4) == S.simt_selftest_shared_race(6) == 67


def test_interleaving_schedule_loses_the_non_atomic_update():
    # interleave:N lets other threads run before some shared-memory accesses, so a plain `+=` from 64 threads loses updates as on a GPU
    # even with every check off; the atomicAdd twin never does.
    S.sim_set_checks("")
    results = []
    for seed in range(1, 5):
        S.sim_set_schedule(f"interleave:{seed}")
        assert S.simt_selftest_shared_race(6) == 67
        results.append(S.simt_selftest_shared_race(4))
    assert min(results) < 67, results


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_device_memory_races_are_diagnosed(schedule):
    S.sim_set_schedule(schedule)
    S.sim_set_checks("races")
    with pytest.raises(RuntimeError, match=r"device memory race on byte offset 0 of device allocation #\d+ "
                                           r"\(output, 400 bytes\).*blocks of one launch are unordered"):
        S.simt_selftest_global_access(1)
    with pytest.raises(RuntimeError, match=r"device memory race on byte offset 0 .*different warps|same warp"):
        S.simt_selftest_global_access(2)
    assert S.simt_selftest_global_access(3)[0] == 128.0  # atomicAdd from 4 blocks x 32 threads: no race
    assert S.simt_selftest_global_access(0) == [float(i) for i in range(100)]


def test_one_element_overrun_write_is_reported_after_the_launch_by_default():
    S.sim_set_checks("")
    with pytest.raises(RuntimeError, match=r"kernel 'global_kernel' wrote outside device allocation #\d+ "
                                           r"\(output, 400 bytes\): byte offsets 400..403 \(past its end\)"):
        S.simt_selftest_global_access(5)
    assert S.simt_selftest_global_access(0)[99] == 99.0


def test_one_element_overrun_read_gives_nan_by_default():
    S.sim_set_checks("")
    out = S.simt_selftest_global_access(4)
    assert out[:99] == [float(i + 1) for i in range(99)]
    assert math.isnan(out[99])  # the guard zone holds the poison


@pytest.mark.parametrize("kind, offset", [(4, 400), (5, 400), (6, -4)])
def test_out_of_bounds_device_access_is_diagnosed(kind, offset):
    S.sim_set_checks("bounds")
    access = "write" if kind == 5 else "read"
    with pytest.raises(RuntimeError, match=rf"out-of-bounds device memory {access}: thread \(\d+,0,0\) accesses "
                                           rf"byte offset {offset} of device allocation #\d+ "
                                           rf"\((input|output), 400 bytes\)"):
        S.simt_selftest_global_access(kind)


def test_missing_barrier_reads_poison_or_is_diagnosed():
    S.sim_set_checks("")
    S.sim_set_schedule("linear")
    assert all(math.isnan(v) for v in S.simt_selftest_uninit(1))  # warp 1's total is still the poison
    S.sim_set_checks("uninit")
    with pytest.raises(RuntimeError, match=r"uninitialised shared memory read: thread \(0,0,0\) reads byte offset 4 "
                                           r"of static shared array 'totals' \(8 bytes\), which no thread of this "
                                           r"block has written"):
        S.simt_selftest_uninit(1)
    S.sim_set_schedule("reverse")  # warp 1 runs first: the value is right, the race is still there
    S.sim_set_checks("races")
    with pytest.raises(RuntimeError, match=r"shared memory race on byte offset 4 of static shared array 'totals'"):
        S.simt_selftest_uninit(1)


def test_static_shared_is_poisoned_in_every_block():
    # Without the poison, blocks after the first would read the previous block's totals and look right.
    S.sim_set_checks("")
    S.sim_set_schedule("linear")
    out = S.simt_selftest_uninit(1)
    assert len(out) == 3 and all(math.isnan(v) for v in out)


def test_unwritten_dynamic_shared_read_is_diagnosed():
    S.sim_set_checks("uninit")
    with pytest.raises(RuntimeError, match=r"uninitialised shared memory read: thread \(0,0,0\) reads byte offset "
                                           r"256 of the dynamic shared buffer \(320 bytes\)"):
        S.simt_selftest_uninit(2)
    S.sim_set_checks("")
    assert all(math.isnan(v) for v in S.simt_selftest_uninit(2))


def test_dynamic_shared_read_past_the_end_is_diagnosed():
    S.sim_set_checks("bounds")
    with pytest.raises(RuntimeError, match=r"out-of-bounds shared memory read: thread \(0,0,0\) accesses byte "
                                           r"offset 320 of the dynamic shared buffer \(320 bytes\)"):
        S.simt_selftest_uninit(3)


def test_interleave_schedule_interleaves_lanes_between_collectives():
    S.sim_set_checks("")
    seen = set()
    for seed in range(24):
        S.sim_set_schedule(f"interleave:{seed}")
        assert S.sim_get_schedule() == f"interleave:{seed}"
        seen.add(S.simt_selftest_interleave_probe())
    assert 1 in seen  # lane 1 ran between lane 0's two stores: only an interleaving schedule can show that
    for schedule in ["linear", "reverse", "random:1", "random:2"]:
        S.sim_set_schedule(schedule)
        assert S.simt_selftest_interleave_probe() in (0, 2)
    S.sim_set_schedule("interleave:3")
    S.sim_set_checks("races")
    with pytest.raises(RuntimeError, match="same warp with no __syncwarp"):
        S.simt_selftest_interleave_probe()
    with pytest.raises(ValueError, match="interleave:SEED"):
        S.sim_set_schedule("interleave:x")
