"""Fetching video objects from S3-compatible storage into private temporary files, and storing outputs
(published features) there.

Every failure is raised with a code of models/errors.py, by the kind of that code:
- InputError (permanent: the request goes to the DLQ): the object does not exist, cannot exist, or is too large;
- TransientError (retried, the message is not committed meanwhile). Its `outage` says whose fault it is: an
  outage is no answer (refused or dropped connections, timeouts) or an answer that holds for every request
  (throttling, 502/503/504, our credentials or clock): the worker waits and spends no request's retry budget.
  Otherwise the store answered about this object (403, a 500, a truncated body) and a retry spends the budget;
- SystemicError: the worker's machine failed the download (disk full, no file descriptors left).
S3 errors are classified by the store's error code, not its HTTP status: several transient ones are 400s or
403s. `classify_s3_error` is the whole table, and pure.

Temporary files are named `videotag-<pid>-….video`, created 0600, flock-held by the process that downloads
them until they are deleted, and deleted on every path. `sweep_temp_dir` deletes, at start, those of them that
a process killed with SIGKILL left behind: files whose owner is gone and that no process holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import boto3
import botocore.config
import botocore.exceptions

from models import cancel
from models.errors import CodedError, ErrorCode, InputError, Kind, SystemicError, os_error_code

if TYPE_CHECKING:  # boto3-stubs (the test extra): the S3 client's methods, typed
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

TEMP_PREFIX = "videotag-"
TEMP_SUFFIX = ".video"
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_PREFIX)}(\d+)-\w+{re.escape(TEMP_SUFFIX)}")

# The store's error codes, each with ours and whether it is an outage (the fault is not this object's).
_ANSWERS: dict[str, tuple[ErrorCode, bool]] = {
    **dict.fromkeys(("NoSuchKey", "NotFound", "NoSuchVersion"), (ErrorCode.NO_SUCH_KEY, False)),
    "NoSuchBucket": (ErrorCode.NO_SUCH_BUCKET, False),
    # Keys and requests the server will never accept (e.g. SeaweedFS: `..` or NUL in a key): retrying cannot help.
    **dict.fromkeys(
        (
            "InvalidBucketName",
            "KeyTooLongError",
            "InvalidObjectName",
            "InvalidObjectState",
            "InvalidRequest",
            "InvalidArgument",
            "InvalidURI",
        ),
        (ErrorCode.INVALID_REQUEST, False),
    ),
    # AWS also answers AccessDenied for a missing key when the role lacks s3:ListBucket.
    **dict.fromkeys(("AccessDenied", "AllAccessDisabled"), (ErrorCode.ACCESS_DENIED, False)),
    # 400s and 403s about our credentials or clock: every request gets the same answer until they are fixed.
    **dict.fromkeys(
        ("ExpiredToken", "TokenRefreshRequired", "InvalidToken", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
        (ErrorCode.S3_CREDENTIALS, True),
    ),
    "RequestTimeTooSkewed": (ErrorCode.S3_CLOCK_SKEW, True),
    **dict.fromkeys(
        ("SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"),
        (ErrorCode.S3_THROTTLED, True),
    ),
    # RequestTimeout (a 400): the connection went idle in transit, a network fault.
    **dict.fromkeys(("ServiceUnavailable", "RequestTimeout"), (ErrorCode.S3_UNAVAILABLE, True)),
    "InternalError": (ErrorCode.S3_SERVER_ERROR, False),
}
# For answers without a known code (a HEAD has no body; gateways answer in HTML).
_STATUSES: dict[int, tuple[ErrorCode, bool]] = {
    403: (ErrorCode.ACCESS_DENIED, False),
    404: (ErrorCode.NO_SUCH_KEY, False),
    408: (ErrorCode.S3_UNAVAILABLE, True),
    429: (ErrorCode.S3_THROTTLED, True),
    500: (ErrorCode.S3_SERVER_ERROR, False),
    **dict.fromkeys((502, 503, 504), (ErrorCode.S3_UNAVAILABLE, True)),  # the front says the store is not serving
}
_CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
)
# The store answered, then the body broke off or came short: this object's transfer, not an outage.
_TRUNCATED = (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError)


class TransientError(CodedError):
    """Worth retrying: the object or the store may recover. `outage`: the fault is not this object's (see the
    module docstring), so its retries spend no request's budget."""

    def __init__(self, code: ErrorCode | str, message: str, outage: bool, answered: bool = True) -> None:
        super().__init__(code, message)
        self.outage = outage
        self.answered = answered  # False: no answer at all (refused, timed out), whose cause the worker probes


