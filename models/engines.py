"""Inference engines: run a network on a numpy batch and return numpy. One interface, several backends."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import paddle


class Engine(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class DygraphEngine:
    """Eager Paddle: the reference path (fidelity tests, the original-style baseline)."""

    def __init__(self, layer: paddle.nn.Layer) -> None:
        self.layer = layer

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return self.layer(paddle.to_tensor(batch)).numpy()
