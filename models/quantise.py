"""INT8 extractor: post-training static quantisation of the ONNX extractor (models/onnx_export.py) with ONNX
Runtime, calibrated on real frames, run by OpenVINO on the CPU.

The calibration set (models/calibration.py) is normalised here with the extractor's mean/std exactly as the
tagger does (models/preprocess.py).

The quantised model is cached beside the fp32 exports (`models.inference.cache_entry` / `build_atomically`,
one cache scheme): `cache_dir/<weights key>-extractor-int8-<calibration digest>-<recipe digest>-<layers>/`,
so that other weights, another calibration set or another recipe make another entry, and the same ones reuse it.
The recipe (RECIPE) is the measured best on this project's videos: docs/performance.md, "INT8".
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import CalibrationSet
from models.preprocess import normalise

MODEL_FILE = "model.onnx"
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class Recipe:
    """How the extractor is quantised: ONNX Runtime `quantize_static` arguments (QDQ format)."""

    method: str = "MinMax"  # MinMax | Entropy | Percentile
    per_channel: bool = True
    activations: str = "QUInt8"
    weights: str = "QInt8"
    reduce_range: bool = False
    percentile: float = 99.999
    fp32_nodes: tuple[str, ...] = ()  # node names (original conv names) left in fp32

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


RECIPE = Recipe(reduce_range=True)  # docs/performance.md, "INT8": why these


def _batches(calibration: CalibrationSet, mean: Sequence[float], std: Sequence[float]) -> Iterator[np.ndarray]:
    for start in range(0, len(calibration.crops), CALIBRATION_BATCH):
        yield normalise(calibration.crops[start : start + CALIBRATION_BATCH], tuple(mean), tuple(std))


def quantise(
    fp32_model: Any,
    calibration: CalibrationSet,
    mean: Sequence[float],
    std: Sequence[float],
    out: Path,
    recipe: Recipe = RECIPE,
) -> None:
    """Write the QDQ INT8 model of `fp32_model` (an onnx.ModelProto) to `out`, calibrated on `calibration`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information
        def __init__(self) -> None:
            self.batches = _batches(calibration, mean, std)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {fp32_model.graph.input[0].name: batch}

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source = Path(tmp) / "fp32.onnx"
        onnx.save(fp32_model, str(source))
        quantize_static(
            str(source),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=getattr(QuantType, recipe.activations),
            weight_type=getattr(QuantType, recipe.weights),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            calibrate_method=getattr(CalibrationMethod, recipe.method),
            nodes_to_exclude=list(recipe.fp32_nodes),
            extra_options={"CalibPercentile": recipe.percentile},
        )


class OpenVinoEngine:
    """A quantised ONNX model compiled by OpenVINO for the CPU, `threads` inference threads; one run at a time
    (two runs on the same cores only slow each other). OpenVINO, not ONNX Runtime, runs the QDQ model: measured
    1.33× faster with the same agreement (docs/performance.md, "INT8"); ONNX Runtime only quantises it."""

    def __init__(self, model: Path, threads: int, expected_shape: tuple[int, ...], name: str = "") -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(model), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.request = self.compiled.create_infer_request()
        self.expected_shape = expected_shape
        self.name = name
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if tuple(batch.shape[1:]) != self.expected_shape:
            raise ValueError(
                f"{self.name or 'engine'} takes input [N, {', '.join(map(str, self.expected_shape))}], "
                f"got {list(batch.shape)}"
            )
        with self._lock:
            self.calls += 1
            # (infer copies the outputs out of the request unless share_outputs: the next run cannot change them)
            features: np.ndarray = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[0]
            return features


def int8_meta(layers: int, calibration: CalibrationSet, recipe: Recipe, image_size: int) -> dict[str, Any]:
    import onnx
    import onnxruntime

    return {
        "net": "extractor-int8",
        "size": layers,
        "image_size": image_size,
        "calibration": calibration.digest(),
        "calibration_frames": len(calibration.crops),
        "recipe": json.loads(json.dumps(asdict(recipe))),  # as read back
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def int8_net(calibration: CalibrationSet, recipe: Recipe) -> str:
    """The cache entry's net part: what, besides the weights and the depth, keys a quantised model."""
    return f"extractor-int8-{calibration.digest()}-{recipe.digest()}"


def build_int8(
    target: Path,
    params: Callable[[], dict[str, np.ndarray]],
    layers: int,
    calibration: CalibrationSet,
    mean: Sequence[float],
    std: Sequence[float],
    recipe: Recipe = RECIPE,
    image_size: int = 224,
) -> Path:
    """The quantised extractor in `target` (made atomically unless current, `build_atomically`); `params` gives
    the weight arrays by original name, called only when a build is due."""
    from models.inference import build_atomically
    from models.onnx_export import extractor_graph

    def write(tmp: Path) -> None:
        quantise(extractor_graph(params(), layers, image_size), calibration, mean, std, tmp / MODEL_FILE, recipe)

    return build_atomically(
        target,
        int8_meta(layers, calibration, recipe, image_size),
        write,
        files=lambda entry: (entry / MODEL_FILE).stat(),
    )
