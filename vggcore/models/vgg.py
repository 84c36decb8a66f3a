"""The six ConvNet configurations of Simonyan & Zisserman (ICLR 2015, Table 1), built from one table.

Every configuration is five stages of 3x3 convolutions (stride 1, padding 1) each followed by ReLU, a 2x2
max-pool after each stage, then fc6 (fc_width), fc7 (fc_width), fc8 (classes) with ReLU and dropout after
fc6 and fc7. Layers are named Caffe-style (conv1_1 ... conv5_4, fc6, fc7, fc8), so ``state_dict`` keys are
"conv1_1.weight", "fc8.bias" and so on. Layouts are vggcore's: conv weights (K, R, S, C), activations NHWC,
and fc6 reads the last feature map flattened in (H, W, C) order (to import NCHW-trained weights, permute
fc6's input axis from (C, H, W) to (H, W, C) order).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from .. import nn
from .. import random as _random
from ..nn import functional as F

__all__ = ["CONFIGS", "ALIASES", "VGG", "vgg", "init_from", "fine_tune_from", "load", "config_name", "param_shapes",
           "count_params", "describe", "from_description", "vgg11", "vgg11_lrn", "vgg13", "vgg16_1x1", "vgg16", "vgg19"]

# Table 1: per stage, the convolutions as (kernel size, output channels); "LRN" marks local response norm.
CONFIGS = {
    "A": [[(3, 64)], [(3, 128)], [(3, 256)] * 2, [(3, 512)] * 2, [(3, 512)] * 2],
    "A-LRN": [[(3, 64), "LRN"], [(3, 128)], [(3, 256)] * 2, [(3, 512)] * 2, [(3, 512)] * 2],
    "B": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 2, [(3, 512)] * 2, [(3, 512)] * 2],
    "C": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 2 + [(1, 256)], [(3, 512)] * 2 + [(1, 512)],
          [(3, 512)] * 2 + [(1, 512)]],
    "D": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 3, [(3, 512)] * 3, [(3, 512)] * 3],
    "E": [[(3, 64)] * 2, [(3, 128)] * 2, [(3, 256)] * 4, [(3, 512)] * 4, [(3, 512)] * 4],
}
ALIASES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_1x1": "C", "vgg16": "D", "vgg19": "E"}

# AlexNet's LRN (k=2, n=5, alpha=1e-4, beta=0.75) in the PyTorch/Caffe convention of F.local_response_norm,
# which divides alpha by the window size: alpha = 1e-4 * 5.
LRN_PARAMS = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}
INIT_SCHEMES = ("glorot", "normal", "he")
# The paper's transfer of initial weights (sec. 3.1): A's first four conv layers and its three FC layers.
INIT_FROM_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


def config_name(config):
    """The canonical name ("A" ... "E", "A-LRN") of a config name or alias ("vgg16", "a_lrn"); ValueError if unknown."""
    if not isinstance(config, str):
        raise TypeError(f"vgg: config must be a string such as 'A' or 'vgg16', got {type(config).__name__}")
    key = config.strip()
    if key.lower() in ALIASES:
        return ALIASES[key.lower()]
    key = key.upper().replace("_", "-")
    if key == "ALRN":
        key = "A-LRN"
    if key not in CONFIGS:
        raise ValueError(f"vgg: unknown config {config!r}; choose one of {', '.join(CONFIGS)} "
                         f"or an alias ({', '.join(ALIASES)})")
    return key


def _channels(c, width):
    return max(1, int(round(c * width)))


def _check_options(num_classes, width, fc_width, input_size, dropout):
    for name, value in (("num_classes", num_classes), ("fc_width", fc_width), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"vgg: {name} must be a positive int, got {value!r}")
    if isinstance(width, bool) or not (isinstance(width, (int, float, np.integer, np.floating)) and
                                       np.isfinite(width) and width > 0):
        raise ValueError(f"vgg: width must be a positive number, got {width!r}")
    if input_size < 32:
        raise ValueError(f"vgg: input_size must be at least 32 (five 2x2 max-pools), got {input_size}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.integer, np.floating)) or \
            not (0 <= dropout < 1):
        raise ValueError(f"vgg: dropout must be a number in [0, 1), got {dropout!r}")


def _layers(config, width):
    """[(kind, name, spec)] for the feature extractor: conv (kernel, in, out), lrn, pool."""
    out, in_ch = [], 3
    for stage, convs in enumerate(CONFIGS[config], start=1):
        i = 0
        for item in convs:
            if item == "LRN":
                out.append(("lrn", f"norm{stage}", None))
                continue
            i += 1
            kernel, c = item
            c = _channels(c, width)
            out.append(("conv", f"conv{stage}_{i}", (kernel, in_ch, c)))
            in_ch = c
        out.append(("pool", f"pool{stage}", None))
    return out, in_ch


def param_shapes(config="A", num_classes=1000, width=1.0, fc_width=4096, input_size=224) -> dict:
    """``{state_dict key: shape}`` of a configuration, computed without allocating it."""
    config = config_name(config)
    _check_options(num_classes, width, fc_width, input_size, 0.0)
    layers, c5 = _layers(config, width)
    shapes = {}
    for kind, name, spec in layers:
        if kind == "conv":
            k, cin, cout = spec
            shapes[f"{name}.weight"] = (cout, k, k, cin)
            shapes[f"{name}.bias"] = (cout,)
    side = input_size // 32
    for name, fin, fout in (("fc6", side * side * c5, fc_width), ("fc7", fc_width, fc_width),
                            ("fc8", fc_width, num_classes)):
        shapes[f"{name}.weight"] = (fout, fin)
        shapes[f"{name}.bias"] = (fout,)
    return shapes


def count_params(config="A", **options) -> int:
    """The number of parameters of a configuration (Table 2 counts, exactly), without allocating it."""
    return sum(math.prod(s) for s in param_shapes(config, **options).values())   # Python ints: no wrap-around


def _check_parameter_memory(config, num_classes, width, fc_width, input_size):
    """MemoryError, before anything is allocated, for a net whose float32 weights exceed physical memory
    (width=100 or fc_width=2**40 would otherwise grow the process until the OOM killer ends it)."""
    need = 4 * count_params(config, num_classes=num_classes, width=width, fc_width=fc_width, input_size=input_size)
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if ram and need > ram:
        raise MemoryError(f"vgg: config {config} with width={width}, fc_width={fc_width}, num_classes={num_classes}, "
                          f"input_size={input_size} has {need / 4:.3g} parameters ({need / 2**30:.3g} GiB of float32), "
                          f"more than this machine's {ram / 2**30:.0f} GiB of memory")


def _init_array(shape, scheme, rng):
    if len(shape) == 1:
        return np.zeros(shape, np.float32)
    if scheme == "glorot":
        # Glorot & Bengio (2010) uniform: fan_in and fan_out count the receptive field, as in Caffe's xavier.
        receptive = int(np.prod(shape[1:-1])) if len(shape) == 4 else 1
        fan_in, fan_out = shape[-1] * receptive, shape[0] * receptive
        limit = np.float32(np.sqrt(6.0 / (fan_in + fan_out)))
        w = rng.random(shape, dtype=np.float32)
        w *= 2 * limit
        w -= limit
        return w
    w = rng.standard_normal(shape, dtype=np.float32)
    if scheme == "he":
        # He et al. (2015) normal, std sqrt(2 / fan_in): keeps the activation variance constant through ReLU
        # layers, so thin or deep nets train from scratch without the paper's staged initialisation.
        w *= np.float32(np.sqrt(2.0 / int(np.prod(shape[1:]))))
    else:
        w *= np.float32(0.01)                              # the paper's N(0, 0.01^2)
    return w


class VGG(nn.Module):
    """One of the paper's configurations; build it with ``vgg(config, ...)``.

    ``forward(x)`` takes NHWC images of side ``input_size`` and returns (N, num_classes) class scores. After
    ``to_fully_convolutional()`` the FC layers are convolutions and any input of at least ``input_size``
    gives an (N, h, w, num_classes) score map. ``class_names`` and the preprocessing fields describe what a
    trained model expects; checkpoints carry them. An RGB pixel p (0..255) is fed as
    ``(p - mean_rgb) * input_scale / std_rgb`` (``preprocess``): vggcore's own training uses mean_rgb and
    input_scale with std_rgb None (1); torchvision's weights use mean 255 * (0.485, 0.456, 0.406),
    input_scale 1/255 and std (0.229, 0.224, 0.225); the paper's Caffe weights the mean pixel and scale 1.
    ``test_scale`` is the default test Q when no training scale is known.
    """

    def __init__(self, config="A", num_classes=1000, width=1.0, fc_width=4096, input_size=224, dropout=0.5,
                 init="glorot", fully_convolutional=False):
        super().__init__()
        config = config_name(config)
        _check_options(num_classes, width, fc_width, input_size, dropout)
        _check_parameter_memory(config, num_classes, width, fc_width, input_size)
        if init not in INIT_SCHEMES + (None,):
            raise ValueError(f"vgg: init must be one of {', '.join(INIT_SCHEMES)}, got {init!r}")
        self.config = config
        self.num_classes = int(num_classes)
        self.width = float(width)
        self.fc_width = int(fc_width)
        self.input_size = int(input_size)
        self.dropout_p = float(dropout)
        self.fully_convolutional = bool(fully_convolutional)
        self.class_names = None
        self.mean_rgb = None
        self.input_scale = 1.0 / 255.0
        self.std_rgb = None
        self.train_scale = None
        self.test_scale = None

        layers, c5 = _layers(config, width)
        self._plan = []
        for kind, name, spec in layers:
            if kind == "conv":
                k, cin, cout = spec
                setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))
            self._plan.append((kind, name))
        side = self.input_size // 32
        self.feature_side, self.feature_channels = side, c5
        fc_specs = (("fc6", side * side * c5, self.fc_width, side), ("fc7", self.fc_width, self.fc_width, 1),
                    ("fc8", self.fc_width, self.num_classes, 1))
        for name, fin, fout, k in fc_specs:
            if self.fully_convolutional:
                setattr(self, name, nn.Conv2d(fin // (k * k), fout, k))
            else:
                setattr(self, name, nn.Linear(fin, fout))
        if init is not None:
            self.reset_parameters(init)

    @property
    def hparams(self) -> dict:
        """The arguments that rebuild this architecture with ``vgg(**hparams)``."""
        return {"config": self.config, "num_classes": self.num_classes, "width": self.width,
                "fc_width": self.fc_width, "input_size": self.input_size, "dropout": self.dropout_p}

    def reset_parameters(self, init="glorot"):
        """Re-initialise every weight (Glorot uniform, the paper's N(0, 0.01^2) or He normal); biases to zero."""
        rng = _random.generator()
        for name, param in list(self.named_parameters()):
            shape = tuple(param.shape)
            if self.fully_convolutional and name.startswith("fc") and name.endswith("weight"):
                value = _init_array((shape[0], int(np.prod(shape[1:]))), init, rng).reshape(shape)  # FC fans
            else:
                value = _init_array(shape, init, rng)
            self.load_state_dict({name: value}, strict=False)   # one layer at a time bounds the peak memory
        return self

    def preprocess(self, images) -> np.ndarray:
        """float32 network input from RGB pixels in 0..255 (any array of shape (..., 3), e.g. NHWC uint8)."""
        out = np.asarray(images, dtype=np.float32)
        if out.shape[-1:] != (3,):
            raise ValueError(f"VGG.preprocess: expected RGB pixels (..., 3), got shape {out.shape}")
        if self.mean_rgb is not None:
            out = out - np.asarray(self.mean_rgb, dtype=np.float32)
        else:
            out = out.copy()
        if self.input_scale != 1.0:
            out *= np.float32(self.input_scale)
        if self.std_rgb is not None:
            out /= np.asarray(self.std_rgb, dtype=np.float32)
        return out

    def copy_preprocessing(self, other):
        """Take class names and every preprocessing field from ``other``; returns self."""
        for field in _PREPROCESSING_FIELDS:
            value = getattr(other, field, None)
            setattr(self, field, list(value) if isinstance(value, list) else value)
        return self

    def with_num_classes(self, num_classes: int):
        """A copy of this (non fully convolutional) net whose fc8 has ``num_classes`` outputs, freshly initialised
        (Glorot), every other layer and the preprocessing kept: the start of fine-tuning on a new label set.
        Class names are unset (the new classes are not the old ones)."""
        if self.fully_convolutional:
            raise ValueError("with_num_classes: call it on the original net, not the fully convolutional one")
        hp = dict(self.hparams, num_classes=int(num_classes))
        net = VGG(**hp, init=None)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("fc8.")}
        rng = _random.generator()
        state["fc8.weight"] = _init_array((int(num_classes), self.fc_width), "glorot", rng)
        state["fc8.bias"] = np.zeros(int(num_classes), np.float32)
        net.load_state_dict(state)
        net.copy_preprocessing(self)
        net.class_names = None
        net.to(*_device_and_dtype_of(self))     # where this net is, in its dtype (bfloat16, float64 stay so)
        return net

    def to_torchvision(self) -> dict:
        """``{torchvision key: numpy array}`` (features.N.*, classifier.{0,3,6}.*; NCHW conv weights, fc6 in
        (C, H, W) order): the exact inverse of ``vc.models.from_torchvision``."""
        from ..interop.torchvision import to_torchvision
        return to_torchvision(self)

    def extra_repr(self):
        fc = ", fully_convolutional" if self.fully_convolutional else ""
        return (f"config={self.config}, num_classes={self.num_classes}, width={self.width:g}, "
                f"fc_width={self.fc_width}, input_size={self.input_size}{fc}")

    def features(self, x):
        """The conv/pool stack: NHWC images -> the last pooled feature map."""
        for kind, name in self._plan:
            if kind == "conv":
                x = F.relu(getattr(self, name)(x))
            elif kind == "lrn":
                x = F.local_response_norm(x, **LRN_PARAMS)
            else:
                x = F.max_pool2d(x, 2, 2)
        return x

    def forward(self, x):
        if len(x.shape) != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG: expected NHWC images (N, H, W, 3), got shape {tuple(x.shape)}")
        if self.fully_convolutional:
            if min(x.shape[1:3]) < self.input_size:
                raise ValueError(f"VGG: the fully convolutional net needs images of at least {self.input_size} "
                                 f"pixels per side, got {tuple(x.shape[1:3])}")
        elif tuple(x.shape[1:3]) != (self.input_size, self.input_size):
            raise ValueError(f"VGG: this net takes {self.input_size}x{self.input_size} images, got "
                             f"{x.shape[1]}x{x.shape[2]}; use to_fully_convolutional() for other sizes")
        x = self.features(x)
        training = self.training and self.dropout_p > 0
        if self.fully_convolutional:
            x = F.relu(self.fc6(x))
            x = F.dropout(x, self.dropout_p, training)
            x = F.relu(self.fc7(x))
            x = F.dropout(x, self.dropout_p, training)
            return self.fc8(x)
        x = x.reshape(x.shape[0], -1)
        x = F.dropout(F.relu(self.fc6(x)), self.dropout_p, training)
        x = F.dropout(F.relu(self.fc7(x)), self.dropout_p, training)
        return self.fc8(x)

    def to_fully_convolutional(self):
        """A new net whose fc6, fc7, fc8 are 7x7 (input_size/32), 1x1 and 1x1 convolutions with these weights.

        On an ``input_size`` image it gives the same scores as this net, as an (N, 1, 1, classes) map; on a
        larger image, a map of scores for every input_size window (stride 32): the paper's dense evaluation.
        """
        if self.fully_convolutional:
            return self
        net = VGG(**self.hparams, init=None, fully_convolutional=True)
        state = self.state_dict()
        side, c5 = self.feature_side, self.feature_channels
        state["fc6.weight"] = state["fc6.weight"].reshape(self.fc_width, side, side, c5)
        state["fc7.weight"] = state["fc7.weight"].reshape(self.fc_width, 1, 1, self.fc_width)
        state["fc8.weight"] = state["fc8.weight"].reshape(self.num_classes, 1, 1, self.fc_width)
        net.load_state_dict(state)
        net.copy_preprocessing(self)
        net.to(*_device_and_dtype_of(self))     # where this net is, in its dtype (bfloat16, float64 stay so)
        net.train(self.training)
        return net


