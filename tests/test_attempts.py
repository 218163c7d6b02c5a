"""Worker deaths per message, carried in commit metadata from one owner of a partition to the next."""

from __future__ import annotations

import json

from worker.attempts import MAX_MARKS, Marks, inherit


def test_a_message_running_at_the_last_commit_costs_one_death_to_the_next_owner() -> None:
    marks = Marks(deaths={7: 1}, running={7, 8})
    text = marks.encode(committed=7)
    assert inherit(text).deaths == {7: 2, 8: 1}
    assert inherit(marks.encode(committed=7, graceful=True)).deaths == {7: 1}  # a stop that let go: no death


def test_finished_and_committed_messages_drop_out_of_the_metadata() -> None:
    marks = Marks(deaths={3: 2, 9: 1}, running={9, 10})
    marks.finished(9)
    assert inherit(marks.encode(committed=5)).deaths == {10: 1}  # 3 is below the commit, 9 is finished


def test_foreign_or_broken_metadata_counts_nothing() -> None:
    for text in (None, "", "not json", "[]", json.dumps({"v": 99, "running": [1]}), '{"v":1,"running":["x"]}'):
        assert inherit(text).deaths == {}


def test_the_metadata_stays_small() -> None:
    marks = Marks(deaths={o: 1 for o in range(1000)}, running=set(range(1000, 2000)))
    text = marks.encode(committed=0)
    assert len(text) < 4096 and len(inherit(text).deaths) == MAX_MARKS
