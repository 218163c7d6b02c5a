"""The worker's HTTP endpoints: /metrics, /healthz (process alive), /readyz (able to make progress).

Nothing else is served: every other path is 404, every method but GET/HEAD is 405.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import Metrics

ReadyCheck = Callable[[], tuple[bool, str]]


class HealthServer:
    """Serves the endpoints from a daemon thread; `port` is the bound port (pass 0 for a free one)."""

    def __init__(self, metrics: Metrics, host: str, port: int, ready: ReadyCheck) -> None:
        self.metrics = metrics
        self.ready = ready
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
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
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    ok, _ = server.ready()
                    server.metrics.ready.set(1 if ok else 0)
                    self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok, reason = server.ready()
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
