"""The load sensor: tell Grid Engine, every load report, which images this host has.

Protocol (execd side, SoGE 8.1.9): execd writes a line; the sensor answers `begin`,
`HOST:COMPLEX:VALUE` lines and `end`; `quit` (or EOF) ends it. Rules this follows,
each measured on a real execd:
- every report is the full state: a value missing from a report is deleted by qmaster,
  which is how an evicted image stops attracting jobs;
- a report line of 9,999 bytes kills execd and other Grid Engines parse 1,000-byte
  buffers: no line here reaches 1,000 bytes;
- stdout carries protocol lines only; everything else goes to the log file;
- a cache it cannot read gives a report without image values (stale "warm" values
  would send jobs to a host that cannot serve them), but with the timestamp, so a
  live sensor is told apart from a dead one;
- it never exits except on `quit`/EOF; `loadsensor/sge-image-loadsensor` restarts it
  after a crash anyway, because execd breaks when its sensor dies.
"""
from __future__ import annotations

import os
import sys
import time

from ..cluster.complexes import FREE_COMPLEX, LIST_COMPLEX, ROOM_COMPLEX, TIME_COMPLEX

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Set, Tuple

    from ..cache import Cache
    from ..config import Settings
    from ..metrics.textfile import Collector

MAX_LINE = 999
MAX_IN_LINE = 1 << 16  # execd sends empty lines and `quit`; longer input is one request


