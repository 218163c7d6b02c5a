"""TSN ResNet-50/101 frame-feature extractor, layer for layer as the original 2020 `video_tag` TSN.

Each conv-BN pair carries its original name, so the original `fluid.save` files load unchanged:
conv weights `<name>_weights`, BatchNorm `bn_conv1_*` / `bn<name minus 'res'>_*`.
`folded` makes the copy that Paddle Inference exports: each BatchNorm folded into its conv beforehand, with the
arithmetic of Paddle's own conv-BN fuse pass, so the predictor computes the same numbers but starts ~3 s sooner.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import paddle
from paddle import nn

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
FILTERS = (64, 128, 256, 512)
FEATURE_SIZE = 2048
LayerT = TypeVar("LayerT", bound=nn.Layer)


class ConvBN(nn.Layer):
    """conv (no bias, 'same' padding) → inference BatchNorm → optional ReLU; once folded (`fold_batch_norm`),
    conv with bias → optional ReLU."""

    def __init__(
        self, name: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.original_name = name
        self.conv = nn.Conv2D(
            in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias_attr=False
        )
        self.bn: nn.BatchNorm2D | None = nn.BatchNorm2D(out_channels, epsilon=1e-5)
        self.relu = relu

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return nn.functional.relu(x) if self.relu else x

    def original_parameters(self) -> Iterator[tuple[str, paddle.Tensor]]:
        """(original name, tensor) for the conv weights and the four BatchNorm tensors."""
        bn = "bn_conv1" if self.original_name == "conv1" else "bn" + self.original_name[3:]
        if self.bn is None:
            raise ValueError(f"{self.original_name}: folded, its original tensors are gone")
        assert self.bn.weight is not None and self.bn.bias is not None  # (None only with weight_attr=False)
        yield f"{self.original_name}_weights", self.conv.weight
        yield f"{bn}_scale", self.bn.weight
        yield f"{bn}_offset", self.bn.bias
        yield f"{bn}_mean", self.bn._mean
        yield f"{bn}_variance", self.bn._variance

    def fold_batch_norm(self) -> None:
        """Fold the inference BatchNorm into the conv: per output channel, s = scale / sqrt(variance + epsilon),
        weights × s and a bias offset − mean × s. The float32 operations and their order are those of Paddle
        Inference's conv2d_bn fuse pass, so the exported predictor's outputs are bit-identical to those of an
        unfolded export (tests/test_inference.py); it just has nothing left to fold at start-up, where Paddle
        ran that pass's constant folding on oneDNN's reference kernels for ~3 s per ResNet-101 predictor."""
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        assert bn.weight is not None and bn.bias is not None
        s = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + np.float32(bn._epsilon))
        fused = nn.Conv2D(
            conv._in_channels, conv._out_channels, conv._kernel_size, stride=conv._stride, padding=conv._padding
        )
        fused.weight.set_value(conv.weight.numpy() * s.reshape(-1, 1, 1, 1))
        assert fused.bias is not None
        fused.bias.set_value(bn.bias.numpy() - bn._mean.numpy() * s)
        self.conv, self.bn = fused, None


class Bottleneck(nn.Layer):
    """1×1 → 3×3 (strided) → 1×1×4, projection shortcut when the shape changes, ReLU after the add."""

    def __init__(self, name: str, in_channels: int, filters: int, stride: int) -> None:
        super().__init__()
        out_channels = filters * 4
        self.branch2a = ConvBN(f"{name}_branch2a", in_channels, filters, 1)
        self.branch2b = ConvBN(f"{name}_branch2b", filters, filters, 3, stride=stride)
        self.branch2c = ConvBN(f"{name}_branch2c", filters, out_channels, 1, relu=False)
        self.branch1 = (
            ConvBN(f"{name}_branch1", in_channels, out_channels, 1, stride=stride, relu=False)
            if in_channels != out_channels or stride != 1
            else None
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        shortcut = self.branch1(x) if self.branch1 is not None else x
        # The original adds with act='relu'; the PaddleVideo port dropped this ReLU and changed the tags.
        return nn.functional.relu(shortcut + self.branch2c(self.branch2b(self.branch2a(x))))


def block_names(layers: int) -> Iterator[tuple[int, int, str]]:
    """(stage, block, original name) in network order: res2a…, and res4a, res4b1… for ResNet-101."""
    for stage, depth in enumerate(DEPTHS[layers]):
        for block in range(depth):
            if layers == 101 and stage == 2:
                yield stage, block, "res4a" if block == 0 else f"res4b{block}"
            else:
                yield stage, block, f"res{stage + 2}{chr(ord('a') + block)}"


class TSNResNet(nn.Layer):
    """Images [N, 3, 224, 224] → globally average-pooled features [N, 2048]; no classifier."""

    def __init__(self, layers: int = 101) -> None:
        super().__init__()
        if layers not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, not {layers}")
        self.layers = layers
        self.conv1 = ConvBN("conv1", 3, 64, 7, stride=2)
        self.pool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        blocks = []
        in_channels = 64
        for stage, block, name in block_names(layers):
            stride = 2 if block == 0 and stage != 0 else 1
            blocks.append(Bottleneck(name, in_channels, FILTERS[stage], stride))
            in_channels = FILTERS[stage] * 4
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2D(1)

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        x = self.blocks(self.pool(self.conv1(images)))
        return paddle.flatten(self.avgpool(x), start_axis=1)

    def original_parameters(self) -> Iterator[tuple[str, paddle.Tensor]]:
        for layer in self.sublayers():
            if isinstance(layer, ConvBN):
                yield from layer.original_parameters()


def tsn_resnet(layers: int = 101) -> TSNResNet:
    """The extractor in inference mode (BatchNorm uses its moving statistics)."""
    model = TSNResNet(layers)
    model.eval()
    return model


def folded(model: LayerT) -> LayerT:
    """A copy of `model` (the extractor) with every ConvBN's BatchNorm folded into its conv
    (`ConvBN.fold_batch_norm`), for an export; `model` is unchanged."""
    copied = copy.deepcopy(model)
    for layer in [copied, *copied.sublayers()]:
        if isinstance(layer, ConvBN):
            layer.fold_batch_norm()
    copied.eval()
    return copied
