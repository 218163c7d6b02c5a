"""Exactly-once bookkeeping: which held outputs a transaction publishes, and the transactional id."""

from __future__ import annotations

from worker.settings import Settings
from worker.transactions import HeldOutputs, Output, transactional_id

P0, P1 = ("in", 0), ("in", 1)


def _out(name: str) -> Output:
    return Output("out", name.encode(), b"{}", 0)


def test_a_transaction_publishes_only_outputs_below_its_commit_and_releases_them() -> None:
    held = HeldOutputs()
    held.hold(P0, 3, [_out("p0@3")])  # finished before p0@1 and p0@2
    held.hold(P0, 0, [_out("p0@0")])
    held.hold(P0, 1, [_out("p0@1-a"), _out("p0@1-b")])  # an S3 event of two records: two videos, one offset
    held.hold(P1, 0, [_out("p1@0")])
    commits = {P0: 2, P1: 1}  # p0@2 is unfinished: the run ends there
    assert [o.key for o in held.below(commits)] == [b"p0@0", b"p0@1-a", b"p0@1-b", b"p1@0"]
    held.release(commits)
    assert held.count() == 1 and [o.key for o in held.below({P0: 4})] == [b"p0@3"]


def test_a_forgotten_partition_drops_what_it_held() -> None:
    held = HeldOutputs()
    held.hold(P0, 0, [_out("a")])
    held.hold(P1, 0, [_out("b")])
    held.forget(P0)
    assert [o.key for o in held.below({P0: 5, P1: 5})] == [b"b"]


def test_the_transactional_id_is_the_static_member_or_unique_to_the_process() -> None:
    static = Settings(group_id="g", group_instance_id="pod-3")
    assert transactional_id(static) == transactional_id(static, host="other", pid=9) == "videotag-g-pod-3"
    dynamic = Settings(group_id="g")
    assert transactional_id(dynamic, host="h", pid=7, token="ab") == "videotag-g-h-7-ab"
    assert transactional_id(dynamic) != transactional_id(dynamic)  # two processes never fence each other
