"""The CPU kernels' portable and AVX2 paths, on this (usually AVX-512) machine.

The library picks its micro-kernels once per process from the CPU's features; VGG_CPU_ISA=avx2|scalar caps the
choice. So each capped run is a fresh process running the cpu op, gradient and conv-path tests.
"""
import os
import pathlib
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_cpu_kernels_pass_with_capped_isa(isa):
    env = {**os.environ, "VGG_CPU_ISA": isa}
    files = [str(TESTS / name) for name in ("test_ops.py", "test_grad.py", "test_conv_paths.py")]
    # cwd=tests/: `python -m` puts the cwd on sys.path, and the repository root would shadow the installed package.
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-k", "not sim", *files], cwd=TESTS,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"VGG_CPU_ISA={isa}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