# What a model carries besides its architecture and weights (describe / from_description, checkpoints).
_PREPROCESSING_FIELDS = ("class_names", "mean_rgb", "input_scale", "std_rgb", "train_scale", "test_scale")


def _device_and_dtype_of(model):
    for p in model.parameters():
        return p.device, p.dtype
    return "cpu", "float32"


def vgg(config="A", num_classes=1000, width=1.0, fc_width=4096, input_size=224, dropout=0.5, init="glorot"):
    """Build configuration ``config`` ("A", "A-LRN", "B", "C", "D", "E" or an alias such as "vgg16").

    width scales every conv layer's channels (64 * width ...); fc_width is the size of fc6 and fc7; fc6's
    input is sized from input_size (7x7 at 224). init: "glorot" (uniform, Glorot & Bengio 2010), "normal"
    (std 0.01, the paper's) or "he" (normal, std sqrt(2 / fan_in), He et al. 2015).
    """
    return VGG(config, num_classes, width, fc_width, input_size, dropout, init)


def _alias(name):
    def build(**options):
        return vgg(ALIASES[name], **options)

    build.__name__ = name
    build.__doc__ = f"Configuration {ALIASES[name]} of the paper: ``vgg({ALIASES[name]!r}, **options)``."
    return build


vgg11, vgg11_lrn, vgg13 = _alias("vgg11"), _alias("vgg11_lrn"), _alias("vgg13")
vgg16_1x1, vgg16, vgg19 = _alias("vgg16_1x1"), _alias("vgg16"), _alias("vgg19")


