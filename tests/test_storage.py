"""S3 error classification and the temp-dir budget (the real S3 server is exercised by integration tests)."""

import io
import stat
import threading
import time

import botocore.exceptions
import pytest

from models.errors import InputError
from worker.storage import ObjectFetcher, TempBudget, TransientError


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                                           "GetObject")


class FakeClient:
    def __init__(self, body: bytes = b"", length: int | None = None, error: Exception | None = None):
        self.body, self.length, self.error = body, length, error

    def get_object(self, Bucket, Key):
        if self.error:
            raise self.error
        return {"Body": io.BytesIO(self.body), "ContentLength": len(self.body) if self.length is None else self.length}


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (_client_error("NoSuchKey", 404), InputError, "no_such_key"),
        (_client_error("NoSuchBucket", 404), InputError, "no_such_bucket"),
        (_client_error("InternalError", 500), TransientError, "s3_500"),
        (_client_error("SlowDown", 503), TransientError, "s3_503"),
        (_client_error("AccessDenied", 403), TransientError, "s3_403"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), TransientError, "s3_unavailable"),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), TransientError, "s3_unavailable"),
    ],
)
def test_errors_are_sorted_into_permanent_and_transient(tmp_path, error, kind, code):
    fetcher = ObjectFetcher(FakeClient(error=error), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(kind) as info, fetcher.fetch("b", "k"):
        pass
    assert info.value.code == code


def test_file_is_private_and_removed_on_every_path(tmp_path):
    fetcher = ObjectFetcher(FakeClient(b"x" * 50), str(tmp_path), 100, TempBudget(1000))
    with fetcher.fetch("b", "k") as (path, size):
        assert size == 50 and path.read_bytes() == b"x" * 50
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), fetcher.fetch("b", "k"):
        raise RuntimeError("decoder crashed")
    assert list(tmp_path.iterdir()) == []


def test_objects_above_the_limit_and_lying_lengths(tmp_path):
    too_big = ObjectFetcher(FakeClient(b"x" * 101), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(InputError) as info, too_big.fetch("b", "k"):
        pass
    assert info.value.code == "object_too_large"
    liar = ObjectFetcher(FakeClient(b"x" * 150, length=10), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(InputError), liar.fetch("b", "k"):
        pass
    short = ObjectFetcher(FakeClient(b"x" * 5, length=10), str(tmp_path), 100, TempBudget(1000))
    with pytest.raises(TransientError), short.fetch("b", "k"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_budget_makes_downloads_wait_for_room():
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
