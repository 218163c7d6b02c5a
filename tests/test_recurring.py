"""An error that recurs while its cause lasts is logged once (again after a while, with a count), not per try."""

from __future__ import annotations

import logging

import pytest

from worker.recurring import RecurringErrors


def test_a_recurring_error_is_logged_when_it_starts_changes_or_lasts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    errors = RecurringErrors(logging.getLogger("test.recurring"), repeat_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.recurring"):
        tries = [errors.failed("consume", "denied READ") for _ in range(5)]
        now[0] = 30
        errors.failed("consume", "denied READ")
        assert errors.first() == "consume: denied READ"
        errors.failed("publish to out", "denied WRITE")  # another place: its own line
        now[0] = 61
        errors.failed("consume", "denied READ")  # a minute on: said again, with the tries not said
        errors.failed("consume", "denied READ and WRITE")  # changed: said at once
        errors.succeeded("consume")
        errors.succeeded("consume")  # nothing lasting any more: nothing to say
    assert tries == [1, 2, 3, 4, 5]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "consume: denied READ (try 1; retrying)"),
        ("ERROR", "publish to out: denied WRITE (try 1; retrying)"),
        ("ERROR", "consume: denied READ (try 7; retrying) (5 more failed tries since last said)"),
        ("ERROR", "consume: denied READ and WRITE (try 8; retrying)"),
        ("INFO", "consume: works again after 8 failed tries (denied READ and WRITE)"),
    ]
    assert errors.first() == "publish to out: denied WRITE"
