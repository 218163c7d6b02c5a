"""The health server cannot be held by its clients (a slowloris, a flood of idle connections), and /healthz can
fail (test_security.py covers which endpoints and methods are served)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from worker.health import HealthServer
from worker.metrics import Metrics

TIMEOUT_S = 1.0


@contextlib.contextmanager
def serving(**options: object) -> Iterator[HealthServer]:
    options = {"request_timeout_s": TIMEOUT_S, **options}
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (True, "ok"), **options).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def _get(port: int, path: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (reads end) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_healthz_fails_with_its_reason_and_a_check_that_raises_fails() -> None:
    state: list[object] = [(True, "progress 1 s ago")]

    def healthy() -> tuple[bool, str]:
        if isinstance(state[0], Exception):
            raise state[0]
        return state[0]  # type: ignore[return-value]

    def broken() -> tuple[bool, str]:
        raise RuntimeError("consumer gone")

    with serving(healthy=healthy) as server:
        assert _get(server.port, "/healthz")[:2] == (200, b"ok\n")
        state[0] = (False, "work in flight, no progress for 901 s")
        assert _get(server.port, "/healthz")[:2] == (503, b"unhealthy: work in flight, no progress for 901 s\n")
        state[0] = KeyError("x")
        assert _get(server.port, "/healthz")[:2] == (503, b"unhealthy: the check failed: KeyError: 'x'\n")
    server = HealthServer(Metrics(), "127.0.0.1", 0, broken).start()
    try:
        assert _get(server.port, "/readyz")[:2] == (503, b"not ready: the check failed: RuntimeError: consumer gone\n")
        assert _get(server.port, "/metrics")[0] == 200 and server.metrics.ready._value.get() == 0
        assert _get(server.port, "/healthz")[:2] == (200, b"ok\n")  # alive unless told otherwise
    finally:
        server.stop()


@pytest.mark.parametrize("dribble", [False, True])
def test_a_slow_client_is_cut_off_and_blocks_no_scrape(dribble: bool) -> None:
    """A client that sends half a request (or a byte every 0.2 s, each well within a read's timeout) is closed
    once `request_timeout_s` has passed in all; /metrics answers at once meanwhile."""
    with serving() as server, socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"GET /metr")
        stop = threading.Event()

        def drip() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(0.2):
                    slow.sendall(b"X")

        dripper = threading.Thread(target=drip, daemon=True)
        if dribble:
            dripper.start()
        status, body, took = _get(server.port, "/metrics")
        assert status == 200 and b"videotag_ready" in body and took < 0.5
        started = time.monotonic()
        assert _closed_within(slow, TIMEOUT_S + 2)
        stop.set()
        assert time.monotonic() - started < TIMEOUT_S + 1


def test_connections_are_bounded_and_a_flood_neither_takes_threads_nor_blocks_for_long() -> None:
    before = threading.active_count()
    with serving(max_connections=8) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(7)]
        try:
            time.sleep(0.2)
            status, _, took = _get(server.port, "/metrics")  # 7 of 8 slots taken: the eighth serves it
            assert status == 200 and took < 0.5
            flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
            try:
                time.sleep(0.3)
                # one thread per slot at most (and the server's own), however many connect
                assert threading.active_count() <= before + 1 + 8
                assert sum(_closed_within(sock, 0.5) for sock in flood) >= 99  # closed unanswered, at once
            finally:
                for sock in flood:
                    sock.close()
            # the idle ones are cut off at the deadline: the slots are free again
            assert all(_closed_within(sock, TIMEOUT_S + 2) for sock in idle)
            assert _get(server.port, "/healthz")[:2] == (200, b"ok\n")
        finally:
            for sock in idle:
                sock.close()
