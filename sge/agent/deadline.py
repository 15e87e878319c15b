"""Deadlines, not timeouts, for every exchange with another host's agent.

A socket timeout restarts on every byte: a peer that sends one header byte every
4 s never trips a 5 s read timeout, and a root prolog holding the image lock waited
on it forever (issue 17). Here the deadline is a point in time. Every receive and
send waits at most until it, however the bytes trickle, so connect + request + the
whole answer head (and a staging answer's body) end by it. A blob's body may run
past the exchange's deadline while it keeps the low-speed rate
(sge/fetch/httpwire.py), but never past the pull's budget for time on peers
(`Budget`): then the pull goes to the catalog's sources.
"""
from __future__ import annotations

import http.client
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Optional


class DeadlinePassed(TimeoutError):
    """The exchange's deadline passed (a subclass of the timeout every caller handles)."""


class Budget:
    """A pull's time on peers: one end, shared by every exchange the pull makes."""

    def __init__(self, seconds: float, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        return self.end - self.clock()

    def spent(self) -> bool:
        return self.left() <= 0

    def until(self, seconds: float) -> float:
        """A deadline `seconds` from now, never past the budget's end."""
        return min(self.clock() + seconds, self.end)


class DeadlineSocket(socket.socket):
    """A connected socket whose every receive and send ends by `deadline`
    (time.monotonic()); each single wait is also at most `step` seconds (the read
    timeout), so a stalled peer is noticed as before."""

    deadline = float("inf")
    step: Optional[float] = None

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("deadline passed")
        self.settimeout(left if self.step is None else min(left, self.step))

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def extend(self, deadline: float) -> None:
        """A new deadline (the body's, once the head is in)."""
        self.deadline = deadline


def connect(addr: str, port: int, deadline: float, connect_timeout: float,
            step: Optional[float] = None,
            source: Optional[str] = None) -> http.client.HTTPConnection:
    """An HTTP connection to addr:port (never through a proxy): the connect waits at
    most `connect_timeout`, and it and every later receive and send end by
    `deadline`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed("no time left to connect")
    conn = http.client.HTTPConnection(addr, port, timeout=min(left, connect_timeout),
                                      source_address=(source, 0) if source else None)
    conn.connect()
    sock = conn.sock
    assert sock is not None
    wrapped = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    wrapped.deadline, wrapped.step = deadline, step
    conn.sock = wrapped
    return conn
