"""Fetching video objects from S3-compatible storage into private temporary files, and storing outputs
(published features) there.

Errors are sorted into permanent ones (InputError: the request goes to the DLQ) and transient ones
(TransientError: retried, the message is not committed meanwhile), the same way for reads and writes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from models import cancel
from models.errors import InputError

NO_SUCH_KEY = "no_such_key"
NO_SUCH_BUCKET = "no_such_bucket"
OBJECT_TOO_LARGE = "object_too_large"
INVALID_REQUEST = "invalid_request"
_PERMANENT = {
    "NoSuchKey": NO_SUCH_KEY, "404": NO_SUCH_KEY, "NotFound": NO_SUCH_KEY,
    "NoSuchBucket": NO_SUCH_BUCKET, "InvalidBucketName": INVALID_REQUEST, "KeyTooLongError": INVALID_REQUEST,
    "InvalidObjectState": INVALID_REQUEST,
    # 400s for keys the server will never accept (e.g. SeaweedFS: `..` or NUL in a key): retrying cannot help.
    "InvalidRequest": INVALID_REQUEST, "InvalidArgument": INVALID_REQUEST, "InvalidURI": INVALID_REQUEST,
}


class TransientError(Exception):
    """Worth retrying: the storage or the network may recover (5xx, timeouts, refused connections, 403s
    from rotating credentials)."""

    def __init__(self, code: str, message: str, outage: bool = False, status: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.outage = outage  # no answer at all: the store (or the way to it) is down for everyone
        self.status = status  # the HTTP status of an answer (0: none)


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


def put_object(client, bucket: str, key: str, body: bytes, metadata: dict[str, str]) -> None:
    """Store `body`. A key S3 refuses is permanent for that video (InputError); anything else, a missing bucket
    included, is transient: the destination is the operator's to fix, and /readyz reports the failures."""
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    except Exception as exc:
        error = _classify(exc, bucket, key)
        if isinstance(error, InputError) and error.code != INVALID_REQUEST:
            error = TransientError(f"s3_put_{error.code}", error.message)
        raise error from exc


def make_client(endpoint_url: str | None, region: str | None, connect_timeout: float, read_timeout: float):
    """A boto3 client with the standard credential chain; retries are ours, so botocore makes one attempt."""
    config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _classify(exc: Exception, bucket: str, key: str) -> Exception:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _PERMANENT:
            return InputError(_PERMANENT[code], f"s3://{bucket}/{key}: {code}")
        return TransientError(f"s3_{status or code}", f"s3://{bucket}/{key}: {code or status}", status=status)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return InputError(INVALID_REQUEST, f"s3://{bucket}/{key}: {str(exc)[:300]}")
    # Timeouts, refused or dropped connections, truncated bodies.
    return TransientError("s3_unavailable", f"s3://{bucket}/{key}: {type(exc).__name__}", outage=True)


class ObjectFetcher:
    """Streams one object at a time per caller into `temp_dir` (files 0600, always removed)."""

    def __init__(self, client, temp_dir: str | None, max_object_bytes: int, budget: TempBudget) -> None:
        self.client = client
        self.temp_dir = temp_dir
        self.max_object_bytes = max_object_bytes
        self.budget = budget
        if temp_dir:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)

    def store_answers(self, bucket: str) -> bool:
        """Whether the store is up for others than this object: a HEAD of the bucket gets any answer but a 5xx
        (403 and 404 are answers too). Tells "this object answers 500" from "the store answers 500 to all"."""
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
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise _classify(exc, bucket, key) from exc
        body = response["Body"]
        try:
            size = int(response.get("ContentLength") or 0)
            limit = min(self.max_object_bytes, self.budget.limit)  # a larger one could never get room
            if size > limit:
                raise InputError(OBJECT_TOO_LARGE, f"s3://{bucket}/{key}: {size} bytes, the limit is {limit}")
            with self.budget.reserve(size):
                fd, name = tempfile.mkstemp(prefix="videotag-", suffix=".video", dir=self.temp_dir)
                path = Path(name)
                try:
                    with os.fdopen(fd, "wb") as out:
                        written = self._copy(body, out, bucket, key)
                    if written != size:
                        raise TransientError("s3_truncated", f"s3://{bucket}/{key}: {written} of {size} bytes")
                    yield path, size
                finally:
                    path.unlink(missing_ok=True)
        finally:
            body.close()

    def _copy(self, body, out, bucket: str, key: str) -> int:
        written = 0
        try:
            while chunk := body.read(1 << 20):
                cancel.check()  # a cancelled video stops downloading (its temp file is removed on the way out)
                written += len(chunk)
                if written > self.max_object_bytes:  # a server that lied about the length
                    raise InputError(OBJECT_TOO_LARGE, f"s3://{bucket}/{key}: more than {self.max_object_bytes} bytes")
                out.write(chunk)
        except InputError:
            raise
        except Exception as exc:
            raise _classify(exc, bucket, key) from exc
        return written
