"""`videotag calibrate VIDEO...`: the INT8 calibration set from the user's own videos.

The frames are sampled and preprocessed by the tagger's own decoder with the configured preprocess, seg_num
and resolution limits (so a set is made of exactly what the extractor will see), without loading a network.
Written to `--out`, else to where the setting int8_calibration points, so that `--precision int8` finds it
with no further setting. There is no silent default set: a user's videos are the only frames known to be
like the ones they tag (docs/performance.md, "INT8").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.calibration import DEFAULT_FRAMES, sample_calibration, save_calibration
from models.config import ExtractorConfig
from models.video import InProcessDecoder
from worker.settings import Settings


def calibrate(
    settings: Settings, paths: Sequence[str | Path], out: str | Path | None, frames: int | None = None
) -> tuple[Path, int]:
    """Sample `paths`, write a set of `frames` frames (default DEFAULT_FRAMES); return where and how many.
    Raises what decoding a bad video raises (an InputError with its code) and CalibrationError."""
    config = ExtractorConfig(layers=settings.layers, seg_num=settings.seg_num)
    decoder = InProcessDecoder(
        settings.preprocess, config.short_size, config.target_size, settings.max_width, settings.max_height
    )
    calibration = sample_calibration(paths, lambda path: decoder(path, config.seg_num), frames or DEFAULT_FRAMES)
    return save_calibration(out or settings.int8_calibration, calibration), len(calibration.crops)
