"""The SIMT emulator (csrc/simt/) through its self-test kernels in the test-only module vggcore._simt_selftest.

Every CUDA kernel of the sim device runs on this emulator, so these tests pin what the kernels rely on:
barriers that count arrivals, schedules that expose a missing barrier, CUDA's shuffle width arithmetic,
and errors (divergent barriers and warps, bad widths, shared memory overflow, bad launches, exceptions)
raised as RuntimeError without leaving the emulator broken.
"""
import pytest

from conftest import needs_sim_access_hooks
from simt_module import S as C  # noqa: N812 (the self-test module: its own engine, schedule and checks)

SCHEDULES = ["linear", "reverse", "random:1", "random:12345"]


@pytest.fixture(autouse=True)
def restore_schedule():
    # These tests pin the default mode (some kernels here are buggy on purpose); test_sim_checks.py covers the
    # checks, which would report the same bugs earlier and in other words.
    before, checks = C.sim_get_schedule(), C.sim_get_checks()
    C.sim_set_checks("")
    yield
    C.sim_set_schedule(before)
    C.sim_set_checks(checks)


def neighbour_sum_reference():
    x = [float(i % 17) for i in range(4 * 128)]
    return [x[i] + (x[i - 1] if i % 128 else 0.0) for i in range(len(x))]


def still_works():
    C.sim_set_schedule("linear")
    assert C.simt_selftest_neighbour_sum(True) == neighbour_sum_reference()


def test_schedule_round_trip():
    for s in ["linear", "reverse", "random:7"]:
        C.sim_set_schedule(s)
        assert C.sim_get_schedule() == s
    C.sim_set_schedule("random")
    assert C.sim_get_schedule() == "random:0"
    with pytest.raises(ValueError):
        C.sim_set_schedule("sideways")
    with pytest.raises(ValueError):
        C.sim_set_schedule("random:abc")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_barrier_makes_neighbour_sum_correct(schedule):
    C.sim_set_schedule(schedule)
    assert C.simt_selftest_neighbour_sum(True) == neighbour_sum_reference()


def test_missing_barrier_passes_linear_fails_reordered():
    ref = neighbour_sum_reference()
    C.sim_set_schedule("linear")
    assert C.simt_selftest_neighbour_sum(False) == ref
    wrong = 0
    for schedule in ["reverse", "random:1", "random:2"]:
        C.sim_set_schedule(schedule)
        wrong += C.simt_selftest_neighbour_sum(False) != ref
    assert wrong >= 2  # reverse always, random almost surely


@pytest.mark.parametrize("kind", ["sites", "exit"])
def test_divergent_barrier_raises(kind):
    with pytest.raises(RuntimeError, match="divergent barrier") as info:
        C.simt_selftest_divergent_barrier(kind)
    message = str(info.value)
    assert "divergent_barrier_kernel" in message and "block (0,0,0)" in message
    if kind == "sites":
        assert message.count("selftest.cpp:") == 2  # both call sites
    else:
        assert "returned" in message
    still_works()


@pytest.mark.parametrize("kind", ["sites", "exit"])
def test_divergent_warp_raises(kind):
    with pytest.raises(RuntimeError, match="__shfl_(down|xor)_sync"):
        C.simt_selftest_divergent_warp(kind)
    still_works()


@pytest.mark.parametrize("width", [0, 3, 12, 33, 64, -1])
def test_bad_shuffle_width_raises(width):
    with pytest.raises(RuntimeError, match="invalid shuffle width"):
        C.simt_selftest_shuffle_bad_width(width)
    still_works()


@pytest.mark.parametrize("width", [1, 2, 16, 32])
def test_good_shuffle_width_runs(width):
    C.simt_selftest_shuffle_bad_width(width)


def shfl_reference(op, t, arg, width):
    lane, base = t % 32, t - t % 32
    start = lane & ~(width - 1)
    end = start + width - 1
    if op == "down":
        j = lane + arg
        j = lane if j > end else j
    elif op == "up":
        j = lane - arg
        j = lane if j < start else j
    elif op == "xor":
        j = lane ^ arg
        j = lane if j > end else j
    else:
        j = start + (arg & (width - 1))
    return base + j


