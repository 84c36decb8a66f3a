"""Layers (``vggcore.nn``) and differentiable ops (``vggcore.nn.functional``), NHWC throughout."""

from . import functional
from .modules import (AvgPool2d, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear, LocalResponseNorm,
                      MaxPool2d, Module, Parameter, ReLU, Sequential)

__all__ = ["functional", "Module", "Parameter", "Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d",
           "LocalResponseNorm", "Linear", "Dropout", "Flatten", "Sequential"]
