"""Running `videotag worker` as a real process against the suite's broker and S3 server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.kafka_helpers import Topics
from worker.local.stack import KafkaServer, S3Server, free_port

# Small and fast: ResNet-50 with seeded random weights, few frames. Fidelity is tested elsewhere.
FAST_MODEL = {
    "allow_random_weights": "true",
    "layers": "50",
    "engine": "dygraph",
    "seg_num": "4",
    "label_file": "no-labels-needed.txt",
}
SECRET_KEY = "integration-secret-key-7f3a"


class WorkerProcess:
    def __init__(
        self,
        log_dir: Path,
        broker: KafkaServer,
        s3: S3Server,
        topics: Topics,
        group_id: str,
        env: dict[str, str] | None = None,
        **settings: str,
    ) -> None:
        """`settings` become VIDEOTAG_* variables; `env` adds other variables (POD_NAME, say)."""
        self.metrics_port = free_port()
        self.log_path = log_dir / f"worker-{self.metrics_port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEOTAG_", "AWS_", "POD_NAME"))}
        values = {
            "bootstrap_servers": broker.bootstrap_servers,
            "s3_endpoint_url": s3.endpoint_url,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "dlq_topic": topics.dlq,
            "group_id": group_id,
            "metrics_host": "127.0.0.1",
            "metrics_port": str(self.metrics_port),
            "temp_dir": str(log_dir / f"tmp-{self.metrics_port}"),
            "drain_grace_s": "60",
            "retry_backoff_base_s": "0.2",
            "retry_backoff_max_s": "2",
            **FAST_MODEL,
            **settings,
        }
        environ |= {f"VIDEOTAG_{k.upper()}": v for k, v in values.items()}
        environ |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
        environ |= env or {}
        self.temp_dir = Path(values["temp_dir"])
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def readyz(self) -> str:
        """/readyz as "<status> <body>", e.g. "503 not ready: ...", or "" while nothing answers."""
        try:
            code, body = self.get("/readyz")
        except OSError:
            return ""
        return f"{code} {body.strip()}"

    def wait_readyz(self, *words: str, timeout: float = 90) -> str:
        """Poll /readyz until it says every one of `words` (e.g. "503", "WRITE on topic"); returns what it said."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            said = self.readyz()
            if all(word in said for word in words):
                return said
            time.sleep(0.2)
        raise AssertionError(f"/readyz never said {words} in {timeout} s:\n{self.log()[-3000:]}")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics, e.g. metric('videotag_videos_processed_total', 'status="ok"')."""
        text = self.get("/metrics")[1]
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    def model_process_pid(self) -> int | None:
        """The pid of this worker's model process (a child running worker.model_process), or None."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (proc / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.process.pid and b"worker.model_process" in cmdline:
                return int(proc.name)
        return None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()


def wait_for_assignment(workers: list[WorkerProcess], partitions: int, timeout: float = 60) -> None:
    """Until each worker holds a partition and together they hold all `partitions`: the group has settled, so
    records produced from now on are not caught in the joins' rebalances."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [w.metric("videotag_assigned_partitions") for w in workers]
        if all(held) and sum(held) == partitions:
            return
        time.sleep(0.2)
    group_lines = [
        [line for line in w.log().splitlines() if any(word in line for word in ("assigned", "revoked", "lost"))]
        for w in workers
    ]
    raise AssertionError(
        f"partitions held {held}, expected {partitions} over {len(workers)} workers; their group logs:\n"
        + "\n".join(f"worker {i}:\n" + "\n".join(lines[-12:]) for i, lines in enumerate(group_lines))
    )


SpawnWorker = Callable[..., WorkerProcess]  # the `spawn` fixture (tests/conftest.py)