class Reporter:
    """What one report needs, precomputed from the settings so that a cycle is one
    scan of the cache (the same `CacheScan` eviction plans from: a stat and a pin test
    per *cached* blob, however large the catalog) and a join.

    Blobs are content-addressed and only ever appear complete (renamed in after
    verification), so a name in blobs/sha256/ is proof enough.
    """

    def __init__(self, settings: Settings, cache: Cache, host: str,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.cache = cache
        self.log = log or (lambda msg: None)
        # As root, a cache job owners could change is not reported (sge/security.py):
        # jobs sent here would run what another user planted.
        self.check_safety = os.geteuid() == 0
        self.safe_blobs: Set[str] = set()   # checked once: only root can change a safe blob
        self.refused: Optional[List[str]] = None       # the problems last logged
        self.metrics_error = ""                        # the metrics failure last logged
        self.metrics_due: Optional[Tuple[int, int, int, List[str]]] = None  # the last report's
        self.stamps = settings.stamps
        self.list_complex = settings.sensor.list_complex
        self.report_inflight = settings.sensor.report_inflight
        self.lines = {n: f"{host}:{i.complex}:1\n" for n, i in settings.images.items()}
        self.by_digest: Dict[str, List[Tuple[str, str]]] = {}     # sha256 -> [(name, line)]
        self.by_ref: List[Tuple[str, str, str]] = []        # (ref path, name, line) for source-pinned entries
        for name, image in settings.images.items():
            line = f"{host}:{image.complex}:1\n"
            if image.sha256:
                self.by_digest.setdefault(image.sha256, []).append((name, line))
            else:
                self.by_ref.append((cache.path_for(image), name, line))
        self.host = host
        self.sizes: Dict[str, int] = {}  # digest -> size: a content-addressed blob never changes
        self.largest = max((i.size or 0 for i in settings.images.values()), default=0)
        self.metrics = _metrics_collector(settings, cache, self.log)

    def is_stale(self) -> bool:
        try:
            from ..config import _stamp
            return any(_stamp(s[0]) != list(s) for s in self.stamps)
        except OSError:
            return True

    def report(self) -> str:
        head = f"{self.host}:{TIME_COMPLEX}:{int(time.time())}\n"
        if self.check_safety:
            from .. import security
            unsafe = security.problems(self.cache.root)
            if unsafe:
                return self._refuse(head, unsafe)
            # Claims of jobs that ended without the kit's epilog (qdel -f, an execd
            # crash, a queue with its own epilog) hold nothing already; tidy them.
            from .. import claims
            for key in claims.sweep(self.cache.root):
                self.log(f"removed the claim of job {key}: it no longer runs on this host")
        try:
            with os.scandir(os.path.join(self.cache.root, "blobs", "sha256")) as it:
                present = [de.name for de in it if de.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            # No cache yet (or it vanished): nothing is warm, but the room a first
            # download would have is known, and worth telling the scheduler.
            free = self._free_before_first_use()
            self.metrics_due = (0, free, free, [])  # makes the cache: its first events count
            return head + (f"{self.host}:{FREE_COMPLEX}:{free}\n"
                           f"{self.host}:{ROOM_COMPLEX}:{free}\n")
        except OSError:
            return head  # unreadable cache: nothing is warm here
        out: List[str] = [head]
        warm: List[str] = []
        by_digest = self.by_digest
        unsafe = []
        for digest in present:
            hits = by_digest.get(digest)
            if hits:
                if self.check_safety and digest not in self.safe_blobs:
                    unsafe += self._blob_problems(self.cache.blob_path(digest), digest)
                for name, line in hits:
                    out.append(line)
                    warm.append(name)
        for ref, name, line in self.by_ref:
            try:
                if os.path.exists(ref):
                    if self.check_safety:
                        unsafe += self._blob_problems(ref, None)
                    out.append(line)
                    warm.append(name)
            except OSError:
                pass
        if unsafe:
            return self._refuse(head, unsafe)
        if self.report_inflight:
            # A host pulling an image counts as warm for the scheduler: the soft request
            # then piles a burst onto the one download here (its tasks wait on the image
            # lock) rather than starting a download on every host (issue 10).
            for name in self.cache.inflight_names() - set(warm):
                if name in self.lines:
                    out.append(self.lines[name])
                    warm.append(name)
        if self.refused is not None:
            self.log(f"cache {self.cache.root} is safe again: reporting its images")
            self.refused = None
        used = self._used(present)
        free = _free_bytes(self.cache, used)
        room = self._room(free)
        out.append(f"{self.host}:{FREE_COMPLEX}:{free}\n")
        out.append(f"{self.host}:{ROOM_COMPLEX}:{room}\n")
        self.metrics_due = (used, free, room, warm)
        if self.list_complex:
            out.append(_list_line(self.host, sorted(warm)) + "\n")
        return "".join(x for x in out if len(x) <= MAX_LINE + 1)

    def write_metrics(self) -> None:
        """The textfile for node_exporter (sge/metrics/textfile.py), when configured,
        from the figures of the report just sent: called after execd has its report,
        so that folding events and saving the counters (two fsyncs) never delay it. A
        failure here is logged once per kind and never costs a report."""
        due, self.metrics_due = self.metrics_due, None
        if self.metrics is None or due is None:
            return
        try:
            self.metrics.cycle(*due)
            self.metrics_error = ""
        except Exception as e:
            msg = f"metrics not written: {type(e).__name__}: {e}"
            if msg != self.metrics_error:
                self.log(msg)
                self.metrics_error = msg

    def _used(self, present: List[str]) -> int:
        """Bytes of the blobs present; each blob is stat'ed once (it never changes)."""
        sizes, blobs, total = self.sizes, os.path.join(self.cache.root, "blobs", "sha256"), 0
        for d in present:
            size = sizes.get(d)
            if size is None:
                try:
                    size = sizes[d] = os.stat(os.path.join(blobs, d)).st_size
                except OSError:
                    continue
            total += size
        return total

    def _room(self, free: int) -> int:
        """img_cache_room. While the room without evicting anything already holds the
        largest catalog image, that figure is reported: no request can ask for more.
        Below it, the cache is scanned as eviction sees it (sge/eviction.py: last use and
        pins of every blob), which a 10,000-blob cache cannot afford every cycle
        (measured: 12 ms a cycle without the scan, 45 ms with it)."""
        if self.largest and free >= self.largest:
            return free
        from ..eviction import room_for_new
        return room_for_new(self.cache.scan(names=False, sizes=self.sizes), self.cache.limits())

    def _free_before_first_use(self) -> int:
        path = self.cache.root
        while not os.path.isdir(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        try:
            st = os.statvfs(path)
        except OSError:
            return 0
        disk = st.f_bavail * st.f_frsize
        return disk if self.cache.max_size is None else min(self.cache.max_size, disk)

    def _blob_problems(self, path: str, digest: Optional[str]) -> List[str]:
        from .. import security
        found = security.blob_problems(self.cache.root, path)
        if not found and digest:
            self.safe_blobs.add(digest)
        return found

    def _refuse(self, head: str, unsafe: List[str]) -> str:
        """A report without image values (and without free space: no job should come
        here for this cache), logged once per change."""
        if unsafe != self.refused:
            from .. import security
            self.log(f"not reporting any image: {security.explain(self.cache.root, unsafe)}")
            self.refused = unsafe
        return head


def _metrics_collector(settings: Settings, cache: Cache,
                       log: Callable[[str], None]) -> Optional[Collector]:
    """The metrics collector if `metrics.textfile_dir` is set; else None, after
    removing the event file so that nothing appends events no one folds."""
    from ..metrics import textfile
    try:
        if settings.metrics.textfile_dir:
            return textfile.Collector(settings, cache)
        textfile.disable(cache)
    except Exception as e:
        log(f"metrics off: {type(e).__name__}: {e}")
    return None


def _free_bytes(cache: Cache, used: int) -> int:
    """Room for new images: the smaller of what the cap allows and the disk holds."""
    try:
        disk = cache.free_bytes()
    except OSError:
        disk = 0
    if cache.max_size is None:
        return disk
    return max(0, min(cache.max_size - used, disk))


def _list_line(host: str, names: List[str]) -> str:
    """`;a;b;` (requested as `images=*;NAME;*`), cut to fit the line limit."""
    head = f"{host}:{LIST_COMPLEX}:;"
    value: List[str] = []
    room = MAX_LINE - len(head)
    for n in names:
        if len(n) + 1 > room:
            break
        value.append(n)
        room -= len(n) + 1
    return head + "".join(f"{n};" for n in value)


def main(argv: Optional[List[str]] = None) -> int:
    from .. import config
    from ..cache import Cache
    from ..cluster.hookargs import config_arg
    from ..log import Log
    argv = sys.argv[1:] if argv is None else argv
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    _divert_stray_output()
    host = os.environ.get("HOST") or __import__("socket").gethostname()
    path = config_arg(argv)
    log = Log(tag="sge-image loadsensor")
    reporter: Optional[Reporter] = None
    stdin = sys.stdin.buffer  # bytes: a text stream died on one invalid UTF-8 byte
    while True:
        line = stdin.readline(MAX_IN_LINE)
        if not line or line.strip() == b"quit":
            if reporter is not None and reporter.metrics is not None:
                reporter.metrics.retire()  # no stale figures for node_exporter to serve
            return 0
        if not line.endswith(b"\n") and len(line) == MAX_IN_LINE:
            while line and not line.endswith(b"\n"):  # one request, however long
                line = stdin.readline(MAX_IN_LINE)
        try:
            if reporter is None or reporter.is_stale():
                reporter = None
                config.prepare_snapshot(path)
                settings = config.load(path)
                log = Log.from_settings(settings, tag="sge-image loadsensor")
                reporter = Reporter(settings, Cache.from_settings(settings), host, log)
                del settings
            text = reporter.report()
        except Exception as e:  # report nothing warm rather than die or lie
            log(f"report failed: {type(e).__name__}: {e}")
            reporter = None
            text = f"{host}:{TIME_COMPLEX}:{int(time.time())}\n"
        proto.write("begin\n" + text + "end\n")
        proto.flush()
        if reporter is not None:
            reporter.write_metrics()


def _divert_stray_output() -> None:
    """Anything printed by accident must not reach execd's protocol pipe."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
