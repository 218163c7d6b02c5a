"""The TSN ResNet extractor as an ONNX graph, built from its weight arrays with standard ops (no Paddle export).

Why: Paddle 3.3 saves PIR programs, which neither Paddle's own INT8 (oneDNN quant) passes nor paddle2onnx
accept, and a legacy-format export fails on 3.3; an ONNX graph of this small, fixed network is a few dozen
lines and is what ONNX Runtime quantises (models/quantise.py). The graph is the network of models/resnet.py,
layer for layer: conv (no bias, padding (k-1)//2) with its inference BatchNorm folded in (scale / sqrt(var +
eps) into the weights, offset - mean × that into a bias, in float64 then rounded once to float32), ReLU, the 3×3/2
max pool with pad 1, bottlenecks with a ReLU after the add, global average pool, flatten: images [N, 3, H, W]
→ features [N, 2048]. Invariant: in fp32 its features match the Paddle extractor's to 1e-4 (tests/test_int8.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.resnet import DEPTHS, FILTERS, block_names

INPUT = "images"
OUTPUT = "features"
BN_EPSILON = 1e-5
OPSET = 17


def _bn_prefix(conv_name: str) -> str:
    return "bn_conv1" if conv_name == "conv1" else "bn" + conv_name[3:]


def fold_conv_bn(params: Mapping[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) of conv `name` with its BatchNorm folded in."""
    bn = _bn_prefix(name)
    weights = np.asarray(params[f"{name}_weights"], np.float64)
    scale = np.asarray(params[f"{bn}_scale"], np.float64) / np.sqrt(
        np.asarray(params[f"{bn}_variance"], np.float64) + BN_EPSILON
    )
    bias = np.asarray(params[f"{bn}_offset"], np.float64) - np.asarray(params[f"{bn}_mean"], np.float64) * scale
    return (weights * scale[:, None, None, None]).astype(np.float32), bias.astype(np.float32)


class _Graph:
    """Nodes and initializers in network order; node names are the original conv names (for exclusion lists)."""

    def __init__(self, params: Mapping[str, np.ndarray]) -> None:
        self.params = params
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def conv(self, x: str, name: str, stride: int, relu: bool) -> str:
        weights, bias = fold_conv_bn(self.params, name)
        kernel = weights.shape[-1]
        pad = (kernel - 1) // 2
        self.initializers += [numpy_helper.from_array(weights, f"{name}.w"), numpy_helper.from_array(bias, f"{name}.b")]
        out = f"{name}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [out],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if not relu:
            return out
        self.nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"], name=f"{name}_relu"))
        return f"{name}.relu"

    def bottleneck(self, x: str, name: str, projection: bool, stride: int) -> str:
        branch = self.conv(x, f"{name}_branch2a", 1, relu=True)
        branch = self.conv(branch, f"{name}_branch2b", stride, relu=True)
        branch = self.conv(branch, f"{name}_branch2c", 1, relu=False)
        shortcut = self.conv(x, f"{name}_branch1", stride, relu=False) if projection else x
        self.nodes.append(helper.make_node("Add", [shortcut, branch], [f"{name}.sum"], name=f"{name}_add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"], name=f"{name}_relu"))
        return f"{name}.out"


def extractor_graph(params: Mapping[str, np.ndarray], layers: int, image_size: int = 224) -> onnx.ModelProto:
    """The extractor for `params` (original names → arrays, as `TSNResNet.original_parameters` yields them).
    The batch dimension is dynamic; the image size is fixed (what the export of models/inference.py takes)."""
    if layers not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, not {layers}")
    graph = _Graph(params)
    x = graph.conv(INPUT, "conv1", 2, relu=True)
    graph.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool.out"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x = "pool.out"
    in_channels = 64
    for stage, block, name in block_names(layers):
        stride = 2 if block == 0 and stage != 0 else 1
        out_channels = FILTERS[stage] * 4
        x = graph.bottleneck(x, name, in_channels != out_channels or stride != 1, stride)
        in_channels = out_channels
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool.out"], name="avgpool"))
    graph.nodes.append(helper.make_node("Flatten", ["avgpool.out"], [OUTPUT], name="flatten", axis=1))
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            f"tsn_resnet{layers}",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, image_size, image_size])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", in_channels])],
            graph.initializers,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="videotag",
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.10 and openvino
    onnx.checker.check_model(model)
    return model
