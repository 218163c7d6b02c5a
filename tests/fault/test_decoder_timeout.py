"""A decoder that takes too long costs its video, not the worker or the partition.

decode_timeout_s is set below the time a decoder child needs even to start (~0.15 s), so every video times
out: each is dead-lettered `decode_timeout`, its child is killed, the offsets move on, and the worker stays
ready. (A crashing decoder child is tested in tests/test_decoder_process.py; no real file crashes FFmpeg on
demand.) Then a second worker in the same group with the default limit answers new requests normally.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fault.helpers import AnswerCollector, request, send_requests
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

SETTINGS = {"seg_num": "2", "max_inflight": "2"}


def _decoders_running(worker_pid: int) -> list[int]:
    """Children of the worker that run the decoder module."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("PPid"))
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration, ValueError):
            continue
        if ppid == worker_pid and b"models.decoder_process" in cmdline:
            found.append(int(status.parent.name))
    return found


def test_decode_timeout_dead_letters_and_moves_on(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
) -> None:
    client = s3_server.client()
    client.upload_file(str(clips[0]), bucket, "v/clip.mp4")
    slow = spawn(kafka_broker, s3_server, topics, unique_group_id, decode_timeout_s="0.05", **SETTINGS)
    slow.wait_ready()
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        timed_out = [f"to-{i}" for i in range(4)]
        send_requests(
            kafka_broker.bootstrap_servers, topics.input, {v: request(v, bucket, "v/clip.mp4") for v in timed_out}
        )
        missing = collector.wait_for(set(timed_out), timeout=60)
        ready = slow.get("/readyz")[0]
        leftover = _decoders_running(slow.process.pid)
        codes = {a.ident: a.code for a in collector.snapshot()}
        failures = slow.metric("videotag_failures_total", 'reason="decode_timeout"')

        slow.close()  # SIGKILL: what it committed is what the next worker starts from
        normal = spawn(kafka_broker, s3_server, topics, unique_group_id, **SETTINGS)
        normal.wait_ready()
        fine = [f"ok-{i}" for i in range(2)]
        send_requests(kafka_broker.bootstrap_servers, topics.input, {v: request(v, bucket, "v/clip.mp4") for v in fine})
        missing_fine = collector.wait_for(set(fine), timeout=60)
        time.sleep(1)  # a redelivered timed-out request would show up as a second answer now
        answers = collector.by_id()
    finally:
        collector.close()
    print(
        f"\nDECODE TIMEOUT: {codes}; /readyz {ready}; decoder children left {leftover}; "
        f"then {sorted(a.kind for v in fine for a in answers.get(v, []))}"
    )
    assert missing == set()
    assert codes == dict.fromkeys(timed_out, "decode_timeout")
    assert failures == len(timed_out)
    assert ready == 200
    assert leftover == []
    assert missing_fine == set() and all(answers[v][0].kind == "result" for v in fine)
    assert all(len(answers[v]) == 1 for v in timed_out), "a dead-lettered request was not committed"
