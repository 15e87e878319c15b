"""Serving a blob while this host is still downloading it: a new image fans out as a
pipeline (origin -> A -> B -> C), each host streaming from the previous one's download
in progress, instead of one whole download after another.

Two halves, one per side of the agent's privilege split:
- `open_temp` (root side): the temp file of a download in progress for an exact
  digest, found through the catalog's names for that digest and opened read-only. Only
  a file that the kit's writer made and still writes qualifies: tmp/NAME.PID.SIZE.*.part
  for a catalog NAME with this sha256 and SIZE, a regular file owned by this (root)
  user with one link, no symlink followed (O_NOFOLLOW), whose writer holds its flock.
  Temp files stay 0600: the descriptor, not the file, is handed to the unprivileged
  server (SCM_RIGHTS).
- `follow` (server side): send the bytes as they land, wait (bounded by the idle
  time) for more, and end when the expected size is sent. A writer that dies, abandons
  the file or starts it over (its size shrinks) ends the response short: the client
  sees a truncated body, verifies nothing of it into a publish, and retries elsewhere.
Bytes served this way are not yet verified by the writer; the client verifies every
byte itself (sge/sink.py), as it does for a complete blob.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket
    from typing import BinaryIO, Callable, Dict, Optional, Tuple

    from ..config import Image

POLL_MIN, POLL_MAX = 0.005, 0.1


def open_temp(cache_root: str, images: Dict[str, Image], digest: str) -> Optional[Tuple[int, int]]:
    """-> (fd, expected size) of the live download of `digest` furthest along, or None.
    `images`: the catalog (name -> Image)."""
    sizes = {img.name: img.size for img in images.values()
             if img.sha256 == digest and img.size}
    if not sizes:
        return None
    try:
        dfd = os.open(os.path.join(cache_root, "tmp"),
                      os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    best = None
    try:
        for fn in os.listdir(dfd):
            parts = fn.rsplit(".", 4)
            if len(parts) != 5 or parts[4] != "part" or sizes.get(parts[0]) is None \
                    or parts[2] != str(sizes[parts[0]]):
                continue
            size = sizes[parts[0]]
            fd = _open_live(dfd, fn, size)
            if fd is None:
                continue
            have = os.fstat(fd).st_size
            if best is None or have > best[2]:
                if best is not None:
                    os.close(best[0])
                best = (fd, size, have)
            else:
                os.close(fd)
    finally:
        os.close(dfd)
    if best is not None and best[2] == 0:
        # No byte yet: its writer is still asking peers or waiting for a slot, and a
        # reader would wait on it, perhaps on itself at one remove (a seed's pull
        # streamed from hosts that were waiting for the seed: 30-211 s stalls on 24
        # hosts, BENCHMARKS.md). "Not begun" (404) sends the reader on.
        os.close(best[0])
        return None
    return best[:2] if best else None


def _open_live(dfd: int, fn: str, size: int) -> Optional[int]:
    try:
        fd = os.open(fn, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1 \
            or st.st_size > size or not writer_alive(fd):
        os.close(fd)
        return None
    return fd


def writer_alive(fd: int) -> bool:
    """True while the file's writer holds its exclusive flock (cache.new_temp takes it
    for the whole download, and it goes with the writer's last descriptor)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class Abandoned(Exception):
    """The download being followed will not reach its size: end the response short."""


def follow(conn: socket.socket, f: BinaryIO, start: int, size: int, idle_timeout: float,
           clock: Callable[[], float] = time.monotonic, min_rate: int = 0) -> int:
    """Send `f`'s bytes [start, size) on `conn` as the writer appends them. Returns the
    bytes sent; raises Abandoned when the writer is gone short of `size`, starts the
    file over, or adds nothing for `idle_timeout` seconds, or when the client reads
    slower than `min_rate` over `idle_timeout` while the file had more to send (a
    slow reader must not hold the upload slot; a slow writer is not its fault)."""
    fd = f.fileno()
    sent = start
    last = clock()
    delay = POLL_MIN
    mark_t, mark_n, behind = clock(), sent, False
    while sent < size:
        have = os.fstat(fd).st_size
        if have < sent:
            # sink.reset(): the writer truncated its file to start over (a mirror
            # switch); what we sent may not be what it will write now.
            raise Abandoned(f"the download started over at {have} bytes")
        if have > sent:
            n = conn.sendfile(f, sent, min(have, size, sent + (256 << 10)) - sent)
            if not n:
                raise Abandoned("sendfile sent nothing")
            sent += n
            last = clock()
            delay = POLL_MIN
            behind = behind or os.fstat(fd).st_size > sent
            if min_rate and last - mark_t >= idle_timeout:
                rate = (sent - mark_n) / (last - mark_t)
                if behind and rate < min_rate:
                    raise Abandoned(f"the client read {rate:.0f} B/s, below {min_rate} B/s")
                mark_t, mark_n, behind = last, sent, False
            continue
        if not writer_alive(fd):
            # Published (then it has its whole size: the next look sends the rest) or
            # abandoned (killed, failed verification, unlinked): one last look tells.
            if os.fstat(fd).st_size > sent:
                continue
            raise Abandoned(f"the download stopped at {sent} of {size} bytes")
        if clock() - last > idle_timeout:
            raise Abandoned(f"the download added nothing for {idle_timeout:.0f}s")
        time.sleep(delay)
        delay = min(POLL_MAX, delay * 2)
    return sent - start
