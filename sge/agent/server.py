"""The agent's HTTP side: verified blobs to peers, staging requests to the root side.

It listens on a port anyone on the network can reach, so it accepts as little as it
can: `GET`/`HEAD /blobs/sha256/<64 hex>` (the exact digest, nothing decoded, no
listing, no names), `POST /stage` (a signed line the root side checks), and nothing
else. One request per connection. Each bound is there for a reason:
- trust comes first: the accepting thread checks the address before the connection
  costs a slot or a thread, and a stranger's connection is closed at once (issue 17:
  strangers held the slots, and each refusal lingered a second);
- the request head must arrive whole within `header_timeout` and fit in 8 KiB: a
  client sending a byte a minute (slow loris) or an endless header holds no thread;
- at most `max_connections` handler threads, and at most `max_per_address` of them
  for one address; one more is told 503 and closed: one greedy host cannot keep the
  others' staging requests and HEADs out;
- at most `upload_slots` blob bodies in flight (a HEAD or a staging request takes
  none); one more gets 503 + Retry-After, and the client tries another peer or the
  origin;
- a transfer slower than `upload_min_rate` over `idle_timeout` seconds loses its
  slot (a stalled one is the case of rate 0): slow readers cannot hold the slots;
- all uploads together send at most `upload_rate` bytes a second (UploadCap, one
  token bucket for every upload thread; 0: no cap), so that serving peers cannot
  starve the jobs' own traffic on the host's link; time spent waiting on the cap
  is not the reader's, and never counts against `upload_min_rate`;
- the blob is opened with O_NOFOLLOW below the blobs directory and must be a regular
  file: a symlink planted there leads nowhere;
- a client that sends `X-Sge-Image-Inflight: 1` also takes a blob this host is still
  downloading (sge/agent/inflight.py): the root side opens the temp file and hands
  over a read-only descriptor, and the bytes are sent as they land, holding an upload
  slot, never waiting more than `idle_timeout` for the next ones;
- a 503 for a blob names (sge/agent/redirects.py) up to a handful of the addresses
  this agent is sending that same blob to, whole or in progress: they are
  downloading it, so the client can stream from one of them instead of the origin.
  The list lives as long as the transfers (one entry per upload slot in use).
Serving wrong bytes cannot hurt a client (it verifies every byte), but serving a file
outside the cache would leak it: hence the exact-digest path and O_NOFOLLOW.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import json
import os
import re
import socket
import stat
import threading
import time
from typing import (
    BinaryIO,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
    cast,
)

from ..metrics import agent_counts as metrics
from . import protocol
from .inflight import Abandoned, follow
from .redirects import HEADER, header_value

# stage(request line, client ip) -> (HTTP status, answer)
StageFn = Callable[[str, str], Tuple[int, Dict[str, object]]]
# inflight(digest) -> (read-only fd, expected size) of a download in progress
InflightFn = Callable[[str], Optional[Tuple[int, int]]]

MAX_HEAD = 8192
MAX_STAGE_BODY = 512
BLOB_PATH = re.compile(r"/blobs/sha256/([0-9a-f]{64})")
REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|TRACE|CONNECT|PATCH) (\S{1,2048}) HTTP/1\.[01]")
RETRY_AFTER = 2
REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Content Too Large", 416: "Range Not Satisfiable",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Reject(Exception):
    def __init__(self, status: int, headers: Optional[Dict[str, str]] = None) -> None:
        self.status = status
        self.headers = headers or {}


class BlobServer:
    """Serve `blobs_dir` on the listening socket `sock`.

    allowed(ip) -> bool decides who may talk at all; stage(line, ip) -> (status, dict)
    forwards a signed staging request (None: this agent stages nothing).
    """

    def __init__(self, sock: socket.socket, blobs_dir: str, allowed: Callable[[str], bool],
                 upload_slots: int = 4, max_connections: int = 32,
                 header_timeout: float = 10.0, idle_timeout: float = 30.0,
                 stage: Optional[StageFn] = None,
                 log: Optional[Callable[[str], None]] = None,
                 inflight: Optional[InflightFn] = None,
                 max_per_address: int = 8, upload_min_rate: int = 1 << 20,
                 upload_rate: int = 0) -> None:
        self.sock = sock
        self.blobs_dir = blobs_dir
        self.allowed = allowed
        self.slots = threading.BoundedSemaphore(max(1, upload_slots))
        self.max_connections = max(1, max_connections)
        self.max_per_address = max(1, max_per_address)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.upload_min_rate = max(0, upload_min_rate)
        # agent.upload_rate: every upload's bytes go through this one bucket (None: no cap)
        self.cap = UploadCap(upload_rate) if upload_rate > 0 else None
        self._per_address: Dict[str, int] = {}
        self.stage = stage
        self.log: Callable[[str], None] = log or (lambda msg: None)
        # inflight(digest) -> (fd, expected size) of a download in progress, or None
        self.inflight = inflight
        self._active = 0
        self._lock = threading.Lock()
        # digest -> client addresses of the transfers of it in progress (redirects);
        # bounded by the upload slots, since each entry holds one
        self._sending: Dict[str, List[str]] = {}
        self.served = 0         # blobs sent whole (for the log and the tests)

    def serve_forever(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError as e:
                if e.errno in (errno.EBADF, errno.EINVAL):
                    return  # closed: shutting down
                continue  # EMFILE, ECONNABORTED: keep serving
            ip = addr[0]
            try:
                trusted = self.allowed(ip)
            except Exception:  # a malformed address: nobody we know
                trusted = False
            if not trusted:
                _refuse_and_close(conn)
                continue
            with self._lock:
                n = self._per_address.get(ip, 0)
                full = self._active >= self.max_connections or n >= self.max_per_address
                if not full:
                    self._active += 1
                    self._per_address[ip] = n + 1
            if full:
                _busy_and_close(conn)
                continue
            t = threading.Thread(target=self._connection, args=(conn, addr), daemon=True)
            try:
                t.start()
            except RuntimeError:  # cannot start a thread: treat as busy
                self._release(ip)
                _busy_and_close(conn)

    def _release(self, ip: str) -> None:
        with self._lock:
            self._active -= 1
            n = self._per_address.get(ip, 1) - 1
            if n > 0:
                self._per_address[ip] = n
            else:
                self._per_address.pop(ip, None)

    def _connection(self, conn: socket.socket, addr: Tuple[str, int]) -> None:
        try:
            conn.settimeout(self.header_timeout)
            try:
                self._request(conn, addr[0])
            except _Reject as r:
                _respond(conn, r.status, r.headers)
                _linger(conn)
            except (OSError, ValueError):
                pass  # the client went away or stalled: nothing to tell it
        finally:
            self._release(addr[0])
            try:
                conn.close()
            except OSError:
                pass

    def _request(self, conn: socket.socket, ip: str) -> None:
        deadline = time.monotonic() + self.header_timeout
        head, rest = _read_head(conn, deadline)
        lines = head.split(b"\r\n")
        m = REQUEST_LINE.fullmatch(lines[0])
        if not m:
            raise _Reject(400)
        method, target = m.group(1).decode(), m.group(2).decode("ascii", "replace")
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _Reject(400)
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        if target == "/stage":
            if method != "POST":
                raise _Reject(405, {"Allow": "POST"})
            return self._stage(conn, ip, headers, rest, deadline)
        blob = BLOB_PATH.fullmatch(target)
        if not blob:
            raise _Reject(404)
        if method not in ("GET", "HEAD"):
            raise _Reject(405, {"Allow": "GET, HEAD"})
        return self._blob(conn, ip, blob.group(1), method, headers.get("range"),
                          headers.get("x-sge-image-inflight") == "1")

    # ------------------------------------------------------------ blobs

    def _blob(self, conn: socket.socket, ip: str, digest: str, method: str,
              range_header: Optional[str], inflight: bool = False) -> None:
        # A HEAD sends no body: it takes no upload slot (issue 17: busy slots made a
        # trusted HEAD 503).
        slot = method == "GET"
        if slot and not self.slots.acquire(blocking=False):
            raise _Reject(503, self._busy(digest, ip))
        try:
            fd = _open_blob(self.blobs_dir, digest)
            if fd is None:
                found = self.inflight(digest) if inflight and self.inflight else None
                if found is None:
                    raise _Reject(404)
                with self._transfer(digest, ip, method):
                    return self._inflight(conn, ip, digest, method, range_header, *found)
            with os.fdopen(fd, "rb", buffering=0) as f, self._transfer(digest, ip, method):
                size = os.fstat(f.fileno()).st_size
                start, end = 0, size - 1
                status = 200
                extra: Dict[str, str] = {}
                if range_header is not None:
                    r = parse_range(range_header, size)
                    if r is Range.UNSATISFIABLE:
                        raise _Reject(416, {"Content-Range": f"bytes */{size}"})
                    if isinstance(r, ByteRange):
                        start, end = r
                        status = 206
                        extra["Content-Range"] = f"bytes {start}-{end}/{size}"
                count = end - start + 1 if size else 0
                _respond(conn, status, {"Content-Length": str(count), "Accept-Ranges": "bytes",
                                        "ETag": f'"{digest}"',
                                        "Content-Type": "application/octet-stream", **extra},
                         length_set=True)
                if method == "HEAD" or count == 0:
                    return
                _tune_send(conn)
                try:
                    sent = send_paced(conn, f, start, count, self.upload_min_rate,
                                      self.idle_timeout, cap=self.cap)
                except SlowReader as e:
                    self.log(f"dropped a transfer of blob {digest[:16]}... to {ip}: {e}")
                    return
                if sent == count and status == 200:
                    self.served += 1
                    metrics.count_upload(False, count)
                    self.log(f"served blob {digest[:16]}... ({count} bytes) to {ip}")
        finally:
            if slot:
                self.slots.release()

    def _busy(self, digest: str, ip: str) -> Dict[str, str]:
        """503's headers: Retry-After, and the hosts this blob is going to now."""
        metrics.count("busy_slots")
        headers = {"Retry-After": str(RETRY_AFTER)}
        with self._lock:
            named = header_value(self._sending.get(digest, ()), ip)
        if named:
            headers[HEADER] = named
        return headers

    @contextlib.contextmanager
    def _transfer(self, digest: str, ip: str, method: str) -> Iterator[None]:
        """Count `ip` among the receivers of `digest` while its GET is served."""
        if method != "GET":
            yield
            return
        with self._lock:
            self._sending.setdefault(digest, []).append(ip)
        try:
            yield
        finally:
            with self._lock:
                ips = self._sending[digest]
                ips.remove(ip)
                if not ips:
                    del self._sending[digest]

    def _inflight(self, conn: socket.socket, ip: str, digest: str, method: str,
                  range_header: Optional[str], fd: int, size: int) -> None:
        """A download in progress here, from its temp file's descriptor: the headers
        promise the expected size; the body follows the writer (inflight.follow)."""
        with os.fdopen(fd, "rb", buffering=0) as f:
            start, status, extra = 0, 200, {}
            if range_header is not None:
                r = parse_range(range_header, size)
                if r is Range.UNSATISFIABLE:
                    raise _Reject(416, {"Content-Range": f"bytes */{size}"})
                if isinstance(r, ByteRange) and r.end == size - 1:  # open-ended ranges only
                    start, status = r.start, 206
                    extra["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            _respond(conn, status, {"Content-Length": str(size - start),
                                    "Accept-Ranges": "bytes", "X-Sge-Image-Inflight": "1",
                                    "Content-Type": "application/octet-stream", **extra},
                     length_set=True)
            if method == "HEAD" or size == start:
                return
            conn.settimeout(self.idle_timeout)
            _tune_send(conn)
            out: Union[socket.socket, _CappedSocket] = conn
            clock: Callable[[], float] = time.monotonic
            if self.cap is not None:
                out = _CappedSocket(conn, self.cap)
                clock = out.clock  # the time waiting on the cap is not the reader's
            try:
                # follow() sends with sendfile() only, which the capped socket has
                follow(cast(socket.socket, out), f, start, size, self.idle_timeout,
                       clock=clock, min_rate=self.upload_min_rate)
            except Abandoned as e:
                # Closing short is the message: the client's body is truncated, it
                # verifies nothing of it into a publish and tries another source.
                self.log(f"stopped serving blob {digest[:16]}... in progress to {ip}: {e}")
                return
            if status == 200:
                self.served += 1
                metrics.count_upload(True, size)
                self.log(f"served blob {digest[:16]}... ({size} bytes) to {ip} "
                         f"while it was downloaded")

    # ------------------------------------------------------------ staging

    def _stage(self, conn: socket.socket, ip: str, headers: Mapping[str, str], rest: bytes,
               deadline: float) -> None:
        if self.stage is None:
            raise _Reject(404)
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            raise _Reject(411) from None
        if not 0 < length <= MAX_STAGE_BODY:
            raise _Reject(413)
        body = rest
        while len(body) < length:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Reject(408)
            conn.settimeout(left)
            chunk = conn.recv(length - len(body))
            if not chunk:
                return
            body += chunk
        try:
            line = body[:length].decode("ascii")
        except UnicodeDecodeError:
            raise _Reject(400) from None
        if "\n" in line.strip() or "\r" in line:
            raise _Reject(400)
        status, answer = self.stage(line.strip(), ip)
        metrics.count_stage_answer(answer.get("state"))
        data = json.dumps(answer).encode()
        _respond(conn, status, {"Content-Type": "application/json",
                                "Content-Length": str(len(data))}, body=data, length_set=True)


