"""The metrics that alerts watch: the circuit breaker (open, trips) and each partition's committed offset, set
where commits succeed in both delivery modes and removed with the partition (a stale series would alert)."""

from __future__ import annotations

from types import SimpleNamespace

from tests.test_rebalance import P0, P1, TOPIC, _finish, _rebalance, _record, _worker
from worker.breaker import Breaker
from worker.metrics import Metrics
from worker.settings import Settings
from worker.transactions import Outcome
from worker.worker import Worker


def _value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def _committed(metrics: Metrics, partition: int) -> float | None:
    return _value(metrics, "videotag_committed_offset", {"topic": TOPIC, "partition": str(partition)})


def test_the_breaker_is_open_during_its_self_test_and_closes_when_it_passes() -> None:
    metrics = Metrics()
    seen: list[float | None] = []
    breaker = Breaker(2, lambda clip: seen.append(_value(metrics, "videotag_breaker_open")), metrics)
    assert _value(metrics, "videotag_breaker_open") == 0 and _value(metrics, "videotag_breaker_trips_total") == 0
    assert breaker.failure_is_the_inputs()
    assert _value(metrics, "videotag_breaker_trips_total") == 0, "below the threshold nothing trips"
    assert breaker.failure_is_the_inputs()  # the threshold-th: tested, passed
    assert seen == [1.0], "open while the self-test holds intake"
    assert _value(metrics, "videotag_breaker_open") == 0
    assert _value(metrics, "videotag_breaker_trips_total") == 1
    breaker.failure_is_the_inputs()
    breaker.failure_is_the_inputs()
    assert _value(metrics, "videotag_breaker_trips_total") == 2


def test_the_worker_exports_its_breaker() -> None:
    worker = Worker(Settings(breaker_threshold=1))
    worker.breaker._self_test = lambda clip: None  # a passing self-test without loading a model
    assert worker.breaker.failure_is_the_inputs()
    assert _value(worker.metrics, "videotag_breaker_trips_total") == 1


def test_at_least_once_commits_set_the_committed_offset_and_a_revoked_partition_drops_it() -> None:
    worker, consumer = _worker()
    worker._accept(_record(P0, 0))
    worker._accept(_record(P1, 0))
    worker._step(accept=True)
    assert _committed(worker.metrics, 0) == 0, "the commit at launch (marks) restates where the group is"
    _finish(worker, P0, 0)
    _finish(worker, P1, 0)
    worker._step(accept=True)
    assert (_committed(worker.metrics, 0), _committed(worker.metrics, 1)) == (1, 1)
    worker._accept(_record(P0, 1))
    worker._step(accept=True)
    _finish(worker, P0, 1)
    worker._step(accept=True)
    assert _committed(worker.metrics, 0) == 2

    _rebalance(worker, consumer, {P0, P1}, {P0})
    assert _committed(worker.metrics, 0) == 2
    assert _committed(worker.metrics, 1) is None, "its new owner reports it"
    worker._lost({P0})
    assert _committed(worker.metrics, 0) is None


def test_a_failed_commit_leaves_the_committed_offset_where_it_was() -> None:
    from kafka.errors import CommitFailedError

    worker, consumer = _worker()
    worker._accept(_record(P0, 0))
    worker._step(accept=True)
    _finish(worker, P0, 0)

    def refuse(offsets: object) -> None:
        raise CommitFailedError("the group rebalanced")

    consumer.commit = refuse  # type: ignore[method-assign]
    worker._step(accept=True)
    assert _committed(worker.metrics, 0) == 0


def test_exactly_once_a_committed_transaction_sets_the_committed_offset() -> None:
    worker = Worker(Settings(delivery="exactly_once"))
    worker.transactions = SimpleNamespace(producer=object())  # type: ignore[assignment]  # read when one fails
    worker.tracker.started(TOPIC, 0, 4, 1)
    worker._transaction_done(Outcome(commits={(TOPIC, 0): 5}, published=[]))
    assert _committed(worker.metrics, 0) == 5
    # A transaction that ends after its partition went to another member reports nothing for it.
    worker._transaction_done(Outcome(commits={(TOPIC, 1): 9}, published=[]))
    assert _committed(worker.metrics, 1) is None
    worker._transaction_done(Outcome(commits={(TOPIC, 0): 7}, published=[], error=RuntimeError("aborted")))
    assert _committed(worker.metrics, 0) == 5, "an aborted transaction committed nothing"
