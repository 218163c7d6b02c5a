"""The VideoTag chain: video file → sampled frames → features → tag probabilities → top-k tags."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from models.attention_lstm import attention_lstm
from models.config import ExtractorConfig, PredictorConfig
from models.engines import DygraphEngine, Engine
from models.labels import Tag, load_labels, top_k
from models.preprocess import normalise
from models.resnet import tsn_resnet
from models.sampling import SampledVideo
from models.video import InProcessDecoder
from models.weights import file_digest, find_params, load_into, randomize

RANDOM_WEIGHTS = "random-untrained"
RANDOM_SEED = 0


@dataclass
class TagResult:
    tags: list[Tag]
    probabilities: np.ndarray
    features: np.ndarray
    video: SampledVideo
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class VideoTagger:
    extractor_config: ExtractorConfig
    predictor_config: PredictorConfig
    extractor: Engine
    predictor: Engine
    labels: list[str]
    preprocess: str = "faithful"
    batch_size: int = 32
    max_width: int = 7680
    max_height: int = 4320
    info: dict[str, Any] = field(default_factory=dict)
    # (path, seg_num, name) → SampledVideo; unset: decoded in this process (models.video.InProcessDecoder),
    # models.decoder_process.isolate_decoding puts every video in a child instead.
    sampler: Callable[[str | Path, int, str | None], SampledVideo] | None = None

    def __post_init__(self) -> None:
        if self.sampler is None:
            cfg = self.extractor_config
            self.sampler = InProcessDecoder(self.preprocess, cfg.short_size, cfg.target_size, self.max_width,
                                            self.max_height)

    def sample(self, path: str | Path, seg_num: int | None = None, name: str | None = None) -> SampledVideo:
        assert self.sampler is not None  # set in __post_init__
        return self.sampler(path, seg_num or self.extractor_config.seg_num, name)

    def features(self, video: SampledVideo) -> np.ndarray:
        """[seg_num, 2048]; each distinct frame goes through the network once."""
        cfg = self.extractor_config
        parts = [
            self.extractor(normalise(video.crops[i : i + self.batch_size], cfg.image_mean, cfg.image_std))
            for i in range(0, len(video.crops), self.batch_size)
        ]
        return np.concatenate(parts)[video.order]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[B, seg_num, 2048] → [B, num_classes]."""
        return self.predictor(features.astype(np.float32, copy=False))

    def top_tags(self, probabilities: np.ndarray, k: int | None = None) -> list[Tag]:
        return top_k(probabilities, self.labels, k or self.predictor_config.topk)

    def tag(self, path: str | Path, seg_num: int | None = None, k: int | None = None,
            name: str | None = None) -> TagResult:
        """`name` is how errors refer to the video (e.g. its S3 URI rather than a temporary file)."""
        t0 = time.perf_counter()
        video = self.sample(path, seg_num, name)
        t1 = time.perf_counter()
        feats = self.features(video)
        t2 = time.perf_counter()
        probs = self.probabilities(feats[None])[0]
        t3 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1e3, "extract": (t2 - t1) * 1e3, "predict": (t3 - t2) * 1e3}
        return TagResult(self.top_tags(probs, k), probs, feats, video, timings)


def set_device(device: str) -> None:
    if device == "gpu" and not paddle.device.is_compiled_with_cuda():
        raise RuntimeError("--device gpu needs a CUDA build of paddlepaddle (paddlepaddle-gpu)")
    paddle.set_device(device)


def build_tagger(
    extractor_weights: str | Path,
    predictor_weights: str | Path,
    label_file: str | Path,
    extractor_config: ExtractorConfig | None = None,
    predictor_config: PredictorConfig | None = None,
    *,
    device: str = "cpu",
    allow_random_weights: bool = False,
    preprocess: str = "faithful",
    batch_size: int = 32,
    max_width: int = 7680,
    max_height: int = 4320,
    engine: str = "dygraph",
    precision: str = "fp32",
    cache_dir: str | Path = ".cache/videotag/models",
    threads: int | None = None,
    tensorrt: bool = False,
) -> VideoTagger:
    """Load both networks with the original weights (or seeded random ones, for demos only).

    `engine` "dygraph" runs eager Paddle (fp32 only); "inference" exports the extractor to `cache_dir` and runs
    it on Paddle Inference (see models/inference.py) with `precision` fp32 or bf16 (CPU), fp16 (GPU), on
    `threads` CPU math threads (default: all CPUs), `tensorrt` on GPU.
    """
    if engine not in ("dygraph", "inference"):
        raise ValueError(f"engine must be dygraph or inference, not {engine!r}")
    if engine == "dygraph" and precision != "fp32":
        raise ValueError(f"precision {precision} needs engine inference (dygraph runs fp32 only)")
    ecfg = extractor_config or ExtractorConfig()
    pcfg = predictor_config or PredictorConfig()
    set_device(device)
    if allow_random_weights and not Path(label_file).is_file():  # a demo on a machine with nothing downloaded
        labels = [f"untrained-tag-{i}" for i in range(pcfg.num_classes)]
    else:
        labels = load_labels(label_file, pcfg.num_classes)
    predictor = attention_lstm(pcfg.feature_size, pcfg.embedding_size, pcfg.lstm_size, pcfg.num_classes,
                               pcfg.dropout_rate)
    if allow_random_weights:
        random_extractor = tsn_resnet(ecfg.layers)
        randomize(random_extractor, RANDOM_SEED)
        randomize(predictor, RANDOM_SEED + 1)
        weights = RANDOM_WEIGHTS

        def extractor() -> paddle.nn.Layer:
            return random_extractor
    else:
        extractor_file = find_params(extractor_weights, "tsn")
        weights = "sha256:" + file_digest([extractor_file, load_into(predictor, predictor_weights, "attention_lstm")])

        def extractor() -> paddle.nn.Layer:  # not needed at all when its export is cached (~2 s of a start)
            layer = tsn_resnet(ecfg.layers)
            load_into(layer, extractor_file, "tsn")
            return layer
    info = {
        "extractor": f"TSN-ResNet{ecfg.layers}",
        "predictor": "AttentionLSTM",
        "seg_num": ecfg.seg_num,
        "weights": weights,
        "preprocess": preprocess,
        "engine": engine,
        "precision": precision,
        "paddle": paddle.__version__,
    }
    extractor_engine: Engine
    predictor_engine: Engine = DygraphEngine(predictor)
    if engine == "inference":
        from models.inference import inference_engines, random_weights_key

        key = random_weights_key([extractor(), predictor], RANDOM_SEED) if allow_random_weights else weights
        extractor_engine, predictor_engine = inference_engines(
            extractor, predictor, key, ecfg.seg_num, ecfg.layers, cache_dir, device, precision, threads, tensorrt,
            max_batch=batch_size)
    else:
        extractor_engine = DygraphEngine(extractor())
    return VideoTagger(ecfg, pcfg, extractor_engine, predictor_engine, labels,
                       preprocess=preprocess, batch_size=batch_size, max_width=max_width,
                       max_height=max_height, info=info)
