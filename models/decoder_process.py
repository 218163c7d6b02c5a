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

The child is a sandbox for a hostile file (Linux; elsewhere it runs without the limits and the parent link):
- resource limits, set before it is sent its request (so before it reads a byte of the video), soft = hard so
  that it cannot raise them: address space (`DecoderLimits.memory_bytes`), CPU time (`cpu_s`), no file
  written (file size 0: its stderr is a pipe to the parent, which quotes it on a crash) and no core dump;
- an environment of its own: an allow-list (`child_environment`), so none of the worker's credentials, Kafka
  secrets or tokens; plus the settings that quiet FFmpeg's and OpenCV's native logging;
- it dies with the worker: PR_SET_PDEATHSIG kills it when the thread that started it ends (that thread waits
  for it, so when the worker dies, even by SIGKILL), and a child whose parent died before it asked exits;
- `python -P`: a module in the working directory (say a stray `numpy.py`) is never imported.
How it died says who is at fault: SIGXCPU is the file (`decoder_cpu_limit`), as is a MemoryError under the
address-space limit (`decoder_memory_limit`; inside FFmpeg a failed allocation may only look like a damaged
frame); SIGKILL from anyone but the worker is the machine (`decoder_killed`: the kernel's OOM killer, since
the limit keeps one decoder's own use bounded); any other death is `decoder_crashed`.
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from models import cancel
from models.errors import CodedError, ErrorCode, InputError, NeedsFallback, SystemicError, os_error_code
from models.preprocess import make_transform
from models.sampling import SampledVideo

if TYPE_CHECKING:  # the child imports this module and must stay free of Paddle
    from models.chain import VideoTagger

log = logging.getLogger(__name__)
COMMAND = (sys.executable, "-P", "-m", "models.decoder_process")
# Lines of a decoder's stderr logged per video (in the video's log context): its libraries log fatal messages only,
# but a hostile file must not flood the worker's log.
STDERR_LINES_LOGGED = 20
_METADATA = ("frames_decoded", "frames_reported", "width", "height", "fps", "decoder")
DECODERS = ("opencv", "pyav")
_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# What the child keeps of the worker's environment: an interpreter and the decoding libraries need no more.
_ENV_KEPT = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME",
                       "LD_LIBRARY_PATH"})
_ENV_SET = {
    # Fatal messages only: a damaged file makes FFmpeg and OpenCV log a line per frame, and the reply says it.
    "OPENCV_LOG_LEVEL": "FATAL",
    "OPENCV_FFMPEG_LOGLEVEL": "8",  # AV_LOG_FATAL (PyAV leaves FFmpeg's logging off by default)
    # The address-space limit should measure what decoding uses, not reservations that grow with the cores:
    # glibc reserves 64 MiB per malloc arena (up to 8 arenas a core), and numpy's OpenBLAS starts a thread
    # per core with buffers of its own at import (the child does no linear algebra).
    "MALLOC_ARENA_MAX": "2",
    "OPENBLAS_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class DecoderLimits:
    """Resource limits of each decoder process. The defaults decode an 8K H.264 or HEVC video with 16 FFmpeg
    threads (measured: 2 GiB of address space; tests/test_decoder_process.py decodes one under them)."""

    memory_bytes: int = 4 * 1024**3
    cpu_s: int = 3600


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
    limits: DecoderLimits = DecoderLimits()
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
                   "max_width": self.max_width, "max_height": self.max_height, "decoder": decoder,
                   "parent": os.getpid()}
        try:
            # stderr is read, not inherited: the file-size limit would fail its writes to a log file.
            child = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_environment(os.environ))
        except OSError as exc:
            code = os_error_code(exc)
            if code is None:
                raise
            raise SystemicError(code, f"{name}: cannot start a decoder process: {exc.strerror}") from exc
        cancel.register(child)  # a cancelled video (deadline, revoked partition, stop) kills its decoder now
        try:
            if _LINUX:
                _confine(child.pid, self.limits)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            out, err = child.communicate(json.dumps(request).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InputError(ErrorCode.DECODE_TIMEOUT, f"{name}: decoding took over {self.timeout_s:g} s") from None
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
        cancel.check()
        _log_stderr(err, name)
        reply = io.BytesIO(out)
        header = _header(reply.readline())
        if child.returncode != 0 or header is None:
            raise decoder_death(child.returncode, err, name, self.limits)
        if header["status"] == "input_error":
            raise InputError(header["code"], header["message"])
        if header["status"] == "fallback":
            raise NeedsFallback(header["message"])
        if header["status"] != "ok":
            raise RuntimeError(f"decoding {name}: {header.get('message')}")
        crops = np.lib.format.read_array(reply, allow_pickle=False)
        order = np.lib.format.read_array(reply, allow_pickle=False)
        return SampledVideo(crops, order, **{key: header[key] for key in _METADATA})


def child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The decoder's environment: an allow-list of the parent's (nothing secret is on it, so AWS_*, the
    VIDEOTAG_* settings, passwords and tokens stay behind whatever they are called), and the logging quieted."""
    kept = {name: value for name, value in parent.items() if name in _ENV_KEPT or name.startswith("LC_")}
    return {**kept, **_ENV_SET}


def _confine(pid: int, limits: DecoderLimits) -> None:
    """Set the child's limits before it is sent its request: it reads no video before they hold."""
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        # SIGXCPU at the soft limit names the cause; the kernel sends SIGKILL at the hard one, a second later.
        resource.prlimit(pid, resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, 0))
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    except ProcessLookupError:  # it is gone already: its exit status tells what happened
        pass


