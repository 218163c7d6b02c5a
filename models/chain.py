"""The VideoTag chain as it runs: video file → sampled frames → features → each head's probabilities → its tags.

`VideoTagger` holds the engines (any callables: eager Paddle, Paddle Inference, the model thread, the model
process), the heads with their labels and tag control, and the sampler that decodes a video. It imports no
Paddle: the worker, whose networks run in the model process (worker/model_process.py), tags with it without
loading Paddle. Loading the networks is models/tagger.py's `build_tagger`.
Invariants: heads keep their configured order and the first one's tags are a result's `tags`; with zero heads
the chain only extracts features.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.config import TSN_FILE, ExtractorConfig, config_default
from models.engines import Engine, run_batches
from models.labels import Tag, TagControl, select_tags
from models.preprocess import normalise
from models.sampling import FrameStream, SampledVideo, Sampler, Sampling
from models.video import InProcessDecoder

RANDOM_WEIGHTS = "random-untrained"


@dataclass(frozen=True)
class Head:
    """One predictor over the shared features, with the labels and tag control it publishes under."""

    name: str
    predictor: Engine
    labels: list[str]
    control: TagControl
    topk: int
    weights: str  # "sha256:<digest of its weight file>" or RANDOM_WEIGHTS

    def tags(self, probabilities: np.ndarray) -> list[Tag]:
        return select_tags(probabilities, self.control, self.topk)


@dataclass
class TagResult:
    heads: dict[str, list[Tag]]  # per head, in the tagger's order
    probabilities: dict[str, np.ndarray]  # per head: [num_classes]
    features: np.ndarray
    video: SampledVideo
    # Decoding and extraction overlap (`VideoTagger.tag`), so their stages split the wall time between them:
    # "decode" is the time spent waiting for the decoder's next chunk (the part of decoding that extraction
    # did not hide), "extract" the rest of that stage (normalising, the network, waiting for its output);
    # "predict" the heads. They add up to the video's wall time, in that order.
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tags(self) -> list[Tag]:
        """The first head's tags: what a result's `tags` has always held."""
        return next(iter(self.heads.values()))


@dataclass
class VideoTagger:
    extractor_config: ExtractorConfig
    extractor: Engine
    heads: tuple[Head, ...]
    preprocess: str = "faithful"
    batch_size: int = config_default(TSN_FILE, "batch_size")
    max_width: int = config_default(TSN_FILE, "max_width")
    max_height: int = config_default(TSN_FILE, "max_height")
    info: dict[str, Any] = field(default_factory=dict)
    # Decodes a video into a stream of crop chunks; unset: in this process (models.video.InProcessDecoder);
    # worker.chain_builder.decoding puts every video in a child (models.decoder_process.DecoderProcess) by default.
    sampler: Sampler | None = None

    def __post_init__(self) -> None:
        if self.sampler is None:
            cfg = self.extractor_config
            self.sampler = InProcessDecoder(
                self.preprocess,
                cfg.short_size,
                cfg.target_size,
                self.max_width,
                self.max_height,
                chunk_size=self.batch_size,
            )

    def sample(self, path: str | Path, seg_num: int | None = None, name: str | None = None) -> SampledVideo:
        assert self.sampler is not None  # set in __post_init__
        return self.sampler(path, seg_num or self.extractor_config.seg_num, name)

    def features(self, video: SampledVideo) -> np.ndarray:
        """[seg_num, 2048]; each distinct frame goes through the network once."""
        cfg = self.extractor_config
        chunks = (
            normalise(video.crops[i : i + self.batch_size], cfg.image_mean, cfg.image_std)
            for i in range(0, len(video.crops), self.batch_size)
        )
        features: np.ndarray = np.concatenate(run_batches(self.extractor, chunks))[video.order]  # (index: Any)
        return features

    def probabilities(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """[B, seg_num, 2048] → per head [B, num_classes]."""
        batch = features.astype(np.float32, copy=False)
        return {head.name: head.predictor(batch) for head in self.heads}

    def stream(self, path: str | Path, seg_num: int | None = None, name: str | None = None) -> FrameStream:
        """The video's crops in chunks as they are decoded (the decoder starts at the first `next`)."""
        assert self.sampler is not None  # set in __post_init__
        return self.sampler.stream(path, seg_num or self.extractor_config.seg_num, name)

    def tag(
        self, path: str | Path, seg_num: int | None = None, name: str | None = None, frames: FrameStream | None = None
    ) -> TagResult:
        """`name` is how errors refer to the video (e.g. its S3 URI rather than a temporary file). `frames`: the
        video's stream, if the caller started it already (`videotag tag` decodes its first video while the
        networks load)."""
        if not self.heads:
            raise ValueError("this tagger has no heads: it only extracts features")
        t0 = time.perf_counter()
        feats, video, waited = self.extract_stream(frames if frames is not None else self.stream(path, seg_num, name))
        t1 = time.perf_counter()
        probs = {head: p[0] for head, p in self.probabilities(feats[None]).items()}
        t2 = time.perf_counter()
        timings = {"decode": waited * 1e3, "extract": (t1 - t0 - waited) * 1e3, "predict": (t2 - t1) * 1e3}
        tags = {head.name: head.tags(probs[head.name]) for head in self.heads}
        return TagResult(tags, probs, feats, video, timings)

    def extract_stream(self, frames: FrameStream) -> tuple[np.ndarray, SampledVideo, float]:
        """Features [seg_num, 2048] of a stream, each chunk normalised and sent to the extractor as it arrives
        (`run_batches`: up to SUBMIT_WINDOW chunks in flight), while the decoder goes on. Each distinct frame
        goes through the network once, in the decoder's chunks: the same batches as `features` of the whole
        video when every reported frame decodes, so the same features. Returns them with the video and the
        seconds spent waiting for the decoder. The stream is closed (its decoder stopped) whatever happens."""
        cfg = self.extractor_config
        crops: dict[int, np.ndarray] = {}
        ordinals: list[int] = []
        end: list[Sampling] = []
        waited = 0.0

        def batches() -> Iterator[np.ndarray]:
            nonlocal waited
            while True:
                start = time.perf_counter()
                try:
                    chunk = next(frames)
                except StopIteration as stop:
                    end.append(stop.value)
                    return
                finally:
                    waited += time.perf_counter() - start
                crops.update(zip(chunk.ordinals, chunk.crops, strict=True))
                ordinals.extend(chunk.ordinals)
                yield normalise(chunk.crops, cfg.image_mean, cfg.image_std)

        try:
            outputs = run_batches(self.extractor, batches())
        finally:
            frames.close()
        sampling = end[0]
        rows = dict(zip(ordinals, np.concatenate(outputs), strict=True))
        video = sampling.video(np.stack([crops[ordinal] for ordinal in sampling.frames]))
        return np.stack([rows[ordinal] for ordinal in sampling.frames])[sampling.order], video, waited
