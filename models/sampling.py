"""Frame sampling as the original reader does it, over any decoder; and OpenCV's rules, as pure functions.

Two readers feed this module: OpenCV (models/video.py) and PyAV (models/video_av.py). They must never share a
process (each bundles its own FFmpeg), so this module imports neither, and both readers rely on it for
everything that decides which frames a video yields:

- `stream_video` replays the original's `int(CAP_PROP_FRAME_COUNT)` read calls, keeping only the sampled
  frames (the original decoded every frame into memory; the network's input is the same).
- `opencv_frame_count` and `opencv_rotation` are OpenCV's FFmpeg backend (cap_ffmpeg_impl.hpp,
  `get_total_frames` and `get_rotation_angle`/`rotateFrame`) written out, so that PyAV yields the frames
  OpenCV would: the same count, the same turn of rotated phone videos.

Streaming: `stream_video` yields the sampled crops in chunks (`FrameChunk`, in decoding order) as they are
decoded, so that extraction can start on the first chunk while the rest of the video is read, and returns a
`Sampling` (which decoded frames the original picks, in what order) at the end; `collect` turns a stream into
the whole `SampledVideo`. A crop is sent once: the second pass (when frames fail to decode and the picks shift)
sends only the frames the first pass did not.

Invariant: frames handed to a transform are RGB uint8 [H, W, 3], already turned upright.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.errors import ErrorCode, InputError
from models.preprocess import FrameTransform

# Container signatures, to tell a damaged video from a file that is no video at all.
_VIDEO_MAGIC = (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")
# After this many failed reads in a row the stream is over: a container that declares millions of frames
# it does not have must not cost millions of calls. A real stream never fails this often and recovers.
MAX_CONSECUTIVE_FAILURES = 256
# OpenCV's eps_zero: a duration below it counts as unknown.
_EPS_ZERO = 0.000025


@dataclass(frozen=True)
class SampledVideo:
    crops: np.ndarray  # [U, H, W, 3] uint8: each distinct sampled frame once
    order: np.ndarray  # [seg_num] index into crops, in sampling order (short videos repeat frames)
    frames_decoded: int  # len(frames) of the original reader
    frames_reported: int
    width: int
    height: int
    fps: float
    decoder: str  # "opencv" or "pyav": which library read the video

    @property
    def frames(self) -> np.ndarray:
        frames: np.ndarray = self.crops[self.order]  # (numpy types an index by an array as Any)
        return frames


@dataclass(frozen=True)
class FrameChunk:
    """Sampled crops as they are decoded: `crops[i]` ([n, H, W, 3] uint8) is decoded frame `ordinals[i]`."""

    ordinals: tuple[int, ...]
    crops: np.ndarray


@dataclass(frozen=True)
class Sampling:
    """The end of a stream: `frames` are the distinct decoded-frame ordinals the original picks, ascending (each
    was sent in a chunk), `order` ([seg_num]) indexes them in sampling order; the rest is `SampledVideo`'s."""

    frames: tuple[int, ...]
    order: np.ndarray
    frames_decoded: int
    frames_reported: int
    width: int
    height: int
    fps: float
    decoder: str

    def video(self, crops: np.ndarray) -> SampledVideo:
        """The SampledVideo, given the crops of `frames` in their order."""
        return SampledVideo(
            crops,
            self.order,
            self.frames_decoded,
            self.frames_reported,
            self.width,
            self.height,
            self.fps,
            self.decoder,
        )


FrameStream = Generator[FrameChunk, None, Sampling]


class Sampler(Protocol):
    """What `VideoTagger.sampler` is: a video's sampled crops as a stream (`stream`), or all at once (call)."""

    def stream(self, path: str | Path, seg_num: int, name: str | None = None) -> FrameStream: ...

    def __call__(self, path: str | Path, seg_num: int, name: str | None = None) -> SampledVideo: ...


def collect(stream: FrameStream) -> SampledVideo:
    """The whole stream as one SampledVideo (each distinct sampled frame once, in frame order)."""
    crops: dict[int, np.ndarray] = {}
    while True:
        try:
            chunk = next(stream)
        except StopIteration as end:
            sampling: Sampling = end.value
            return sampling.video(np.stack([crops[ordinal] for ordinal in sampling.frames]))
        crops.update(zip(chunk.ordinals, chunk.crops, strict=True))


class FrameReader(Protocol):
    """One pass over a video's frames, as `cv2.VideoCapture` offers it."""

    width: int  # as displayed (after rotation), as OpenCV reports it
    height: int
    fps: float
    frames_reported: int  # OpenCV's CAP_PROP_FRAME_COUNT
    read_calls: int | None  # how many reads the original makes; None: until the stream ends

    def grab(self) -> bool:
        """Decode the next frame; False when this read fails (damaged data, or the end)."""

    def retrieve(self) -> np.ndarray | None:
        """The grabbed frame, RGB and upright; None if it cannot be converted."""

    def close(self) -> None: ...


def sample_indices(num_frames: int, seg_num: int) -> list[int]:
    """The original infer-mode sampler (seglen 1): the middle frame of each of `seg_num` equal segments,
    or every frame in turn, repeated, when the video has fewer frames than segments."""
    average_dur = int(num_frames / seg_num)
    picks = []
    for i in range(seg_num):
        idx = (average_dur - 1) // 2 + i * average_dur if average_dur >= 1 else i
        picks.append(idx % num_frames)
    return picks


