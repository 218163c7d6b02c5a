"""S3 error classification (by error code, and outage or object fault), the temp files and their sweep, and the
temp-dir budget (the real S3 server is exercised by integration tests)."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import botocore.exceptions
import pytest

from models.errors import ErrorCode, InputError, Kind, SystemicError
from worker import storage
from worker.storage import (
    ObjectFetcher,
    TempBudget,
    TransientError,
    classify_answer,
    classify_s3_error,
    sweep_temp_dir,
)


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


class FakeClient:
    def __init__(self, body: bytes = b"", length: int | None = None, error: Exception | None = None):
        self.body, self.length, self.error = body, length, error

    def get_object(self, Bucket, Key):
        if self.error:
            raise self.error
        return {"Body": io.BytesIO(self.body), "ContentLength": len(self.body) if self.length is None else self.length}


class BrokenBody(io.BytesIO):
    """A body that raises `error` once `after` bytes were read."""

    def __init__(self, data: bytes, after: int, error: Exception) -> None:
        super().__init__(data)
        self.after, self.error = after, error

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= self.after:
            raise self.error
        return super().read(min(size, self.after - self.tell()))


OBJECT, OUTAGE = False, True


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, (ErrorCode.NO_SUCH_KEY, OBJECT)),
        ("NoSuchBucket", 404, (ErrorCode.NO_SUCH_BUCKET, OBJECT)),
        ("", 404, (ErrorCode.NO_SUCH_KEY, OBJECT)),  # a HEAD: no body, no code
        ("InvalidObjectName", 400, (ErrorCode.INVALID_REQUEST, OBJECT)),
        ("KeyTooLongError", 400, (ErrorCode.INVALID_REQUEST, OBJECT)),
        ("InvalidBucketName", 400, (ErrorCode.INVALID_REQUEST, OBJECT)),
        ("AccessDenied", 403, (ErrorCode.ACCESS_DENIED, OBJECT)),
        ("", 403, (ErrorCode.ACCESS_DENIED, OBJECT)),
        # Transient whatever the status: a 400 and three 403s among them.
        ("RequestTimeout", 400, (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        ("ExpiredToken", 400, (ErrorCode.S3_CREDENTIALS, OUTAGE)),
        ("InvalidAccessKeyId", 403, (ErrorCode.S3_CREDENTIALS, OUTAGE)),
        ("SignatureDoesNotMatch", 403, (ErrorCode.S3_CREDENTIALS, OUTAGE)),
        ("RequestTimeTooSkewed", 403, (ErrorCode.S3_CLOCK_SKEW, OUTAGE)),
        ("SlowDown", 503, (ErrorCode.S3_THROTTLED, OUTAGE)),
        ("", 429, (ErrorCode.S3_THROTTLED, OUTAGE)),
        ("", 408, (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        ("ServiceUnavailable", 503, (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        ("", 502, (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        ("InternalError", 500, (ErrorCode.S3_SERVER_ERROR, OBJECT)),
        ("", 501, (ErrorCode.S3_SERVER_ERROR, OBJECT)),
        ("SomethingNew", 409, (ErrorCode.S3_REJECTED, OBJECT)),
    ],
)
def test_answers_are_classified_by_error_code_then_status(code: str, status: int, expected: tuple) -> None:
    assert classify_answer(code, status) == expected
    assert classify_s3_error(_client_error(code, status)) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        (ConnectionResetError(errno.ECONNRESET, "reset"), (ErrorCode.S3_UNAVAILABLE, OUTAGE)),
        (botocore.exceptions.NoCredentialsError(), (ErrorCode.S3_CREDENTIALS, OUTAGE)),
        (
            botocore.exceptions.ResponseStreamingError(error="IncompleteRead(5 bytes read)"),
            (ErrorCode.S3_TRUNCATED, OBJECT),
        ),
        (botocore.exceptions.IncompleteReadError(actual_bytes=5, expected_bytes=10), (ErrorCode.S3_TRUNCATED, OBJECT)),
        (botocore.exceptions.ParamValidationError(report="Invalid bucket name"), (ErrorCode.INVALID_REQUEST, OBJECT)),
        (ZeroDivisionError("a bug"), None),
    ],
)
def test_failures_without_an_answer_are_outages_and_a_broken_body_is_the_object(
    error: Exception, expected: tuple | None
) -> None:
    assert classify_s3_error(error) == expected


@pytest.mark.parametrize(
    ("error", "kind", "code", "outage"),
    [
        (_client_error("NoSuchKey", 404), InputError, "no_such_key", None),
        (_client_error("AccessDenied", 403), TransientError, "access_denied", OBJECT),
        (_client_error("InternalError", 500), TransientError, "s3_server_error", OBJECT),
        (_client_error("SlowDown", 503), TransientError, "s3_throttled", OUTAGE),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
            TransientError,
            "s3_unavailable",
            OUTAGE,
        ),
    ],
)
def test_fetch_raises_by_the_kind_of_the_code(
    tmp_path: Path, error: Exception, kind: type, code: str, outage: bool | None
) -> None:
    fetcher = ObjectFetcher(FakeClient(error=error), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(kind) as info, fetcher.fetch("b", "k"):
        pass
    assert info.value.code == code and "s3://b/k" in info.value.message
    assert info.value.code.kind is (Kind.PERMANENT if kind is InputError else Kind.TRANSIENT)
    if outage is not None:
        assert info.value.outage is outage


def test_a_body_that_breaks_off_is_a_truncated_object(tmp_path: Path) -> None:
    body = BrokenBody(b"x" * 50, 20, botocore.exceptions.ResponseStreamingError(error="IncompleteRead"))

    class Client(FakeClient):
        def get_object(self, Bucket, Key):
            return {"Body": body, "ContentLength": 50}

    with (
        pytest.raises(TransientError) as info,
        ObjectFetcher(Client(), str(tmp_path), 100, TempBudget(1000)).fetch("b", "k"),
    ):
        pass
    assert (info.value.code, info.value.outage) == (ErrorCode.S3_TRUNCATED, OBJECT)
    assert list(tmp_path.iterdir()) == []


def test_file_is_private_named_for_this_process_and_removed_on_every_path(tmp_path: Path) -> None:
    fetcher = ObjectFetcher(FakeClient(b"x" * 50), str(tmp_path), 100, TempBudget(1000))
    with fetcher.fetch("b", "k") as (path, size):
        assert size == 50 and path.read_bytes() == b"x" * 50
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.name.startswith(f"videotag-{os.getpid()}-") and path.name.endswith(".video")
        assert sweep_temp_dir(tmp_path) == 0 and path.exists()  # held by this (live) process
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), fetcher.fetch("b", "k"):
        raise RuntimeError("decoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_objects_above_the_limit_and_lying_lengths(tmp_path: Path) -> None:
    too_big = ObjectFetcher(FakeClient(b"x" * 101), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(InputError) as info, too_big.fetch("b", "k"):
        pass
    assert info.value.code == "object_too_large"
    liar = ObjectFetcher(FakeClient(b"x" * 150, length=10), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(InputError), liar.fetch("b", "k"):
        pass
    short = ObjectFetcher(FakeClient(b"x" * 5, length=10), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(TransientError) as info, short.fetch("b", "k"):
        pass
    assert (info.value.code, info.value.outage) == (ErrorCode.S3_TRUNCATED, OBJECT)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [100, 3 << 20])  # flushed at the end; written through the buffer
def test_a_full_disk_is_systemic_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    name = tmp_path / f"videotag-{os.getpid()}-full.video"

    def full_disk(**_: object) -> tuple[int, str]:
        name.touch()
        return os.open("/dev/full", os.O_WRONLY), str(name)  # every write: ENOSPC

    monkeypatch.setattr(storage.tempfile, "mkstemp", full_disk)
    fetcher = ObjectFetcher(FakeClient(b"x" * size), str(tmp_path), 1 << 30, TempBudget(1 << 30))
    with pytest.raises(SystemicError) as info, fetcher.fetch("b", "k"):
        pass
    assert info.value.code == ErrorCode.DISK_FULL and info.value.code.kind is Kind.SYSTEMIC
    assert "s3://b/k" in info.value.message and not name.exists()


def test_no_file_descriptor_left_is_systemic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptors(**_: object) -> tuple[int, str]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(storage.tempfile, "mkstemp", no_descriptors)
    with (
        pytest.raises(SystemicError) as info,
        ObjectFetcher(FakeClient(b"x"), str(tmp_path), 100, TempBudget(100)).fetch("b", "k"),
    ):
        pass
    assert info.value.code == ErrorCode.OUT_OF_FILE_DESCRIPTORS


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


HOLDER = """
import fcntl, os, sys, time
path = os.path.join(sys.argv[1], f"videotag-{os.getpid()}-held.video")
f = open(path, "wb")
fcntl.flock(f, fcntl.LOCK_EX)
print(path, flush=True)
time.sleep(600)
"""


def test_sweep_removes_only_leftovers_that_no_live_process_holds(tmp_path: Path) -> None:
    dead = _dead_pid()
    leftovers = [tmp_path / f"videotag-{dead}-abc_123.video", tmp_path / f"videotag-{os.getpid()}-old.video"]
    for path in leftovers:
        path.write_bytes(b"left behind")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        held = Path(holder.stdout.readline().strip())
        held_by_us = tmp_path / f"videotag-{dead}-locked.video"  # owner "dead" here, the flock says otherwise
        lock = held_by_us.open("wb")
        fcntl.flock(lock, fcntl.LOCK_EX)
        alive_unheld = tmp_path / "videotag-1-fresh.video"  # pid 1 lives: maybe between creating and locking
        alive_unheld.write_bytes(b"")
        others = [tmp_path / "videotag-models", tmp_path / "other.video", tmp_path / f"videotag-{dead}-x.txt"]
        for path in others:
            path.write_bytes(b"not ours")
        (tmp_path / f"videotag-{dead}-link.video").symlink_to(others[1])
        (tmp_path / f"videotag-{dead}-dir.video").mkdir()

        assert sweep_temp_dir(tmp_path) == 2
        assert not any(path.exists() for path in leftovers)
        assert held.exists() and held_by_us.exists() and alive_unheld.exists() and all(p.exists() for p in others)
        assert (tmp_path / f"videotag-{dead}-link.video").is_symlink()
        lock.close()
    finally:
        holder.kill()
        holder.wait()
    assert sweep_temp_dir(tmp_path) == 2  # the holder is gone, and so is our lock: both its file and ours go
    assert not held.exists() and not held_by_us.exists()
    assert sweep_temp_dir(tmp_path / "missing") == 0


KILLED_MID_FETCH = """
import io, sys, time
from worker.storage import ObjectFetcher, TempBudget

class Client:
    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(b"v" * 1000), "ContentLength": 1000}

with ObjectFetcher(Client(), sys.argv[1], 10_000, TempBudget(10_000)).fetch("b", "k") as (path, size):
    print(path, flush=True)
    time.sleep(600)
"""


def test_the_file_of_a_worker_killed_mid_video_is_swept(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_FETCH, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        path = Path(worker.stdout.readline().strip())
        assert path.stat().st_size == 1000
        assert sweep_temp_dir(tmp_path) == 0  # while it works on it
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert path.exists()  # SIGKILL: no finally ran
    assert sweep_temp_dir(tmp_path) == 1 and list(tmp_path.iterdir()) == []


def test_budget_makes_downloads_wait_for_room() -> None:
    budget = TempBudget(100)
    entered = threading.Event()

    def second():
        with budget.reserve(60):
            entered.set()

    with budget.reserve(60):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        assert not entered.is_set()
    thread.join(5)
    assert entered.is_set() and budget.used == 0
