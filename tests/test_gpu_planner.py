"""The GPU GEMM planner (plan_gemm in csrc/cuda/gemm_plan.cuh): whole waves from the device's SM count and the
kernel's occupancy. On sim the device is the model of an H100/H200 (132 SMs; blocks per SM from the kernel's
threads, shared memory and launch-bounds register target); on cuda the real device and occupancy calculator."""
import math

import pytest

import vggcore as vc

C = vc._C
GPU = [d for d in vc.devices() if d != "cpu"]
pytestmark = pytest.mark.skipif(not GPU, reason="needs sim or cuda")

# VGG-16 at batch 128, as GEMMs (M, N, K): forward (N*P*Q, K, 9C), backward data (N*H*W, C, 9K),
# backward weight (K, 9C, N*P*Q).
VGG = [(c, k, hw) for c, k, hw in [(64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56),
                                    (256, 256, 56), (256, 512, 28), (512, 512, 28), (512, 512, 14)]]


def gemms(batch=128):
    for c, k, hw in VGG:
        npq = batch * hw * hw
        yield ("fwd", npq, k, 9 * c)
        yield ("dgrad", npq, c, 9 * k)
        yield ("wgrad", k, 9 * c, npq)


def efficiency(M, N, plan):
    large, splits, sms, per_large, per_small = plan
    tile = 128 if large else 64
    blocks = math.ceil(M / tile) * math.ceil(N / tile) * splits
    slots = sms * (per_large if large else per_small)
    return blocks / (math.ceil(blocks / slots) * slots), blocks, slots


@pytest.mark.parametrize("device", GPU)
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_vgg_launches_are_whole_waves(device, precision):
    for name, M, N, K in gemms():
        plan = C._gpu_gemm_plan(device, precision, M, N, K)
        eff, blocks, slots = efficiency(M, N, plan)
        # Either several waves (a short last wave costs little) or the wave is (nearly) full.
        assert blocks >= 4 * slots or eff >= 0.9, f"{precision} {name} {(M, N, K)}: plan {plan}, {blocks} blocks " \
                                                  f"on {slots} slots ({eff:.2f} of the last wave busy)"


@pytest.mark.skipif("sim" not in vc.devices(), reason="the H100 model is the emulator's")
def test_conv4_weight_gradient_no_longer_spills_a_second_wave():
    # M = 512, N = 4608 (144 large tiles), K = 128*28*28. The old fixed target gave 2 splits: 288 blocks on 264
    # slots (a 24-block second wave). Whole waves now: 11 splits, 1584 blocks = 6 waves of 264.
    plan = C._gpu_gemm_plan("sim", "fp32", 512, 4608, 128 * 28 * 28)
    assert plan[:3] == [1, 11, 132] and plan[3] == 2
    eff, blocks, slots = efficiency(512, 4608, plan)
    assert (blocks, slots, eff) == (1584, 264, 1.0)


@pytest.mark.parametrize("device", GPU)
def test_short_k_is_never_split_and_override_wins(device):
    for precision in ("fp32", "tf32", "bf16"):
        assert C._gpu_gemm_plan(device, precision, 64, 64, 511)[1] == 1  # a split keeps >= 256 of K
    C._set_gpu_gemm_plan("small:7")
    try:
        assert C._gpu_gemm_plan(device, "tf32", 4096, 4096, 4096)[:2] == [0, 7]
    finally:
        C._set_gpu_gemm_plan("auto")


def test_plan_precision_is_checked():
    with pytest.raises(ValueError, match="precision"):
        C._gpu_gemm_plan(GPU[0], "fp16", 64, 64, 64)
