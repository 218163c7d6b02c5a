"""Per-frame preprocessing: resize, centre crop, normalise — the original TSN reader's arithmetic.

A transform takes one decoded RGB frame and returns the uint8 RGB crop [224, 224, 3]; only crops are kept
in memory. `normalise` turns a stack of crops into the extractor's float input.

OpenCV is imported only by the transform that uses it (`fast`): the PyAV decoder process imports this module
and must not load OpenCV's FFmpeg beside PyAV's (models/decoder_process.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

FrameTransform = Callable[[np.ndarray], np.ndarray]


def scaled_size(width: int, height: int, short_size: int) -> tuple[int, int] | None:
    """(w, h) after the original resize, or None when the short side already is `short_size`.

    The long side becomes int(short * 4 / 3) whatever the aspect ratio: the original's choice, kept.
    """
    if (width <= height and width == short_size) or (height <= width and height == short_size):
        return None
    long_size = int(short_size * 4.0 / 3.0)
    return (short_size, long_size) if width < height else (long_size, short_size)


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"frame {width}x{height} is smaller than the {size} crop")
    top = round((height - size) / 2.0)  # Python 3 rounding (half to even), as the original
    left = round((width - size) / 2.0)
    return image[top : top + size, left : left + size]


def faithful_transform(short_size: int, crop_size: int) -> FrameTransform:
    """PIL bilinear resize, as the original. PIL filters over the whole footprint when downscaling."""

    def transform(rgb: np.ndarray) -> np.ndarray:
        image = Image.fromarray(rgb)
        size = scaled_size(image.width, image.height, short_size)
        if size is not None:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.ascontiguousarray(_center_crop(np.asarray(image), crop_size))

    return transform


def fast_transform(short_size: int, crop_size: int) -> FrameTransform:
    """OpenCV area resize: several times cheaper than the faithful path, with pixels a few grey levels apart
    (tags measured in bench)."""
    import cv2

    def transform(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        size = scaled_size(width, height, short_size)
        if size is not None:
            shrinking = size[0] * size[1] < width * height
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return np.ascontiguousarray(_center_crop(rgb, crop_size))

    return transform


TRANSFORMS = {"faithful": faithful_transform, "fast": fast_transform}


def make_transform(kind: str, short_size: int, crop_size: int) -> FrameTransform:
    if kind not in TRANSFORMS:
        raise ValueError(f"preprocess must be one of {sorted(TRANSFORMS)}, not {kind!r}")
    return TRANSFORMS[kind](short_size, crop_size)


def normalise(crops: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W], in the original's order of float32 operations."""
    images = crops.astype(np.float32).transpose(0, 3, 1, 2) / 255
    images -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    images /= np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return images
