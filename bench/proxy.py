"""A counting TCP proxy on loopback: round trips per call, seen on the wire.

A round trip is counted each time the client starts sending after the server last spoke (or on
a new connection): pipelined commands and a request split over several TCP segments count once,
exactly like the latency they cost. Used only in the counting pass, never while timing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_CONNECTIONS = 256


@dataclass
class Counts:
    round_trips: int = 0
    connections: int = 0


class CountingProxy:
    """Listen on 127.0.0.1:<free port> and forward to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.counts = Counts()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="bench-proxy", daemon=True).start()

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(self.counts.round_trips, self.counts.connections)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if len(self._sockets) >= 2 * MAX_CONNECTIONS:
                    self._sockets = [s for s in self._sockets if s.fileno() != -1]
                if len(self._sockets) >= 2 * MAX_CONNECTIONS:
                    client.close()
                    continue
                self.counts.connections += 1
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            state = {"last": "down"}
            threading.Thread(
                target=self._pump, args=(client, server, state, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, state, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if upstream:
                        if state["last"] != "up":
                            self.counts.round_trips += 1
                            state["last"] = "up"
                    else:
                        state["last"] = "down"
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def proxied_url(url: str, port: int) -> str:
    """``url`` pointed at a proxy listening on 127.0.0.1:``port`` (credentials kept)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urlunsplit(parts._replace(netloc=netloc))
