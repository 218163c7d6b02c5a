"""A TLS-terminating front (what an Envoy or stunnel sidecar does) and a Tansu broker reached only through it.

Tansu 0.6 cannot serve TLS, so the TLS tests put this front before a real Tansu process and make Tansu advertise
the front's address: every Kafka client then speaks TLS to the front, which relays the plaintext Kafka protocol
to Tansu's own loopback port. What this shows is the client side (the worker's TLS, mutual authentication,
CA verification), not a broker's TLS implementation.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from kafka.admin import KafkaAdminClient

from tests.fault.helpers import LoopbackServer
from worker.localstack import LOOPBACK, KafkaBroker

HANDSHAKE_TIMEOUT_S = 10.0


class TLSFront(LoopbackServer):
    """Listens on a free loopback port; each connection gets the server side of a TLS handshake (with
    `client_ca`, a client certificate of that CA is required), then is relayed to the plaintext
    `upstream_port` (settable later) until either side closes. A thread per connection.

    Records events: ("tls", peer CN or None) after a handshake, ("tls_error", exception type, reason) for a
    failed one, ("upstream_error", reason) when the upstream refuses."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None, upstream_port: int | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca:  # mutual TLS: a client without a certificate of our CA fails the handshake
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.upstream_port = upstream_port
        self.events: list[tuple[Any, ...]] = []
        super().__init__("tls-front")

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]

    def _handle(self, conn: socket.socket) -> None:  # after close(), relayed connections end within 0.2 s
        threading.Thread(target=self._serve, args=(conn,), name="tls-front-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.events.append(("tls_error", type(exc).__name__, str(exc)[:120]))
            conn.close()
            return
        peer = tls.getpeercert() or {}
        self.events.append(("tls", dict(item[0] for item in peer.get("subject", ())).get("commonName")))
        try:
            self._session(tls)
        except OSError:  # a reset, a timeout, an SSL error after the handshake: the connection just ends
            pass
        finally:
            tls.close()

    def _session(self, tls: ssl.SSLSocket) -> None:
        """Relay bytes both ways between the TLS client and the plaintext upstream."""
        try:
            upstream = socket.create_connection((LOOPBACK, self.upstream_port or 0), timeout=HANDSHAKE_TIMEOUT_S)
        except OSError as exc:
            self.events.append(("upstream_error", str(exc)[:120]))
            return
        peers = {tls: upstream, upstream: tls}
        with upstream:
            while not self._closed.is_set():
                # Bytes OpenSSL has already decrypted are invisible to select: serve them first.
                ready = [tls] if tls.pending() else select.select(list(peers), [], [], 0.2)[0]
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)


class TLSFrontedBroker(KafkaBroker):
    """A real Tansu process that advertises `front` as its listener: clients reach it only through the front,
    with `client_security` (kafka-python options) for the admin clients this class makes itself."""

    def __init__(self, log_dir: Path, front: TLSFront, client_security: dict[str, Any], **options: Any) -> None:
        super().__init__(log_dir, **options)
        self.front = front
        self.client_security = client_security

    @property
    def bootstrap_servers(self) -> str:
        return self.front.address

    def _argv(self, binary: str, port: int) -> list[str]:
        self.front.upstream_port = port  # Tansu listens in plaintext on `port`; clients are told the front
        argv = super()._argv(binary, port)
        argv[argv.index("--advertised-listener-url") + 1] = f"tcp://{self.front.address}"
        return argv

    def _answers(self, port: int) -> bool:
        """Ready once an admin client gets the topic list through the front (metadata points there)."""
        with contextlib.suppress(Exception), contextlib.closing(
            self.admin(request_timeout_ms=3000, bootstrap_timeout_ms=3000)
        ) as admin:
            admin.list_topics()
            return True
        return False

    def admin(self, **options: Any) -> KafkaAdminClient:
        """An admin client over TLS through the front; the caller closes it."""
        return KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                **({"request_timeout_ms": 10000} | options | self.client_security))
