"""Building the VideoTag chain from worker settings (shared by every command that runs the model)."""

from __future__ import annotations

import logging

from models.config import ExtractorConfig, PredictorConfig
from models.tagger import RANDOM_WEIGHTS, VideoTagger, build_tagger
from worker.settings import Settings

log = logging.getLogger(__name__)


def load_tagger(settings: Settings, with_heads: bool = True) -> VideoTagger:
    """The extractor and the configured heads (`predictors`, else one from predictor_weights and label_file);
    `with_heads=False` loads the extractor only (features, training).

    Raises WeightsError / LabelsError when the files are missing or wrong: callers report and exit.
    """
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
    )
    if tagger.info["weights"] == RANDOM_WEIGHTS:
        log.warning("RUNNING WITH RANDOM, UNTRAINED WEIGHTS: the tags are meaningless (demo only). "
                    "Get the real weights with `videotag weights download`.")
    return tagger
