"""Priority lanes and the retry topic: the pure decisions (which lane to read, what a retry record's headers say).

Lanes are the topics a worker reads, highest priority first: the first input topic (fresh uploads), then the retry
topic when there is one, then the other input topics (backfill). A worker reads a lower lane only while every
higher one is empty: no record taken but not started, no lag on any of its partitions. It does so by pausing and
resuming partitions, never by seeking or committing, so a lane keeps its place and its commits stay at-least-once
(or exactly-once) as on a single topic.

A retry record is a request published to the retry topic after a fault of its object (a 403, a 500, a truncated
transfer): it carries, in headers, its attempts so far, the backoff budget spent, when it is due again, where the
request first came from and the last error. Headers that cannot be read (or a due time further away than the whole
retry budget) make it a fresh request: a retry is never lost to a garbled header, only its count restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HEADER_PREFIX = "videotag-retry-"
ATTEMPTS = HEADER_PREFIX + "attempts"
BUDGET_SPENT = HEADER_PREFIX + "budget-spent-s"
DUE = HEADER_PREFIX + "due-ms"
ORIGIN_TOPIC = HEADER_PREFIX + "origin-topic"
ORIGIN_PARTITION = HEADER_PREFIX + "origin-partition"
ORIGIN_OFFSET = HEADER_PREFIX + "origin-offset"
LAST_ERROR = HEADER_PREFIX + "last-error"
LAST_ERROR_MAX_CHARS = 500  # a header is echoed into logs and dead letters: keep it short


def lane_order(input_topics: list[str], retry_topic: str | None) -> list[str]:
    """The lanes, highest priority first: the first input topic, the retry topic, the other input topics."""
    first, *backfill = input_topics
    return [first, *([retry_topic] if retry_topic else []), *backfill]


def lane_problems(input_topics: list[str], retry_topic: str | None, output_topic: str, dlq_topic: str) -> list[str]:
    """Topic settings that cannot work together, each as one line."""
    problems = []
    if not input_topics:
        problems.append("setting 'input_topics': names no topic (unset it to read input_topic)")
    repeated = sorted({t for t in input_topics if input_topics.count(t) > 1})
    if repeated:
        problems.append(f"setting 'input_topics': {repeated} listed more than once")
    lanes = set(input_topics) | ({retry_topic} if retry_topic else set())
    if retry_topic and retry_topic in input_topics:
        problems.append(f"setting 'retry_topic': {retry_topic!r} is also an input topic")
    for name, topic in (("output_topic", output_topic), ("dlq_topic", dlq_topic)):
        if topic in lanes:
            problems.append(f"setting {name!r}: {topic!r} is also read as an input or retry topic")
    return problems


def paused_lanes(lanes: list[str], busy: Iterable[str]) -> set[str]:
    """The lanes to pause: every lane below the highest one that has work (records taken or lag)."""
    busy = set(busy)
    for i, lane in enumerate(lanes):
        if lane in busy:
            return set(lanes[i + 1 :])
    return set()


def lane_rank(lanes: list[str], topic: str) -> int:
    """A topic's priority, 0 highest; a topic that is no lane (none should be) ranks last."""
    return lanes.index(topic) if topic in lanes else len(lanes)


@dataclass(frozen=True)
class RetryState:
    """What a retry record carries: attempts so far, backoff seconds spent, when it is due, where it came from."""

    attempts: int
    budget_spent_s: float
    due_ms: int
    origin_topic: str
    origin_partition: int
    origin_offset: int
    last_error: str = ""

    def headers(self) -> list[tuple[str, bytes]]:
        values = {
            ATTEMPTS: str(self.attempts),
            BUDGET_SPENT: f"{self.budget_spent_s:.3f}",
            DUE: str(self.due_ms),
            ORIGIN_TOPIC: self.origin_topic,
            ORIGIN_PARTITION: str(self.origin_partition),
            ORIGIN_OFFSET: str(self.origin_offset),
            LAST_ERROR: self.last_error[:LAST_ERROR_MAX_CHARS],
        }
        return [(name, value.encode("utf-8")) for name, value in values.items()]


def parse_retry(headers: Iterable[tuple[str, bytes | None]] | None, now_ms: int, budget_s: float) -> RetryState | None:
    """The retry state of a record's headers; None when they are missing or garbled, or when the due time is
    further away than the whole budget (no worker would have set it): the record is then a fresh request."""
    found: Mapping[str, bytes | None] = dict(headers or [])
    try:

        def text(name: str) -> str:
            raw = found[name]
            if raw is None:
                raise ValueError(name)
            return raw.decode("utf-8")

        state = RetryState(
            int(text(ATTEMPTS)),
            float(text(BUDGET_SPENT)),
            int(text(DUE)),
            text(ORIGIN_TOPIC),
            int(text(ORIGIN_PARTITION)),
            int(text(ORIGIN_OFFSET)),
            text(LAST_ERROR) if LAST_ERROR in found and found[LAST_ERROR] is not None else "",
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if (
        state.attempts < 1
        or not 0 <= state.budget_spent_s < float("inf")
        or state.origin_partition < 0
        or state.origin_offset < 0
        or not state.origin_topic
        or state.due_ms - now_ms > budget_s * 1000
    ):
        return None
    return state


def not_due(state: RetryState | None, now_ms: int) -> bool:
    """Whether a record must wait: it is a retry whose due time has not come."""
    return state is not None and state.due_ms > now_ms
