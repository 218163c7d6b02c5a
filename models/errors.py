"""The service's one error vocabulary: every code it emits (in dead letters, `videotag tag` output and the
`videotag_failures_total{reason}` metric) is an `ErrorCode`, and each code has one `Kind`.

Invariants:
- A code is a `StrEnum` member: on the wire and in metrics it is the plain string it always was, and it
  compares equal to that string.
- Each code's kind says what a failure with it means, never where it was raised: permanent (the input is bad:
  dead-letter it), transient (a passing fault of the object or of a dependency: retry it), systemic (the worker
  or its machine may be unwell, whatever the input). docs/messages.md lists every code with its kind, and a
  test holds the two in step.
- This module imports nothing heavy: the decoder child, `models/` and `worker/` all import it.

`ConfigError` is the one type of configuration problem: a setting, or a file the configuration names (weights,
labels, a settings or hyper-parameter YAML), that cannot work. It is refused before any work, never retried and
never a video's fault: every command prints it as one line and exits 2 (worker/cli.py). Its subclasses
(SettingsError, WeightsError, LabelsError, EngineOptionsError, ...) only say which part of the configuration.

`NeedsFallback` is no error of the input: it says that OpenCV cannot read a file that the PyAV reader (which
runs in a process of its own, models/decoder_process.py) should try.
"""

from __future__ import annotations

import errno
from enum import StrEnum


class Kind(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    SYSTEMIC = "systemic"


class ErrorCode(StrEnum):
    """A stable machine-readable error code, declared with its kind."""

    kind: Kind

    def __new__(cls, value: str, kind: Kind) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        return member

    # The message (worker/messages.py)
    INVALID_JSON = "invalid_json", Kind.PERMANENT
    SCHEMA_VIOLATION = "schema_violation", Kind.PERMANENT
    MESSAGE_TOO_LARGE = "message_too_large", Kind.PERMANENT
    TOO_MANY_RECORDS = "too_many_records", Kind.PERMANENT
    BUCKET_NOT_ALLOWED = "bucket_not_allowed", Kind.PERMANENT
    # The object store (worker/storage.py)
    INVALID_REQUEST = "invalid_request", Kind.PERMANENT
    NO_SUCH_BUCKET = "no_such_bucket", Kind.PERMANENT
    NO_SUCH_KEY = "no_such_key", Kind.PERMANENT
    OBJECT_TOO_LARGE = "object_too_large", Kind.PERMANENT
    ACCESS_DENIED = "access_denied", Kind.TRANSIENT
    S3_UNAVAILABLE = "s3_unavailable", Kind.TRANSIENT
    S3_THROTTLED = "s3_throttled", Kind.TRANSIENT
    S3_CREDENTIALS = "s3_credentials", Kind.TRANSIENT
    S3_CLOCK_SKEW = "s3_clock_skew", Kind.TRANSIENT
    S3_SERVER_ERROR = "s3_server_error", Kind.TRANSIENT
    S3_REJECTED = "s3_rejected", Kind.TRANSIENT
    S3_TRUNCATED = "s3_truncated", Kind.TRANSIENT
    # The video file (models/sampling.py, models/video.py, models/video_av.py)
    NOT_FOUND = "not_found", Kind.PERMANENT
    EMPTY_FILE = "empty_file", Kind.PERMANENT
    NOT_A_VIDEO = "not_a_video", Kind.PERMANENT
    CORRUPT_VIDEO = "corrupt_video", Kind.PERMANENT
    NO_VIDEO_STREAM = "no_video_stream", Kind.PERMANENT
    NO_FRAMES = "no_frames", Kind.PERMANENT
    RESOLUTION_TOO_LARGE = "resolution_too_large", Kind.PERMANENT
    # The decoder process (models/decoder_process.py)
    DECODE_TIMEOUT = "decode_timeout", Kind.PERMANENT
    DECODER_MEMORY_LIMIT = "decoder_memory_limit", Kind.PERMANENT
    DECODER_CPU_LIMIT = "decoder_cpu_limit", Kind.PERMANENT
    DECODER_CRASHED = "decoder_crashed", Kind.SYSTEMIC
    DECODER_KILLED = "decoder_killed", Kind.SYSTEMIC
    # The model process (worker/model_process.py)
    MODEL_PROCESS_DIED = "model_process_died", Kind.SYSTEMIC
    # The worker (worker/worker.py)
    VIDEO_TIMEOUT = "video_timeout", Kind.PERMANENT
    RETRIES_EXHAUSTED = "retries_exhausted", Kind.PERMANENT
    WORKER_CRASHED = "worker_crashed", Kind.PERMANENT
    SKIPPED_BY_OPERATOR = "skipped_by_operator", Kind.PERMANENT
    PUBLISH_FAILED = "publish_failed", Kind.TRANSIENT
    TRANSACTION_FAILED = "transaction_failed", Kind.TRANSIENT
    PRODUCER_REPLACED = "producer_replaced", Kind.TRANSIENT
    INTERNAL_ERROR = "internal_error", Kind.SYSTEMIC
    # The machine (any module: os_error_code)
    DISK_FULL = "disk_full", Kind.SYSTEMIC
    OUT_OF_FILE_DESCRIPTORS = "out_of_file_descriptors", Kind.SYSTEMIC
    OUT_OF_MEMORY = "out_of_memory", Kind.SYSTEMIC


class CodedError(Exception):
    """An error with a stable code and a message for people. The code is checked against the vocabulary when
    the error is made: text from a child process's reply or an older caller becomes its `ErrorCode`, and text
    that is no code fails here rather than on the wire."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        # A lookup by value (EnumMeta.__call__), which mypy checks against the members' __new__(value, kind).
        self.code = ErrorCode(code)  # type: ignore[call-arg]
        self.message = message
        super().__init__(f"{self.code}: {message}")

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class InputError(CodedError):
    """This input cannot be tagged, whatever is retried: report it and move on to the next one."""


class SystemicError(CodedError):
    """The worker or its machine is unwell (a full disk, no file descriptors left, a decoder killed under
    memory pressure): not the input's fault, so it must not be dead-lettered as bad input."""


class ConfigError(Exception):
    """The configuration cannot work (see the module docstring): one line for people, exit status 2."""


class NeedsFallback(Exception):
    """OpenCV cannot read this file (it does not open, its codec has no decoder in the OpenCV wheel, or no
    frame decodes): the PyAV reader decides what it is."""


_OS_ERRNO_CODES = {
    errno.ENOSPC: ErrorCode.DISK_FULL,  # also what a file system out of inodes says
    errno.EDQUOT: ErrorCode.DISK_FULL,
    errno.EMFILE: ErrorCode.OUT_OF_FILE_DESCRIPTORS,
    errno.ENFILE: ErrorCode.OUT_OF_FILE_DESCRIPTORS,
    errno.ENOMEM: ErrorCode.OUT_OF_MEMORY,
}


def os_error_code(exc: OSError) -> ErrorCode | None:
    """The systemic code of an OS error that says the machine ran out of something, else None."""
    return _OS_ERRNO_CODES.get(exc.errno) if exc.errno is not None else None
