"""Decoding in a child process, one per video (`python -m models.decoder_process`).

A decoder that crashes (a native fault in FFmpeg on a crafted upload) or hangs then costs that one video,
with a stable error code, instead of the worker and everything it has in flight; and the decoding runs
outside the caller's GIL, which Paddle Inference holds through every extractor run (docs/performance.md).
A fresh interpreter that imports only the decoding modules starts in ~0.15 s. The reply is a JSON line and
plain .npy arrays, read without pickle: a child subverted by a hostile file cannot run code in the parent.

Two readers, one library per process. OpenCV (models/video.py) reads what it can; what it cannot read
(NeedsFallback: AV1, a file it does not open, no decodable frame) goes to PyAV (models/video_av.py) in a
second child. OpenCV and PyAV each bundle their own build of FFmpeg's libraries (libavcodec, libavformat...,
different versions under the same symbol names): loaded into one process, which copy a call binds to is up
to the dynamic linker, and a mismatch corrupts memory rather than failing cleanly. So a child imports only
the reader it was asked for (this module imports neither at the top), each reader module refuses to load
beside the other, and the parent, which has OpenCV, never imports PyAV.

The PyAV child preprocesses with the faithful transform whatever `preprocess` says: the fast one is OpenCV's
resize, which that process must not load.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from models.errors import ErrorCode, InputError, NeedsFallback
from models.preprocess import make_transform
from models.sampling import SampledVideo

if TYPE_CHECKING:  # the child imports this module and must stay free of Paddle
    from models.tagger import VideoTagger

COMMAND = (sys.executable, "-m", "models.decoder_process")
_METADATA = ("frames_decoded", "frames_reported", "width", "height", "fps", "decoder")
DECODERS = ("opencv", "pyav")


@dataclass(frozen=True)
class DecoderProcess:
    """A `VideoTagger.sampler`: decodes each video in a child per reader, in the order of `decoders` (the next
    one when a reader needs the fallback), and waits at most `timeout_s` (None: no limit) for all of them."""

    preprocess: str
    short_size: int
    crop_size: int
    max_width: int
    max_height: int
    timeout_s: float | None
    command: tuple[str, ...] = field(default=COMMAND)  # tests substitute children that crash or hang
    decoders: tuple[str, ...] = DECODERS

    def __call__(self, path: str | Path, seg_num: int, name: str | None = None) -> SampledVideo:
        name = name or Path(path).name
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        for decoder in self.decoders[:-1]:
            try:
                return self._run(decoder, path, seg_num, name, deadline)
            except NeedsFallback:
                continue
        return self._run(self.decoders[-1], path, seg_num, name, deadline)

    def _run(self, decoder: str, path: str | Path, seg_num: int, name: str, deadline: float | None) -> SampledVideo:
        request = {"path": str(path), "seg_num": seg_num, "preprocess": self.preprocess, "name": name,
                   "short_size": self.short_size, "crop_size": self.crop_size,
                   "max_width": self.max_width, "max_height": self.max_height, "decoder": decoder}
        child = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            out, _ = child.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InputError(ErrorCode.DECODE_TIMEOUT, f"{name}: decoding took over {self.timeout_s:g} s") from None
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
        reply = io.BytesIO(out)
        header = _header(reply.readline())
        if child.returncode != 0 or header is None:
            raise InputError(ErrorCode.DECODER_CRASHED,
                             f"{name}: the decoder process died ({_exit_reason(child.returncode)})")
        if header["status"] == "input_error":
            raise InputError(header["code"], header["message"])
        if header["status"] == "fallback":
            raise NeedsFallback(header["message"])
        if header["status"] != "ok":
            raise RuntimeError(f"decoding {name}: {header.get('message')}")
        crops = np.lib.format.read_array(reply, allow_pickle=False)
        order = np.lib.format.read_array(reply, allow_pickle=False)
        return SampledVideo(crops, order, **{key: header[key] for key in _METADATA})


def isolate_decoding(tagger: VideoTagger, timeout_s: float) -> VideoTagger:
    """The same tagger, decoding each video in a child process (same frames: the same reader runs there)."""
    cfg = tagger.extractor_config
    return replace(tagger, sampler=DecoderProcess(tagger.preprocess, cfg.short_size, cfg.target_size,
                                                  tagger.max_width, tagger.max_height, timeout_s))


def _header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) and "status" in header else None


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The child: one request (JSON) in; a JSON header line, then for "ok" the crops and order arrays, out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, drains
    request = json.loads(stdin.read())
    # Imported here, only the one asked for: a process never loads both libraries (see the module docstring).
    if request["decoder"] == "pyav":
        from models.video_av import read_video
        preprocess = "faithful"
    else:
        from models.video import read_video
        preprocess = request["preprocess"]
    try:
        transform = make_transform(preprocess, request["short_size"], request["crop_size"])
        video = read_video(request["path"], request["seg_num"], transform, request["max_width"],
                           request["max_height"], name=request["name"])
    except InputError as exc:
        stdout.write(json.dumps({"status": "input_error", "code": exc.code, "message": exc.message}).encode())
        return
    except NeedsFallback as exc:
        stdout.write(json.dumps({"status": "fallback", "message": str(exc)}).encode())
        return
    except Exception as exc:  # the parent treats it like the same failure in-process
        stdout.write(json.dumps({"status": "error", "message": f"{type(exc).__name__}: {exc}"}).encode())
        return
    stdout.write(json.dumps({"status": "ok", **{key: getattr(video, key) for key in _METADATA}}).encode() + b"\n")
    np.lib.format.write_array(stdout, np.ascontiguousarray(video.crops), allow_pickle=False)
    np.lib.format.write_array(stdout, np.ascontiguousarray(video.order), allow_pickle=False)


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.buffer.flush()
