"""Logging set-up: `log_format: text` (the default: one human line per record) or `json` (one JSON object per line).

In json mode every line the process writes to stderr is one JSON object with `time` (ISO 8601, UTC), `level`,
`logger`, `message`, `exc_info` (the traceback, as a string) when there is one, and the context fields
(`video_id`, `trace_id`, `topic`, `partition`, `offset`) of the video being processed when they are known:
- the context is a contextvar set per video (`context()`), in the thread that processes it;
- Python warnings go through logging (`py.warnings`), as do uncaught exceptions (`sys.excepthook`, threads);
- what native code writes to file descriptor 2 itself (Paddle's glog, FFmpeg, oneDNN), bypassing Python, is
  caught at the descriptor: fd 2 becomes a pipe, read by a thread that logs each line as a record of logger
  `native` (its level taken from a glog prefix where there is one), and the records go to the original stderr;
- a child process that inherits fd 2 writes into the same pipe; the decoders' stderr is a pipe of its own, read
  by the worker (models/decoder_process.py) and logged line by line in the video's context.
Text mode is the format the CLI always had, and captures nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Literal, get_args

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("video_id", "trace_id", "topic", "partition", "offset")
NATIVE_LOGGER = "native"
# glog: "I1207 10:00:00.123456  1234 file.cc:42] message" (severity letter, month, day)
_GLOG = re.compile(r"^([IWEF])\d{4} ")
_GLOG_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_NATIVE_LINE_MAX = 16 * 1024  # a line longer than this (no newline in sight) is logged in pieces

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("videotag_log_context", default=None)
_handler: logging.Handler | None = None  # the one this module installed on the root logger
_native: _NativeCapture | None = None


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Records logged inside (in this thread or context) carry `fields` (those that are not None)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        entry |= _context.get() or {}
        for name in CONTEXT_FIELDS:  # `extra={...}` on a call names a video outside its thread
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str | int = "INFO", log_format: str = "text", capture_native: bool = True) -> None:
    """(Re)configure the root logger. json: also warnings, uncaught exceptions and, with `capture_native`, file
    descriptor 2 (once per process: it stays captured). text: the format the CLI always had."""
    global _handler
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {list(FORMATS)}, not {log_format!r}")
    root = logging.getLogger()
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if _handler is not None:
        root.removeHandler(_handler)
    elif root.handlers:  # configured by its host (pytest calling main()): like logging.basicConfig, leave it be
        return
    if log_format == "json":
        if capture_native:
            _capture_native()
        _handler = logging.StreamHandler(_stderr())
        _handler.setFormatter(JsonFormatter())
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        _handler = logging.StreamHandler(_stderr())
        _handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(_handler)


def _stderr() -> IO[str]:
    """Where records go: the process's stderr, or the original descriptor once fd 2 is captured."""
    return _native.stderr if _native is not None else sys.stderr


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("uncaught").critical("uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("uncaught").critical(
        "uncaught %s in thread %s: %s",
        args.exc_type.__name__,
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def native_level(line: str) -> int:
    """The level of a line native code wrote: glog's severity letter, else WARNING (libraries write to stderr
    what they want someone to see)."""
    found = _GLOG.match(line)
    return _GLOG_LEVELS[found.group(1)] if found else logging.WARNING


class _NativeCapture:
    """File descriptor 2 redirected into a pipe; a daemon thread logs each line that arrives through it.
    `stderr` is a stream on the original descriptor, where the handler writes."""

    def __init__(self) -> None:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.stderr: IO[str] = open(  # noqa: SIM115
            original, "w", buffering=1, encoding="utf-8", errors="replace", closefd=True
        )
        self._reader = open(read_end, "rb", buffering=0, closefd=True)  # noqa: SIM115
        self._logger = logging.getLogger(NATIVE_LOGGER)
        threading.Thread(target=self._pump, name="native-stderr", daemon=True).start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = self._reader.read(65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending or len(pending) > _NATIVE_LINE_MAX:
                line, sep, rest = pending.partition(b"\n")
                if not sep:
                    line, rest = pending[:_NATIVE_LINE_MAX], pending[_NATIVE_LINE_MAX:]
                pending = rest
                text = line.decode("utf-8", "replace").rstrip("\r")
                if text.strip():
                    self._logger.log(native_level(text), "%s", text)


def _capture_native() -> None:
    global _native
    if _native is None:
        _native = _NativeCapture()
