"""S3 down for longer than the retry budget: the worker keeps retrying (nothing lost, nothing dead-lettered for
a transient cause), /readyz turns 503 during the outage and 200 again once S3 is back.

The test owns its S3 server (the session one is shared): SIGKILLed mid-run, restarted on the same ports and
data directory. Two workers, retry_max_attempts 3, backoff 0.2 s doubling up to 1 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.helpers import AnswerCollector, request
from tests.integration.worker_process import SpawnWorker, WorkerProcess, wait_for_assignment
from tests.kafka_helpers import Topics, produce
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

SETTINGS = {
    "seg_num": "2",
    "max_inflight": "2",
    "retry_max_attempts": "3",
    "retry_backoff_base_s": "0.2",
    "retry_backoff_max_s": "1",
    "s3_connect_timeout_s": "1",
    "s3_read_timeout_s": "2",
}
OUTAGE_S = 15.0  # with 1 s backoffs: about 10 failed attempts per in-flight video, far over 3


def _status(worker: WorkerProcess) -> int:
    try:
        return worker.get("/readyz", timeout=1)[0]
    except OSError:
        return 0


def test_s3_outage_is_retried_not_dead_lettered(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    topics: Topics,
    unique_group_id: str,
    clips: list[Path],
    tmp_path: Path,
) -> None:
    s3 = S3Server(tmp_path / "own-s3").start()
    collector = None
    try:
        bucket = "outage"
        s3.create_bucket(bucket)
        client = s3.client()
        keys = []
        for clip in clips:
            client.upload_file(str(clip), bucket, f"v/{clip.name}")
            keys.append(f"v/{clip.name}")
        workers = [spawn(kafka_broker, s3, topics, unique_group_id, **SETTINGS) for _ in range(2)]
        for worker in workers:
            worker.wait_ready()
        wait_for_assignment(workers, partitions=3)  # the outage is to meet both: each holds a partition
        collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
        before = [f"before-{i:02d}" for i in range(12)]
        during = [f"during-{i:02d}" for i in range(12)]
        produce(
            kafka_broker.bootstrap_servers,
            topics.input,
            [request(v, bucket, keys[i % len(keys)]) for i, v in enumerate(before)],
            keys=[v.encode() for v in before],
        )
        deadline = time.monotonic() + 60
        while len(collector.by_id()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert collector.by_id(), "no result before the outage"

        s3.kill()  # a crash: connections refused from now on
        down_at = time.monotonic()
        produce(
            kafka_broker.bootstrap_servers,
            topics.input,
            [request(v, bucket, keys[i % len(keys)]) for i, v in enumerate(during)],
            keys=[v.encode() for v in during],
        )
        answered_at_kill = len(collector.by_id())
        not_ready_after: dict[int, float] = {}
        while time.monotonic() - down_at < OUTAGE_S:
            for i, worker in enumerate(workers):
                if i not in not_ready_after and _status(worker) == 503:
                    not_ready_after[i] = time.monotonic() - down_at
            time.sleep(0.2)
        readyz_during = [_status(w) for w in workers]
        why = [(w.readyz(), w.metric("videotag_assigned_partitions")) for w in workers]
        failures = [w.metric("videotag_failures_total", 'reason="s3_unavailable"') for w in workers]
        answered_during = len(collector.by_id()) - answered_at_kill

        restart_began = time.monotonic()
        s3.start()  # same ports, same data
        up_at = time.monotonic()
        outage_s = up_at - down_at
        ready_again_after: dict[int, float] = {}
        deadline = time.monotonic() + 60
        while len(ready_again_after) < len(workers) and time.monotonic() < deadline:
            for i, worker in enumerate(workers):
                if i not in ready_again_after and _status(worker) == 200:
                    ready_again_after[i] = time.monotonic() - up_at
            time.sleep(0.2)
        everything = set(before) | set(during)
        missing = collector.wait_for(everything, timeout=120)
        time.sleep(2)
        answers = collector.by_id()
        dlq = [a for recs in answers.values() for a in recs if a.kind == "dlq"]
        duplicates = sum(len(v) - 1 for v in answers.values())
        print(
            f"\nS3 OUTAGE: down {outage_s:.1f} s (SIGKILL; its restart took {up_at - restart_began:.1f} s); "
            f"/readyz 503 after {sorted(round(v, 1) for v in not_ready_after.values())} s, 200 again "
            f"{sorted(round(v, 1) for v in ready_again_after.values())} s after S3 was back; "
            f"s3_unavailable failures {failures}; answered during the outage {answered_during}; "
            f"requests {len(everything)}, lost {len(missing)}, DLQ {len(dlq)}, duplicates {duplicates}"
        )
        assert readyz_during == [503, 503], why
        assert len(not_ready_after) == len(workers)
        assert all(f >= 3 for f in failures), failures
        assert len(ready_again_after) == len(workers), "a worker did not become ready again"
        assert missing == set()
        assert dlq == [], [(a.ident, a.code) for a in dlq]
        assert all(a.kind == "result" for recs in answers.values() for a in recs)
        assert all(w.process.poll() is None for w in workers), "a worker died during the outage"
    finally:
        if collector is not None:
            collector.close()
        s3.stop()
