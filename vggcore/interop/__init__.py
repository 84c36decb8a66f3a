"""Weights in other frameworks' layouts: torchvision state dicts and the paper's Caffe release in, torchvision,
Caffe and ONNX out. Nothing here downloads anything; torch, protobuf and onnx are not needed to read weights
(``export_onnx`` needs the optional ``onnx`` package)."""

from __future__ import annotations

from .caffe import CAFFE_MEAN_BGR, from_caffe, read_caffemodel, to_caffe, write_caffemodel
from .onnx_export import OPSET, export_onnx
from .torchvision import (TORCHVISION_MEAN, TORCHVISION_STD, from_torchvision, read_pth, read_state_dict,
                          save_torchvision, to_torchvision)
from .torchvision import _weights_file

__all__ = ["from_torchvision", "to_torchvision", "save_torchvision", "from_caffe", "to_caffe", "export_onnx",
           "load_weights", "read_pth", "read_state_dict", "read_caffemodel", "write_caffemodel", "OPSET",
           "TORCHVISION_MEAN", "TORCHVISION_STD", "CAFFE_MEAN_BGR"]


def load_weights(source, num_classes=None, device="cpu", input_size=None):
    """A VGG from any weights file vggcore reads, by its content: a vggcore checkpoint (``.safetensors`` written
    by training or ``save_state``), a torchvision state dict (``.pth``/``.pt``, a torchvision-layout
    ``.safetensors``, or an in-memory dict) or a Caffe ``.caffemodel``. A VGG instance is returned as is.
    num_classes: replace fc8 by a fresh layer of that size when it differs (fine-tuning).
    input_size: the image side, for torchvision and Caffe weights, whose layout does not record it (see
    ``from_torchvision``); a vggcore checkpoint or model carries its own, and a different one is a ValueError."""
    from .._checks import check_int
    from ..models.vgg import VGG, from_description
    if num_classes is not None:
        num_classes = check_int("load_weights", "num_classes", num_classes, 1)
    if input_size is not None:
        input_size = check_int("load_weights", "input_size", input_size, 32)
    if isinstance(source, VGG):
        model = source
    elif isinstance(source, dict):
        model = from_torchvision(source, num_classes=num_classes, input_size=input_size)
    else:
        path = _weights_file("load_weights", source)
        suffix = path.suffix.lower()
        if suffix == ".caffemodel":
            model = from_caffe(path, num_classes=num_classes, input_size=input_size)
        elif suffix == ".safetensors":
            from ..checkpoint import load_file, read_metadata
            meta = read_metadata(path)
            if "vggcore" in meta:
                from ..checkpoint import load_state
                state = load_state(path)
                if not isinstance(state, dict) or "model" not in state or "model_info" not in state:
                    raise ValueError(f"load_weights: {path} is a vggcore file but holds no model")
                model = from_description(state["model_info"], state["model"])
            else:
                model = from_torchvision(load_file(path)[0], num_classes=num_classes, input_size=input_size)
        else:
            model = from_torchvision(path, num_classes=num_classes, input_size=input_size)
    if input_size is not None and input_size != model.input_size:
        raise ValueError(f"load_weights: input_size={input_size}, but the model takes {model.input_size}x"
                         f"{model.input_size} images (a vggcore model carries its own input size)")
    if num_classes is not None and num_classes != model.num_classes:
        model = model.with_num_classes(num_classes)
    if device != "cpu":
        model.to(device)
    return model
