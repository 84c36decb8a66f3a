"""Which devices a build offers: cpu always, sim when built (on by default), cuda:N only with a GPU."""
import os
import subprocess
import sys

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F


def test_devices_lists_cpu_first_and_only_known_names():
    devs = vc.devices()
    assert isinstance(devs, (list, tuple)) and all(isinstance(d, str) for d in devs)
    assert devs[0] == "cpu"
    assert len(set(devs)) == len(devs)
    for d in devs:
        assert d in ("cpu", "sim") or (d.startswith("cuda:") and d[5:].isdigit()), d


def test_sim_is_built():
    assert "sim" in vc.devices(), "the SIMT emulator (VGG_SIM, on by default) is missing from this build"


def test_cuda_available_is_a_bool_consistent_with_devices():
    avail = vc.cuda_available()
    assert isinstance(avail, bool)
    assert avail == any(d.startswith("cuda:") for d in vc.devices())
    if avail:
        assert "cuda:0" in vc.devices()


def test_every_listed_device_runs_an_op():
    for d in vc.devices():
        y = F.relu(vc.tensor(np.array([-1.0, 3.0], dtype=np.float32), device=d))
        assert y.device == d
        np.testing.assert_array_equal(y.numpy(), [0.0, 3.0])


def test_import_without_a_gpu():
    """Hiding every GPU must leave an importable package that lists no cuda device and still computes."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    script = ("import numpy as np, vggcore as vc, vggcore.nn.functional as F\n"
              "assert vc.cuda_available() is False, vc.devices()\n"
              "assert not any(d.startswith('cuda') for d in vc.devices()), vc.devices()\n"
              "print(F.relu(vc.tensor([-1.0, 2.0])).numpy().tolist())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[0.0, 2.0]"


def test_sim_tests_run_under_their_schedule(device, request):
    """The harness itself: a sim test whose id names a schedule really runs the emulator in that schedule."""
    if device != "sim":
        pytest.skip("emulator schedules apply to sim only")
    expected = request.node.callspec.id.split("-", 1)[1]
    assert vc._C.sim_get_schedule() == expected