def _read_head(conn: socket.socket, deadline: float) -> Tuple[bytes, bytes]:
    """-> (head without the blank line, bytes after it). The whole head must come
    within the deadline, however slowly each byte arrives."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end], data[end + 4:]
        if len(data) > MAX_HEAD:
            raise _Reject(431)
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Reject(408)
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except (socket.timeout, TimeoutError):
            raise _Reject(408) from None
        if not chunk:
            raise OSError("client closed")
        data += chunk


def _open_blob(blobs_dir: str, digest: str) -> Optional[int]:
    """An fd of the blob, or None: no symlink is followed at the last step, and only a
    regular file is served (a directory, fifo or device planted there is not)."""
    try:
        dfd = os.open(blobs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(digest, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


RANGE = re.compile(r"bytes=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)", re.ASCII)
MAX_DIGITS = 19  # a longer number is past any file's end (and past int()'s 4300 digits)


def _number(digits: str) -> int:
    """A range bound, saturated: a 5000-digit number means "past the end"."""
    return (1 << 63) if len(digits) > MAX_DIGITS else int(digits)


class ByteRange(NamedTuple):
    start: int
    end: int  # inclusive, as in the header


class Range(enum.Enum):
    """A Range header that names no ByteRange: IGNORE it (multiple ranges or a form we
    do not take: RFC 9110 lets a server send the whole body), or UNSATISFIABLE (416)."""
    IGNORE = "ignore"
    UNSATISFIABLE = "unsatisfiable"


def parse_range(value: str, size: int) -> Union[ByteRange, Range]:
    """A single `bytes=` range of a body of `size` bytes. Only ASCII digits count
    (issue 17: `bytes=²-` passed isdigit() and int() raised, closing without an answer)."""
    m = RANGE.fullmatch(value.strip())
    if not m:
        return Range.IGNORE
    first, last = m.groups()
    if first == "":
        if last == "":
            return Range.IGNORE
        n = _number(last)
        if n == 0 or size == 0:
            return Range.UNSATISFIABLE
        return ByteRange(max(0, size - n), size - 1)
    start = _number(first)
    if start >= size:
        return Range.UNSATISFIABLE
    end = _number(last) if last else size - 1
    if end < start:
        return Range.IGNORE
    return ByteRange(start, min(end, size - 1))


class SlowReader(Exception):
    """A client took less than the minimum rate: its upload slot goes to another."""


SEND_CHUNK = 256 << 10
CAP_PIECE_SECONDS = 0.05   # a capped upload reserves this much of the rate at a time


class UploadCap:
    """`agent.upload_rate`: at most `rate` bytes a second over every upload of this
    agent together, whole blobs and downloads in progress alike.

    One token bucket in the form of a schedule: each piece of an upload reserves the
    next stretch of time its bytes take at the rate (`take`) and waits until that
    stretch begins, so an idle agent sends at once and a busy one never more than one
    piece ahead of the rate. The lock covers the arithmetic only, never a wait or a
    send. Pieces are small (CAP_PIECE_SECONDS of the rate, at most SEND_CHUNK), and
    each upload reserves its next piece only after sending the last one, so the
    uploads that are ready take the rate in turn: with k of them busy each gets about
    rate/k, and one whose reader is slow leaves its share to the others."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("an upload cap needs a positive rate")
        self.rate = float(rate)
        self.piece = max(4096, min(SEND_CHUNK, int(rate * CAP_PIECE_SECONDS)))
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._due = clock()   # when the bytes reserved so far are paid for at the rate

    def take(self, n: int) -> float:
        """Wait until `n` more bytes may go out -> the seconds waited."""
        with self._lock:
            now = self.clock()
            at = max(now, self._due)
            self._due = at + n / self.rate
        wait = at - now
        if wait > 0:
            self.sleep(wait)
            return wait
        return 0.0


