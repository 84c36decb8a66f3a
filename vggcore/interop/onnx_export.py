"""ONNX export of a VGG (needs the optional ``onnx`` package: ``pip install vggcore[onnx]``).

The graph (opset 17) takes the preprocessed image batch in ONNX's usual NCHW layout, ``input`` of shape
(N, 3, H, W) float32, and returns ``logits``: (N, classes) for the plain net, whose H = W = input_size; for a
fully convolutional net (``model.to_fully_convolutional()``) H and W are free (at least input_size) and the
output is the (N, h, w, classes) score map, as vggcore's own forward returns it. Dropout is left out
(inference graph). The preprocessing the net expects is stored in the model's metadata_props
(``vggcore.preprocessing``: mean_rgb, input_scale, std_rgb as JSON; ``vggcore.class_names``) since pixels
enter the graph already normalised: x = (rgb - mean_rgb) * input_scale / std_rgb, transposed to NCHW.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["export_onnx", "OPSET"]

OPSET = 17


def export_onnx(model, path, input_size=224):
    """Write ``model`` as an ONNX file at ``path`` (see the module docstring for the graph); returns the path.

    input_size: the image side of the plain net's input (must equal ``model.input_size``); for a fully
    convolutional net, the smallest side it is checked against (the exported H and W stay free).
    The file is written atomically (a temporary file in the same folder, fsynced, then renamed over ``path``):
    a failed write (a full disk, a quota) raises OSError and leaves any previous file at ``path`` as it was.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError("export_onnx needs the onnx package: pip install 'vggcore[onnx]'") from None
    from ..checkpoint import atomic_write_bytes, check_output_path
    from ..models.vgg import LRN_PARAMS, VGG
    from .._checks import check_int
    from .torchvision import to_torchvision
    if not isinstance(model, VGG):
        raise TypeError(f"export_onnx: model must be a vggcore VGG, got {type(model).__name__}")
    input_size = check_int("export_onnx", "input_size", input_size, 1)   # int(nan) would say nothing useful
    path = check_output_path("export_onnx", path)
    dense = model.fully_convolutional
    if not dense and input_size != model.input_size:
        raise ValueError(f"export_onnx: this net takes {model.input_size}x{model.input_size} images, got "
                         f"input_size={input_size}; pass input_size={model.input_size}, or export "
                         "model.to_fully_convolutional() for images of any size")
    if dense and input_size < model.input_size:
        raise ValueError(f"export_onnx: the fully convolutional net needs at least {model.input_size} pixels per "
                         f"side, got input_size={input_size}")

    plain = model
    if dense:
        plain = VGG(**model.hparams, init=None)
        st = model.state_dict()
        st = {k: (v.reshape(v.shape[0], -1) if k.startswith("fc") and k.endswith("weight") else v)
              for k, v in st.items()}
        plain.load_state_dict(st)
    config = model.config
    state = model.state_dict()

    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    x = "input"
    for kind, name in model._plan:
        if kind == "conv":
            w = state[f"{name}.weight"].transpose(0, 3, 1, 2)          # (K, R, S, C) -> (K, C, R, S)
            k = w.shape[2]
            inputs = [x, const(f"{name}.weight", w), const(f"{name}.bias", state[f"{name}.bias"])]
            nodes.append(helper.make_node("Conv", inputs, [f"{name}.out"], name=name, kernel_shape=[k, k],
                                          pads=[k // 2] * 4, strides=[1, 1]))
            nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}_relu"))
            x = f"{name}.relu"
        elif kind == "lrn":
            nodes.append(helper.make_node("LRN", [x], [f"{name}.out"], name=name, size=LRN_PARAMS["size"],
                                          alpha=LRN_PARAMS["alpha"], beta=LRN_PARAMS["beta"], bias=LRN_PARAMS["k"]))
            x = f"{name}.out"
        else:
            nodes.append(helper.make_node("MaxPool", [x], [f"{name}.out"], name=name, kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"{name}.out"

    tv = to_torchvision(plain) if config != "A-LRN" else None
    side, c5, fcw = model.feature_side, model.feature_channels, model.fc_width
    if tv is not None:
        fc6 = tv["classifier.0.weight"]                                # columns in NCHW (C, H, W) order
    else:
        fc6 = plain.state_dict()["fc6.weight"].reshape(fcw, side, side, c5).transpose(0, 3, 1, 2).reshape(fcw, -1)
    pst = plain.state_dict()
    fcs = [("fc6", fc6, pst["fc6.bias"]), ("fc7", pst["fc7.weight"], pst["fc7.bias"]),
           ("fc8", pst["fc8.weight"], pst["fc8.bias"])]
    if dense:
        for i, (name, w, b) in enumerate(fcs):
            k = side if i == 0 else 1
            w4 = w.reshape(w.shape[0], -1, k, k)
            nodes.append(helper.make_node("Conv", [x, const(f"{name}.weight", w4), const(f"{name}.bias", b)],
                                          [f"{name}.out"], name=name, kernel_shape=[k, k], strides=[1, 1]))
            x = f"{name}.out"
            if name != "fc8":
                nodes.append(helper.make_node("Relu", [x], [f"{name}.relu"], name=f"{name}_relu"))
                x = f"{name}.relu"
        nodes.append(helper.make_node("Transpose", [x], ["logits"], name="to_nhwc", perm=[0, 2, 3, 1]))
        in_shape = ["N", 3, "H", "W"]
        out_shape = ["N", "h", "w", model.num_classes]
    else:
        nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
        x = "flat"
        for name, w, b in fcs:
            out = "logits" if name == "fc8" else f"{name}.out"
            nodes.append(helper.make_node("Gemm", [x, const(f"{name}.weight", w), const(f"{name}.bias", b)],
                                          [out], name=name, transB=1))
            x = out
            if name != "fc8":
                nodes.append(helper.make_node("Relu", [x], [f"{name}.relu"], name=f"{name}_relu"))
                x = f"{name}.relu"
        in_shape = ["N", 3, model.input_size, model.input_size]
        out_shape = ["N", model.num_classes]

    graph = helper.make_graph(nodes, f"vgg_{config}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
                              initializer=inits)
    onnx_model = helper.make_model(graph, producer_name="vggcore",
                                   opset_imports=[helper.make_operatorsetid("", OPSET)])
    pre = {"mean_rgb": None if model.mean_rgb is None else [float(v) for v in model.mean_rgb],
           "input_scale": float(model.input_scale),
           "std_rgb": None if model.std_rgb is None else [float(v) for v in model.std_rgb]}
    helper.set_model_props(onnx_model, {
        "vggcore.preprocessing": json.dumps(pre),
        "vggcore.class_names": json.dumps(None if model.class_names is None else list(model.class_names)),
        "vggcore.config": config})
    onnx.checker.check_model(onnx_model)
    try:
        atomic_write_bytes(path, onnx_model.SerializeToString())
    except OSError as error:
        message = f"export_onnx: cannot write {path} ({error.strerror or error})"
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
    return path
