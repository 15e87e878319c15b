"""The HTTP wire pieces every HTTP-speaking source shares (http, s3, oras, peers):
connections, the body's readinto loop into the sink's reused buffers, status errors.
The transfer loop built from them (resume, redirects, refusals) is resumable.py.

requests' iter_content measured 1.4-2.5x slower than a plain readinto loop for
multi-GB bodies, so the standard library it is. A reader faster than a server that
writes its body in small pieces (`rclone serve s3`: 40-170 KiB per read into a 1 MiB
buffer, where nginx fills it whole) wakes for every piece; once a body of known
length shows that pattern, the socket's receive low-water mark is raised
(SO_RCVLOWAT) so that each wake-up takes a few hundred KiB: measured on that server,
six times fewer reads and a fifth less CPU in the reading thread, which shares two
cores with the server. A body that arrives in large reads is left as it is. A body
slower than `low_speed_limit` for `low_speed_time` is abandoned (a dribbling server
must not hold a job slot for hours), as curl does with --speed-limit.
"""
from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import time
from contextlib import suppress
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from .. import __version__
from ..errors import FetchError
from . import redact

if TYPE_CHECKING:
    from typing import Optional

    from ..sink import Sink
    from . import Context

MAX_REDIRECTS = 5
MAX_RESUMES = 5
RCVBUF = 4 << 20
LOWAT = 256 << 10       # bytes the kernel gathers before waking the reader
SMALL_READS = 32        # small reads in a row before the low-water mark is raised
MIN_READ = 64 << 10     # never a smaller read into a sink buffer, but for a body's tail
LOWAT_FUSE_MS = 200     # a stream that cannot fill LOWAT in this long is read as it comes
USER_AGENT = f"sge-image-kit/{__version__}"


class Interrupted(Exception):
    """The body stopped early; resumable if the server supports ranges."""


class _HTTPConnection(http.client.HTTPConnection):
    """A connection that knows what a request on it needs besides the path."""

    absolute = False            # through a plain-http proxy: the request names the whole URL
    auth: Optional[str] = None  # Basic credentials from the URL's user:password


class _HTTPSConnection(_HTTPConnection, http.client.HTTPSConnection):
    """The same over TLS."""


def stream_body(resp: http.client.HTTPResponse, sink: Sink, ctx: Context, shown: str) -> None:
    """Fill the sink's buffers with single socket reads (readinto1), so the
    low-speed check runs between reads: a plain readinto waits for a whole buffer,
    which a server sending a byte a second never completes."""
    limit = ctx.settings.low_speed_limit
    window = ctx.settings.low_speed_time
    mark_t, mark_n = time.monotonic(), sink.received
    remaining = resp.length  # None for chunked bodies: http.client decodes those
    lowat = _LowWater(resp) if remaining else None
    while remaining != 0:
        buf = sink.buffer()
        filled = 0
        try:
            while filled < len(buf) and remaining != 0:
                if remaining is not None and len(buf) - filled < MIN_READ < remaining:
                    # Commit and take a fresh buffer rather than read a sliver: a read
                    # smaller than the socket file's own buffer would go through that
                    # buffer and could leave bytes there that the low-water poll
                    # cannot see.
                    break
                view = buf[filled:] if remaining is None else buf[filled:filled + remaining]
                if remaining is None:
                    n = resp.readinto(view)
                else:
                    if lowat is not None:
                        lowat.wait(len(view))
                    n = resp.fp.readinto1(view)
                    if lowat is not None:
                        lowat.saw(n, len(view))
                if not n:
                    if remaining is None:
                        break
                    raise Interrupted(f"connection closed after {sink.received + filled} bytes")
                filled += n
                if remaining is not None:
                    remaining -= n
                if limit and window:
                    now = time.monotonic()
                    if now - mark_t >= window:
                        rate = (sink.received + filled - mark_n) / (now - mark_t)
                        if rate < limit:
                            raise FetchError(f"{shown}: transfer too slow ({rate:.0f} B/s for "
                                             f"{window:.0f}s)", transient=True)
                        mark_t, mark_n = now, sink.received + filled
            if remaining is None and not filled:
                sink.commit(0)
                return
        except http.client.IncompleteRead as e:
            sink.commit(filled)
            raise Interrupted(f"connection closed after {sink.received} bytes "
                               f"({e.expected} more expected)") from None
        except (socket.timeout, TimeoutError):
            sink.commit(filled)
            raise Interrupted(f"no data for {ctx.read_timeout:.0f}s") from None
        except (OSError, http.client.HTTPException) as e:
            sink.commit(filled)
            raise Interrupted(f"connection lost: {e}") from None
        except BaseException:
            sink.commit(filled)
            raise
        sink.commit(filled)
    # Tell http.client the body is consumed (we read past its bookkeeping).
    resp.length = 0
    if lowat is not None:
        lowat.reset()


