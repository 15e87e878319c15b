"""The temp file a download streams into: hashed and counted as the bytes arrive.

Fetchers fill buffers the sink lends them (`buf = sink.buffer(); n = src.readinto(buf);
sink.commit(n)`), so a transfer of gigabytes reuses a few megabytes of memory. The
producer hashes each buffer as it commits it; a second thread writes (hashlib and
os.write release the GIL), and pushes dirty pages to disk as the file grows so the final
fsync is short, not a second full pass.
"""
import hashlib
import os
import queue
import threading
import time

from .errors import CacheFull, FetchError, VerifyError

BUF_SIZE = 1 << 20
NBUFS = 8
WRITEBACK_CHUNK = 64 << 20


def _sync_file_range():
    """Linux sync_file_range(2) through libc, or None: starts writeback without waiting."""
    try:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
        return fn
    except (OSError, AttributeError):
        return None


_SFR = None
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4


class Sink:
    """Write side of one staging attempt. Not thread-safe for several producers."""

    def __init__(self, fd, path, expected_size=None, expected_sha256=None, progress=None):
        global _SFR
        if _SFR is None:
            _SFR = _sync_file_range() or False
        self.fd = fd
        self.path = path
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.progress = progress
        self._free = queue.Queue()
        for _ in range(NBUFS):
            self._free.put(bytearray(BUF_SIZE))
        self._work = queue.Queue()
        self._error = None
        self._reset_state()
        self._current = None
        self._thread = threading.Thread(target=self._writer, name="sink-writer", daemon=True)
        self._thread.start()

    def _reset_state(self):
        self._hash = hashlib.sha256()
        self.received = 0      # bytes handed to commit()
        self._written = 0      # bytes on disk
        self._synced = 0

    # ------------------------------------------------------------ producer side

    def buffer(self):
        """A free buffer to read into (blocks while the writer is behind)."""
        self._raise_writer_error()
        self._current = self._free.get()
        return memoryview(self._current)

    def commit(self, n):
        if n <= 0:
            self._free.put(self._current)
            return
        self.received += n
        if self.expected_size is not None and self.received > self.expected_size:
            self._free.put(self._current)
            raise VerifyError(f"source sent more than the expected {self.expected_size} bytes")
        # Hashing here, not in the writer thread: the writer waits on the disk
        # (sync_file_range) and must not make the hash wait with it.
        self._hash.update(memoryview(self._current)[:n])
        self._work.put((self._current, n))
        self._current = None
        if self.progress:
            self.progress(self.received, self.expected_size)

    def write(self, data):
        """Convenience for small producers (tests, command output copies)."""
        mv = memoryview(data)
        while mv:
            buf = self.buffer()
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            self.commit(n)
            mv = mv[n:]

    def reset(self):
        """Start over from byte 0 (a mirror switch, or a server that ignored Range)."""
        self._drain()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._reset_state()

    # ------------------------------------------------------------ writer thread

    def _writer(self):
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
                        self._writeback()
            except OSError as e:
                self._error = e
            finally:
                self._free.put(buf)

    def _writeback(self):
        # Start writeback of the new chunk, and wait for the previous one: dirty pages
        # stay bounded and the final fsync has little left to do.
        start, end = self._synced, self._written
        _SFR(self.fd, start, end - start, SFR_WRITE)
        if start >= WRITEBACK_CHUNK:
            prev = start - WRITEBACK_CHUNK
            _SFR(self.fd, prev, WRITEBACK_CHUNK, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)
        self._synced = end

    def _drain(self):
        done = threading.Event()
        self._work.put(done)
        while not done.wait(0.5):
            if not self._thread.is_alive():
                break
        self._raise_writer_error()

    def _raise_writer_error(self):
        e = self._error
        if e is None:
            return
        import errno
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CacheFull(f"disk full while writing {os.path.basename(self.path)}: {e.strerror}")
        raise FetchError(f"cannot write the temp file {self.path}: {e.strerror}", transient=True)

    # ------------------------------------------------------------ finish

    def finish(self, source):
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

    def close(self):
        self._work.put(None)
        self._thread.join(timeout=30)


class Progress:
    """Progress lines with rate and ETA: redrawn in place on a terminal, a plain line
    every `interval` seconds otherwise (job output files, logs)."""

    def __init__(self, name, stream, interval=10.0, tty=None):
        self.name = name
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = 0.25 if self.tty else interval
        self.start = time.monotonic()
        self.last = self.start

    def __call__(self, done, total):
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        self.stream.write(self.line(done, total, now) + ("\r" if self.tty else "\n"))
        self.stream.flush()

    def line(self, done, total, now=None):
        from .units import format_duration, format_size
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = done / elapsed
        text = f"sge-image: {self.name}: {format_size(done)}"
        if total:
            text += f" of {format_size(total)} ({100 * done / total:.0f}%)"
        text += f" at {format_size(rate)}/s"
        if total and rate > 0:
            text += f", ETA {format_duration((total - done) / rate)}"
        return text

    def done(self, total):
        if self.tty:
            self.stream.write("\n")
        from .units import format_size
        elapsed = time.monotonic() - self.start
        self.stream.write(f"sge-image: {self.name}: {format_size(total)} in {elapsed:.1f}s "
                          f"({format_size(total / max(elapsed, 1e-6))}/s), verified\n")
        self.stream.flush()
