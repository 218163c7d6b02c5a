"""The worker's HTTP endpoints: /metrics, /healthz (the process makes progress), /readyz (able to make progress).

Nothing else is served: every other path is 404, every method but GET/HEAD is 405.

Invariants: no client can hold the server. One request per connection (HTTP/1.0); a connection must deliver its
request within `request_timeout_s` in all (not per read: a client sending a byte at a time is cut off too),
and each write to it waits at most as long; at most `max_connections` are served at once, each on a thread of
its own, and one more is closed unanswered. So a slow or malicious client costs one thread for a few seconds
and never stalls a scrape or a probe behind it. The checks (`ready`, `healthy`) must be quick: they run on
the request's thread; a check that raises counts as failing.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import Metrics

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

Check = Callable[[], tuple[bool, str]]  # (ok, the reason, for people)
REQUEST_TIMEOUT_S = 5.0  # probes and scrapers send their request at once
MAX_CONNECTIONS = 16  # a few scrapers and probes, with room to spare


def _alive() -> tuple[bool, str]:
    return True, "alive"


def _run_check(check: Check) -> tuple[bool, str]:
    """The check's answer; one that raises is failing, with the exception as its reason."""
    try:
        return check()
    except Exception as exc:
        return False, f"the check failed: {type(exc).__name__}: {exc}"


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes until a deadline: each read waits at most what is left of it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._poll = select.poll()  # not select(): any descriptor number works
        self._poll.register(sock, select.POLLIN)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0 or not self._poll.poll(left * 1000):
            raise TimeoutError("the request did not arrive in time")
        return self._sock.recv_into(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; a connection above that is closed."""

    daemon_threads = True
    # A burst of connections waits in the kernel's queue to be accepted (then served, or closed at once), not
    # dropped: a dropped connection retries a second later, which a probe's timeout may not allow.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread that releases the slot
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        pass  # a client that hung up or was too slow: nothing to report, and no traceback on stderr


class HealthServer:
    """Serves the endpoints from a daemon thread; `port` is the bound port (pass 0 for a free one)."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        ready: Check,
        healthy: Check = _alive,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.healthy = healthy
        self.request_timeout_s = request_timeout_s
        self._server = _BoundedServer((host, port), self._handler(), max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = server.request_timeout_s  # each socket operation, writes included

            def setup(self) -> None:
                super().setup()
                self.rfile.close()
                deadline = time.monotonic() + server.request_timeout_s
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    ok, _ = _run_check(server.ready)
                    server.metrics.ready.set(1 if ok else 0)
                    self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, reason = _run_check(server.healthy)
                    self._send(200 if ok else 503, b"ok\n" if ok else f"unhealthy: {reason}\n".encode())
                elif path == "/readyz":
                    ok, reason = _run_check(server.ready)
                    self._send(200 if ok else 503, f"{'ready' if ok else 'not ready'}: {reason}\n".encode())
                else:
                    self._send(404, b"not found\n")

            def do_HEAD(self) -> None:
                self.do_GET()

            def _refuse(self) -> None:
                self._send(405, b"method not allowed\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the worker's own logs

        return Handler