def classify_answer(code: str, status: int) -> tuple[ErrorCode, bool]:
    """(our code, outage) for an error answer of the store: its error code first, else its HTTP status."""
    if code in _ANSWERS:
        return _ANSWERS[code]
    if status in _STATUSES:
        return _STATUSES[status]
    if status >= 500:
        return ErrorCode.S3_SERVER_ERROR, False
    return ErrorCode.S3_REJECTED, False


def classify_s3_error(exc: BaseException) -> tuple[ErrorCode, bool] | None:
    """(our code, outage) for what a call to the store raised; None for what is no fault of the store (a bug)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return classify_answer(str(error.get("Code", "")), status)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return ErrorCode.INVALID_REQUEST, False
    if isinstance(exc, _TRUNCATED):
        return ErrorCode.S3_TRUNCATED, False
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return ErrorCode.S3_CREDENTIALS, True
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        # No answer: refused, reset or closed connections, timeouts, an endpoint that does not resolve; also the
        # client's own setup failures, which every request would hit alike.
        return ErrorCode.S3_UNAVAILABLE, True
    return None


@contextlib.contextmanager
def _store_call(where: str) -> Iterator[None]:
    """Raise what a call to the store about `where` raises as our error for it (a bug as it is)."""
    try:
        yield
    except Exception as exc:
        error = _s3_error(exc, where)
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def _disk_call(where: str) -> Iterator[None]:
    """Raise a failure of this machine's file system while downloading as systemic when it ran out of
    something (disk space, file descriptors); any other as it is."""
    try:
        yield
    except OSError as exc:
        code = os_error_code(exc)
        if code is None:
            raise
        raise SystemicError(code, f"{where}: temp file: {exc.strerror}") from exc


def _s3_error(exc: Exception, where: str) -> CodedError | None:
    """Our error for `exc`, raised by a call to the store about `where`. Messages carry the store's error
    code or the exception's type, never the store's text: it may quote a request's credentials."""
    found = classify_s3_error(exc)
    if found is None:
        return None
    code, outage = found
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"{error.get('Code') or 'no error code'} (HTTP {status})"
    elif isinstance(exc, botocore.exceptions.ParamValidationError):
        detail = str(exc)[:300]
    else:
        detail = type(exc).__name__
    if code.kind is Kind.PERMANENT:
        return InputError(code, f"{where}: {detail}")
    return TransientError(
        code, f"{where}: {detail}", outage, answered=isinstance(exc, (botocore.exceptions.ClientError, *_TRUNCATED))
    )


class TempBudget:
    """Bytes that in-flight downloads may hold in the temp dir; a download waits for room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            with self._cond:
                self.used -= size
                self._cond.notify_all()


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key); the key may be empty or a prefix (`s3://bucket/features/`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: expected s3://BUCKET/...")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name")
    return bucket, key


def put_object(client: S3Client, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
    """Store `body`. A key S3 refuses is permanent for that video (InputError); anything else, a missing bucket
    included, is transient: the destination is the operator's to fix, and /readyz reports the failures."""
    try:
        with _store_call(f"s3://{bucket}/{key}"):
            client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    except InputError as exc:
        if exc.code is ErrorCode.INVALID_REQUEST:
            raise
        raise TransientError(exc.code, str(exc), outage=False) from exc


def make_client(
    endpoint_url: str | None, region: str | None, connect_timeout: float, read_timeout: float, attempts: int = 1
) -> S3Client:
    """A boto3 client with the standard credential chain. The worker's retries are its own, so botocore makes
    one attempt; a command without retries of its own (a backfill's listing) asks for botocore's `attempts`."""
    config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


