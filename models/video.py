"""The OpenCV reader, and decoding in this process: OpenCV here, the PyAV fallback in a child process.

OpenCV decodes what it can, with the pixels the original saw. What it cannot read (a file it does not open,
a codec its wheel has no decoder for, such as AV1, or a stream of which no frame decodes) raises
NeedsFallback, and `InProcessDecoder` hands that file to the PyAV reader in a child process: PyAV and
OpenCV's FFmpeg are never loaded in one process (models/decoder_process.py says why).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models import sampling
from models.config import TSN_FILE, config_default
from models.decoder_process import DecoderProcess
from models.errors import ErrorCode, InputError, NeedsFallback
from models.preprocess import FrameTransform, make_transform
from models.sampling import FrameStream, SampledVideo, collect

if "av" in sys.modules:  # the invariant models/decoder_process.py keeps: one FFmpeg per process
    raise ImportError("models.video (OpenCV) imported in a process that has loaded PyAV")

DECODER = "opencv"
# Codecs (FOURCC, upper case) the OpenCV wheel opens but has no decoder for: it reports a plausible frame
# count, then every read fails. Known here so that such files go to PyAV without a pass of failing reads.
UNDECODABLE_FOURCCS = frozenset({"AV01"})


def opencv_decodes(fourcc: str) -> bool:
    """Whether OpenCV's wheel decodes a stream of this codec (its CAP_PROP_FOURCC as text)."""
    return fourcc.upper() not in UNDECODABLE_FOURCCS


def _fourcc(capture: cv2.VideoCapture) -> str:
    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    return code.to_bytes(4, "little").decode("latin-1").strip("\0 ")


class _CaptureReader:
    """`cv2.VideoCapture` as a FrameReader: BGR frames converted to RGB, the spec's first step."""

    def __init__(self, path: Path, name: str) -> None:
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise NeedsFallback(f"{name}: OpenCV cannot open it")
        if not opencv_decodes(fourcc := _fourcc(capture)):
            capture.release()
            raise NeedsFallback(f"{name}: OpenCV has no decoder for {fourcc}")
        self.capture = capture
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frames_reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.read_calls: int | None = max(self.frames_reported, 0)
        self.fps = float(capture.get(cv2.CAP_PROP_FPS))

    def grab(self) -> bool:
        return bool(self.capture.grab())

    def retrieve(self) -> np.ndarray | None:
        ok, frame = self.capture.retrieve()
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None

    def close(self) -> None:
        self.capture.release()


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
    """Sample `seg_num` frames of a video file with OpenCV, exactly as the original reader (models/sampling.py),
    in chunks of `chunk_size` as they are decoded.

    Raises InputError for a missing or empty file or a resolution above the limit (either orientation),
    NeedsFallback for a file OpenCV cannot read (before any chunk: no frame decoded), and MemoryError where
    OpenCV cannot allocate. Messages call the video `name` (default: the file name).
    """
    path = Path(path)
    name = name or path.name
    try:
        return (
            yield from sampling.stream_video(
                path,
                name,
                lambda: _CaptureReader(path, name),
                DECODER,
                seg_num,
                transform,
                max_width,
                max_height,
                chunk_size,
            )
        )
    except InputError as exc:
        if exc.code is ErrorCode.NO_FRAMES:  # e.g. a codec this wheel lacks that is not in UNDECODABLE_FOURCCS
            raise NeedsFallback(exc.message) from exc
        raise
    except cv2.error as exc:
        if exc.code == cv2.Error.StsNoMem:  # OpenCV's failed allocation: what Python and PyAV raise as MemoryError
            raise MemoryError(f"{name}: {exc.err}") from exc
        raise


def read_video(
    path: str | Path, seg_num: int, transform: FrameTransform, max_width: int, max_height: int, name: str | None = None
) -> SampledVideo:
    """`stream_video`, all at once."""
    return collect(stream_video(path, seg_num, transform, max_width, max_height, name, chunk_size=seg_num))


@dataclass
class InProcessDecoder:
    """A `VideoTagger.sampler` that decodes with OpenCV in this process, and sends what OpenCV cannot read to
    the PyAV reader in a child (which has no time limit here, like the in-process decoding)."""

    preprocess: str
    short_size: int
    crop_size: int
    max_width: int
    max_height: int
    chunk_size: int = config_default(TSN_FILE, "batch_size")  # crops per chunk of the stream: the tagger's batch size
    transform: FrameTransform = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.transform = make_transform(self.preprocess, self.short_size, self.crop_size)

    def stream(self, path: str | Path, seg_num: int, name: str | None = None) -> FrameStream:
        try:
            return (
                yield from stream_video(
                    path, seg_num, self.transform, self.max_width, self.max_height, name, chunk_size=self.chunk_size
                )
            )
        except NeedsFallback:  # raised before any chunk was sent (models/video.py stream_video)
            fallback = DecoderProcess(
                self.preprocess,
                self.short_size,
                self.crop_size,
                self.max_width,
                self.max_height,
                timeout_s=None,
                decoders=("pyav",),
                chunk_size=self.chunk_size,
            )
            return (yield from fallback.stream(path, seg_num, name))

    def __call__(self, path: str | Path, seg_num: int, name: str | None = None) -> SampledVideo:
        return collect(self.stream(path, seg_num, name))