@pytest.mark.parametrize("schedule", ["linear", "reverse", "random:3"])
def test_shuffle_width_arithmetic(schedule):
    C.sim_set_schedule(schedule)
    down, xor, up, idx = C.simt_selftest_shuffle_lanes()
    # Source lanes as measured on a GPU: CUDA's width arithmetic, lanes of other segments included.
    assert [down[t] for t in (0, 15, 16, 31, 32)] == [16, 31, 16, 31, 48]
    assert [xor[t] for t in (0, 5, 9)] == [4, 1, 13]
    for t in range(64):
        assert down[t] == shfl_reference("down", t, 16, 32)
        assert xor[t] == shfl_reference("xor", t, 4, 8)
        assert up[t] == shfl_reference("up", t, 3, 8)
        assert idx[t] == shfl_reference("idx", t, 9, 8)


@needs_sim_access_hooks   # overruns dynamic shared memory on purpose
@pytest.mark.parametrize("overshoot", [1, 5, -1])
def test_dynamic_shared_overflow_raises(overshoot):
    with pytest.raises(RuntimeError, match="shared memory overflow") as info:
        C.simt_selftest_shared_overflow(overshoot)
    assert "shared_overflow_kernel" in str(info.value)
    still_works()


def test_in_bounds_shared_write_is_fine():
    C.simt_selftest_shared_overflow(0)


def test_kernel_exception_names_thread():
    with pytest.raises(RuntimeError, match=r"throwing_kernel.*thread \(37,0,0\).*boom"):
        C.simt_selftest_kernel_throws()
    still_works()


@pytest.mark.parametrize(
    "kind, words",
    [("threads", "1024"), ("block_z", "block.z"), ("grid_y", "grid.y"), ("zero", "empty"), ("shared", "227 KiB")],
)
def test_invalid_launch_raises(kind, words):
    with pytest.raises(RuntimeError, match="invalid launch") as info:
        C.simt_selftest_bad_launch(kind)
    assert words in str(info.value) and "empty_kernel" in str(info.value)
    still_works()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warp_reduce_ballot_and_count(schedule):
    C.sim_set_schedule(schedule)
    r = C.simt_selftest_warp_reduce()
    x = r["x"]
    for w in range(len(x) // 32):
        chunk = x[32 * w : 32 * w + 32]
        assert r["warp_sums"][w] == sum(chunk)
        assert r["ballots"][w] == sum(1 << i for i, v in enumerate(chunk) if int(v) % 3 == 0)
    for b in range(3):
        chunk = x[256 * b : 256 * b + 256]
        assert r["block_sums"][b] == sum(chunk)
        assert r["counts"][b] == sum(1 for v in chunk if int(v) % 2 == 0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_atomic_histogram(schedule):
    C.sim_set_schedule(schedule)
    values = [(i * 37) % 101 for i in range(3000)]
    bins = C.simt_selftest_histogram(values, 9)
    assert bins == [sum(1 for v in values if v % 9 == b) for b in range(9)]


def sgemm_reference(M, N, K):
    A = [[(i * 3 + k * 5) % 7 - 3 for k in range(K)] for i in range(M)]
    B = [[(k * 2 + j * 3) % 5 - 2 for j in range(N)] for k in range(K)]
    return [float(sum(A[i][k] * B[k][j] for k in range(K))) for i in range(M) for j in range(N)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", [(32, 48, 16), (37, 21, 45)])
def test_tiled_sgemm_exact(schedule, shape):
    C.sim_set_schedule(schedule)
    assert C.simt_selftest_sgemm(*shape) == sgemm_reference(*shape)


def test_sgemm_speed():
    # 256^3 with 16x16 tiles is 2.1 M barrier arrivals; about 0.1 s here. Generous bound for loaded CI machines.
    seconds, arrivals = C.simt_selftest_sgemm_seconds(256)
    assert arrivals == 2 * 256 * 256 * 16
    assert seconds < 5.0
