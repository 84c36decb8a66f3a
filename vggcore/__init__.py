"""vggcore: a from-scratch convolution engine for the VGG networks of Simonyan & Zisserman (ICLR 2015).

Hand-written C++ (CPU) and CUDA kernels in ``vggcore._C``; a small autograd (``vggcore.tensor``), layers
(``vggcore.nn``), SGD (``vggcore.optim``), the paper's six configurations (``vggcore.models``) and its
training and evaluation recipe (``vggcore.train`` and ``vggcore.evaluate``, from ``vggcore.training`` and
``vggcore.evaluation``). Activations are NHWC.
"""

from . import _C
from .autograd import no_grad, enable_grad, is_grad_enabled
from .random import manual_seed
from .tensor import Tensor, tensor, zeros, ones, pinned_empty
from . import nn, optim
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
