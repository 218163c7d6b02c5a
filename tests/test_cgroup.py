"""models/cgroup.py: CPU threads and the memory limit from fake cgroup v1 / v2 trees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from models import cgroup


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="ascii")
    return root


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu.max": "max 100000"}, None),
        ({"cpu.max": "200000 100000", "cpu/cpu.cfs_quota_us": "50000"}, 2.0),  # v2 first
        ({"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_cpu_quota(tmp_path: Path, files: dict[str, str], cores: float | None) -> None:
    assert cgroup.cpu_quota(_write(tmp_path, files)) == cores


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"memory.max": "4294967296"}, 4 * 1024**3),
        ({"memory.max": "max"}, None),
        ({"memory/memory.limit_in_bytes": "2147483648"}, 2 * 1024**3),
        ({"memory/memory.limit_in_bytes": "9223372036854771712"}, None),  # v1's "no limit"
        ({}, None),
    ],
)
def test_memory_limit(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    assert cgroup.memory_limit(_write(tmp_path, files)) == limit


def test_thread_plan_rounds_the_quota_up_and_caps_it_by_the_affinity_mask() -> None:
    assert cgroup.plan_threads(0, 1.5, 64) == cgroup.ThreadPlan(2, "cgroup", 1.5, 64)
    assert cgroup.plan_threads(0, 0.5, 64).threads == 1
    assert cgroup.plan_threads(0, 16.0, 4).threads == 4


def test_without_a_quota_the_affinity_count_is_used_and_said() -> None:
    plan = cgroup.plan_threads(0, None, 96)
    assert (plan.threads, plan.source) == (96, "affinity")
    assert "no cgroup CPU limit" in plan.describe()


def test_an_explicit_setting_wins() -> None:
    assert cgroup.plan_threads(3, 1.0, 64) == cgroup.ThreadPlan(3, "setting", 1.0, 64)


def test_thread_plan_is_decided_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cgroup._thread_plan.cache_clear()
    with caplog.at_level(logging.INFO, logger="models.cgroup"):
        first = cgroup.thread_plan(5)
        assert cgroup.thread_plan(setting=5) is first
        default = cgroup.thread_plan()
        assert cgroup.thread_plan(0) is default and cgroup.thread_plan(setting=0) is default
    assert first.threads == 5
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(first.describe()) == 1 and messages.count(default.describe()) == 1
