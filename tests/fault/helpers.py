"""Shared pieces of the fault tests: tiny clips, requests, an answer collector and a stalling S3 proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from tests.kafka_helpers import Topics, produce
from worker.local.demo import encode_clip

# Small, real H.264 clips: decoding is negligible next to the model, so the tests measure the service.
CLIP_SOURCES = ("testsrc2=size=128x96:rate=10", "mandelbrot=size=128x96:rate=10", "smptebars=size=128x96:rate=10")


def tiny_clips(directory: Path, seconds: float = 1.0) -> list[Path]:
    """Three 128x96, 10 fps H.264 clips (about 10-20 KB each)."""
    return [encode_clip(source, seconds, directory / f"tiny-{i}.mp4") for i, source in enumerate(CLIP_SOURCES)]


def request(video_id: str, bucket: str, key: str) -> bytes:
    return json.dumps({"video_id": video_id, "bucket": bucket, "key": key}).encode()


def send_requests(bootstrap: str, topic: str, requests: dict[str, bytes]) -> None:
    """Produce each request keyed by its id: what `Answer.ident` reads back from a dead letter."""
    produce(bootstrap, topic, list(requests.values()), keys=[ident.encode() for ident in requests])


@dataclass(frozen=True)
class Answer:
    ident: str  # the result's video_id, or the DLQ record's original Kafka key (requests are keyed by their id)
    kind: str  # "result" or "dlq"
    code: str | None  # DLQ error code
    timestamp_ms: int  # Kafka timestamp of the answer (set by the worker's producer)
    value: dict[str, Any]
    received: float = 0.0  # wall-clock time the collector read it: minus timestamp_ms, how long it was not visible


class AnswerCollector:
    """Reads the output and DLQ topics from the start in a background thread (no group), until closed;
    `options`: more kafka-python consumer options (TLS, `isolation_level="read_committed"`)."""

    def __init__(self, bootstrap: str, topics: Topics, **options: Any) -> None:
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            request_timeout_ms=10000,
            **options,
        )
        self._consumer.assign([TopicPartition(topics.output, 0), TopicPartition(topics.dlq, 0)])
        self._dlq = topics.dlq
        self._thread = threading.Thread(target=self._run, name="answers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=200)
            except Exception:  # the broker may be restarting: keep polling
                time.sleep(0.2)
                continue
            for batch in batches.values():
                for record in batch:
                    self._add(record)

    def _add(self, record: Any) -> None:
        value = json.loads(record.value)
        if record.topic == self._dlq:
            ident = value["original"].get("key") or value.get("video_id") or value["original"]["value"]
            answer = Answer(ident, "dlq", value["error"]["code"], record.timestamp, value, time.time())
        else:
            answer = Answer(value["video_id"], "result", None, record.timestamp, value, time.time())
        with self._lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def by_id(self) -> dict[str, list[Answer]]:
        out: dict[str, list[Answer]] = {}
        for answer in self.snapshot():
            out.setdefault(answer.ident, []).append(answer)
        return out

    def wait_for(self, idents: set[str], timeout: float) -> set[str]:
        """Wait until every ident has an answer; returns those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = idents - set(self.by_id())
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def sample_metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a /metrics text, e.g. sample_metric(t, 'videotag_failures_total', 'reason="s3_throttled"')."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


class LoopbackServer:
    """A listener on a free loopback port whose accept thread hands every connection to `_handle` (which
    starts its own threads) until `close()`. Subclasses set their attributes before calling __init__."""

    def __init__(self, name: str) -> None:
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


def _error_answer(status: str, code: str) -> bytes:
    body = f'<?xml version="1.0"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>'.encode()
    return f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


ERROR_ANSWERS = {
    "error500": _error_answer("500 Internal Server Error", "InternalError"),
    "error403": _error_answer("403 Forbidden", "AccessDenied"),
}


class StallingProxy(LoopbackServer):
    """A loopback TCP proxy in front of an S3 server that can stall responses to chosen object keys.

    `rules` maps a fragment of the request path to a mode, checked for every chunk of the response:
    - "pass": forward at once;
    - "stall": hold the whole response (the client sees a server that read the request and never answers);
    - "midstream": forward the headers and the first 2 KiB of the body, then hold the rest;
    - "dribble": forward one byte every 0.25 s;
    - "error500", "error403": answer the request itself, with a 500 InternalError (the store failing this
      object) or a 403 AccessDenied (an object the worker may not read).
    Held bytes flow again as soon as the rule is removed, if the client is still waiting. The worker only
    sends bodiless GETs, so every request head on a keep-alive connection starts a new exchange.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: dict[str, str] = {}
        self.held: list[str] = []  # paths whose response was held at least once
        self._lock = threading.Lock()
        super().__init__("proxy")

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_rule(self, fragment: str, mode: str) -> None:
        with self._lock:
            self.rules[fragment] = mode

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def mode(self, path: str) -> str:
        with self._lock:
            return next((mode for fragment, mode in self.rules.items() if fragment in path), "pass")

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        _Connection(self, client, upstream).start()


class _Connection:
    def __init__(self, proxy: StallingProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.path = ""
        self.sent = 0  # bytes of the current response forwarded
        self.header_len: int | None = None
        self.head = bytearray()
        self.closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._requests, name="proxy-c2u", daemon=True).start()
        threading.Thread(target=self._responses, name="proxy-u2c", daemon=True).start()

    def _close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _requests(self) -> None:
        buffer = b""
        try:
            while data := self.client.recv(65536):
                buffer += data
                forward = b""
                while b"\r\n\r\n" in buffer:  # bodiless requests: each head is a whole request
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    line = head.split(b"\r\n", 1)[0].decode("latin-1")
                    self.path = line.split(" ")[1] if " " in line else line
                    self.sent, self.header_len, self.head = 0, None, bytearray()
                    if (answer := ERROR_ANSWERS.get(self.proxy.mode(self.path))) is not None:
                        self.client.sendall(answer)
                    else:
                        forward += head + b"\r\n\r\n"
                if forward:
                    self.upstream.sendall(forward)
        except OSError:
            pass
        self._close()

    def _responses(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                if not self._deliver(data):
                    break
        except OSError:
            pass
        self._close()

    def _deliver(self, data: bytes) -> bool:
        if self.header_len is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end >= 0:
                self.header_len = end + 4
        view = memoryview(data)
        held = False
        while view:
            if self.closed.is_set() or self.proxy._closed.is_set():
                return False
            mode = self.proxy.mode(self.path)
            if mode == "pass" or (mode == "midstream" and self.header_len is None):
                allowed = len(view)
            elif mode == "midstream":
                allowed = max(0, self.header_len + 2048 - self.sent)  # type: ignore[operator]
            elif mode == "dribble":
                allowed = 1
            else:
                allowed = 0
            if allowed < len(view) and not held:
                held = True
                self.proxy.held.append(self.path)
            if allowed:
                chunk = view[:allowed]
                self.client.sendall(chunk)
                self.sent += len(chunk)
                view = view[len(chunk) :]
            if view:
                time.sleep(0.25 if mode == "dribble" else 0.05)
        return True
