"""INT8 calibration sets: real frames, sampled and preprocessed exactly as the tagger does, to quantise on.

A set is an `.npz` holding `crops`, uint8 [N, H, W, 3] (what the configured preprocessing makes of the sampled
frames, before normalisation) and `sources` (the videos' names). `videotag calibrate VIDEO...` writes one: N
frames spread evenly over each video's seg_num samples, shared evenly among the videos. Its digest is over the
frames themselves, not the file: a re-written file with the same frames is the same set (and the same cache
entry, models/quantise.py). Written atomically; read back checked, with an error that says how to make one.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import ConfigError
from models.sampling import SampledVideo

DEFAULT_FRAMES = 64


class CalibrationError(ConfigError):
    """The calibration set is missing or not one `videotag calibrate` wrote."""


@dataclass(frozen=True)
class CalibrationSet:
    crops: np.ndarray  # uint8 [N, H, W, 3]
    sources: tuple[str, ...] = field(default=())

    def digest(self) -> str:
        digest = hashlib.sha256(repr(self.crops.shape).encode())
        digest.update(np.ascontiguousarray(self.crops).tobytes())
        return digest.hexdigest()[:12]


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices spread evenly over range(count) (all of them when there are fewer)."""
    if count <= wanted:
        return list(range(count))
    return [int(i * count / wanted) for i in range(wanted)]


def pick_frames(per_video: Sequence[np.ndarray], frames: int) -> np.ndarray:
    """`frames` crops in all, shared as evenly as the videos allow (the first ones take the remainder) and
    spread over each video's samples; all of a video's crops when it has fewer than its share."""
    if frames < 1:
        raise CalibrationError(f"a calibration set needs at least 1 frame, not {frames}")
    videos = [crops for crops in per_video if len(crops)]
    if not videos:
        raise CalibrationError("the videos gave no frames to calibrate on")
    shares = [frames // len(videos) + (1 if i < frames % len(videos) else 0) for i in range(len(videos))]
    return np.concatenate(
        [crops[spread(len(crops), share)] for crops, share in zip(videos, shares, strict=True) if share]
    )


def save_calibration(path: str | Path, calibration: CalibrationSet) -> Path:
    """Write atomically (a temporary sibling renamed into place): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", suffix=".npz", delete=False) as tmp:
        np.savez_compressed(tmp, crops=calibration.crops, sources=np.array(calibration.sources, dtype=str))
    Path(tmp.name).chmod(0o644)  # (created private) a set may be shared, like the model cache
    Path(tmp.name).replace(path)
    return path


def load_calibration(path: str | Path, image_size: int) -> CalibrationSet:
    """The calibration set at `path`, checked: uint8 [N ≥ 1, image_size, image_size, 3]."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"precision int8 needs a calibration set and {path} does not exist: make one from "
            "a few videos like those you tag with `videotag calibrate VIDEO...` (it writes "
            "the file that the setting int8_calibration names)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            crops = data["crops"]
            sources = tuple(str(s) for s in data["sources"]) if "sources" in data else ()
    except (OSError, ValueError, KeyError) as exc:
        raise CalibrationError(f"{path} is not a calibration set written by `videotag calibrate` ({exc})") from exc
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (image_size, image_size, 3) or not len(crops):
        raise CalibrationError(
            f"{path} holds crops {crops.dtype} {list(crops.shape)}, not uint8 "
            f"[N, {image_size}, {image_size}, 3]: make it again with `videotag calibrate`"
        )
    return CalibrationSet(crops, sources)


def sample_calibration(
    paths: Sequence[str | Path], sample: Callable[[str | Path], SampledVideo], frames: int = DEFAULT_FRAMES
) -> CalibrationSet:
    """The set from `paths`, each sampled by `sample` (the tagger's decoder and preprocessing)."""
    per_video = [sample(path).crops for path in paths]  # each distinct sampled frame once
    return CalibrationSet(pick_frames(per_video, frames), tuple(Path(p).name for p in paths))
