"""ensure(NAME) -> path of the cached image: the engine the CLI and the prolog call.

Warm path: a stat of the content-addressed file, no lock, no hashing, no heavy
imports. Cold path: the image's blocking lock (one download per node; the other
callers sleep in the kernel and wake when it is released), a re-check, eviction if the
cap needs it, a download into a private temp file verified by size and sha256, and an
atomic publish. A killed download leaves only a temp file, swept by the next cold path.

Other hosts' copies come in through `peers`, a PeerSource the caller passes (the
prolog and the CLI pass the node agent's, sge/agent/peers.py): staging never imports
the agent, whose layer sits above this one (tests/test_layers.py).
"""
from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

from .cache import Cache
from .errors import CacheBusy, CacheFull
from .fetch import Context, fetch_image
from .log import Log
from .metrics import events
from .sink import Sink

if TYPE_CHECKING:
    from typing import Callable, Optional, Protocol

    from .config import Image, Settings
    from .fetch import Context
    from .sink import Progress, Sink

    LogFn = Callable[[str], None]

    class PeerSource(Protocol):
        def fetch(self, image: Image, sink: Sink, ctx: Context,
                  settings: Settings) -> Optional[str]:
            """Fill the sink from other hosts and return its verified sha256, or None
            (the sink emptied) to go on to the catalog's sources."""


def ensure(name: str, settings: Settings, progress: Optional[Progress] = None,
           log: Optional[LogFn] = None, peers: Optional[PeerSource] = None) -> str:
    image = settings.image(name)
    cache = Cache.from_settings(settings)
    path = cache.lookup(image)
    if path is not None:
        cache.record_use(path)
        return path
    return stage(image, cache, settings, progress, log, peers)


def stage(image: Image, cache: Cache, settings: Settings, progress: Optional[Progress] = None,
          log: Optional[LogFn] = None, peers: Optional[PeerSource] = None) -> str:
    logfn: LogFn = log or Log.from_settings(settings)
    try:
        return _stage(image, cache, settings, progress, logfn, peers)
    except OSError as e:
        # Out of space or inodes outside the sink's writes (a lock, pin or temp file,
        # a name-index link): the same transient "disk full", not an internal error
        # (found by the disk-full tests: a tmpfs without free inodes).
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CacheFull(f"cache {cache.root}: no space left on device for image "
                        f"{image.name!r} ({e.strerror}: {e.filename})") from None


def _stage(image: Image, cache: Cache, settings: Settings, progress: Optional[Progress],
           log: LogFn, peers: Optional[PeerSource]) -> str:
    """One staging, waiting (up to cache.room_wait) while the cache is only busy.

    The wait happens outside the image lock, so that every task of the image on this
    host waits at once rather than one room_wait after another; whoever takes the
    lock first once there is room downloads, and the rest find the image."""

    deadline = time.monotonic() + cache.room_wait
    while True:
        try:
            return _stage_locked(image, cache, settings, progress, log, peers)
        except CacheBusy:
            if time.monotonic() >= deadline:
                raise
        waited = time.monotonic()
        try:
            cache.wait_for_room(image.size or 0, deadline, log,
                                ready=lambda: cache.lookup(image) is not None)
        except CacheBusy:
            events.room_wait(cache.root, "timeout", time.monotonic() - waited)
            raise
        events.room_wait(cache.root, "ok", time.monotonic() - waited)


def _stage_locked(image: Image, cache: Cache, settings: Settings,
                  progress: Optional[Progress], log: LogFn, peers: Optional[PeerSource]) -> str:
    cache.ensure_layout()
    with cache.image_lock(image.name, settings.cache.lock_wait,
                          ready=lambda: cache.lookup(image)):
        path = cache.lookup(image)
        if path is not None:
            cache.record_use(path)
            return path  # staged by the process we waited for
        for fn in cache.sweep_temps():
            log(f"removed stale temp file {fn} (its writer died)")
        try:
            return _download(image, cache, settings, progress, log, peers)
        except _RetryAfterEviction as e:
            log(f"image {image.name}: disk full after {e.received} bytes; evicting and retrying once")
            # Without a catalog size, twice what fit is the best guess of what it needs.
            _evict(cache, image, image.size or 2 * e.received, log)
            return _download(image, cache, settings, progress, log, peers, final=True)


class _RetryAfterEviction(Exception):
    def __init__(self, received: int) -> None:
        self.received = received


def _evict(cache: Cache, image: Image, need: int, log: LogFn) -> None:
    for e in cache.make_room(need):
        log(f"evicted {', '.join(e.names) or e.digest[:12]} ({e.size} bytes, least recently used)")


def _download(image: Image, cache: Cache, settings: Settings, progress: Optional[Progress],
              log: LogFn, peers: Optional[PeerSource], final: bool = False) -> str:

    _evict(cache, image, image.size or 0, log)
    started = time.monotonic()
    fd, tmp = cache.new_temp(image.name, image.size)
    sink = Sink(fd, tmp, image.size, image.sha256, progress)
    published = False
    try:
        ctx = Context(image, settings.fetch, settings.sources, log)
        # Other exec hosts first: the same sink verifies their bytes, and None sends
        # us on to the catalog's sources.
        digest = peers.fetch(image, sink, ctx, settings) if peers is not None else None
        source = sink.source if digest else "origin"  # a peer's get_blob names itself
        if digest is None:
            digest = fetch_image(image, sink, ctx)
        path = cache.publish(fd, tmp, digest, image)
        published = True
        events.staged(cache.root, image.name, source, sink.received, time.monotonic() - started)
        log(f"image {image.name}: staged {sink.received} bytes, sha256 {digest[:16]}...")
        return path
    except CacheFull:
        if final:
            raise
        raise _RetryAfterEviction(sink.received) from None
    finally:
        sink.close()
        if not published:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        os.close(fd)
