"""The fixed choices of the model's settings, each a `Literal` type: the one source of their allowed values.

worker/settings.py validates the settings of these types against `typing.get_args(...)`, the CLI offers the same
values as `choices`, and the engines check against them; docs/configuration.md lists them (tests/test_settings.py
holds the two in step). This module imports nothing heavy: the worker imports it without Paddle.
"""

from __future__ import annotations

from typing import Literal, get_args

Device = Literal["cpu", "gpu"]
Engine = Literal["dygraph", "inference", "simulated"]
# int8: the extractor quantised by `videotag calibrate`, on engine inference (docs/performance.md)
Precision = Literal["fp32", "bf16", "fp16", "int8"]
Preprocess = Literal["faithful", "fast"]
Layers = Literal[50, 101]

ENGINES: tuple[Engine, ...] = get_args(Engine)
