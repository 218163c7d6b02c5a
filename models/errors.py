"""Errors about one input video: a stable machine-readable code and a message for people.

`NeedsFallback` is no error of the input: it says that OpenCV cannot read a file that the PyAV reader (which
runs in a process of its own, models/decoder_process.py) should try.
"""

from __future__ import annotations


class InputError(Exception):
    """The input cannot be tagged, whatever is retried: report it and move on to the next one."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class NeedsFallback(Exception):
    """OpenCV cannot read this file (it does not open, its codec has no decoder in the OpenCV wheel, or no
    frame decodes): the PyAV reader decides what it is."""


# Stable codes, shared by the CLI output and the worker's dead-letter records.
NOT_FOUND = "not_found"
EMPTY_FILE = "empty_file"
NOT_A_VIDEO = "not_a_video"
CORRUPT_VIDEO = "corrupt_video"
NO_FRAMES = "no_frames"
RESOLUTION_TOO_LARGE = "resolution_too_large"
DECODE_TIMEOUT = "decode_timeout"
DECODER_CRASHED = "decoder_crashed"
NO_VIDEO_STREAM = "no_video_stream"