class _CappedSocket:
    """The connection as inflight.follow() sees it when the uploads are capped: its
    sendfile() goes piece by piece through the cap, and its clock() leaves out the time
    spent waiting on the cap (a reader is judged only on what it was offered)."""

    def __init__(self, conn: socket.socket, cap: UploadCap) -> None:
        self.conn = conn
        self.cap = cap
        self.waited = 0.0

    def clock(self) -> float:
        return time.monotonic() - self.waited

    def sendfile(self, f: BinaryIO, offset: int = 0, count: Optional[int] = None) -> int:
        assert count is not None  # follow() always gives one
        sent = 0
        while sent < count:
            piece = min(self.cap.piece, count - sent)
            self.waited += self.cap.take(piece)
            n = self.conn.sendfile(f, offset + sent, piece)
            sent += n
            if n < piece:
                break  # end of the file for now: follow() looks again
        return sent


def send_paced(conn: socket.socket, f: BinaryIO, start: int, count: int, min_rate: int,
               window: float, clock: Callable[[], float] = time.monotonic,
               cap: Optional[UploadCap] = None) -> int:
    """sendfile `count` bytes from `start`, in pieces, raising SlowReader when fewer
    than `min_rate` bytes a second went out over the last `window` seconds (issue 17:
    four readers at 128 KiB/s held every slot for 100 s). No single wait is longer
    than `window` (a client that reads nothing is the case of rate 0). With a `cap`
    (agent.upload_rate) each piece waits for its share of the rate first; that wait
    is left out of the reader's rate."""
    sent = 0
    waited = 0.0
    mark_t, mark_n = clock(), 0
    conn.settimeout(window)
    piece = SEND_CHUNK if cap is None else cap.piece
    while sent < count:
        n = min(piece, count - sent)
        if cap is not None:
            waited += cap.take(n)
        try:
            n = conn.sendfile(f, start + sent, n)
        except (socket.timeout, TimeoutError):
            raise SlowReader(f"nothing read for {window:.0f}s") from None
        if not n:
            return sent
        sent += n
        now = clock() - waited
        if now - mark_t >= window:
            rate = (sent - mark_n) / (now - mark_t)
            if rate < min_rate:
                raise SlowReader(f"{rate:.0f} B/s, below the minimum {min_rate} B/s")
            mark_t, mark_n = now, sent
    return sent