class _LowWater:
    """SO_RCVLOWAT for one body of known length, raised only once reads have come
    back small SMALL_READS times in a row though a large read was asked for. Then,
    before each read, poll until `min(LOWAT, wanted)` bytes are there; a stream too
    slow to gather LOWAT within LOWAT_FUSE_MS drops it for good and is read as it
    comes, so low-speed checks and read timeouts keep their meaning. Does nothing
    where the option or poll is missing."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.sock: Optional[socket.socket] = getattr(getattr(resp.fp, "raw", None), "_sock", None)
        self.current = 1
        self.small = 0
        self.active = False
        self.usable = (self.sock is not None and hasattr(socket, "SO_RCVLOWAT")
                       and hasattr(select, "poll"))
        self.poller: Optional[select.poll] = None

    def saw(self, n: int, asked: int) -> None:
        """After a read of `n` bytes where `asked` were wanted."""
        sock = self.sock
        if self.active or not self.usable or sock is None:
            return
        if asked >= LOWAT and n <= LOWAT // 4:
            self.small += 1
            if self.small >= SMALL_READS:
                self.active = True
                self.poller = select.poll()
                self.poller.register(sock, select.POLLIN)
        else:
            self.small = 0

    def wait(self, wanted: int) -> None:
        poller = self.poller  # made when the mark became active
        if not self.active or poller is None:
            return
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return  # already decrypted bytes: the kernel's count cannot see them
        want = max(1, min(LOWAT, wanted))
        if not self._set(want):
            return
        if want > 1 and not poller.poll(LOWAT_FUSE_MS):
            self._set(1)
            self.active = self.usable = False

    def _set(self, value: int) -> bool:
        if value == self.current:
            return True
        if self.sock is None:  # not usable: the mark is never raised
            return False
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
        except OSError:
            self.active = self.usable = False
            return False
        self.current = value
        return True

    def reset(self) -> None:
        """Back to the kernel's default for whatever the connection reads next."""
        if self.current != 1:
            self._set(1)


def connection(url: str, ctx: Context) -> _HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{redact(url)}: not an http(s) URL", transient=False)
    host, port = parts.hostname, parts.port
    proxy = None if proxy_bypass(host) else getproxies().get(parts.scheme)
    timeout = ctx.connect_timeout
    conn: _HTTPConnection
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if not p.hostname:
            raise FetchError(f"{redact(url)}: the {parts.scheme} proxy {redact(proxy)!r} of this "
                             f"host's environment names no host", transient=True)
        if parts.scheme == "https":
            conn = _HTTPSConnection(p.hostname, p.port or 3128, timeout=timeout,
                                    context=ssl.create_default_context())
            conn.set_tunnel(host, port or 443)
        else:
            conn = _HTTPConnection(p.hostname, p.port or 3128, timeout=timeout)
            conn.absolute = True
    elif parts.scheme == "https":
        conn = _HTTPSConnection(host, port, timeout=timeout,
                                context=ssl.create_default_context())
    else:
        conn = _HTTPConnection(host, port, timeout=timeout)
    if parts.username:
        cred = f"{parts.username}:{parts.password or ''}".encode()
        conn.auth = "Basic " + base64.b64encode(cred).decode()
    return conn


def tune(conn: http.client.HTTPConnection, ctx: Context) -> None:
    """After connecting: the read timeout replaces the connect timeout, and a large
    receive buffer keeps the loopback/LAN pipe full between readinto calls."""
    sock = conn.sock
    if sock is None:
        return
    sock.settimeout(ctx.read_timeout)
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def status_error(resp: http.client.HTTPResponse, shown: str) -> FetchError:
    code = resp.status
    reason = f"HTTP {code} {resp.reason}".strip()
    if code in (404, 410):
        return FetchError(f"{shown}: not found ({reason})", transient=False)
    if code in (401, 403):
        return FetchError(f"{shown}: access denied ({reason}); check the credentials", transient=False)
    if code in (408, 425, 429) or code >= 500:
        return FetchError(f"{shown}: server error ({reason})", transient=True)
    return FetchError(f"{shown}: unexpected {reason}", transient=False)


def range_start(content_range: Optional[str]) -> int:
    if content_range is None:
        return -1
    try:
        return int(content_range.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return -1


def describe(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out connecting"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (server down?)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host ({e.strerror})"
    return str(e) or type(e).__name__
