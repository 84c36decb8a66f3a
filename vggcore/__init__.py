"""vggcore: a from-scratch convolution engine for the VGG networks of Simonyan & Zisserman (ICLR 2015).

Hand-written C++ (CPU) and CUDA kernels in ``vggcore._C``; a small autograd (``vggcore.tensor``), layers
(``vggcore.nn``), SGD (``vggcore.optim``), the paper's six configurations (``vggcore.models``) and its
training and evaluation recipe (``vggcore.train`` and ``vggcore.evaluate``, from ``vggcore.training`` and
``vggcore.evaluation``). Activations are NHWC.
"""

import os as _os
import warnings as _warnings


def _sane_omp_threads():
    """OpenMP reads OMP_NUM_THREADS once, when _C loads it; a value like 100000 makes the first parallel region
    start that many threads and the process dies (SIGSEGV) instead of refusing. Absurd counts are clipped to the
    CPU count here, with a warning, before _C is imported."""
    value = _os.environ.get("OMP_NUM_THREADS", "")
    first = value.split(",")[0].strip()
    cpus = _os.cpu_count() or 1
    if first.isdigit() and int(first) > 16 * cpus:
        _warnings.warn(f"vggcore: OMP_NUM_THREADS={value} is more than 16 threads per CPU ({cpus} CPUs); using "
                       f"{cpus}", RuntimeWarning, stacklevel=3)
        _os.environ["OMP_NUM_THREADS"] = str(cpus)


def _check_cpu_isa():
    """VGG_CPU_ISA is read once, by the first CPU op, possibly inside a parallel region where C++ may not throw;
    a misspelled value would silently leave the widest kernels on, so it is checked here instead."""
    value = _os.environ.get("VGG_CPU_ISA", "")
    if value not in ("", "scalar", "avx2"):
        raise ValueError(f"vggcore: environment variable VGG_CPU_ISA is {value!r}; allowed values: scalar, avx2 "
                         f"(or unset for the widest kernels the CPU has)")


_sane_omp_threads()
_check_cpu_isa()
from . import _C  # noqa: E402
from .autograd import no_grad, enable_grad, is_grad_enabled
from .random import manual_seed
from .tensor import Tensor, tensor, zeros, ones, pinned_empty
from . import nn, optim
from .graph import Graph
from . import distributed   # mpi4py and NCCL are imported only when a process group is made

__version__ = "0.1.0"


def devices():
    """What this build and machine can run, e.g. ``["cpu", "sim", "cuda:0"]``."""
    return list(_C.devices())


def cuda_available():
    """True when vggcore was compiled with CUDA and at least one GPU is usable."""
    return any(name.startswith("cuda") for name in _C.devices())


def set_float32_matmul_precision(precision):
    """``"highest"`` (default): float32 conv2d/linear are exact float32. ``"high"``: on sim and cuda they may run on
    TF32 tensor cores (10-bit mantissa operands, float32 accumulation), as PyTorch's setting of the same name; the
    cpu stays float32."""
    if not isinstance(precision, str):
        raise TypeError(f"set_float32_matmul_precision: precision must be \"highest\" or \"high\", got "
                        f"{type(precision).__name__} {precision!r}")
    _C.set_float32_matmul_precision(precision)


def get_float32_matmul_precision():
    """The current float32 matmul precision, ``"highest"`` or ``"high"``."""
    return _C.get_float32_matmul_precision()


def default_device():
    """The device ``device="auto"`` means: the first GPU when there is one, else the CPU."""
    return "cuda:0" if cuda_available() else "cpu"


# Models, training (vggcore/training.py) and evaluation (vggcore/evaluation.py) build on everything above.
from . import models  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .training import TrainResult, train  # noqa: E402
from . import interop  # noqa: E402
from .interop import export_onnx  # noqa: E402

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "pinned_empty", "no_grad", "enable_grad", "is_grad_enabled", "manual_seed",
    "devices", "cuda_available", "default_device",
    "set_float32_matmul_precision", "get_float32_matmul_precision", "nn", "optim", "distributed", "models", "train", "TrainResult", "evaluate",
    "interop", "export_onnx",
]
