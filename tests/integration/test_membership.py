"""Group membership as operators run it, on Apache Kafka with the shipped timeouts: a static member that stops
hands its partitions over at once (unless told to keep them for a restart), a cooperative group whose
rebalance only takes partitions away keeps working, and a worker started before its broker waits, not-ready.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import SpawnWorker, WorkerProcess, wait_for_assignment
from tests.kafka_helpers import Topics, produce
from worker.local.stack import KafkaServer, S3Server, free_port

pytestmark = pytest.mark.integration

FAST = {"seg_num": "2"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("membership-clips"))


@pytest.fixture
def pod(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, topics: Topics, unique_group_id: str
) -> Callable[..., WorkerProcess]:
    """pod(name, **settings) → a worker as the chart runs it (POD_NAME set: a static member)."""
    return lambda name, **settings: spawn(
        kafka_broker, s3_server, topics, unique_group_id, env={"POD_NAME": name} if name else None, **FAST, **settings
    )


def _held(worker: WorkerProcess) -> float:
    return worker.metric("videotag_assigned_partitions")


def _until(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def test_a_stopping_static_member_hands_over_at_once_unless_it_keeps_its_partitions(pod) -> None:
    leaving, staying = pod("pod-a"), pod("pod-b")
    for worker in (leaving, staying):
        worker.wait_ready()
    wait_for_assignment([leaving, staying], partitions=3)
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(60) == 0
    took = _until(lambda: _held(staying) == 3, timeout=30)  # the session timeout is 45 s: this is the removal
    print(f"static member removed on SIGTERM: partitions moved in {took} s")
    assert took is not None, f"partitions did not move: {leaving.log()[-1500:]}"
    assert "removed static member pod-a" in leaving.log()

    keeper = pod("pod-a", leave_group_on_stop="true")
    keeper.wait_ready()
    wait_for_assignment([keeper, staying], partitions=3)
    restarting = pod("pod-c", leave_group_on_stop="false")  # a StatefulSet pod stopped for a rolling restart
    restarting.wait_ready()
    wait_for_assignment([keeper, staying, restarting], partitions=3)
    restarting.signal(signal.SIGTERM)
    assert restarting.wait(60) == 0
    assert _until(lambda: _held(keeper) + _held(staying) == 3, timeout=10) is None, (
        "a member that keeps its partitions for its restart lost them at once"
    )
    back = pod("pod-c", leave_group_on_stop="false")
    back.wait_ready()
    assert _until(lambda: _held(back) == 1, timeout=30) is not None
    generations = {w.metric("videotag_group_generation") for w in (keeper, staying, back)}
    assert len(generations) == 1, f"the restart within the session rebalanced the group: {generations}"


def test_a_cooperative_rebalance_that_only_takes_partitions_away_keeps_the_worker_going(
    pod, kafka_broker: KafkaServer, s3_server: S3Server, topics: Topics, bucket: str, clips: list[Path]
) -> None:
    keys = []
    for clip in clips:
        s3_server.client().upload_file(str(clip), bucket, clip.name)
        keys.append(clip.name)
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        first = pod(None, partition_assignment_strategy="cooperative-sticky")
        first.wait_ready()
        assert _until(lambda: _held(first) == 3, timeout=30) is not None
        ids = [f"coop-{i}" for i in range(12)]

        def send(batch: list[str]) -> None:
            produce(
                kafka_broker.bootstrap_servers,
                topics.input,
                [request(v, bucket, keys[i % 3]) for i, v in enumerate(batch)],
                keys=[v.encode() for v in batch],
            )

        send(ids[:6])
        second = pod(None, partition_assignment_strategy="cooperative-sticky")
        second.wait_ready()
        wait_for_assignment([first, second], partitions=3)  # first lost some: revoked, never "assigned"
        send(ids[6:])
        missing = collector.wait_for(set(ids), timeout=90)
        assert missing == set()
        assert "revoked" in first.log()
        done = [w.metric("videotag_videos_processed_total", 'status="ok"') for w in (first, second)]
        assert all(done), f"a member took no work after the cooperative rebalance: {done}"
    finally:
        collector.close()


def test_a_worker_started_before_its_broker_waits_not_ready_then_consumes(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
) -> None:
    waiting = spawn(_Nowhere(f"127.0.0.1:{free_port()}"), s3_server, topics, unique_group_id, **FAST)
    status = _until(lambda: waiting.readyz().startswith("503 not ready: no Kafka broker answered"), timeout=90)
    assert status is not None, waiting.log()[-1500:]
    time.sleep(3)
    assert waiting.process.poll() is None, "exited instead of waiting for the broker"
    waiting.signal(signal.SIGTERM)
    assert waiting.wait(30) == 0  # not connected: nothing to drain

    missing_topic = Topics(topics.input + "-later", topics.output, topics.dlq)
    late = spawn(kafka_broker, s3_server, missing_topic, unique_group_id, **FAST)
    assert _until(lambda: "does not exist" in late.readyz(), timeout=90) is not None, late.log()[-1500:]
    kafka_broker.create_topics([missing_topic.input], partitions=1)
    late.wait_ready(timeout=120)
    s3_server.client().upload_file(str(clips[0]), bucket, "late.mp4")
    produce(kafka_broker.bootstrap_servers, missing_topic.input, [request("late-1", bucket, "late.mp4")])
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        assert collector.wait_for({"late-1"}, timeout=60) == set()
    finally:
        collector.close()
    assert late.metric("videotag_input_partitions") == 1


@dataclass(frozen=True)
class _Nowhere:
    """A broker address nothing listens on."""

    bootstrap_servers: str
