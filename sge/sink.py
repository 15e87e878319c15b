"""The temp file a download streams into: hashed and counted as the bytes arrive.

Fetchers fill buffers the sink lends them (`buf = sink.buffer(); n = src.readinto(buf);
sink.commit(n)`), so a transfer of gigabytes reuses a few megabytes of memory. A filled
buffer goes down a pipeline of two threads, in order: one hashes it, the next writes it
and pushes dirty pages to disk as the file grows (so the final fsync is short, not a
second full pass), then it is free again. recv_into, hashlib and os.write all release
the GIL, so reading, hashing and writing run on different cores: hashing on the reading
thread held a 1 GiB peer transfer to about one core's worth (0.8-1.1 s of sha256 plus
0.5-0.9 s of recv_into per GiB), a third of what curl reached from the same agent.

A source whose bytes arrive as a file on the cache's filesystem (the command source)
hands the file over whole instead (`adopt`): one read pass hashes it, and the file
itself becomes the temp file, so the image is never copied.

hashlib, queue and threading are imported when a Sink is made: `sge-image pull` imports
this module for its progress lines, and a pull that finds its image cached (every
waiter of a storm, once it wakes) should not pay for them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import queue
import signal
import stat
import threading
import time
from typing import TYPE_CHECKING

from .errors import CacheFull, FetchError, VerifyError
from .units import format_duration, format_size

if TYPE_CHECKING:
    import queue
    import threading
    from typing import Callable, Literal, Optional, TextIO, Tuple, Union

    # sync_file_range(fd, offset, nbytes, flags) -> 0 or -1
    SyncFileRange = Callable[[int, int, int, int], int]
    # (bytes received so far, expected total or None)
    ProgressFn = Callable[[int, Optional[int]], None]
    # the writer's work: a filled buffer and its length, a drain marker, or stop
    WorkItem = Union[Tuple[bytearray, int], threading.Event, None]

BUF_SIZE = 1 << 20
NBUFS = 8
WRITEBACK_CHUNK = 64 << 20


def _sync_file_range() -> Optional[SyncFileRange]:
    """Linux sync_file_range(2) through libc, or None: starts writeback without waiting."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
        sfr: SyncFileRange = fn
        return sfr
    except (OSError, AttributeError):
        return None


_SFR: Union[SyncFileRange, Literal[False], None] = None  # None: not looked up yet; False: missing
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4


def _load_sfr() -> Optional[SyncFileRange]:
    global _SFR
    if _SFR is None:
        _SFR = _sync_file_range() or False
    return _SFR or None


def push_writeback(fd: int, synced: int, end: int, chunk: Optional[int] = None) -> int:
    """Start writeback of `fd`'s bytes [synced, end) in `chunk`s, waiting for each
    chunk before the newest: dirty pages stay bounded and the final fsync has little
    left to do. Returns the new `synced` (unchanged where sync_file_range is missing)."""
    sfr = _load_sfr()
    if not sfr:
        return synced
    chunk = chunk or WRITEBACK_CHUNK
    while end - synced >= chunk:
        sfr(fd, synced, chunk, SFR_WRITE)
        if synced >= chunk:
            sfr(fd, synced - chunk, chunk, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)
        synced += chunk
    return synced


