"""Fixtures of the fault tests: tiny clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault.helpers import tiny_clips


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("tiny-clips"))
