"""Decoding and frame sampling, as the original reader, holding only the sampled frames.

The original decodes every frame into memory and then picks `seg_num` of them; here frames are grabbed
sequentially and only the picked ones are colour-converted and preprocessed, so memory does not grow with
the video's length and the input to the network is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models import errors
from models.errors import InputError
from models.preprocess import FrameTransform

# Container signatures, to tell a damaged video from a file that is no video at all.
_VIDEO_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
# After this many failed reads in a row the stream is over: a container that declares millions of frames
# it does not have must not cost millions of calls. A real stream never fails this often and recovers.
MAX_CONSECUTIVE_FAILURES = 256


@dataclass(frozen=True)
class SampledVideo:
    crops: np.ndarray  # [U, H, W, 3] uint8: each distinct sampled frame once
    order: np.ndarray  # [seg_num] index into crops, in sampling order (short videos repeat frames)
    frames_decoded: int  # len(frames) of the original reader
    frames_reported: int
    width: int
    height: int
    fps: float

    @property
    def frames(self) -> np.ndarray:
        return self.crops[self.order]


def sample_indices(num_frames: int, seg_num: int) -> list[int]:
    """The original infer-mode sampler (seglen 1): the middle frame of each of `seg_num` equal segments,
    or every frame in turn, repeated, when the video has fewer frames than segments."""
    average_dur = int(num_frames / seg_num)
    picks = []
    for i in range(seg_num):
        idx = (average_dur - 1) // 2 + i * average_dur if average_dur >= 1 else i
        picks.append(idx % num_frames)
    return picks


def _looks_like_video(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head.startswith(_VIDEO_MAGIC)


def _open(path: Path, name: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        if _looks_like_video(path):
            raise InputError(errors.CORRUPT_VIDEO, f"{name}: video container is damaged or truncated")
        raise InputError(errors.NOT_A_VIDEO, f"{name}: not a video file OpenCV/FFmpeg can read")
    return capture


def _decode_picks(path: Path, name: str, reported: int, wanted: set[int], keep: dict[int, np.ndarray],
                  transform: FrameTransform) -> int:
    """Replay the original's `reported` read calls; transform the decoded frames whose ordinal is wanted.

    Returns the number of frames decoded (the original's len(frames)).
    """
    capture = _open(path, name)
    decoded = failures = 0
    try:
        for _ in range(reported):
            if not capture.grab():
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    break
                continue
            failures = 0
            if decoded in wanted and decoded not in keep:
                ok, frame = capture.retrieve()
                if not ok:
                    raise InputError(errors.CORRUPT_VIDEO, f"{name}: frame {decoded} does not decode")
                keep[decoded] = transform(frame)
            decoded += 1
    finally:
        capture.release()
    return decoded


def read_video(path: str | Path, seg_num: int, transform: FrameTransform,
               max_width: int = 7680, max_height: int = 4320, name: str | None = None) -> SampledVideo:
    """Sample `seg_num` frames of a video file exactly as the original reader, preprocessed by `transform`.

    Raises InputError for a missing, empty, non-video or damaged file, no decodable frame, or a resolution
    above the limit (either orientation). Messages call the video `name` (default: the file name).
    """
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise InputError(errors.NOT_FOUND, f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(errors.EMPTY_FILE, f"{name}: file is empty (0 bytes)")
    capture = _open(path, name)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    capture.release()
    if max(width, height) > max(max_width, max_height) or min(width, height) > min(max_width, max_height):
        raise InputError(errors.RESOLUTION_TOO_LARGE,
                         f"{name}: {width}x{height} is above the {max_width}x{max_height} limit")
    # Optimistic single pass: assume every reported frame decodes. If some do not, the sampling positions
    # shift, and a second pass fetches the frames that the first one did not keep.
    keep: dict[int, np.ndarray] = {}
    decoded = _decode_picks(path, name, reported, set(sample_indices(max(reported, 1), seg_num)), keep, transform)
    if decoded == 0:
        raise InputError(errors.NO_FRAMES, f"{name}: no decodable frame ({reported} reported)")
    picks = sample_indices(decoded, seg_num)
    if missing := set(picks) - set(keep):
        _decode_picks(path, name, reported, missing, keep, transform)
    distinct = sorted(set(picks))
    position = {ordinal: i for i, ordinal in enumerate(distinct)}
    return SampledVideo(
        crops=np.stack([keep[i] for i in distinct]),
        order=np.array([position[i] for i in picks], dtype=np.int64),
        frames_decoded=decoded,
        frames_reported=reported,
        width=width,
        height=height,
        fps=fps,
    )
