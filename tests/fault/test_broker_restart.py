"""The broker restarts mid-run: workers reconnect and go on; nothing is lost.

An Apache Kafka of its own (not the session's) keeps its topics, records and committed offsets in its log dir, so
a restart is what a rolling broker upgrade looks like to the workers. The broker is restarted twice: once
gracefully (SIGTERM), once by SIGKILL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import apache_kafka
from tests.fault.helpers import AnswerCollector, request
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, produce, unique_name
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

SETTINGS = {"seg_num": "2", "max_inflight": "2", "retry_backoff_base_s": "0.2", "retry_backoff_max_s": "2"}
PER_PHASE = 10


def _produce(broker: KafkaServer, topics: Topics, bucket: str, keys: list[str], ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while True:  # the broker may still be settling after its restart
        try:
            produce(
                broker.bootstrap_servers,
                topics.input,
                [request(v, bucket, keys[i % len(keys)]) for i, v in enumerate(ids)],
                keys=[v.encode() for v in ids],
            )
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_broker_restart_loses_nothing(spawn: SpawnWorker, clips: list[Path], tmp_path: Path) -> None:
    broker = apache_kafka(tmp_path / "own-kafka")
    s3 = S3Server(tmp_path / "own-s3")
    collector = None
    try:
        s3.start()
        bucket = "videos"
        s3.create_bucket(bucket)
        keys = []
        for clip in clips:
            s3.client().upload_file(str(clip), bucket, f"v/{clip.name}")
            keys.append(f"v/{clip.name}")
        topics = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
        broker.create_topics([topics.input], partitions=3)
        broker.create_topics([topics.output, topics.dlq], partitions=1)
        group = unique_name("group")
        workers = [spawn(broker, s3, topics, group, **SETTINGS) for _ in range(2)]
        for worker in workers:
            worker.wait_ready()
        collector = AnswerCollector(broker.bootstrap_servers, topics)
        phases = {name: [f"{name}-{i:02d}" for i in range(PER_PHASE)] for name in ("first", "second", "third")}
        figures = []
        _produce(broker, topics, bucket, keys, phases["first"])
        for phase, how in (("second", "stop"), ("third", "kill")):
            deadline = time.monotonic() + 60
            while len(collector.by_id()) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            answered = len(collector.by_id())
            down = time.monotonic()
            broker.stop() if how == "stop" else broker.kill()
            broker.start()
            downtime = time.monotonic() - down
            _produce(broker, topics, bucket, keys, phases[phase])
            deadline = time.monotonic() + 90
            while not set(phases[phase]) & set(collector.by_id()) and time.monotonic() < deadline:
                time.sleep(0.1)
            figures.append(
                f"{how}: {answered} answered before, broker down {downtime:.1f} s, first answer to a "
                f"request sent after the restart {time.monotonic() - down:.1f} s after it began"
            )
        everything = {v for ids in phases.values() for v in ids}
        missing = collector.wait_for(everything, timeout=150)
        time.sleep(2)
        answers = collector.by_id()
        duplicates = sum(len(v) - 1 for v in answers.values())
        print(
            f"\nBROKER RESTART: {'; '.join(figures)}; requests {len(everything)}, lost {len(missing)}, "
            f"duplicates {duplicates}"
        )
        assert missing == set()
        assert all(a.kind == "result" for recs in answers.values() for a in recs)
        assert all(w.process.poll() is None for w in workers), "a worker exited"
    finally:
        if collector is not None:
            collector.close()
        broker.stop()
        s3.stop()
