"""The paper's ConvNet configurations: ``vgg(config, ...)``, its aliases, ``init_from`` and checkpoint loading."""

from .vgg import (ALIASES, CONFIGS, INIT_FROM_LAYERS, INIT_SCHEMES, LRN_PARAMS, VGG, config_name, count_params, describe,
                  from_description, init_from, load, param_shapes, vgg, vgg11, vgg11_lrn, vgg13, vgg16, vgg16_1x1,
                  vgg19)

__all__ = ["vgg", "VGG", "init_from", "load", "config_name", "count_params", "param_shapes", "describe",
           "from_description", "CONFIGS", "ALIASES", "INIT_FROM_LAYERS", "INIT_SCHEMES", "LRN_PARAMS",
           "vgg11", "vgg11_lrn", "vgg13", "vgg16_1x1", "vgg16", "vgg19"]