def init_from(model: VGG, net_a) -> VGG:
    """The paper's initialisation of a deeper net: copy net A's conv1_1, conv2_1, conv3_1, conv3_2 and its
    fc6, fc7, fc8 into the same-named layers of ``model`` (in place; returns it). The other layers keep
    their random initialisation. ``net_a`` is a model or its ``state_dict()``; shapes must agree (same
    width, fc_width, input_size and classes), else ValueError naming the layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"init_from: model must be a vggcore VGG (the deeper net to initialise), got "
                        f"{type(model).__name__}")
    if hasattr(net_a, "state_dict"):
        source = net_a.state_dict()
    elif isinstance(net_a, Mapping):
        source = dict(net_a)
    else:
        raise TypeError(f"init_from: net_a must be a VGG (the trained net A) or its state_dict(), got "
                        f"{type(net_a).__name__}")
    if getattr(net_a, "fully_convolutional", False):
        raise ValueError("init_from: net_a is fully convolutional; pass the original net")
    target = model.state_dict()
    update = {}
    for layer in INIT_FROM_LAYERS:
        for kind in ("weight", "bias"):
            key = f"{layer}.{kind}"
            if key not in source:
                raise ValueError(f"init_from: net_a has no {key}")
            if key not in target:
                raise ValueError(f"init_from: the model has no layer {layer}")
            src = np.asarray(source[key])
            if getattr(model, "fully_convolutional", False) and layer.startswith("fc") and kind == "weight":
                src = src.reshape(target[key].shape) if src.size == np.prod(target[key].shape) else src
            if tuple(src.shape) != tuple(target[key].shape):
                raise ValueError(f"init_from: {key} of net_a has shape {tuple(src.shape)}, the model's is "
                                 f"{tuple(target[key].shape)} (width, fc_width, input_size and classes must match)")
            update[key] = src.astype(target[key].dtype, copy=False)
    target.update(update)
    model.load_state_dict(target)
    return model


def fine_tune_from(model: VGG, source: VGG) -> VGG:
    """Start fine-tuning ``model`` from a trained net of the same configuration (torchvision, Caffe or vggcore
    weights): every layer is copied except fc8 when the class counts differ (``model`` keeps its freshly
    initialised fc8 then), and ``model`` takes the source's input preprocessing, which is what its weights
    expect. A per-channel std (torchvision's normalisation) is folded into conv1_1's weights (w[..., c] /
    std[c]), so training feeds ``(RGB - mean_rgb) * input_scale`` as usual and the net computes the same
    function (zero padding is the mean pixel either way). In place; returns ``model``.
    """
    if source.config != model.config:
        raise ValueError(f"fine_tune_from: the weights are VGG-{source.config}, the model VGG-{model.config}")
    src = source.state_dict()
    if source.fully_convolutional:
        raise ValueError("fine_tune_from: pass the original net, not the fully convolutional one")
    target = model.state_dict()
    same_classes = source.num_classes == model.num_classes
    for key, value in src.items():
        if key.startswith("fc8.") and not same_classes:
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"fine_tune_from: {key} of the weights has shape {tuple(value.shape)}, the model's is "
                             f"{tuple(target[key].shape)} (width, fc_width and input_size (crop) must match the "
                             f"weights': width {source.width:g}, fc_width {source.fc_width}, "
                             f"input {source.input_size})")
        target[key] = value
    std = getattr(source, "std_rgb", None)
    if std is not None:
        target["conv1_1.weight"] = (target["conv1_1.weight"] / np.asarray(std, np.float32)).astype(np.float32)
    model.load_state_dict(target)
    model.mean_rgb = None if source.mean_rgb is None else [float(v) for v in source.mean_rgb]
    model.input_scale = float(source.input_scale)
    model.std_rgb = None
    return model


def describe(model: VGG) -> dict:
    """What rebuilds ``model`` besides its weights: architecture and preprocessing (stored in checkpoints)."""
    mean = None if model.mean_rgb is None else [float(v) for v in model.mean_rgb]
    scale = getattr(model, "train_scale", None)
    std = getattr(model, "std_rgb", None)
    return {"hparams": model.hparams, "class_names": None if model.class_names is None else list(model.class_names),
            "mean_rgb": mean, "input_scale": float(model.input_scale),
            "std_rgb": None if std is None else [float(v) for v in std],
            "train_scale": list(scale) if isinstance(scale, (list, tuple)) else scale,
            "test_scale": getattr(model, "test_scale", None)}


def from_description(info: dict, state_dict=None) -> VGG:
    """The inverse of ``describe``: a model with that architecture and preprocessing (and weights, if given)."""
    model = VGG(**info["hparams"], init=None if state_dict is not None else "glorot")
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.class_names = None if info.get("class_names") is None else list(info["class_names"])
    model.mean_rgb = info.get("mean_rgb")
    model.input_scale = float(info.get("input_scale", model.input_scale))
    scale = info.get("train_scale")
    model.train_scale = tuple(scale) if isinstance(scale, list) else scale
    model.std_rgb = info.get("std_rgb")
    model.test_scale = info.get("test_scale")
    return model


def load(path, device="cpu") -> VGG:
    """The model saved in a vggcore training checkpoint (weights, class names, preprocessing), on ``device``."""
    from ..checkpoint import load_state
    state = load_state(path)
    if not isinstance(state, dict) or "model" not in state or "model_info" not in state:
        raise ValueError(f"{path} is a vggcore file but holds no model (no 'model'/'model_info' entries)")
    model = from_description(state["model_info"], state["model"])
    if device != "cpu":
        model.to(device)
    return model
