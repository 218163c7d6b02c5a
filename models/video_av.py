"""The PyAV reader: the fallback for what OpenCV cannot read (AV1 above all; PyAV's wheel has libdav1d).

Imported only by the decoder child process that runs it (models/decoder_process.py), never beside OpenCV.
It yields the frames OpenCV would (models/sampling.py): the first video stream, OpenCV's frame count rule
(counting to the end where the container gives no count), the same colour conversion (swscale, bicubic, as
OpenCV asks for it; identical pixels on the 8-bit and 10-bit clips tested), and the same turn of rotated
videos (the display matrix, which FFmpeg attaches to every decoded frame).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from models import sampling
from models.errors import ErrorCode, InputError
from models.preprocess import FrameTransform
from models.sampling import (
    FrameStream,
    displayed_size,
    looks_like_video,
    opencv_frame_count,
    opencv_rotation,
    upright,
)

if "cv2" in sys.modules:  # the invariant models/decoder_process.py keeps: one FFmpeg per process
    raise ImportError("models.video_av (PyAV) imported in a process that has loaded OpenCV")

DECODER = "pyav"


class _PyAVReader:
    """A FrameReader over the first video stream. Opening decodes the first frame, whose display matrix gives
    the rotation (PyAV exposes it on frames only); that frame is the first one `grab` returns."""

    def __init__(self, path: Path, name: str) -> None:
        try:
            self.container = av.open(str(path))
        except MemoryError:  # av.MemoryError is an FFmpegError too: out of memory says nothing of the file
            raise
        except av.FFmpegError as exc:
            if looks_like_video(path):
                raise InputError(ErrorCode.CORRUPT_VIDEO, f"{name}: video container is damaged or truncated") from exc
            raise InputError(ErrorCode.NOT_A_VIDEO, f"{name}: not a video file FFmpeg can read") from exc
        if not self.container.streams.video:
            self.container.close()
            raise InputError(ErrorCode.NO_VIDEO_STREAM, f"{name}: the file has no video stream")
        stream = self.container.streams.video[0]  # OpenCV takes the first one too
        stream.thread_type = "AUTO"
        rate = stream.guessed_rate  # av_guess_frame_rate, as OpenCV's CAP_PROP_FPS
        self.fps = float(rate) if rate else 0.0
        self.frames_reported = opencv_frame_count(
            stream.frames, self.container.duration, stream.duration, float(stream.time_base or 0), self.fps
        )
        # Where OpenCV's count is unknown (0) it reads nothing; the fallback reads to the end instead.
        self.read_calls = self.frames_reported or None
        self._frames = self._decode(stream)
        self._next: av.VideoFrame | None = next(self._frames, None)
        self._current: av.VideoFrame | None = None
        self._angle = opencv_rotation(self._next.rotation) if self._next is not None else 0
        self.width, self.height = displayed_size(stream.codec_context.width, stream.codec_context.height, self._angle)

    def _decode(self, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
        for packet in self.container.demux(stream):
            try:
                frames = packet.decode()
            except MemoryError:
                raise
            except av.FFmpegError:  # a damaged packet: skipped, as OpenCV skips frames that fail to decode
                continue
            yield from frames

    def grab(self) -> bool:
        self._current, self._next = self._next, None
        if self._current is None:
            self._current = next(self._frames, None)
        return self._current is not None

    def retrieve(self) -> np.ndarray | None:
        if self._current is None:
            return None
        # As OpenCV converts: swscale to BGR with the bicubic filter. Both choices change pixels of 10-bit video
        # (swscale's RGB and BGR outputs round differently); the channel swap after it changes none.
        bgr = self._current.to_ndarray(format="bgr24", interpolation="BICUBIC")
        return upright(np.ascontiguousarray(bgr[:, :, ::-1]), self._angle)

    def close(self) -> None:
        self.container.close()


def stream_video(
    path: str | Path,
    seg_num: int,
    transform: FrameTransform,
    max_width: int,
    max_height: int,
    name: str | None = None,
    *,
    chunk_size: int,
) -> FrameStream:
    """Sample `seg_num` frames with PyAV, as models.video.stream_video does with OpenCV.

    Raises InputError for a missing, empty, non-video or damaged file, a file without a video stream, no
    decodable frame, or a resolution above the limit (either orientation).
    """
    path = Path(path)
    name = name or path.name
    return (
        yield from sampling.stream_video(
            path, name, lambda: _PyAVReader(path, name), DECODER, seg_num, transform, max_width, max_height, chunk_size
        )
    )
