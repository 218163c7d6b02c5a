"""What the container lets this process use: CPUs (cgroup CPU quota, affinity mask) and memory (cgroup limit).

Pure functions over a cgroup file tree given as `root` (default `/sys/fs/cgroup`), so that tests use a fake
tree. cgroup v2 (`cpu.max`: "QUOTA PERIOD" or "max PERIOD"; `memory.max`: bytes or "max") is read first, then
v1 (`cpu/cpu.cfs_quota_us` + `cpu/cpu.cfs_period_us`, -1 = none; `memory/memory.limit_in_bytes`, a huge
number = none). Files that are missing or unreadable mean "no limit": the process then runs as on a bare host.

Invariants:
- `cpu_threads(0)` = ceil(quota / period), capped by the CPUs in the affinity mask; without a quota, the
  affinity count, and the plan says that no CPU limit was found (a pod without one would otherwise start one
  oneDNN thread per node core, and many pods on one node would oversubscribe it). An explicit count wins.
- `thread_plan()` decides once per process (cached) and logs the decision once.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value; anything this large is none.
V1_NO_LIMIT = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(root: str | Path = CGROUP_ROOT) -> float | None:
    """The CPU limit in cores (quota / period), or None when there is none (or no cgroup to read)."""
    root = Path(root)
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = int(parts[0]), int(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    quota_text, period_text = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def memory_limit(root: str | Path = CGROUP_ROOT) -> int | None:
    """The memory limit in bytes, or None when there is none."""
    root = Path(root)
    text = _read(root / "memory.max")
    if text is None:
        text = _read(root / "memory" / "memory.limit_in_bytes")
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < V1_NO_LIMIT else None


def affinity_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which honours taskset/cpusets), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    source: str  # "setting", "cgroup" or "affinity"
    quota: float | None
    affinity: int

    def describe(self) -> str:
        if self.source == "setting":
            return (
                f"{self.threads} CPU math threads (setting cpu_threads; CPU quota {self.quota}, affinity "
                f"{self.affinity})"
            )
        if self.source == "cgroup":
            return (
                f"{self.threads} CPU math threads from the cgroup CPU quota ({self.quota:g} cores, affinity "
                f"{self.affinity})"
            )
        return (
            f"{self.threads} CPU math threads: no cgroup CPU limit found, so one per CPU in the affinity mask "
            "(a pod without a CPU limit: set resources.limits.cpu, or cpu_threads)"
        )


def plan_threads(setting: int, quota: float | None, affinity: int) -> ThreadPlan:
    """`setting` > 0 wins; else ceil(quota) capped by the affinity count; else the affinity count."""
    if setting > 0:
        return ThreadPlan(setting, "setting", quota, affinity)
    if quota is not None:
        return ThreadPlan(max(1, min(math.ceil(quota), affinity)), "cgroup", quota, affinity)
    return ThreadPlan(max(1, affinity), "affinity", quota, affinity)


def thread_plan(setting: int = 0) -> ThreadPlan:
    """This process's plan for `cpu_threads` = `setting`, from the real cgroup; logged once per setting."""
    return _thread_plan(setting)


@functools.cache
def _thread_plan(setting: int) -> ThreadPlan:  # (one cache key per setting, however the caller spells it)
    plan = plan_threads(setting, cpu_quota(), affinity_cpus())
    (log.warning if plan.source == "affinity" else log.info)("%s", plan.describe())
    return plan
