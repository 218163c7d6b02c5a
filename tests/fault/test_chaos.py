"""Chaos: 200 requests (a fifth of them bad) through three workers (pods, as the chart runs them: static group
members, shipped timeouts) while one of them is SIGKILLed every few seconds and restarted. Every request must
end with a result or a dead letter (at-least-once: duplicates are allowed and counted), and none may be lost.

Chosen for a 2-core machine: 128x96 one-second clips, seg_num 2, ResNet-50 with random weights, 3 workers
with max_inflight 2; requests arrive at about 2/s while the chaos loop runs (at most 8 kills, at most 100 s).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.fault.helpers import AnswerCollector, request
from tests.integration.worker_process import SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, consume_all
from worker.local.stack import KafkaServer, S3Server
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REQUESTS = 200
BAD_EVERY = 5  # one request in five is bad
WORKERS = 3
SETTINGS = {"seg_num": "2", "max_inflight": "2", "retry_backoff_base_s": "0.2", "retry_backoff_max_s": "2"}
MAX_KILLS = 8
MAX_WORKER_DEATHS = Settings().max_worker_deaths  # shipped default (not set here)
CHAOS_S = 100.0
KILL_EVERY_S = (6.0, 10.0)
PRODUCE_RATE = 2.0  # requests per second


def _plan(bucket: str, good_keys: list[str], rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(id, value, expected outcome: "result" or a DLQ code); the Kafka key of every request is its id."""
    plan = []
    for i in range(REQUESTS):
        ident = f"chaos-{i:03d}"
        if i % BAD_EVERY != BAD_EVERY - 1:
            plan.append((ident, request(ident, bucket, rng.choice(good_keys)), "result"))
            continue
        kind = (i // BAD_EVERY) % 4
        if kind == 0:
            plan.append((ident, b'{"video_id": "' + ident.encode() + b'", "bucket": ', "invalid_json"))
        elif kind == 1:
            plan.append((ident, json.dumps({"video_id": ident, "bucket": bucket}).encode(), "schema_violation"))
        elif kind == 2:
            plan.append((ident, request(ident, bucket, "junk/notes.txt"), "not_a_video"))
        else:
            plan.append((ident, request(ident, bucket, "junk/noise.mp4"), "not_a_video"))
    rng.shuffle(plan)
    return plan


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_chaos_kills_lose_nothing(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
    delivery: str,
) -> None:
    """Exactly-once: a read_committed reader sees one answer per request, none lost; at-least-once: none lost."""
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))  # CHAOS_SEED=N replays a plan
    rng = random.Random(seed)
    client = s3_server.client()
    good_keys = []
    for clip in clips:
        key = f"clips/{clip.name}"
        client.upload_file(str(clip), bucket, key)
        good_keys.append(key)
    client.put_object(Bucket=bucket, Key="junk/notes.txt", Body=b"meeting notes, not a video\n" * 40)
    client.put_object(Bucket=bucket, Key="junk/noise.mp4", Body=random.Random(1).randbytes(4096))
    plan = _plan(bucket, good_keys, rng)
    expected = {ident: outcome for ident, _, outcome in plan}

    def start_worker(slot: int) -> WorkerProcess:  # a pod: the restarted container keeps its name
        return spawn(
            kafka_broker,
            s3_server,
            topics,
            unique_group_id,
            env={"POD_NAME": f"chaos-{slot}"},
            delivery=delivery,
            **SETTINGS,
        )

    slots = [start_worker(slot) for slot in range(WORKERS)]
    for worker in slots:
        worker.wait_ready()
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics, isolation_level="read_committed")
    stop = threading.Event()
    kills: list[tuple[float, float]] = []  # (time, videos in flight in the victim)
    chaos_errors: list[BaseException] = []

    def chaos() -> None:
        try:
            started = time.monotonic()
            while len(kills) < MAX_KILLS and time.monotonic() - started < CHAOS_S:
                if stop.wait(rng.uniform(*KILL_EVERY_S)):
                    return
                up = [i for i, w in enumerate(slots) if w.process.poll() is None and _ready(w)]
                if not up:
                    continue
                victim = rng.choice(up)
                inflight = slots[victim].metric("videotag_inflight_videos")
                slots[victim].close()  # SIGKILL to the process group, then reap
                kills.append((time.monotonic(), inflight))
                slots[victim] = start_worker(victim)
        except BaseException as exc:  # reported by the test thread
            chaos_errors.append(exc)

    produced_at: dict[str, float] = {}
    placed: dict[str, tuple[int, int]] = {}
    t0 = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    chaos_thread.start()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for n, (ident, value, _) in enumerate(plan):
            metadata = producer.send(topics.input, key=ident.encode(), value=value).get(timeout=30)
            produced_at[ident] = metadata.timestamp / 1e3 if metadata.timestamp > 0 else time.time()
            placed[ident] = (metadata.partition, metadata.offset)
            time.sleep(max(0.0, t0 + (n + 1) / PRODUCE_RATE - time.monotonic()))
    finally:
        producer.close()
    try:
        missing = collector.wait_for(set(expected), timeout=CHAOS_S + 150)
        stop.set()
        chaos_thread.join(30)
        time.sleep(3)  # late duplicates from a redelivery still in flight
        answers = collector.by_id()
        committed = _committed(kafka_broker, topics, unique_group_id)
        # only the chaos loop may end a worker: one that exited by itself (say, on a rebalance) is a bug
        crashed = {
            w.metrics_port: (w.process.returncode, w.log()[-2000:]) for w in slots if w.process.poll() is not None
        }
    finally:
        stop.set()
        collector.close()
    elapsed = time.monotonic() - t0

    assert not chaos_errors, chaos_errors
    assert crashed == {}, crashed
    duplicates = sum(len(v) - 1 for v in answers.values())
    waits = sorted(min(a.timestamp_ms for a in answers[i]) / 1e3 - produced_at[i] for i in expected if i in answers)
    mid_video = sum(1 for _, inflight in kills if inflight > 0)
    lost = sorted(missing)
    hidden = [a.received - a.timestamp_ms / 1e3 for recs in answers.values() for a in recs]  # written → readable
    print(
        f"\nCHAOS {delivery} seed={seed}: {REQUESTS} requests ({sum(v == 'result' for v in expected.values())} good, "
        f"{sum(v != 'result' for v in expected.values())} bad) through {WORKERS} workers "
        f"(seg_num {SETTINGS['seg_num']}); kills {len(kills)} ({mid_video} with videos in flight); "
        f"answers {sum(len(v) for v in answers.values())}, duplicates {duplicates}, lost {len(lost)}; "
        f"wait p50 {statistics.median(waits):.1f} s, max {max(waits):.1f} s; written-to-readable p50 "
        f"{statistics.median(hidden):.2f} s, max {max(hidden):.1f} s; total {elapsed:.0f} s"
    )
    # For a lost request: committed past its offset means acknowledged without an answer (a real loss);
    # not committed means it is stuck (not yet redelivered, or a wedged group).
    diagnosis = {i: (placed[i], committed.get(placed[i][0])) for i in lost}
    if lost:  # read both topics again from the start: was the answer there and the collector missed it?
        again = [
            json.loads(r.value)
            for t in (topics.output, topics.dlq)
            for r in consume_all(kafka_broker.bootstrap_servers, t, 10**6, 15)
        ]
        found = {i for i in lost for a in again if i in (a.get("video_id"), a.get("original", {}).get("key"))}
        diagnosis["answers found on re-reading"] = sorted(found)
    assert lost == [], f"lost {len(lost)} (partition, offset), committed offset of that partition: {diagnosis}"
    assert len(kills) >= 3, f"only {len(kills)} kills happened"
    wrong, held_through_kills = {}, set()
    for ident, outcome in expected.items():
        got = {a.kind if a.kind == "result" else a.code for a in answers[ident]}
        if "worker_crashed" in got and got <= {outcome, "worker_crashed"}:
            # In the hands of a worker at each of MAX_WORKER_DEATHS kills: to the worker, a message that kills
            # whoever holds it (worker/attempts.py), dead-lettered by design. Allowed, but it takes that many kills
            # (each kill counts against every video in the victim's hands: up to max_inflight).
            held_through_kills.add(ident)
        elif got != {outcome}:
            wrong[ident] = (outcome, got)
    assert wrong == {}, f"unexpected outcomes (expected, got): {wrong}"
    inflight = int(SETTINGS["max_inflight"])
    assert len(held_through_kills) * MAX_WORKER_DEATHS <= len(kills) * inflight, (held_through_kills, len(kills))
    assert set(answers) == set(expected), set(answers) - set(expected)
    if delivery == "exactly_once":
        assert duplicates == 0, {i: len(a) for i, a in answers.items() if len(a) > 1}


def _ready(worker: WorkerProcess) -> bool:
    try:
        return worker.get("/readyz", timeout=1)[0] == 200
    except OSError:
        return False


def _committed(broker: KafkaServer, topics: Topics, group_id: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topics.input, p)) for p in range(3)}
    finally:
        consumer.close()