def _tune_send(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    except OSError:
        pass


def _respond(conn: socket.socket, status: int, headers: Optional[Mapping[str, str]] = None,
             body: bytes = b"", length_set: bool = False) -> None:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", "Connection: close",
             "Server: sge-image-agent", f"{protocol.HEADER}: {protocol.PROTOCOL}"]
    headers = dict(headers or {})
    if not length_set:
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _linger(conn: socket.socket, limit: int = 256 << 10, seconds: float = 1.0) -> None:
    """Close gently after an error: closing with unread request bytes makes the kernel
    send a reset, which can destroy the error response before the client reads it."""
    deadline = time.monotonic() + seconds  # in total: a trickling client gets no more
    try:
        conn.shutdown(socket.SHUT_WR)
        got = 0
        while got < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            chunk = conn.recv(65536)
            if not chunk:
                return
            got += len(chunk)
    except OSError:
        pass


def _refuse_and_close(conn: socket.socket) -> None:
    """A stranger: a short 403, what it already sent is read without waiting (so that
    closing does not reset the answer away), and closed at once. No thread, no slot."""
    metrics.count("refused")
    try:
        conn.setblocking(False)
        conn.send(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)
        for _ in range(4):
            if not conn.recv(65536):
                break
    except OSError:
        pass
    finally:
        conn.close()


def _busy_and_close(conn: socket.socket) -> None:
    """Too many connections: a short 503 without waiting on the client."""
    metrics.count("busy_connections")
    try:
        conn.setblocking(False)
        conn.send(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                  b"Retry-After: 2\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    finally:
        conn.close()
