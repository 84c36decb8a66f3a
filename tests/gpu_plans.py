"""A test-only knob shared by the GPU GEMM tests: force the tile plan and split-K, then restore the planner."""
import contextlib

import vggcore as vc


@contextlib.contextmanager
def forced_gemm_plan(plan):
    """Forces the GPU GEMM tile plan and split-K (the test-only _C._set_gpu_gemm_plan), then restores auto."""
    vc._C._set_gpu_gemm_plan(plan)
    try:
        yield
    finally:
        vc._C._set_gpu_gemm_plan("auto")
