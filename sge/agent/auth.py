"""Signed staging requests: only root on a cluster host may make an agent stage.

`install` writes a random key that only root can read (mode 0600). A request names
the image, the host it is addressed to, a timestamp and a random nonce, and carries
an HMAC-SHA256 of all of them. The agent refuses a request whose MAC is wrong, whose
timestamp is more than `WINDOW` seconds off, whose nonce it has already seen in that
window (a captured request replayed), or that was addressed to another host (a
request for node1 replayed to node2). Nonces live in memory only, so a request
stamped before this agent started is refused too: a request captured before a
restart cannot be replayed after it (the client simply asks again).

The answer is signed like the request (`sign_answer`), bound to the exact request
line: "ready" changes what root does on the asking host, so a process that took the
agent's port, or any host on the path, must not be able to say it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
import time
from typing import TYPE_CHECKING

from ..config import config_path
from ..fsutil import atomic_write

if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

    from ..config import Settings

WINDOW = 60.0           # seconds a signed request stays valid
MAX_NONCES = 100_000    # nonces remembered within the window; beyond: refuse (flood)
KEY_BYTES = 32


class AuthError(Exception):
    pass


class TooEarly(AuthError):
    """Stamped before this agent started: the answer is "ask again", not a refusal."""


def key_path(settings: Settings) -> str:
    path = settings.agent.key_file
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(settings.path or config_path())), path)
    return path


def read_key(path: str) -> bytes:
    """The key, refused unless it is a root-owned file no one else can read or write:
    a key others can read lets them forge requests."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise AuthError(f"{path}: the agent key must be a file of root's, mode 0600")
        key = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(key) < 32:
        raise AuthError(f"{path}: the agent key is too short")
    return key


def create_key(path: str) -> bool:
    """Write a fresh key (0600, root's); an existing one is kept."""
    if os.path.exists(path):
        return False
    atomic_write(path, os.urandom(KEY_BYTES).hex() + "\n", mode=0o600)
    return True


def _message(fields: Sequence[object]) -> bytes:
    return "\n".join(["sge-image-stage"] + [str(f) for f in fields]).encode()


def sign(key: bytes, name: str, host: str, source: str = "-", now: Optional[float] = None,
         nonce: Optional[str] = None) -> str:
    """-> the request fields: name host source ts nonce mac (one line, space
    separated). `source` names a host that has the image ("-": none known), such as a
    parallel job's master: the agent tries it first (its bytes are verified like any)."""
    ts = f"{now if now is not None else time.time():.3f}"
    nonce = nonce or os.urandom(16).hex()
    mac = hmac.new(key, _message([name, host, source, ts, nonce]), hashlib.sha256).hexdigest()
    return f"{name} {host} {source} {ts} {nonce} {mac}"


def _answer_message(line: str, answer: Mapping[str, Any]) -> bytes:
    body = json.dumps({k: v for k, v in answer.items() if k != "mac"}, sort_keys=True)
    return "\n".join(["sge-image-answer", hashlib.sha256(line.encode()).hexdigest(),
                      body]).encode()


def sign_answer(key: bytes, line: str, answer: Dict[str, Any]) -> Dict[str, Any]:
    """`answer` with a "mac" over it and the request `line` it answers."""
    mac = hmac.new(key, _answer_message(line, answer), hashlib.sha256).hexdigest()
    return {**answer, "mac": mac}


def check_answer(key: bytes, line: str, answer: Mapping[str, Any]) -> Dict[str, Any]:
    """The answer without its mac, or AuthError: an unsigned or forged answer (a
    process on the agent's port, a host on the path) is no answer at all."""
    mac = answer.get("mac")
    want = hmac.new(key, _answer_message(line, answer), hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest raises TypeError on a non-ASCII str (found by
    # tests/reliability/test_agent_fuzz.py), and a forged answer may carry one.
    if not isinstance(mac, str) or not hmac.compare_digest(want.encode(),
                                                           mac.encode("utf-8", "replace")):
        raise AuthError("unsigned or forged answer")
    return {k: v for k, v in answer.items() if k != "mac"}


class Verifier:
    """Checks signed requests for one host; remembers nonces for the window and
    refuses requests stamped before it was made (`not_before`)."""

    def __init__(self, key: bytes, hosts: Iterable[str],
                 clock: Callable[[], float] = time.time,
                 not_before: Optional[float] = None) -> None:
        self.key = key
        self.hosts = {h.lower() for h in hosts}   # names this host answers to
        self.clock = clock
        self.seen: Dict[str, float] = {}           # nonce -> expiry
        # Nonces seen before a restart are forgotten: requests from before it are
        # refused instead (issue 17: a captured request was accepted again).
        self.not_before = clock() if not_before is None else not_before

    def check(self, line: str) -> Tuple[str, Optional[str]]:
        """-> (image name, source host or None), or AuthError saying why the request
        is refused."""
        parts = line.split()
        if len(parts) != 6:
            raise AuthError("malformed request")
        name, host, source, ts, nonce, mac = parts
        try:
            t = float(ts)
        except ValueError:
            raise AuthError("malformed timestamp") from None
        if not math.isfinite(t):  # nan compares false with everything: it never expired
            raise AuthError("malformed timestamp")
        if len(nonce) != 32 or len(mac) != 64:
            raise AuthError("malformed nonce or mac")
        want = hmac.new(self.key, _message([name, host, source, ts, nonce]),
                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want.encode(), mac.encode("utf-8", "replace")):
            raise AuthError("bad signature")
        now = self.clock()
        if abs(now - t) > WINDOW:
            raise AuthError("request expired (or the clocks differ by more than a minute)")
        if host.lower() not in self.hosts:
            raise AuthError(f"request addressed to host {host!r}, not this one")
        if t < self.not_before:
            raise TooEarly("request made before this agent started (ask again)")
        self._expire(now)
        if nonce in self.seen:
            raise AuthError("replayed request")
        if len(self.seen) >= MAX_NONCES:
            raise AuthError("too many requests")
        self.seen[nonce] = now + 2 * WINDOW
        return name, (None if source == "-" else source)

    def _expire(self, now: float) -> None:
        if len(self.seen) < 1024:
            return
        self.seen = {n: e for n, e in self.seen.items() if e > now}
