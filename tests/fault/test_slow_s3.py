"""A slow S3: a proxy between the worker and S3 stalls the responses for some objects.

- "stall": the request is read and never answered; "midstream": headers and 2 KiB of the body, then
  nothing. The worker's s3_read_timeout_s (1 s) fires, the fetch is retried with backoff, and
  `videotag_failures_total{reason="s3_unavailable"}` grows.
- "dribble": one byte every 0.25 s. No single read waits longer than the timeout, so no timeout fires: the
  video holds its slot until the bytes flow again (a limit of a per-read timeout, see docs/reliability.md).
- Meanwhile the worker answers other requests with its free slot, /healthz stays 200, and once the proxy
  stops stalling every stalled request ends with a result: nothing hangs, nothing is dead-lettered.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.helpers import AnswerCollector, StallingProxy, request, send_requests
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

SETTINGS = {
    "seg_num": "2",
    "max_inflight": "4",
    "s3_read_timeout_s": "1",
    "s3_connect_timeout_s": "1",
    "retry_max_attempts": "3",
    "retry_backoff_base_s": "0.2",
    "retry_backoff_max_s": "1",
}
STALL_S = 15.0
FAILURES = ("videotag_failures_total", 'reason="s3_unavailable"')


def test_stalled_s3_times_out_retries_and_recovers(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
) -> None:
    client = s3_server.client()
    for prefix in ("stall", "mid", "drib", "fast"):
        for clip in clips:
            client.upload_file(str(clip), bucket, f"{prefix}/{clip.name}")
    proxy = StallingProxy(s3_server.port)
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        worker = spawn(kafka_broker, s3_server, topics, unique_group_id, s3_endpoint_url=proxy.endpoint_url, **SETTINGS)
        worker.wait_ready()
        for prefix, mode in (("stall", "stall"), ("mid", "midstream"), ("drib", "dribble")):
            proxy.set_rule(f"/{prefix}/", mode)
        slow = ["stall", "mid", "drib"]
        send_requests(
            kafka_broker.bootstrap_servers, topics.input, {v: request(v, bucket, f"{v}/{clips[0].name}") for v in slow}
        )
        stalled_at = time.monotonic()
        deadline = stalled_at + 30
        while worker.metric(*FAILURES) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        first_failures = worker.metric(*FAILURES)
        fast = [f"fast-{i}" for i in range(6)]
        fast_requests = {v: request(v, bucket, f"fast/{clips[i % len(clips)].name}") for i, v in enumerate(fast)}
        send_requests(kafka_broker.bootstrap_servers, topics.input, fast_requests)
        missing_fast = collector.wait_for(set(fast), timeout=STALL_S + 30)
        while time.monotonic() - stalled_at < STALL_S:
            time.sleep(0.2)
        answered_while_stalled = set(collector.by_id())
        failures_while_stalled = worker.metric(*FAILURES)
        healthz = worker.get("/healthz")[0]
        held = len(proxy.held)
        dribble_attempts = sum("/drib/" in path for path in proxy.held)

        proxy.clear()
        cleared = time.monotonic()
        missing = collector.wait_for(set(slow) | set(fast), timeout=60)
        recovered_s = time.monotonic() - cleared
        time.sleep(1)
        answers = collector.by_id()
        dlq = [(a.ident, a.code) for recs in answers.values() for a in recs if a.kind == "dlq"]
        print(
            f"\nSLOW S3: stalled {STALL_S:.0f} s; s3_unavailable failures {first_failures:.0f} -> "
            f"{failures_while_stalled:.0f} while stalled; answered while stalled "
            f"{sorted(answered_while_stalled)}; responses held by the proxy {held} (the dribbled object was "
            f"requested {dribble_attempts}x); all stalled requests answered "
            f"{recovered_s:.1f} s after the stall ended; DLQ {len(dlq)}"
        )
        assert missing_fast == set(), f"the free slot did not answer {missing_fast} while S3 stalled"
        assert answered_while_stalled.isdisjoint(slow), answered_while_stalled & set(slow)
        assert failures_while_stalled > first_failures >= 2, "the read timeout did not fire repeatedly"
        assert healthz == 200 and worker.process.poll() is None
        assert missing == set(), f"still unanswered after the stall ended: {missing}"
        assert dlq == []
        assert all(a.kind == "result" for recs in answers.values() for a in recs)
    finally:
        proxy.close()
        collector.close()
