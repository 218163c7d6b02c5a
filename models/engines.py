"""Inference engines: run a network on a numpy batch and return numpy. One interface, several backends.

`SimulatedEngine` stands in for an accelerator: it sleeps (releasing the GIL, as a GPU run waiting on its
stream does) for `ms_per_row` per input row and returns zeros of the network's output shape, so that
`videotag bench --engine simulated` measures what the host side (decode, preprocess, transfer) sustains.
"""

from __future__ import annotations

import threading
import time
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


class SimulatedEngine:
    """Sleeps `ms_per_row` × rows, one call at a time (a device runs one batch at a time), and returns float32
    zeros `[rows, *output_shape]`. `input_shape` (trailing dims), when given, is checked like an export's.
    `busy_s` and `rows` count what it did: the bench reports the busy fraction of the engine."""

    def __init__(self, ms_per_row: float, output_shape: tuple[int, ...],
                 input_shape: tuple[int, ...] | None = None, name: str = "simulated") -> None:
        if ms_per_row < 0:
            raise ValueError(f"{name}: ms per row must be at least 0, not {ms_per_row}")
        self.ms_per_row = ms_per_row
        self.output_shape = output_shape
        self.input_shape = input_shape
        self.name = name
        self.busy_s = 0.0
        self.rows = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.input_shape is not None and tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} takes [N, {', '.join(map(str, self.input_shape))}], got {list(batch.shape)}")
        # What a device engine does before its run: one contiguous float32 host buffer to copy to the device.
        host = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            start = time.perf_counter()
            time.sleep(self.ms_per_row * len(host) / 1e3)
            self.busy_s += time.perf_counter() - start
            self.rows += len(host)
        return np.zeros((len(host), *self.output_shape), np.float32)
