"""Decoding in a child process, one per video (`python -m models.decoder_process`).

A decoder that crashes (a native fault in FFmpeg on a crafted upload) or hangs then costs that one video,
with a stable error code, instead of the worker and everything it has in flight; and the decoding runs
outside the caller's GIL, which Paddle Inference holds through every extractor run (docs/performance.md).
A fresh interpreter that imports only the decoding modules starts in ~0.15 s.

The reply streams (`DecoderProcess.stream`): the child sends the sampled crops in chunks of `chunk_size` as it
decodes them, so that the caller extracts features from the first chunk while the rest of the video decodes
(models/sampling.py `stream_video`). Each message is a JSON line; a `chunk` line (`ordinals`, `shape`) is
followed by exactly that many raw uint8 bytes, whose shape the parent checks against the crop size it asked
for; the last line is `ok` (metadata, the picked `frames` and their `order`) or an error. Nothing is
unpickled, and every field is checked: a child subverted by a hostile file cannot run code in the parent,
and garbage on the pipe is `decoder_crashed`. A thread of the parent reads the pipe as the child writes it
(the child never waits on the caller's extraction); `timeout_s` bounds the child's decoding, not the
extraction that overlaps it.

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
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from models import cancel
from models.config import TSN_FILE, config_default
from models.errors import CodedError, ErrorCode, InputError, NeedsFallback, SystemicError, os_error_code
from models.preprocess import make_transform
from models.sampling import FrameChunk, FrameStream, SampledVideo, Sampling, collect

log = logging.getLogger(__name__)
COMMAND = (sys.executable, "-P", "-m", "models.decoder_process")
# Lines of a decoder's stderr logged per video (in the video's log context): its libraries log fatal messages only,
# but a hostile file must not flood the worker's log.
STDERR_LINES_LOGGED = 20
_METADATA = ("frames_decoded", "frames_reported", "width", "height", "fps", "decoder")
# What the parent keeps of a decoder's stderr: the start (logged) and the end (quoted when it crashes).
STDERR_HEAD_BYTES = 64 * 1024
STDERR_TAIL_BYTES = 4096
_POLL_S = 0.25  # how often a caller waiting for a chunk checks its deadline and whether it was cancelled
DECODERS = ("opencv", "pyav")
_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# What the child keeps of the worker's environment: an interpreter and the decoding libraries need no more.
_ENV_KEPT = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH"}
)
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

    chunk_size: int = config_default(TSN_FILE, "batch_size")  # crops per chunk of the stream: the tagger's batch size

    def __call__(self, path: str | Path, seg_num: int, name: str | None = None) -> SampledVideo:
        return collect(self.stream(path, seg_num, name))

    def stream(self, path: str | Path, seg_num: int, name: str | None = None) -> FrameStream:
        """The video's sampled crops in chunks as the child decodes them; returns the Sampling at the end.
        Closing the stream early (the caller failed) kills the child."""
        name = name or Path(path).name
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        for decoder in self.decoders[:-1]:
            try:
                return (yield from self._run(decoder, path, seg_num, name, deadline))
            except NeedsFallback:  # only before any chunk (_run refuses it after one)
                continue
        return (yield from self._run(self.decoders[-1], path, seg_num, name, deadline))

    def request(self, decoder: str, path: str | Path, seg_num: int, name: str) -> dict[str, Any]:
        """What a child reading with `decoder` is asked (JSON on its stdin; `_serve` answers it)."""
        return {
            "path": str(path),
            "seg_num": seg_num,
            "preprocess": self.preprocess,
            "name": name,
            "short_size": self.short_size,
            "crop_size": self.crop_size,
            "max_width": self.max_width,
            "max_height": self.max_height,
            "decoder": decoder,
            "chunk_size": self.chunk_size,
            "parent": os.getpid(),
        }

    def _run(self, decoder: str, path: str | Path, seg_num: int, name: str, deadline: float | None) -> FrameStream:
        request = self.request(decoder, path, seg_num, name)
        try:
            # stderr is read, not inherited: the file-size limit would fail its writes to a log file.
            child = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_environment(os.environ),
            )
        except OSError as exc:
            code = os_error_code(exc)
            if code is None:
                raise
            raise SystemicError(code, f"{name}: cannot start a decoder process: {exc.strerror}") from exc
        cancel.register(child)  # a cancelled video (deadline, revoked partition, stop) kills its decoder now
        reply = _Reply(child, self.crop_size, min(self.chunk_size, seg_num), seg_num)
        try:
            if _LINUX:
                _confine(child.pid, self.limits)
            _send(child, request)
            sent: set[int] = set()
            while True:
                message = reply.next(deadline, name, self.timeout_s)
                if not isinstance(message, FrameChunk):
                    break
                if sent.intersection(message.ordinals) or len(sent) + len(message.ordinals) > 2 * seg_num:
                    raise _invalid(name, "a frame sent twice, or more frames than sampled")
                sent.update(message.ordinals)
                yield message
            returncode = reply.wait_exit(deadline, name, self.timeout_s)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            err = reply.stderr()
        cancel.check()
        _log_stderr(err, name)
        if returncode != 0 or message is None:
            raise decoder_death(returncode, err, name, self.limits)
        if message["status"] == "input_error":
            raise InputError(message["code"], message["message"])
        if message["status"] == "fallback":
            if sent:
                raise _invalid(name, "a fallback after frames were sent")
            raise NeedsFallback(message["message"])
        if message["status"] != "ok":
            raise RuntimeError(f"decoding {name}: {message.get('message')}")
        return _sampling(message, sent, seg_num, name)


def _send(child: subprocess.Popen[bytes], request: dict[str, Any]) -> None:
    """The request on the child's stdin, which is then closed. A child that is gone already (or never reads
    it) leaves its exit status and its reply to say what happened."""
    assert child.stdin is not None
    try:
        child.stdin.write(json.dumps(request).encode())
        child.stdin.close()
    except BrokenPipeError:
        pass


def _invalid(name: str, why: str) -> InputError:
    return InputError(ErrorCode.DECODER_CRASHED, f"{name}: the decoder process sent an invalid reply ({why})")


def _sampling(header: dict[str, Any], sent: set[int], seg_num: int, name: str) -> Sampling:
    """The `ok` header as a Sampling, every field checked against what was sent and asked for."""
    frames, order = header.get("frames"), header.get("order")
    if not (
        isinstance(frames, list)
        and isinstance(order, list)
        and len(order) == seg_num
        and frames == sorted(set(frames))
        and set(frames) <= sent
        and all(type(i) is int and 0 <= i < len(frames) for i in order)
    ):
        raise _invalid(name, "the sampled frames do not match the frames sent")
    try:
        metadata = {key: header[key] for key in _METADATA}
    except KeyError as exc:
        raise _invalid(name, f"no {exc.args[0]}") from None
    return Sampling(tuple(frames), np.array(order, dtype=np.int64), **metadata)


class _Reply:
    """A decoder child's stdout and stderr, each read by a thread as the child writes them (the child never
    blocks on a full pipe while its caller extracts features). Messages are queued: each chunk as a
    FrameChunk, then the final header (a dict), or None for an end without one; garbage as why it is (a str)."""

    def __init__(self, child: subprocess.Popen[bytes], crop_size: int, chunk_size: int, seg_num: int) -> None:
        self.child = child
        self.crop_size = crop_size
        self.chunk_size = chunk_size
        self.max_line = 65536 + 32 * seg_num  # the final header lists up to 2 × seg_num numbers
        self.messages: queue.Queue[FrameChunk | dict[str, Any] | str | None] = queue.Queue()
        self.ended = threading.Event()  # the child's reply is complete (or broken): its decoding is over
        self._head = bytearray()
        self._tail = b""
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"decoder-{child.pid}-out", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"decoder-{child.pid}-err", daemon=True),
        ]
        for thread in self._readers:
            thread.start()

    def next(self, deadline: float | None, name: str, timeout_s: float | None) -> FrameChunk | dict[str, Any] | None:
        """The next message; DECODE_TIMEOUT once the deadline passes before the child has finished."""
        while True:
            if deadline is not None and not self.ended.is_set() and time.monotonic() >= deadline:
                raise InputError(ErrorCode.DECODE_TIMEOUT, f"{name}: decoding took over {timeout_s:g} s")
            try:
                message = self.messages.get(timeout=_POLL_S)
            except queue.Empty:
                cancel.check()
                continue
            if isinstance(message, str):
                raise _invalid(name, message)
            return message

    def wait_exit(self, deadline: float | None, name: str, timeout_s: float | None) -> int:
        """The child's exit status, waiting for it at most until the deadline."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            raise InputError(ErrorCode.DECODE_TIMEOUT, f"{name}: decoding took over {timeout_s:g} s") from None

    def stderr(self) -> bytes:
        """What the child said on stderr (the start and the end of it), once it is dead."""
        for thread in self._readers:
            thread.join(timeout=5)
        return bytes(self._head) + self._tail

    def _read_stdout(self) -> None:
        stdout = self.child.stdout
        assert stdout is not None
        try:
            while True:
                line = stdout.readline(self.max_line)
                if not line.endswith(b"\n"):  # the end (a child that died, maybe mid-line), or a line too long
                    self.messages.put("a line too long" if len(line) >= self.max_line else None)
                    return
                header = _header(line)
                if header is None:
                    self.messages.put("not a JSON header")
                    return
                if header["status"] != "chunk":
                    self.messages.put(header)
                    return
                ordinals = header.get("ordinals")
                if not isinstance(ordinals, list) or not all(type(i) is int and i >= 0 for i in ordinals):
                    self.messages.put("a chunk without its frame ordinals")
                    return
                shape = [len(ordinals), self.crop_size, self.crop_size, 3]
                if header.get("shape") != shape or not 0 < len(ordinals) <= self.chunk_size:
                    self.messages.put(f"a chunk of shape {header.get('shape')!r}, not {shape}")
                    return
                size = int(np.prod(shape))
                data = stdout.read(size)
                if len(data) < size:  # cut short: the child died
                    self.messages.put(None)
                    return
                crops = np.frombuffer(data, np.uint8).reshape(shape)
                self.messages.put(FrameChunk(tuple(ordinals), crops))
        finally:
            self.ended.set()

    def _read_stderr(self) -> None:
        # Popen's pipes are buffered (bufsize -1): a BufferedReader, whose read1 returns what has arrived
        stderr = cast(io.BufferedReader, self.child.stderr)
        while data := stderr.read1(65536):
            room = STDERR_HEAD_BYTES - len(self._head)
            self._head += data[:room]
            if len(data) > room:
                self._tail = (self._tail + data[room:])[-STDERR_TAIL_BYTES:]


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
        return SystemicError(
            ErrorCode.DECODER_KILLED,
            f"{name}: the decoder process was killed (SIGKILL) by the kernel's OOM killer or an operator",
        )
    last = stderr.decode("utf-8", "replace").strip().rsplit("\n", 1)[-1][-200:]
    said = f": {last}" if last else ""
    return InputError(ErrorCode.DECODER_CRASHED, f"{name}: the decoder process died ({exit_reason(returncode)}){said}")


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
    """One request in; a `chunk` message per chunk of crops as they are decoded, then the final header, out."""
    # Imported here, only the one asked for: a process never loads both libraries (see the module docstring).
    if request["decoder"] == "pyav":
        from models.video_av import stream_video

        preprocess = "faithful"
    else:
        from models.video import stream_video

        preprocess = request["preprocess"]
    try:
        transform = make_transform(preprocess, request["short_size"], request["crop_size"])
        stream = stream_video(
            request["path"],
            request["seg_num"],
            transform,
            request["max_width"],
            request["max_height"],
            name=request["name"],
            chunk_size=request["chunk_size"],
        )
        while True:
            try:
                chunk = next(stream)
            except StopIteration as end:
                sampling: Sampling = end.value
                break
            crops = np.ascontiguousarray(chunk.crops, dtype=np.uint8)
            _write(
                stdout,
                json.dumps({"status": "chunk", "ordinals": list(chunk.ordinals), "shape": list(crops.shape)}).encode()
                + b"\n",
            )
            # numpy's stubs declare the buffer protocol only for Python 3.12+
            _write(stdout, memoryview(crops).cast("B"))  # type: ignore[arg-type]
    except InputError as exc:
        _write(stdout, json.dumps({"status": "input_error", "code": exc.code, "message": exc.message}).encode() + b"\n")
        return
    except NeedsFallback as exc:
        _write(stdout, json.dumps({"status": "fallback", "message": str(exc)}).encode() + b"\n")
        return
    except MemoryError:  # under the address-space limit: this file needs more than a decoder may have
        _write(
            stdout,
            json.dumps(
                {
                    "status": "input_error",
                    "code": ErrorCode.DECODER_MEMORY_LIMIT,
                    "message": f"{request['name']}: decoding needs more memory than decoder_max_memory_bytes",
                }
            ).encode()
            + b"\n",
        )
        return
    except Exception as exc:  # the parent treats it like the same failure in-process
        _write(stdout, json.dumps({"status": "error", "message": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        return
    end_header = {
        "status": "ok",
        **{key: getattr(sampling, key) for key in _METADATA},
        "frames": list(sampling.frames),
        "order": sampling.order.tolist(),
    }
    _write(stdout, json.dumps(end_header).encode() + b"\n")


def _write(stdout: IO[bytes], data: bytes | memoryview) -> None:
    """All of `data` (an unbuffered write to a pipe may take only part of it)."""
    view = memoryview(data)
    while view:
        written = stdout.write(view)
        view = view[written or 0 :]


def main() -> None:
    """The child: the request (JSON) on stdin, the reply on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides, drains
    request = json.loads(sys.stdin.buffer.read())
    if _LINUX:
        die_with_parent(request["parent"])
    # Unbuffered: each chunk reaches the parent as soon as it is written.
    with open(sys.stdout.fileno(), "wb", buffering=0, closefd=False) as stdout:
        _serve(request, stdout)


if __name__ == "__main__":
    main()
