"""Exactly-once delivery (`delivery: exactly_once`): results and dead letters are published together with the
commit of their input offsets, in one Kafka transaction per contiguous run of finished messages.

Invariants:
- An output becomes visible to `read_committed` readers only in the transaction that also commits its request's
  offset. A request redelivered after a crash or a rebalance therefore never had a visible output: readers see
  exactly one record per video.
- Outputs are held per partition until every message before theirs is finished (a video may finish before an
  earlier one): a transaction publishes the outputs of offsets below the commit it makes, and nothing else.
- One transaction at a time, run off the consumer thread: a commit waits on the broker (kafka-python's
  transactional calls have no timeout of their own), and the consumer must keep polling meanwhile.
- The transactional id is the static member id when there is one (a restarted pod fences its predecessor and
  aborts its open transaction at once), else unique to this process; fencing across members is the broker's,
  through the consumer group metadata sent with the offsets (KIP-447).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from worker.settings import Settings

log = logging.getLogger(__name__)
Partition = tuple[str, int]


@dataclass(frozen=True)
class Output:
    """A record to publish: a result, a dead letter or a retry, with its request's Kafka timestamp (for latency) and
    its headers (`traceparent`; a retry's own)."""

    topic: str
    key: bytes | None
    value: bytes
    request_timestamp_ms: int  # 0: not an answer (a retry record), no latency to observe
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def transactional_id(
    settings: Settings, host: str | None = None, pid: int | None = None, token: str | None = None
) -> str:
    """Stable for a static member (its restart fences its zombie); otherwise unique to this process, so that two
    workers on one host never fence each other."""
    if settings.group_instance_id:
        return f"videotag-{settings.group_id}-{settings.group_instance_id}"
    host = host or socket.gethostname()
    pid = pid or os.getpid()
    token = token or uuid.uuid4().hex[:8]
    return f"videotag-{settings.group_id}-{host}-{pid}-{token}"


@dataclass
class HeldOutputs:
    """Outputs of finished messages, per partition and offset, until their run is committed."""

    held: dict[Partition, dict[int, list[Output]]] = field(default_factory=lambda: defaultdict(dict))

    def hold(self, tp: Partition, offset: int, outputs: list[Output]) -> None:
        self.held[tp].setdefault(offset, []).extend(outputs)

    def below(self, commits: dict[Partition, int]) -> list[Output]:
        """The outputs a transaction committing `commits` publishes: every held one below its partition's commit."""
        return [
            out
            for tp, end in commits.items()
            for offset, outs in sorted(self.held.get(tp, {}).items())
            if offset < end
            for out in outs
        ]

    def release(self, commits: dict[Partition, int]) -> None:
        for tp, end in commits.items():
            kept = {offset: outs for offset, outs in self.held.get(tp, {}).items() if offset >= end}
            self.held[tp] = kept

    def forget(self, tp: Partition) -> None:
        """Another member owns `tp` now and redoes its uncommitted work: what was held was never visible."""
        self.held.pop(tp, None)

    def count(self) -> int:
        return sum(len(outs) for per in self.held.values() for outs in per.values())


@dataclass(frozen=True)
class Outcome:
    commits: dict[Partition, int]
    published: list[Output]
    error: BaseException | None = None


class Transactions:
    """The transactional producer and the one transaction in flight."""

    def __init__(self, settings: Settings, make_producer: Callable[[str], KafkaProducer]) -> None:
        self.id = transactional_id(settings)
        self._make_producer = make_producer
        self.producer: KafkaProducer | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="transactions")
        self._inflight: Future[Outcome] | None = None

    def start(self) -> None:
        """Create the producer and fence any earlier producer with this id (aborting its open transaction)."""
        producer = self._make_producer(self.id)
        producer.init_transactions()
        self.producer = producer

    @property
    def busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def submit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], outputs: list[Output], group_metadata: Any
    ) -> None:
        """Publish `outputs` and commit `offsets` in one transaction, on this object's thread."""
        assert not self.busy and self.producer is not None
        self._inflight = self._thread.submit(self._run, self.producer, offsets, outputs, group_metadata)

    def finished(self, wait: bool = False) -> Outcome | None:
        """The outcome of the transaction in flight once it is over (waiting for it with `wait`)."""
        if self._inflight is None or not (wait or self._inflight.done()):
            return None
        outcome = self._inflight.result()
        self._inflight = None
        return outcome

    @staticmethod
    def _run(
        producer: KafkaProducer,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        outputs: list[Output],
        group_metadata: Any,
    ) -> Outcome:
        commits = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
        try:
            producer.begin_transaction()
            for out in outputs:
                producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
            producer.send_offsets_to_transaction(offsets, group_metadata)
            producer.commit_transaction()
        except KafkaError as exc:
            try:
                producer.abort_transaction()
            except KafkaError as abort_error:  # fatal (e.g. fenced): the caller replaces the producer
                log.warning("abort of a failed transaction failed too: %s", abort_error)
            return Outcome(commits, [], exc)
        return Outcome(commits, outputs)

    def replace_producer(self) -> None:
        """After a fatal error (fenced, out of sequence): a new producer with the same id, a new epoch."""
        if self.producer is not None:
            try:
                self.producer.close(timeout=0)
            except Exception as exc:  # closing a broken producer may fail: it is gone either way
                log.debug("closing the broken producer: %s", exc)
        self.producer = None
        self.start()

    def close(self) -> None:
        self._thread.shutdown(wait=True)  # lets a transaction in flight end (committed or aborted)
        if self.producer is not None:
            self.producer.close(timeout=10)
            self.producer = None
