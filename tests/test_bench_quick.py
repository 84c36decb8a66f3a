"""bench/conv.py --device sim --quick in every precision: the GPU benchmark script runs end to end (validation
against NumPy, our timing with the stream timer, PyTorch CPU when installed) before a GPU ever sees it."""
import os
import subprocess
import sys

import pytest

import vggcore as vc

pytestmark = pytest.mark.skipif("sim" not in vc.devices(), reason="needs the sim backend")
CONV = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench", "conv.py")


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_conv_bench_quick_on_sim(precision, tmp_path):
    out = tmp_path / "report.md"
    args = [sys.executable, CONV, "--device", "sim", "--quick", "--precision", precision, "--out", str(out)]
    if precision != "fp32":
        args.append("--no-net")   # the whole-network section runs once, in fp32
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = out.read_text()
    assert f"vggcore conv benchmark, {precision}" in report
    assert "## Problems\n\nnone" in report