def decoder_death(returncode: int, stderr: bytes, name: str, limits: DecoderLimits) -> CodedError:
    """The error for a decoder process that exited without a valid reply (the worker's own kill, on a timeout,
    is told apart before: this is any other death). A crash quotes the end of what the child said."""
    if returncode == -signal.SIGXCPU:
        return InputError(ErrorCode.DECODER_CPU_LIMIT, f"{name}: decoding used more than {limits.cpu_s} s of CPU")
    if returncode == -signal.SIGKILL:
        return SystemicError(ErrorCode.DECODER_KILLED, f"{name}: the decoder process was killed (SIGKILL) by "
                                                       "the kernel's OOM killer or an operator")
    last = stderr.decode("utf-8", "replace").strip().rsplit("\n", 1)[-1][-200:]
    said = f": {last}" if last else ""
    return InputError(ErrorCode.DECODER_CRASHED,
                      f"{name}: the decoder process died ({exit_reason(returncode)}){said}")


def isolate_decoding(tagger: VideoTagger, timeout_s: float, limits: DecoderLimits = DecoderLimits()) -> VideoTagger:
    """The same tagger, decoding each video in a child process (same frames: the same reader runs there)."""
    cfg = tagger.extractor_config
    return replace(tagger, sampler=DecoderProcess(tagger.preprocess, cfg.short_size, cfg.target_size,
                                                  tagger.max_width, tagger.max_height, timeout_s, limits))


def _log_stderr(err: bytes, name: str) -> None:
    """What the child wrote on stderr, a record per line (the worker's log format applies: it never reaches the
    worker's own stderr), at most STDERR_LINES_LOGGED of them."""
    lines = [line.rstrip() for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines[:STDERR_LINES_LOGGED]:
        log.warning("%s: decoder process said: %s", name, line)
    if len(lines) > STDERR_LINES_LOGGED:
        log.warning("%s: decoder process said %d more lines (not logged)", name, len(lines) - STDERR_LINES_LOGGED)


def _header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:
        return None
    return header if isinstance(header, dict) and "status" in header else None


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends; exit now if its parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the call above, and another process adopted this one
        sys.exit(1)


def _serve(request: dict[str, Any], stdout: IO[bytes]) -> None:
    """One request in; a JSON header line, then for "ok" the crops and order arrays, out."""
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
    except MemoryError:  # under the address-space limit: this file needs more than a decoder may have
        stdout.write(json.dumps({"status": "input_error", "code": ErrorCode.DECODER_MEMORY_LIMIT,
                                 "message": f"{request['name']}: decoding needs more memory than "
                                            "decoder_max_memory_bytes"}).encode())
        return
    except Exception as exc:  # the parent treats it like the same failure in-process
        stdout.write(json.dumps({"status": "error", "message": f"{type(exc).__name__}: {exc}"}).encode())
        return
    stdout.write(json.dumps({"status": "ok", **{key: getattr(video, key) for key in _METADATA}}).encode() + b"\n")
    np.lib.format.write_array(stdout, np.ascontiguousarray(video.crops), allow_pickle=False)
    np.lib.format.write_array(stdout, np.ascontiguousarray(video.order), allow_pickle=False)


def main() -> None:
    """The child: the request (JSON) on stdin, the reply on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, drains
    request = json.loads(sys.stdin.buffer.read())
    if _LINUX:
        die_with_parent(request["parent"])
    # Unbuffered: numpy writes an array to a real file with tofile(), which asks a buffered pipe for a file
    # position it does not have (it only worked under PYTHONUNBUFFERED, which the environment no longer passes).
    with open(sys.stdout.fileno(), "wb", buffering=0, closefd=False) as stdout:
        _serve(request, stdout)


if __name__ == "__main__":
    main()