@contextlib.contextmanager
def _temp_file(temp_dir: str | None, where: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A new private file named for this process and flock-held until it is deleted (see sweep_temp_dir)."""
    with _disk_call(where):
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX, dir=temp_dir)
    path = Path(name)
    out = os.fdopen(fd, "wb")
    try:
        fcntl.flock(out, fcntl.LOCK_EX)  # a file this process just created: nobody else holds it, no wait
        yield out, path
    finally:
        path.unlink(missing_ok=True)  # before the lock goes with the descriptor: no file of ours is ever unheld
        with contextlib.suppress(OSError):  # the caller flushed what it wrote; a close can only repeat its error
            out.close()


class ObjectFetcher:
    """Streams one object at a time per caller into `temp_dir` (None: the system's temp dir)."""

    def __init__(self, client: S3Client, temp_dir: str | None, max_object_bytes: int, budget: TempBudget) -> None:
        self.client = client
        self.temp_dir = temp_dir
        self.max_object_bytes = max_object_bytes
        self.budget = budget
        if temp_dir:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)

    def store_answers(self, bucket: str) -> bool:
        """Whether the store is up for others than this object: a HEAD of the bucket gets any answer but a 5xx
        (403 and 404 are answers too). Tells "this object's transfer stalls" from "the store does not answer"."""
        try:
            self.client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) < 500
        except Exception:  # no answer: connection refused, timeout
            return False
        return True

    @contextlib.contextmanager
    def fetch(self, bucket: str, key: str) -> Iterator[tuple[Path, int]]:
        """Yields (local path, size); the file is deleted when the block ends, whatever happens."""
        where = f"s3://{bucket}/{key}"
        with _store_call(where):
            response = self.client.get_object(Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength") or 0)
            limit = min(self.max_object_bytes, self.budget.limit)  # a larger one could never get room
            if size > limit:
                raise InputError(ErrorCode.OBJECT_TOO_LARGE, f"{where}: {size} bytes, the limit is {limit}")
            with self.budget.reserve(size), _temp_file(self.temp_dir, where) as (out, path):
                written = self._copy(body, out, where)
                with _disk_call(where):
                    out.flush()  # the decoder reads the file by its name
                if written != size:
                    raise TransientError(ErrorCode.S3_TRUNCATED, f"{where}: {written} of {size} bytes", outage=False)
                yield path, size
        finally:
            body.close()

    def _copy(self, body: StreamingBody, out: IO[bytes], where: str) -> int:
        written = 0
        while True:
            with _store_call(where):
                chunk = body.read(1 << 20)
            if not chunk:
                return written
            cancel.check()  # a cancelled video stops downloading (its temp file is removed on the way out)
            written += len(chunk)
            if written > self.max_object_bytes:  # a server that lied about the length
                raise InputError(ErrorCode.OBJECT_TOO_LARGE, f"{where}: more than {self.max_object_bytes} bytes")
            with _disk_call(where):
                out.write(chunk)


def sweep_temp_dir(temp_dir: str | Path | None) -> int:
    """Delete the temporary files that dead processes left in `temp_dir` (None: the system's temp dir, as
    ObjectFetcher); returns how many. Call it at start, before the first fetch.

    A file is deleted only when its name is ours, it is a regular file of this user, and it is not held: its
    owner (the pid in its name) is not alive, or is this process (a restarted container reuses its pid), and no
    process holds its flock (which also covers an owner in another pid namespace sharing the directory).
    """
    directory = Path(temp_dir or tempfile.gettempdir())
    try:
        names = [entry.name for entry in os.scandir(directory)]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        match = _TEMP_NAME.fullmatch(name)
        if match is None:
            continue
        owner = int(match.group(1))
        if owner != os.getpid() and _alive(owner):
            continue  # includes a live owner between creating its file and locking it
        if _remove_if_unheld(directory / name):
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_if_unheld(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, a symbolic link, or not ours to read
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its owner is alive and holds it
            return False
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
