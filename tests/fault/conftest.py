"""Fixtures of the fault tests: tiny clips and worker processes that are always killed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault.helpers import tiny_clips
from tests.integration.worker_process import WorkerProcess
from tests.kafka_helpers import Topics
from worker.localstack import KafkaBroker, S3Server


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("tiny-clips"))


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[SpawnWorker]:
    """spawn(broker, s3, topics, group_id, **settings) → a started `videotag worker` process (SIGKILLed at the
    end of the test whatever happens)."""
    started: list[WorkerProcess] = []

    def start(broker: KafkaBroker, s3: S3Server, topics: Topics, group_id: str, **settings: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, broker, s3, topics, group_id, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
