"""Priority lanes and the retry topic, against Apache Kafka and SeaweedFS, with the shipped defaults (but the retry
budget, 40 s, in the test about what happens when it runs out).

- Fresh requests on the high lane overtake a backlog of thousands on the backfill lane, which then goes on: every
  request answered, none twice.
- One partition, a forbidden (403) object in front of good requests: retried in place, it holds the partition's
  commit until it is dead-lettered; with a retry topic the good requests commit at once, while the forbidden one
  still spends its budget (attempts and budget carried in headers) and ends `access_denied`, named by its original
  offset. An object that answers 500 until healed is tagged after the heal, through the retry topic.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.helpers import AnswerCollector, StallingProxy, request, tiny_clips
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, committed, consume_all, produce, unique_name
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

BACKLOG = 2000
FRESH = 5
BUDGET_S = 40.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("lane-clips"))


def _until(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def test_fresh_requests_overtake_a_backlog_of_thousands(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, bucket: str, clips: list[Path]
) -> None:
    fresh, backfill = unique_name("fresh"), unique_name("backfill")
    topics = Topics(fresh, unique_name("out"), unique_name("dlq"))
    kafka_broker.create_topics([fresh, backfill, topics.output, topics.dlq], partitions=1)
    for i, clip in enumerate(clips):
        s3_server.client().upload_file(str(clip), bucket, f"clip-{i}.mp4")
    # A backfill of objects deleted since (each answered no_such_key, quickly): thousands of requests go through
    # the worker within the test's time; the fresh requests are real uploads, tagged.
    backlog = [f"old-{i:04d}" for i in range(BACKLOG)]
    produce(
        kafka_broker.bootstrap_servers,
        backfill,
        [request(v, bucket, f"deleted/{v}.mp4") for v in backlog],
        keys=[v.encode() for v in backlog],
    )
    group = unique_name("group")
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        worker = spawn(kafka_broker, s3_server, topics, group, input_topics=f"{fresh},{backfill}")
        worker.wait_ready()
        # One fresh request first, answered while the backlog waits, warms the model (the backlog never runs it).
        produce(kafka_broker.bootstrap_servers, fresh, [request("warm-up", bucket, "clip-0.mp4")], keys=[b"warm-up"])
        assert collector.wait_for({"warm-up"}, timeout=120) == set(), worker.log()[-3000:]
        ids = [f"fresh-{i}" for i in range(FRESH)]
        answered_before = sum(1 for v in backlog if v in collector.by_id())
        produced_at = time.monotonic()
        produce(
            kafka_broker.bootstrap_servers,
            fresh,
            [request(v, bucket, f"clip-{i % len(clips)}.mp4") for i, v in enumerate(ids)],
            keys=[v.encode() for v in ids],
        )
        assert collector.wait_for(set(ids), timeout=120) == set(), worker.log()[-3000:]
        overtook_s = time.monotonic() - produced_at
        answered = collector.by_id()
        backlog_then = sum(1 for v in backlog if v in answered)
        during = backlog_then - answered_before
        metrics = worker.get("/metrics")[1]
        assert all(answered[v][0].kind == "result" for v in [*ids, "warm-up"])
        # The fresh requests did not wait for the backlog: most of it is still unanswered. (While the last fresh
        # ones are tagged, a free slot takes backfill: lanes order the intake, they do not idle a slot.)
        assert backlog_then < BACKLOG // 2, (backlog_then, overtook_s)
        for topic in (fresh, backfill):  # the lag gauge covers every lane
            assert f'videotag_consumer_lag{{partition="0",topic="{topic}"}}' in metrics, metrics[-3000:]

        # The backlog goes on afterwards, from where it was: a few hundred more, then everything below the
        # backfill lane's commit was answered once (nothing crashed: no redelivery), none above it twice.
        target = backlog_then + 300
        assert _until(lambda: committed(kafka_broker.bootstrap_servers, group, backfill) >= target, 120, step=1)
        done = committed(kafka_broker.bootstrap_servers, group, backfill)
        answers = collector.by_id()
        assert [v for v in backlog[:done] if len(answers.get(v, [])) != 1] == []
        assert all(answers[v][0].code == "no_such_key" for v in backlog[:done])
        assert all(len(answers[v]) == 1 for v in ids)
        assert committed(kafka_broker.bootstrap_servers, group, fresh) == FRESH + 1
        print(
            f"\nLANES: {FRESH} fresh requests produced behind a backlog of {BACKLOG} ({answered_before} answered) "
            f"were all answered in {overtook_s:.1f} s, while {during} of the backlog went through; "
            f"{BACKLOG - backlog_then} of it was still waiting; it went on: {done} committed "
            f"{time.monotonic() - produced_at:.1f} s after"
        )
    finally:
        collector.close()


@pytest.mark.parametrize("mode", ["in_place", "retry_topic", "retry_topic_exactly_once"])
def test_a_forbidden_object_holds_its_partition_back_only_when_retried_in_place(
    mode: str, spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, bucket: str, clips: list[Path]
) -> None:
    topics = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
    retry = unique_name("retry")
    kafka_broker.create_topics([topics.input, topics.output, topics.dlq, retry], partitions=1)
    client = s3_server.client()
    goods = [f"good-{i}" for i in range(3)]
    for i, name in enumerate(goods):
        client.upload_file(str(clips[i % len(clips)]), bucket, f"ok/{name}.mp4")
    client.upload_file(str(clips[0]), bucket, "forbidden/clip.mp4")
    client.upload_file(str(clips[1]), bucket, "flaky/clip.mp4")
    proxy = StallingProxy(s3_server.port)
    proxy.set_rule("/forbidden/", "error403")  # for good: spends its whole budget, then access_denied
    proxy.set_rule("/flaky/", "error500")  # until healed
    settings = {"s3_endpoint_url": proxy.endpoint_url, "retry_budget_s": str(BUDGET_S)}
    if mode != "in_place":
        settings["retry_topic"] = retry
    exactly_once = mode.endswith("exactly_once")
    if exactly_once:
        settings["delivery"] = "exactly_once"
    group = unique_name("group")
    collector = AnswerCollector(
        kafka_broker.bootstrap_servers, topics, **({"isolation_level": "read_committed"} if exactly_once else {})
    )
    try:
        worker = spawn(kafka_broker, s3_server, topics, group, **settings)
        worker.wait_ready()
        # A first video warms the model, so that the good ones below take about the same time in every mode.
        produce(
            kafka_broker.bootstrap_servers,
            topics.input,
            [request("warm-up", bucket, "ok/good-0.mp4")],
            keys=[b"warm-up"],
        )
        assert collector.wait_for({"warm-up"}, timeout=120) == set(), worker.log()[-3000:]
        names = ["forbidden", "flaky", *goods]  # offsets 1 to 5
        values = [
            request("forbidden", bucket, "forbidden/clip.mp4"),
            request("flaky", bucket, "flaky/clip.mp4"),
            *[request(name, bucket, f"ok/{name}.mp4") for name in goods],
        ]
        t0 = time.monotonic()
        produce(kafka_broker.bootstrap_servers, topics.input, values, keys=[n.encode() for n in names])
        goods_committed = healed = None
        while time.monotonic() - t0 < 150 and (goods_committed is None or len(collector.by_id()) <= len(names)):
            if healed is None and worker.metric("videotag_failures_total", 'reason="s3_server_error"') >= 2:
                proxy.set_rule("/flaky/", "pass")  # it failed twice: healed
                healed = time.monotonic() - t0
            if goods_committed is None and committed(kafka_broker.bootstrap_servers, group, topics.input) > len(names):
                goods_committed = time.monotonic() - t0  # past the forbidden and the flaky ones too
            time.sleep(0.2)
        answers = collector.by_id()
        assert set(answers) == {"warm-up", *names}, (sorted(answers), worker.log()[-3000:])
        assert goods_committed is not None and healed is not None
        clock = time.time() - time.monotonic()  # the collector stamps wall-clock time
        results_at = max(a.received for n in goods for a in answers[n]) - clock - t0
        [denied] = answers["forbidden"]
        dlq_at = denied.received - clock - t0
        assert denied.code == "access_denied"
        original = denied.value["original"]
        assert (original["topic"], original["partition"], original["offset"]) == (topics.input, 0, 1)
        attempts = denied.value["attempts"]
        assert attempts >= 3 and f"gave up after {attempts} attempts" in denied.value["error"]["message"]
        assert [a.kind for a in answers["flaky"]] == ["result"] and all(
            [a.kind for a in answers[n]] == ["result"] for n in goods
        )
        assert _until(lambda: committed(kafka_broker.bootstrap_servers, group, topics.input) == len(names) + 1, 30)
        retried = worker.metric("videotag_retries_published_total", 'reason="access_denied"')
        if mode == "in_place":
            # The forbidden request held the commit of its partition until it was dead-lettered (and a slot for
            # its whole budget).
            assert BUDGET_S <= dlq_at <= goods_committed + 1, (dlq_at, goods_committed)
            assert retried == 0
        else:
            # Committed as soon as the good ones were tagged; the forbidden one went round the retry topic, every
            # attempt but the last one a record there (read_committed: only the committed ones).
            assert goods_committed < dlq_at - BUDGET_S / 2, (goods_committed, dlq_at)
            records = consume_all(
                kafka_broker.bootstrap_servers,
                retry,
                expected=attempts + 1,
                timeout=20,
                isolation_level="read_committed",
            )
            assert len([r for r in records if r.key == b"forbidden"]) == attempts - 1 == retried
            flaky = [r for r in records if r.key == b"flaky"]
            assert 1 <= len(flaky) == worker.metric("videotag_retries_published_total", 'reason="s3_server_error"')
            assert dict(flaky[0].headers)["videotag-retry-origin-offset"] == b"2"
        print(
            f"\nRETRY {mode}: good results {results_at:.1f} s, committed past them {goods_committed:.1f} s; "
            f"403 dead-lettered {dlq_at:.1f} s after {attempts} attempts; 500 healed at {healed:.1f} s"
        )
    finally:
        collector.close()
        proxy.close()
