"""Building the VideoTag chain from settings: the one place every command that tags assembles it.

`load_tagger` loads the networks in this process (`videotag features`, `train`, `eval`, and the model process
itself). `build_chain` is what the worker, `videotag tag`, `bench` and `demo` use: the same networks placed
where the caller needs them (`networks`):
- "process": in the model process (worker/model_process.py): the worker's threads never wait on Paddle's GIL
  (the worker; `videotag tag`, whose networks load there while its first video decodes, and which reads the
  decoder's chunks while the network runs);
- "thread": in this process, behind one `ModelThread` that merges the chunks of concurrent videos (`bench`,
  which measures the engine and the pipeline in one process);
- "inline": in this process, called directly (the bench's original-style baseline).
Each video is decoded in a child process when `decode_timeout_s` > 0 (the default), whatever the placement
(`decoding`, which needs only the settings: `videotag tag` starts its first video's decoding before the networks
are loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from models.chain import RANDOM_WEIGHTS, VideoTagger
from models.config import ExtractorConfig, PredictorConfig
from models.decoder_process import DecoderLimits, DecoderProcess
from models.sampling import Sampler
from models.video import InProcessDecoder
from worker.metrics import Metrics
from worker.model_process import ModelProcess
from worker.pipeline import ModelThread, replace_engines
from worker.settings import Settings

log = logging.getLogger(__name__)
NETWORKS = ("process", "thread", "inline")


def load_tagger(settings: Settings, with_heads: bool = True) -> VideoTagger:
    """The extractor and the configured heads (`predictors`, else one from predictor_weights and label_file);
    `with_heads=False` loads the extractor only (features, training).

    Raises WeightsError / LabelsError when the files are missing or wrong: callers report and exit.
    """
    from models.tagger import build_tagger  # Paddle: not imported by the worker, whose networks run elsewhere

    tagger = build_tagger(
        settings.extractor_weights,
        settings.predictor_weights,
        settings.label_file,
        ExtractorConfig(layers=settings.layers, seg_num=settings.seg_num),
        PredictorConfig(topk=settings.topk),
        heads=(settings.predictors or None) if with_heads else (),
        device=settings.device,
        allow_random_weights=settings.allow_random_weights,
        preprocess=settings.preprocess,
        batch_size=settings.batch_size,
        max_width=settings.max_width,
        max_height=settings.max_height,
        engine=settings.engine,
        precision=settings.precision,
        cache_dir=settings.model_cache_dir,
        threads=settings.cpu_threads or None,
        tensorrt=settings.tensorrt,
        simulated_ms_per_frame=settings.simulated_ms_per_frame,
        int8_calibration=settings.int8_calibration,
    )
    if tagger.info["weights"] == RANDOM_WEIGHTS:
        log.warning(
            "RUNNING WITH RANDOM, UNTRAINED WEIGHTS: the tags are meaningless (demo only). "
            "Get the real weights with `videotag weights download`."
        )
    return tagger


@dataclass
class Chain:
    """A built chain: `tagger` to call, `close` to release what runs it (the model process or thread)."""

    tagger: VideoTagger
    close: Callable[[], None]
    model_process: ModelProcess | None = None  # set for networks="process"

    def problem(self) -> str | None:
        """Why the networks cannot run now (the model process is down), or None."""
        return None if self.model_process is None else self.model_process.problem()

    def down_for(self) -> float:
        return 0.0 if self.model_process is None else self.model_process.down_for()


def build_chain(settings: Settings, networks: str, metrics: Metrics | None = None) -> Chain:
    """The chain for `settings` with its networks placed as `networks` says (see the module docstring).
    Raises the same configuration errors as `load_tagger` (WeightsError, LabelsError, ...)."""
    if networks not in NETWORKS:
        raise ValueError(f"networks must be one of {list(NETWORKS)}, not {networks!r}")
    close: Callable[[], None] = _nothing
    process = None
    if networks == "process":
        process = ModelProcess(settings, metrics).start()
        tagger, close = process.tagger(), process.close
    else:
        tagger = load_tagger(settings)
        if networks == "thread":
            model_thread = ModelThread(settings.batch_size).start()
            tagger, close = replace_engines(tagger, model_thread.wrap), model_thread.stop
    return Chain(replace(tagger, sampler=decoding(settings)), close, process)


def decoding(settings: Settings) -> Sampler:
    """How the chain decodes each video (the frames the networks expect: the extractor's crop, the settings'
    preprocessing), in chunks of `batch_size` crops: in a child process when decode_timeout_s > 0 (a crashing or
    hanging decoder costs one video, not the caller), else in this process."""
    cfg = ExtractorConfig(layers=settings.layers, seg_num=settings.seg_num)
    if settings.decode_timeout_s > 0:
        return DecoderProcess(
            settings.preprocess,
            cfg.short_size,
            cfg.target_size,
            settings.max_width,
            settings.max_height,
            settings.decode_timeout_s,
            DecoderLimits(settings.decoder_max_memory_bytes, settings.decoder_max_cpu_s),
            chunk_size=settings.batch_size,
        )
    return InProcessDecoder(
        settings.preprocess,
        cfg.short_size,
        cfg.target_size,
        settings.max_width,
        settings.max_height,
        chunk_size=settings.batch_size,
    )


def _nothing() -> None:
    pass
