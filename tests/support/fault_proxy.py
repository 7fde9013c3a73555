"""A loopback TCP proxy in front of Postgres that can lose a reply or cut a statement.

``lose_reply_after(marker)``: the next client message containing ``marker`` is forwarded, the
server's answer (sent after the commit, in autocommit mode) is swallowed and both sides are
closed: a committed write whose acknowledgement never arrives. ``cut_after(marker, nbytes)``:
only the first ``nbytes`` of that message reach the server before the connection dies, so the
statement never completes. Each arming applies to ``times`` statements.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

# A message write on the wire from the sync store: the INSERT is prepared once per connection,
# then sent as ``EXECUTE <name> (<conversation>, <limit>, ARRAY[...], ...)``, rows as arrays.
WRITE_ON_THE_WIRE = b", ARRAY["


@dataclass
class _Fault:
    kind: str  # "lose_reply" or "cut"
    marker: bytes
    times: int
    nbytes: int = 0
    fired: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """Listen on 127.0.0.1:<free port> and forward to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_after(self, marker: bytes, *, times: int = 1) -> threading.Event:
        """Arm: the next ``times`` statements containing ``marker`` commit without a reply."""
        with self._lock:
            self._fault = _Fault("lose_reply", marker, times)
            return self._fault.done

    def cut_after(self, marker: bytes, nbytes: int, *, times: int = 1) -> threading.Event:
        """Arm: the next ``times`` messages containing ``marker`` are cut after ``nbytes``."""
        with self._lock:
            self._fault = _Fault("cut", marker, times, nbytes=nbytes)
            return self._fault.done

    def fired(self) -> int:
        with self._lock:
            return self._fault.fired if self._fault else 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            link = {"lose_next_reply": False}
            threading.Thread(target=self._up, args=(client, server, link), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, link), daemon=True).start()

    def _take(self, data: bytes) -> _Fault | None:
        with self._lock:
            fault = self._fault
            if fault is None or fault.fired >= fault.times or fault.marker not in data:
                return None
            fault.fired += 1
            if fault.fired >= fault.times:
                fault.done.set()
            return fault

    def _up(self, src: socket.socket, dst: socket.socket, link: dict) -> None:
        try:
            while data := src.recv(1 << 20):
                fault = self._take(data)
                if fault is not None and fault.kind == "cut":
                    dst.sendall(data[: fault.nbytes])
                    break
                if fault is not None:
                    link["lose_next_reply"] = True
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, link: dict) -> None:
        try:
            while data := src.recv(1 << 20):
                if link["lose_next_reply"]:
                    break  # the server answered (the commit happened); the client never hears
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        self._close(*sockets)