def opencv_frame_count(
    nb_frames: int, duration_us: int | None, stream_duration: int | None, time_base: float, fps: float
) -> int:
    """CAP_PROP_FRAME_COUNT: the container's frame count, else round(duration × fps) (WebM and Matroska carry
    no count). None stands for FFmpeg's AV_NOPTS_VALUE; a count OpenCV would give as ≤ 0 is 0 here."""
    if nb_frames:
        return nb_frames
    seconds = duration_us / 1e6 if duration_us is not None else -math.inf
    if seconds < _EPS_ZERO:
        seconds = stream_duration * time_base if stream_duration is not None else -math.inf
    if seconds <= 0 or fps <= 0:
        return 0
    return math.floor(seconds * fps + 0.5)


def opencv_rotation(display_rotation: float) -> int:
    """OpenCV's orientation angle (CAP_PROP_ORIENTATION_META) for a display matrix's rotation, which FFmpeg
    gives in degrees counter-clockwise: OpenCV turns the frame back by it, clockwise."""
    return -round(display_rotation) % 360


def upright(frame: np.ndarray, angle: int) -> np.ndarray:
    """The frame as OpenCV's `rotateFrame` turns it: 90 clockwise, 180, 270 (= 90 counter-clockwise); any
    other angle is left alone, as OpenCV does."""
    turns = {90: -1, 180: 2, 270: 1}.get(angle, 0)  # np.rot90 turns counter-clockwise
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def displayed_size(width: int, height: int, angle: int) -> tuple[int, int]:
    """OpenCV swaps the reported width and height for any angle that is not a multiple of 180."""
    return (height, width) if angle % 180 else (width, height)


def looks_like_video(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free") or head.startswith(_VIDEO_MAGIC)


def _check_file(path: Path, name: str) -> None:
    if not path.is_file():
        raise InputError(ErrorCode.NOT_FOUND, f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(ErrorCode.EMPTY_FILE, f"{name}: file is empty (0 bytes)")


def _check_resolution(width: int, height: int, max_width: int, max_height: int, name: str) -> None:
    if max(width, height) > max(max_width, max_height) or min(width, height) > min(max_width, max_height):
        raise InputError(
            ErrorCode.RESOLUTION_TOO_LARGE, f"{name}: {width}x{height} is above the {max_width}x{max_height} limit"
        )


def _decode_picks(
    reader: FrameReader, name: str, wanted: set[int], transform: FrameTransform
) -> Generator[tuple[int, np.ndarray], None, int]:
    """Replay the original's read calls; yield (ordinal, crop) for each decoded frame whose ordinal is wanted.

    Returns the number of frames decoded (the original's len(frames)).
    """
    calls = range(reader.read_calls) if reader.read_calls is not None else itertools.count()
    decoded = failures = 0
    for _ in calls:
        if not reader.grab():
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                break
            continue
        failures = 0
        if decoded in wanted:
            frame = reader.retrieve()
            if frame is None:
                raise InputError(ErrorCode.CORRUPT_VIDEO, f"{name}: frame {decoded} does not decode")
            yield decoded, transform(frame)
        decoded += 1
    return decoded


def _chunks(
    frames: Generator[tuple[int, np.ndarray], None, int], size: int, sent: set[int]
) -> Generator[FrameChunk, None, int]:
    """`frames` grouped into chunks of `size` (the last one shorter), each ordinal added to `sent` as it goes;
    returns what `frames` returns."""
    ordinals: list[int] = []
    crops: list[np.ndarray] = []
    while True:
        try:
            ordinal, crop = next(frames)
        except StopIteration as end:
            decoded: int = end.value
            break
        ordinals.append(ordinal)
        crops.append(crop)
        sent.add(ordinal)
        if len(ordinals) == size:
            yield FrameChunk(tuple(ordinals), np.stack(crops))
            ordinals, crops = [], []
    if ordinals:
        yield FrameChunk(tuple(ordinals), np.stack(crops))
    return decoded


def stream_video(
    path: Path,
    name: str,
    open_reader: Callable[[], FrameReader],
    decoder: str,
    seg_num: int,
    transform: FrameTransform,
    max_width: int,
    max_height: int,
    chunk_size: int,
) -> FrameStream:
    """Sample `seg_num` frames exactly as the original reader, preprocessed by `transform`, yielding them in
    chunks of `chunk_size` as they are decoded.

    Raises InputError for a missing or empty file, a resolution above the limit (either orientation) and no
    decodable frame; `open_reader` raises what else it finds.
    """
    _check_file(path, name)
    sent: set[int] = set()
    reader = open_reader()
    try:
        _check_resolution(reader.width, reader.height, max_width, max_height, name)
        # Optimistic single pass: assume every reported frame decodes, and send each pick as soon as it is
        # decoded. If some frames do not decode, the sampling positions shift: a second pass sends the frames
        # that the first one did not (and some sent ones go unused).
        metadata = (reader.frames_reported, reader.width, reader.height, reader.fps)
        first_picks = set(sample_indices(max(reader.frames_reported, 1), seg_num))
        decoded = yield from _chunks(_decode_picks(reader, name, first_picks, transform), chunk_size, sent)
    finally:
        reader.close()
    if decoded == 0:
        raise InputError(ErrorCode.NO_FRAMES, f"{name}: no decodable frame ({metadata[0]} reported)")
    picks = sample_indices(decoded, seg_num)
    if missing := set(picks) - sent:
        reader = open_reader()
        try:
            yield from _chunks(_decode_picks(reader, name, missing, transform), chunk_size, sent)
        finally:
            reader.close()
    distinct = sorted(set(picks))
    position = {ordinal: i for i, ordinal in enumerate(distinct)}
    reported, width, height, fps = metadata
    return Sampling(
        frames=tuple(distinct),
        order=np.array([position[i] for i in picks], dtype=np.int64),
        frames_decoded=decoded,
        frames_reported=reported,
        width=width,
        height=height,
        fps=fps,
        decoder=decoder,
    )
