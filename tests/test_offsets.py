"""Commit bookkeeping: never past an unfinished message."""

from worker.offsets import OffsetTracker


def test_commit_waits_for_the_oldest_unfinished_message():
    tracker = OffsetTracker()
    states = {o: tracker.started("t", 0, o, 1) for o in (10, 11, 12)}
    assert tracker.to_commit() == {("t", 0): 10}
    tracker.finished(states[11], 11)
    tracker.finished(states[12], 12)
    assert tracker.to_commit() == {("t", 0): 10}  # 10 still in flight
    tracker.finished(states[10], 10)
    assert tracker.to_commit() == {("t", 0): 13}
    tracker.committed({("t", 0): 13})
    assert tracker.to_commit() == {}


def test_message_with_several_videos_is_done_when_all_are():
    tracker = OffsetTracker()
    state = tracker.started("t", 1, 5, 2)
    tracker.finished(state, 5)
    assert tracker.to_commit() == {("t", 1): 5}
    tracker.finished(state, 5)
    assert tracker.to_commit() == {("t", 1): 6}


def test_message_with_no_work_is_committable_at_once():
    tracker = OffsetTracker()
    tracker.started("t", 0, 0, 0)
    assert tracker.to_commit() == {("t", 0): 1}


def test_finishing_after_revocation_changes_nothing():
    tracker = OffsetTracker()
    old = tracker.started("t", 0, 3, 1)
    tracker.forget("t", 0)
    new = tracker.started("t", 0, 3, 1)  # redelivered to us after reassignment
    tracker.finished(old, 3)
    assert tracker.to_commit() == {("t", 0): 3}
    assert tracker.inflight() == 1
    tracker.finished(new, 3)
    assert tracker.to_commit() == {("t", 0): 4}
