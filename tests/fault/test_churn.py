"""Churn with the shipped defaults: two workers in pods, one of them (the group leader too) SIGKILLed and
restarted every ~12 s for minutes, as in a crash loop, an OOM kill or a bad node.

Each worker runs as the chart runs it: `POD_NAME` set, so it is a static group member whose restarted container
(same pod, same name) takes its partitions back without a rebalance (but the group leader's: see the assert).
Before static membership, a restarted process joined as a new member and the group waited for the dead one's
45 s session: 3 of 40 requests were answered in 8 minutes. Nothing here tunes a group timeout.

`CHURN_STATIC=0` runs the same churn with dynamic members, to measure the difference (not part of the suite:
it is the livelock this test exists to prevent). `CHURN_SEED=N` replays a kill plan.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.fault.helpers import AnswerCollector, request
from tests.integration.worker_process import SpawnWorker, WorkerProcess, wait_for_assignment
from tests.kafka_helpers import Topics
from worker.local.stack import KafkaServer, S3Server

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REQUESTS = 48
BAD_EVERY = 6
CHURN_S = 150.0
KILL_EVERY_S = (10.0, 14.0)
SETTINGS = {"seg_num": "2", "max_inflight": "2"}  # model size only: every Kafka setting is the shipped default


@dataclass
class Restart:
    killed_at: float
    generation_before: float  # the group generation the victim held (0: it had no assignment yet)
    assigned_after: float | None = None  # seconds from the restart to its first assignment
    generation_after: float | None = None
    first_result_after: float | None = None  # seconds from the restart to its first finished video


def test_churn_with_shipped_defaults_answers_every_request(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
) -> None:
    static = os.environ.get("CHURN_STATIC", "1") != "0"
    seed = int(os.environ.get("CHURN_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    keys = []
    for clip in clips:
        s3_server.client().upload_file(str(clip), bucket, f"clips/{clip.name}")
        keys.append(f"clips/{clip.name}")
    plan = []
    for i in range(REQUESTS):
        ident = f"churn-{i:03d}"
        bad = i % BAD_EVERY == BAD_EVERY - 1
        value = (
            json.dumps({"video_id": ident, "bucket": bucket}).encode()
            if bad
            else request(ident, bucket, keys[i % len(keys)])
        )
        plan.append((ident, value, "schema_violation" if bad else "result"))

    def start(slot: int) -> WorkerProcess:
        pod = {"POD_NAME": f"videotag-worker-{slot}"} if static else {}
        return spawn(kafka_broker, s3_server, topics, unique_group_id, env=pod, **SETTINGS)

    slots = [start(0), start(1)]
    for worker in slots:
        worker.wait_ready()
    wait_for_assignment(slots, partitions=3)
    generation = max(_metric(w, "videotag_group_generation") for w in slots)
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    restarts: list[Restart] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            began = time.monotonic()
            if stop.wait(rng.uniform(*KILL_EVERY_S)):
                return
            while time.monotonic() - began < CHURN_S and not stop.is_set():
                victim = rng.randrange(len(slots))
                generation = _metric(slots[victim], "videotag_group_generation")
                slots[victim].close()  # SIGKILL to the process group
                restarted = time.monotonic()
                slots[victim] = start(victim)
                restart = Restart(restarted, generation)
                restarts.append(restart)
                _follow(slots[victim], restart, stop, rng.uniform(*KILL_EVERY_S))  # until the next kill
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    produced_at: dict[str, float] = {}
    t0 = time.monotonic()
    thread = threading.Thread(target=churn, name="churn", daemon=True)
    thread.start()
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all")
    try:
        for n, (ident, value, _) in enumerate(plan):  # spread over most of the churn
            metadata = producer.send(topics.input, key=ident.encode(), value=value).get(timeout=30)
            produced_at[ident] = metadata.timestamp / 1e3
            time.sleep(max(0.0, t0 + (n + 1) * (CHURN_S - 20) / REQUESTS - time.monotonic()))
    finally:
        producer.close()
    try:
        missing = collector.wait_for({ident for ident, _, _ in plan}, timeout=CHURN_S + 240)
        thread.join(CHURN_S + 30)  # the churn runs its full length whatever was answered
        time.sleep(3)  # late duplicates of a redelivery
        answers = collector.by_id()
        final = {_metric(w, "videotag_group_generation") for w in slots if _metric(w, "videotag_assigned_partitions")}
    finally:
        stop.set()
        collector.close()
    elapsed = time.monotonic() - t0

    assert not errors, errors
    waits = [min(a.timestamp_ms for a in answers[i]) / 1e3 - produced_at[i] for i in produced_at if i in answers]
    duplicates = sum(len(v) - 1 for v in answers.values())
    followed = [r for r in restarts if r.generation_before and r.generation_after]
    kept = [r for r in followed if r.generation_after == r.generation_before]
    assigned = sorted(r.assigned_after for r in restarts if r.assigned_after is not None)
    first = sorted(r.first_result_after for r in restarts if r.first_result_after is not None)
    print(
        f"\nCHURN seed={seed} {'static' if static else 'dynamic'} members, shipped defaults: {REQUESTS} requests "
        f"({REQUESTS // BAD_EVERY} bad), {len(restarts)} kills+restarts; answered {len(answers)}, lost "
        f"{len(missing)}, duplicates {duplicates}; restarts without a rebalance {len(kept)}/{len(followed)}; "
        f"restart to assignment p50 {_p50(assigned)} max {_max(assigned)}; restart to first result p50 "
        f"{_p50(first)} max {_max(first)}; wait p50 {_p50(waits)} max {_max(waits)}; group generation "
        f"{generation:.0f} before, {sorted(final)} after ({len(restarts)} restarts); total {elapsed:.0f} s"
    )
    assert missing == set(), f"unanswered after {elapsed:.0f} s: {sorted(missing)}"
    assert len(restarts) >= 8, f"only {len(restarts)} restarts"
    wrong = {
        i: {a.kind if a.kind == "result" else a.code for a in answers[i]}
        for i, _, want in plan
        if {a.kind if a.kind == "result" else a.code for a in answers[i]} != {want}
    }
    assert wrong == {}, wrong
    if static:
        # A restarted follower rejoins in the same generation. The leader's restart still rebalances: kafka-python
        # 3.0.12 speaks JoinGroup v7, without v9's SkipAssignment, so the broker has the new leader instance
        # assign again; that rebalance waits for no session, both members being alive. Dynamic members
        # rebalance on every restart, after the dead one's session.
        generations = [(r.generation_before, r.generation_after) for r in followed]
        rebalances = max(final, default=generation) - generation
        assert kept, f"no restart kept its generation: {generations}"
        assert rebalances < len(restarts), f"{rebalances} rebalances for {len(restarts)} restarts: {generations}"


def _follow(worker: WorkerProcess, restart: Restart, stop: threading.Event, seconds: float) -> None:
    """Watch a restarted worker for `seconds` (until the next kill): when it got its partitions (and in which
    generation), when it finished its first video."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if restart.first_result_after is not None:
            stop.wait(left)
            return
        if restart.assigned_after is None and _metric(worker, "videotag_assigned_partitions") > 0:
            restart.assigned_after = time.monotonic() - restart.killed_at
            restart.generation_after = _metric(worker, "videotag_group_generation")
        if _metric(worker, "videotag_videos_processed_total", 'status="ok"') > 0:
            restart.first_result_after = time.monotonic() - restart.killed_at
        if stop.wait(0.2):
            return


def _metric(worker: WorkerProcess, name: str, labels: str = "") -> float:
    try:
        return worker.metric(name, labels)
    except OSError:  # not listening yet, or killed
        return 0.0


def _p50(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s" if values else "-"


def _max(values: list[float]) -> str:
    return f"{max(values):.1f} s" if values else "-"
