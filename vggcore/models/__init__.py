"""The paper's ConvNet configurations: ``vgg(config, ...)``, its aliases, ``init_from``, checkpoint loading and
weights from torchvision and Caffe (``from_torchvision``, ``from_caffe``; see ``vggcore.interop``)."""

from .vgg import (ALIASES, CONFIGS, INIT_FROM_LAYERS, INIT_SCHEMES, LRN_PARAMS, VGG, config_name, count_params, describe,
                  from_description, fine_tune_from, init_from, load, param_shapes, vgg, vgg11, vgg11_lrn, vgg13, vgg16, vgg16_1x1,
                  vgg19)

__all__ = ["vgg", "VGG", "init_from", "load", "config_name", "count_params", "param_shapes", "describe",
           "from_description", "CONFIGS", "ALIASES", "INIT_FROM_LAYERS", "INIT_SCHEMES", "LRN_PARAMS",
           "vgg11", "vgg11_lrn", "vgg13", "vgg16_1x1", "vgg16", "vgg19"]


def from_torchvision(source, num_classes=None, input_size=None):
    """A VGG from torchvision-layout weights (a state dict, or a .pth/.safetensors path); see vggcore.interop."""
    from ..interop import from_torchvision as _from_torchvision
    return _from_torchvision(source, num_classes=num_classes, input_size=input_size)


def from_caffe(caffemodel, prototxt=None, num_classes=None, input_size=None):
    """A VGG from the paper's Caffe release (VGG_ILSVRC_16/19_layers.caffemodel); see vggcore.interop."""
    from ..interop import from_caffe as _from_caffe
    return _from_caffe(caffemodel, prototxt=prototxt, num_classes=num_classes, input_size=input_size)


__all__ += ["from_torchvision", "from_caffe", "fine_tune_from"]