class Sink:
    """Write side of one staging attempt. Not thread-safe for several producers."""

    def __init__(self, fd: int, path: str, expected_size: Optional[int] = None,
                 expected_sha256: Optional[str] = None,
                 progress: Optional[ProgressFn] = None) -> None:
        _load_sfr()
        self.fd = fd
        self.path = path
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.progress = progress
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(NBUFS):
            self._free.put(bytearray(BUF_SIZE))
        # Both queues hold at most the NBUFS buffers of the pool: memory stays bounded.
        self._hashq: queue.Queue[WorkItem] = queue.Queue()
        self._work: queue.Queue[WorkItem] = queue.Queue()
        self._error: Optional[OSError] = None
        self._reset_state()
        self._current: Optional[bytearray] = None  # lent by buffer(), until commit()
        self.source = "origin"  # set by a peer's transfer: "peer" or "peer_inflight" (metrics)
        self._hasher = threading.Thread(target=self._hashing, name="sink-hasher", daemon=True)
        self._thread = threading.Thread(target=self._writer, name="sink-writer", daemon=True)
        self._hasher.start()
        self._thread.start()

    def _reset_state(self) -> None:
        self._hash = hashlib.sha256()
        self.received = 0      # bytes handed to commit()
        self._written = 0      # bytes on disk
        self._synced = 0

    # ------------------------------------------------------------ producer side

    def buffer(self) -> memoryview:
        """A free buffer to read into (blocks while the writer is behind)."""
        self._raise_writer_error()
        self._current = self._free.get()
        return memoryview(self._current)

    def commit(self, n: int) -> None:
        current = self._current
        assert current is not None, "commit() without buffer()"
        if n <= 0:
            self._free.put(current)
            return
        self.received += n
        if self.expected_size is not None and self.received > self.expected_size:
            self._free.put(current)
            raise VerifyError(f"source sent more than the expected {self.expected_size} bytes")
        # Hashed by its own thread, not the writer: the writer waits on the disk
        # (sync_file_range) and must not make the hash wait with it.
        self._hashq.put((current, n))
        self._current = None
        if self.progress:
            self.progress(self.received, self.expected_size)

    def reset(self, after_full: bool = False) -> None:
        """Start over from byte 0 (a mirror switch, or a server that ignored Range).
        `after_full`: the disk filled (CacheFull); the bytes are dropped and the sink
        is usable again, for the next source (a peer's bytes never evict)."""
        if after_full:
            try:
                self._drain()
            except CacheFull:
                pass  # every buffer is through the writer: only the error is left
            self._error = None
        else:
            self._drain()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._reset_state()

    def adopt(self, path: str) -> bool:
        """Take the finished file at `path` (on the temp file's filesystem) as this
        sink's bytes: hash it in one read pass (from the page cache, where it was just
        written), then rename it over the temp file and make the sink's descriptor
        refer to it, flocked like the temp file was. `finish` verifies as usual and
        `publish` fsyncs and renames it: the image is never copied.

        Returns False, having changed nothing, if the file cannot be adopted safely:
        not a regular file of its own (a symlink, a hard link to another name), or
        still open for writing somewhere (checked with a read lease), since bytes
        written after the hash would be published unverified. The caller then
        copies it through the sink instead (`write` of what it reads), which hashes
        the very bytes it publishes."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        rw: Optional[int] = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _no_writers(fd):
                return False
            if self.expected_size is not None and st.st_size > self.expected_size:
                raise VerifyError(f"source sent more than the expected {self.expected_size} bytes")
            # The sink's descriptor must stay writable (a later mirror truncates and
            # rewrites it); opened only now, or the lease above could not be had.
            rw = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            rst = os.fstat(rw)
            if (rst.st_ino, rst.st_dev) != (st.st_ino, st.st_dev):
                return False
            self._drain()
            fcntl.flock(rw, fcntl.LOCK_EX)
            self._reset_state()
            sfr = _load_sfr()
            if sfr:
                sfr(fd, 0, 0, SFR_WRITE)  # the disk works while we hash
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            buf = self._free.get()
            try:
                mv = memoryview(buf)
                while True:
                    n = os.readv(fd, [mv])
                    if not n:
                        break
                    self._hash.update(mv[:n])
                    self.received += n
                    if self.progress:
                        self.progress(self.received, self.expected_size)
            finally:
                self._free.put(buf)
            if self.received != st.st_size or os.fstat(fd).st_size != st.st_size:
                raise FetchError(f"{os.path.basename(path)} changed while it was hashed",
                                 transient=True)
            os.rename(path, self.path)
            os.dup2(rw, self.fd)  # the old temp file (and its flock) goes with its last fd
            self._written = self._synced = self.received
            return True
        finally:
            os.close(fd)
            if rw is not None:
                os.close(rw)

    # ------------------------------------------------------------ worker threads

    def _hashing(self) -> None:
        """Hash each buffer, then hand it (or a drain marker, or stop) to the writer,
        in the order committed. `_hash` is replaced only while both threads are idle
        (after a drain)."""
        while True:
            item = self._hashq.get()
            if isinstance(item, tuple):
                buf, n = item
                self._hash.update(memoryview(buf)[:n])
            self._work.put(item)
            if item is None:
                return

    def _writer(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            buf, n = item
            try:
                if self._error is None:
                    mv = memoryview(buf)[:n]
                    while mv:
                        w = os.write(self.fd, mv)
                        mv = mv[w:]
                    self._written += n
                    if _SFR and self._written - self._synced >= WRITEBACK_CHUNK:
                        self._synced = push_writeback(self.fd, self._synced, self._written)
            except OSError as e:
                self._error = e
            finally:
                self._free.put(buf)

    def _drain(self) -> None:
        """Wait until every committed buffer is hashed and written."""
        done = threading.Event()
        self._hashq.put(done)
        while not done.wait(0.5):
            if not (self._thread.is_alive() and self._hasher.is_alive()):
                self._raise_writer_error()
                # Never a digest of only part of the bytes (a source without a
                # catalog digest would publish under it).
                raise FetchError(f"the sink's worker thread for {os.path.basename(self.path)} "
                                 f"stopped", transient=True)
        self._raise_writer_error()

    def _raise_writer_error(self) -> None:
        e = self._error
        if e is None:
            return
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"disk full while writing {os.path.basename(self.path)}: {e.strerror}")
        raise FetchError(f"cannot write the temp file {self.path}: {e.strerror}", transient=True)

    # ------------------------------------------------------------ finish

    def finish(self, source: str) -> str:
        """Wait for the writer, then check size and digest. Returns the hex sha256."""
        self._drain()
        digest = self._hash.hexdigest()
        if self.expected_size is not None and self.received != self.expected_size:
            raise VerifyError(f"{source}: got {self.received} bytes, expected {self.expected_size} "
                              f"(truncated or wrong file)")
        if self.expected_sha256 and digest != self.expected_sha256:
            raise VerifyError(f"{source}: sha256 {digest[:16]}... does not match the catalog's "
                              f"{self.expected_sha256[:16]}... (corrupt or changed image)")
        return digest

    def close(self) -> None:
        self._hashq.put(None)  # the hasher passes it on to the writer
        self._hasher.join(timeout=30)
        self._thread.join(timeout=30)


def _no_writers(fd: int) -> bool:
    """True if nothing has the file of `fd` (opened read-only) open for writing: a
    read lease is granted only then. Taken and dropped at once; where leases are not
    available the answer is False (copy rather than guess)."""
    try:
        # Should a writer open the file in the instant the lease is held, its break
        # is signalled to us: SIGURG, ignored by default, rather than SIGIO, which
        # would end the process.
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


class Progress:
    """Progress lines with rate and ETA: redrawn in place on a terminal, a plain line
    every `interval` seconds otherwise (job output files, logs)."""

    def __init__(self, name: str, stream: TextIO, interval: float = 10.0,
                 tty: Optional[bool] = None) -> None:
        self.name = name
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.25 if self.tty else interval
        self.start = time.monotonic()
        self.last = self.start

    def __call__(self, done: int, total: Optional[int]) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self.stream.write(self.line(done, total, now) + ("\r" if self.tty else "\n"))
        self.stream.flush()

    def line(self, done: int, total: Optional[int], now: Optional[float] = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = done / elapsed
        text = f"sge-image: {self.name}: {format_size(done)}"
        if total:
            text += f" of {format_size(total)} ({100 * done / total:.0f}%)"
        text += f" at {format_size(rate)}/s"
        if total and rate > 0:
            text += f", ETA {format_duration((total - done) / rate)}"
        return text
