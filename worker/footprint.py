"""Does `max_inflight` fit the container's memory? A documented estimate, checked before the worker starts.

estimate = model + max_inflight × per video, measured here with the real pipeline (docs/performance.md,
"Memory per video", says how):
- model: the worker process's peak while loading (the weight pickles and the layers are alive together) or
  once warm (oneDNN primitives and reordered weights for the one chunk shape), whichever is larger, by engine,
  for ResNet-101 and one head, plus HEAD_BYTES for each further head;
- per video: its sampled crops (seg_num × 224×224×3 bytes) held about four times (in the decoder process, in
  the reply, as the worker's array, and as float32 chunks on their way to the model thread), one normalised
  float32 batch, and a decoder process's own resident size (an interpreter with OpenCV/FFmpeg and a 1080p
  H.264 decoder's frame buffers).
The worker refuses to start (one line, exit 2) when the estimate exceeds FIT_SHARE of the cgroup memory limit:
the rest is left to glibc's arenas, S3 transfer buffers and the temporary file's page cache. No limit: no check.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import cgroup
from worker.settings import Settings, SettingsError

MIB = 1024**2
CROP_BYTES = 224 * 224 * 3
CROP_COPIES = 4
FRAME_FLOAT_BYTES = 3 * 224 * 224 * 4
# Measured here (docs/performance.md): peak RSS of the worker process with its engines loaded and warm.
MODEL_BYTES = {"inference": 1250 * MIB, "dygraph": 1400 * MIB, "simulated": 1100 * MIB}
HEAD_BYTES = 200 * MIB  # each head after the first: its AttentionLSTM weights (float32) and eager state
DECODER_PROCESS_BYTES = 150 * MIB  # a decoder process's peak RSS beyond its crops (1080p H.264: 145 MiB)
FIT_SHARE = 0.9


@dataclass(frozen=True)
class Footprint:
    model: int
    per_video: int
    max_inflight: int

    @property
    def total(self) -> int:
        return self.model + self.max_inflight * self.per_video

    def fitting(self, limit: int) -> int:
        """The largest max_inflight whose estimate fits FIT_SHARE of `limit` (0: not even one)."""
        return max(0, int((limit * FIT_SHARE - self.model) // self.per_video))


def estimate(settings: Settings) -> Footprint:
    heads = max(1, len(settings.predictors))
    model = MODEL_BYTES.get(settings.engine, MODEL_BYTES["dygraph"]) + (heads - 1) * HEAD_BYTES
    per_video = (
        settings.seg_num * CROP_BYTES * CROP_COPIES + settings.batch_size * FRAME_FLOAT_BYTES + DECODER_PROCESS_BYTES
    )
    return Footprint(model, per_video, settings.max_inflight)


def fit_problem(settings: Settings, limit: int | None) -> str | None:
    """None when `max_inflight` fits `limit` (bytes; None: no limit), else the one-line reason with the numbers."""
    if limit is None:
        return None
    need = estimate(settings)
    if need.total <= limit * FIT_SHARE:
        return None
    fits = need.fitting(limit)
    advice = f"lower max_inflight to {fits}" if fits else "lower seg_num"
    return (
        f"max_inflight {settings.max_inflight} does not fit the memory limit: about {need.total / MIB:.0f} MiB "
        f"(model {need.model / MIB:.0f} MiB + {settings.max_inflight} × {need.per_video / MIB:.0f} MiB per "
        f"video at seg_num {settings.seg_num}) > {FIT_SHARE:.0%} of the {limit / MIB:.0f} MiB cgroup limit; "
        f"{advice} or raise the limit (docs/performance.md, Memory per video)"
    )


def check_fit(settings: Settings, limit: int | None = None) -> None:
    """Raise SettingsError (the CLI reports it in one line and exits 2) when max_inflight does not fit the
    cgroup memory limit (read when `limit` is not given)."""
    problem = fit_problem(settings, cgroup.memory_limit() if limit is None else limit)
    if problem is not None:
        raise SettingsError(problem)
