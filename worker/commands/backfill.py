"""`videotag enqueue --from-s3` / `--from-manifest`: tag what a bucket already holds (a backfill).

Two sources of keys:
- a listing (`s3://BUCKET/PREFIX`): ListObjectsV2, page by page, in the store's key order (UTF-8 binary);
- an S3 Inventory report (`s3://DEST/.../manifest.json`): its CSV data files (gzip, no header, columns as the
  manifest's `fileSchema` names them, keys URL-encoded), each checked against the manifest's MD5.

Of those keys, the videos (`VIDEO_EXTENSIONS`, case-insensitive) last modified at or after `--since` are
enqueued through the one request path (`worker.commands.enqueue.send_request`), at most `--rate` per second.

Invariants:
- Nothing is marked done before the broker acknowledged it: the producer is flushed, then the marker file
  is rewritten (atomically) with the position reached. A run that is interrupted therefore resumes from its
  marker and at worst re-sends what it sent after the last marker (up to BATCH requests); the worker's results
  are keyed by video_id, so a request sent twice is tagged twice but never lost.
- A marker belongs to one source: a marker of another source is refused, not silently ignored; a finished
  run's marker says so, and running again enqueues nothing.
- `--dry-run` sends nothing and writes no marker: it prints the requests it would send.

No model, OpenCV or PyAV import: a backfill runs anywhere boto3 and kafka-python do.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from kafka.producer.future import FutureRecordMetadata

from worker import kafka_clients
from worker.commands.enqueue import SendRefused, flush_checked, send_request
from worker.commands.progress import Progress
from worker.messages import request_message
from worker.settings import Settings
from worker.storage import make_client, split_s3_uri

if TYPE_CHECKING:  # boto3-stubs (the test extra)
    from mypy_boto3_s3 import S3Client

# Containers and streams FFmpeg (OpenCV or PyAV) reads; what else a bucket holds (thumbnails, subtitles,
# manifests, partial uploads) is not a video and is skipped.
VIDEO_EXTENSIONS = frozenset(
    {
        ".3g2",
        ".3gp",
        ".asf",
        ".avi",
        ".f4v",
        ".flv",
        ".m2ts",
        ".m4v",
        ".mkv",
        ".mov",
        ".mp4",
        ".mpeg",
        ".mpg",
        ".mts",
        ".mxf",
        ".ogv",
        ".ts",
        ".vob",
        ".webm",
        ".wmv",
    }
)
BATCH = 100  # requests between two flushes (and marker updates)
PAGE_SIZE = 1000  # keys per ListObjectsV2 call (the S3 maximum); also entries between two marker updates
LIST_ATTEMPTS = 5  # botocore's own retries of a listing call (the worker's S3 client makes one attempt)


class BackfillError(ValueError):
    """A source, marker or argument that cannot be used (reported in one line)."""


@dataclass(frozen=True)
class Entry:
    """One object of a listing or an inventory, and where the walk stands once it is handled."""

    bucket: str
    key: str
    last_modified: datetime | None
    position: Any  # what the marker records once this entry is done


@dataclass
class Stats:
    listed: int = 0
    not_video: int = 0
    too_old: int = 0
    not_current: int = 0  # inventory rows of old versions and delete markers
    enqueued: int = 0
    pages: int = 0  # listing pages, or inventory data files
    resumed_from: Any = None  # the marker's position; "complete" when the marker says the run finished


def is_video(key: str) -> bool:
    return Path(key).suffix.lower() in VIDEO_EXTENSIONS


def parse_since(text: str) -> datetime:
    """An ISO date or date-time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BackfillError(
            f"--since {text}: expected an ISO date or date-time (2026-11-01, 2026-11-01T12:00Z)"
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_rate(text: str) -> float:
    """`N` or `N/s`: requests per second, > 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:/\s*s)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise BackfillError(f"--rate {text}: expected a positive number of requests per second (e.g. 200/s)")
    return float(match.group(1))


def wanted(entry: Entry, since: datetime | None) -> str | None:
    """Why the entry is skipped (`not_video`, `too_old`), or None: enqueue it."""
    if not is_video(entry.key):
        return "not_video"
    if since is not None and (entry.last_modified is None or entry.last_modified < since):
        return "too_old"
    return None


class RateLimiter:
    """A token bucket: `rate` per second on average, bursts of at most one second's worth."""

    def __init__(
        self, rate: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.rate, self.capacity = rate, max(1.0, rate)
        self.clock, self.sleep = clock, sleep
        self.tokens, self.updated = self.capacity, clock()

    def acquire(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1 - 1e-9:  # not 1: a rounding error must not turn into sleeps that pass no time
                self.tokens -= 1
                return
            self.sleep((1 - self.tokens) / self.rate)


# --------------------------------------------------------------------------------------------------------
# The marker file


def read_marker(path: Path | None, source: str) -> dict[str, Any] | None:
    """The marker a previous run of `source` left, or None. Raises BackfillError for another source's."""
    if path is None or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise BackfillError(f"{path}: not a backfill marker ({exc})") from exc
    other = marker.get("source") if isinstance(marker, dict) else repr(marker)
    if other != source:
        raise BackfillError(f"{path}: the marker of another backfill ({other}); give another --marker or delete it")
    return cast(dict[str, Any], marker)  # a dict: no other JSON value's repr is a source URI


def write_marker(path: Path, source: str, position: Any, complete: bool, stats: Stats) -> None:
    """Replace the marker atomically: an interruption leaves the old one or the new one, never half."""
    marker = {
        "source": source,
        "position": position,
        "complete": complete,
        "enqueued": stats.enqueued,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(marker, out)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------
# Sources


def list_source(client: S3Client, uri: str, start_after: str | None, stats: Stats) -> Iterator[Entry]:
    """Every object under `s3://bucket/prefix` after `start_after`, in key order; the position is the key."""
    bucket, prefix = split_s3_uri(uri)
    options: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": PAGE_SIZE}}
    if start_after:
        options["StartAfter"] = start_after
    for page in client.get_paginator("list_objects_v2").paginate(**options):
        stats.pages += 1
        for item in page.get("Contents", []):
            yield Entry(bucket, item["Key"], item.get("LastModified"), item["Key"])


def _manifest(client: S3Client, uri: str) -> dict[str, Any]:
    bucket, key = split_s3_uri(uri)
    if not key.endswith("manifest.json"):
        raise BackfillError(f"{uri}: expected the URI of an S3 Inventory manifest.json")
    try:
        manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ValueError as exc:
        raise BackfillError(f"{uri}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BackfillError(f"{uri}: not an S3 Inventory manifest")
    if str(manifest.get("fileFormat", "")).upper() != "CSV":
        raise BackfillError(f"{uri}: inventory format {manifest.get('fileFormat')!r}; only CSV reports are read")
    columns = [name.strip() for name in manifest.get("fileSchema", "").split(",")]
    if "Bucket" not in columns or "Key" not in columns:
        raise BackfillError(f"{uri}: fileSchema {manifest.get('fileSchema')!r} lacks Bucket or Key")
    return manifest


def inventory_rows(data: bytes, columns: list[str]) -> Iterator[dict[str, str]]:
    """The rows of one gzip CSV data file, by the manifest's column names."""
    with io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8", newline="") as text:
        for row in csv.reader(text):
            if row:
                yield dict(zip(columns, row, strict=False))


def _readable_rows(data: bytes, columns: list[str], where: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, row) of a data file; a file that is no gzip UTF-8 CSV is a BackfillError."""
    try:
        yield from enumerate(inventory_rows(data, columns), start=1)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise BackfillError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc


def inventory_entry(row: dict[str, str], position: list[int]) -> Entry | None:
    """The object a row names, or None for a row that is no current object (an old version, a delete marker).
    Keys in CSV inventories are URL-encoded, a space as `+` (as in S3 events)."""
    if row.get("IsDeleteMarker", "false").lower() == "true" or row.get("IsLatest", "true").lower() == "false":
        return None
    modified = row.get("LastModifiedDate")
    when = datetime.fromisoformat(modified.replace("Z", "+00:00")) if modified else None
    return Entry(row["Bucket"], urllib.parse.unquote_plus(row["Key"]), when, position)


def manifest_source(client: S3Client, uri: str, resume: list[int] | None, stats: Stats, dated: bool) -> Iterator[Entry]:
    """The objects of an inventory report, data file by data file; the position is [file index, rows done].
    `dated`: the report must have the LastModifiedDate column (for --since)."""
    manifest = _manifest(client, uri)
    columns = [name.strip() for name in manifest["fileSchema"].split(",")]
    if dated and "LastModifiedDate" not in columns:
        raise BackfillError(f"{uri}: --since needs the LastModifiedDate column, which this report lacks")
    destination = manifest.get("destinationBucket", "").removeprefix("arn:aws:s3:::") or split_s3_uri(uri)[0]
    done_file, done_rows = resume or (0, 0)
    for index, item in enumerate(manifest.get("files", [])):
        if index < done_file:
            continue
        data = client.get_object(Bucket=destination, Key=item["key"])["Body"].read()
        if (expected := item.get("MD5checksum")) and hashlib.md5(data).hexdigest() != expected:
            raise BackfillError(
                f"s3://{destination}/{item['key']}: MD5 differs from the manifest's (a partial or replaced data file)"
            )
        stats.pages += 1
        where = f"s3://{destination}/{item['key']}"
        for number, row in _readable_rows(data, columns, where):
            if index == done_file and number <= done_rows:
                continue
            try:
                entry = inventory_entry(row, [index, number])
            except (KeyError, ValueError) as exc:  # a short row, a date that is none
                raise BackfillError(f"{where}: row {number} unreadable ({type(exc).__name__}: {exc})") from exc
            if entry is None:
                stats.not_current += 1
                continue
            yield entry


# --------------------------------------------------------------------------------------------------------
# The walk


@dataclass(frozen=True)
class Options:
    source: str  # s3://bucket/prefix or the manifest's URI
    manifest: bool
    since: datetime | None = None
    rate: float | None = None
    dry_run: bool = False
    start_after: str | None = None
    marker: Path | None = None
    quiet: bool = False


def backfill(settings: Settings, options: Options, topic: str, out: TextIO) -> Stats:
    """Walk the source and enqueue its videos (see the module docstring); with `dry_run`, write the requests
    to `out` instead. Raises BackfillError, botocore's errors for S3, kafka_clients.BrokerUnreachable."""
    stats = Stats()
    marker = read_marker(options.marker, options.source)
    if marker and marker.get("complete"):
        stats.resumed_from = "complete"
        return stats
    position = marker["position"] if marker else None
    stats.resumed_from = position
    client = make_client(
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_connect_timeout_s,
        settings.s3_read_timeout_s,
        attempts=LIST_ATTEMPTS,
    )
    if options.manifest:
        entries = manifest_source(client, options.source, position, stats, dated=options.since is not None)
    else:
        entries = list_source(client, options.source, position or options.start_after, stats)
    producer = None if options.dry_run else kafka_clients.producer(settings)
    limiter = RateLimiter(options.rate) if options.rate else None
    progress = Progress(None, "enqueue" if not options.dry_run else "dry run", enabled=not options.quiet)
    pending: list[tuple[str, FutureRecordMetadata]] = []  # sends since the last checkpoint, by key
    handled = 0  # entries walked since the last checkpoint
    checkpointed = 0  # stats.enqueued at the last checkpoint

    def checkpoint(at: Any, complete: bool = False) -> None:
        nonlocal handled, checkpointed
        if producer is not None:
            try:  # the marker must not pass a lost request
                flush_checked(producer, pending)
            except SendRefused as exc:
                raise BackfillError(
                    f"{exc}; "
                    + (
                        "the marker holds the last acknowledged position: run again to resume"
                        if options.marker
                        else "nothing records how far this run got"
                    )
                ) from exc
            if options.marker is not None:
                write_marker(options.marker, options.source, at, complete, stats)
        progress.advance(
            f"listed {stats.listed}, skipped {stats.not_video + stats.too_old}", count=stats.enqueued - checkpointed
        )
        pending.clear()
        handled, checkpointed = 0, stats.enqueued

    last = position
    try:
        for entry in entries:
            last = entry.position
            stats.listed += 1
            handled += 1
            if reason := wanted(entry, options.since):
                setattr(stats, reason, getattr(stats, reason) + 1)
            else:
                if limiter is not None:
                    limiter.acquire()
                if producer is None:
                    out.write(json.dumps(request_message(entry.bucket, entry.key), ensure_ascii=False) + "\n")
                else:
                    pending.append((entry.key, send_request(producer, topic, entry.bucket, entry.key)[1]))
                stats.enqueued += 1
            if stats.enqueued - checkpointed >= BATCH or handled >= PAGE_SIZE:
                checkpoint(last)
        checkpoint(last, complete=True)
    finally:
        progress.close()
        if producer is not None:
            producer.close()
    return stats
