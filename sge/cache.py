"""The node-local, content-addressed image cache.

Layout under the cache root (the design card's):

    blobs/sha256/<hex>   image content, read-only, named by its digest
    images/<name>        symlink -> ../blobs/sha256/<hex>: which name is which blob
    refs/<pin>           symlink for entries pinned by their source only (oras @sha256)
    locks/<name>.lock    per-image staging lock; never deleted (a deleted lock file lets a
                         third process lock a fresh inode while the second holds the old one)
    pins/<hex>.pin       shared flock = "a job uses this blob"; eviction takes it exclusively
    claims/<job>.<task>  a running job's claim on a blob, live while Grid Engine runs the
                         job here (sge/claims.py): with or without the starter's pin
    used/<hex>           mtime = last use, for LRU (blobs are read-only, atime is unreliable)
    formats/<hex>        `sif` or `squashfs`, read from the blob's magic when published
    tmp/                 downloads in progress, each holding an exclusive flock on itself
    quarantine/          blobs that failed `verify`, kept for inspection

Correctness never depends on a lock: a blob appears under its final name only by
`os.replace` of a complete, verified, fsynced temp file. Locks save bandwidth (one
download per node) and protect pinned blobs from eviction.

Only `lookup` runs on the warm path: one `stat`, no lock, no hashing.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager

from .errors import CacheBusy, CacheError, CacheFull, LockTimeout
from .fsutil import fsync_dir as _fsync_dir
from .metrics import events as _events
from .tempfiles import dir_is_dead as _dir_is_dead
from .tempfiles import temp_name
from .tempfiles import writer_alive as _writer_alive

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

    from .config import Image, Settings
    from .eviction import CacheScan, Entry, EvictionPlan, Limits

    LogFn = Callable[[str], None]

DIR_MODE = 0o755
BLOB_MODE = 0o444
FILE_MODE = 0o644  # lock, pin and last-use files: job owners open pins read-only
# Two settings bound eviction in time (defaults in sge/config.py's SCHEMA, the one
# source of them): cache.evict_grace, the seconds after its last use (a prolog handing it
# to a job) during which a blob is not evicted, because the job's starter pins it only
# after the prolog has exited and in between another prolog's eviction removed it (found
# by the load test: 55 of 200 jobs lost their image that way and failed; a running job's
# claim, sge/claims.py, now holds it for the job's whole life, and the grace covers what
# no claim does: hand-outs without a job, a parallel job's other hosts); and
# cache.room_wait, the seconds a staging waits for room while the cache is full of
# images in use before it gives up for now (the prolog then reschedules).
SUBDIRS = ("blobs/sha256", "images", "refs", "locks", "pins", "used", "tmp", "quarantine",
           "claims")


class Cache:
    def __init__(self, root: str, max_size: Optional[int] = None, low_water: float = 0.8,
                 min_free: int = 0, evict_grace: float = 0, room_wait: float = 0) -> None:
        self.root = root
        self.max_size = max_size
        self.low_water = low_water
        self.min_free = min_free
        self.evict_grace = evict_grace
        self.room_wait = room_wait

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        c = settings.cache
        return cls(settings.cache_root, c.max_size, c.low_water, c.min_free,
                   c.evict_grace, c.room_wait)

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def blob_path(self, digest: str) -> str:
        return self._p("blobs", "sha256", digest)

    def path_for(self, image: Image) -> str:
        """Where `image` lives once cached (a blob, or a ref for source-pinned entries)."""
        if image.sha256:
            return self.blob_path(image.sha256)
        return self._p("refs", image.pin or "")

    # ------------------------------------------------------------ warm path

    def lookup(self, image: Image) -> Optional[str]:
        """The cached file of `image`, or None. A stat: complete files only ever
        appear by rename, so existence with the right size means complete."""
        path = self.path_for(image)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or (image.size is not None and st.st_size != image.size):
            return None
        return path

    def record_use(self, path: str) -> None:
        """Best effort: a job owner cannot touch root's cache, and need not.

        Also makes sure the blob's pin file exists: the starter runs as the job owner,
        who can open it but not create it in root's pins/ (found by the cache security
        tests: without it every starter job of a non-root user failed)."""
        digest = os.path.basename(os.path.realpath(path))
        try:
            os.utime(self._p("used", digest))
        except FileNotFoundError:
            try:
                os.close(_open_created(self._p("used", digest), os.O_WRONLY))
            except OSError:
                pass
        except OSError:
            pass
        self._ensure_pin_file(digest)

    def _ensure_pin_file(self, digest: str) -> None:
        try:
            os.close(_open_pin(self._p("pins", f"{digest}.pin")))
        except CacheError:
            pass

    # ------------------------------------------------------------ layout

    def ensure_layout(self) -> None:
        try:
            for sub in SUBDIRS:
                _makedirs(self._p(sub))
        except OSError as e:
            raise CacheError(f"cache root {self.root} is not usable: {e.strerror} "
                             f"(create it, writable by the user that stages images)") from None
        if not os.access(self._p("tmp"), os.W_OK):
            raise CacheError(f"cache root {self.root} is not writable by uid {os.getuid()}")

    # ------------------------------------------------------------ locks

    @contextmanager
    def image_lock(self, name: str, timeout: Optional[float] = None,
                   ready: Optional[Callable[[], object]] = None) -> Iterator[bool]:
        """The per-image staging lock. Yields True when the caller must stage.

        The first caller takes it exclusively. The others wait *shared*, blocking in
        the kernel: when the stager releases, every waiter wakes at once (rather than
        one after another) and `ready()` tells it the image is there; only if it is
        not (the stager failed) does a waiter queue for the exclusive lock itself.
        """
        import time
        deadline = time.monotonic() + timeout if timeout else None
        fd = _open_created(self._p("locks", f"{name}.lock"), os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _flock(fd, fcntl.LOCK_SH, _left(deadline), f"image {name!r}")
                if ready is not None and ready():
                    yield False
                    return
                fcntl.flock(fd, fcntl.LOCK_UN)
                _flock(fd, fcntl.LOCK_EX, _left(deadline), f"image {name!r}")
            yield True
        finally:
            os.close(fd)  # releases the lock; the file stays (see module docstring)

    def pin(self, image: Image) -> Tuple[str, int]:
        """Take a shared lock on `image`'s blob so eviction leaves it alone; returns
        (path, fd) and closing fd releases it. The kernel drops it when the holder
        dies, so a killed job never leaks a pin."""
        from .errors import NotCached
        path = self.lookup(image)
        if path is None:
            raise NotCached(f"image {image.name!r} is not cached on this host")
        digest = os.path.basename(os.path.realpath(path))
        fd = _open_pin(self._p("pins", f"{digest}.pin"))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            # Eviction may have removed the blob between lookup and lock.
            if self.lookup(image) is None:
                raise NotCached(f"image {image.name!r} was evicted before it could be pinned")
        except BaseException:
            os.close(fd)
            raise
        return path, fd

    def claim(self, image: Image, job: str, job_dir: str) -> str:
        """Hand `image` to job `job` (its key, `12.3`) for the job's whole life: record
        its use and its claim while holding the blob's pin lock shared, so that an
        eviction (which unlinks under the same lock held exclusively, after checking
        claims and last use again) either finished before, and this raises NotCached
        (the caller stages again), or sees the claim. Returns the image's path.

        Found by the claims tests: without the lock an eviction planned from an older
        scan removed a blob a prolog had just handed out, and the job found no image."""
        from . import claims
        path, fd = self.pin(image)
        try:
            self.record_use(path)
            digest = os.path.basename(os.path.realpath(path))
            claims.write(self.root, job, digest, job_dir)
        finally:
            os.close(fd)
        return path

    def hand_out(self, image: Image) -> str:
        """`record_use` under the pin lock, for a caller with no job to claim for (a
        prolog outside Grid Engine): the same guarantee against a stale eviction plan
        for the grace period. Raises NotCached if the image went meanwhile."""
        path, fd = self.pin(image)
        try:
            self.record_use(path)
        finally:
            os.close(fd)
        return path

    @contextmanager
    def pinned(self, image: Image) -> Iterator[str]:
        path, fd = self.pin(image)
        try:
            yield path
        finally:
            os.close(fd)

    def is_pinned(self, digest: str) -> bool:
        path = self._p("pins", f"{digest}.pin")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    # ------------------------------------------------------------ staging

    def new_temp(self, name: str, expected_size: Optional[int] = None) -> Tuple[int, str]:
        """A unique temp file in the cache's filesystem, flocked by its writer so that
        `sweep_temps` can tell a live download from a dead one."""
        self.ensure_layout()
        size = expected_size if expected_size is not None else 0
        for _ in range(100):
            path = self._p("tmp", temp_name(name, size))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, path

    def publish(self, fd: int, tmp_path: str, digest: str, image: Image) -> str:
        """Make a verified temp file the blob `digest`: read-only, fsynced, renamed,
        directory fsynced. Returns the image path.

        The name index is pointed at the blob *before* the blob appears: a kill between
        the two leaves a name that leads nowhere yet (readers go by digest, and the next
        stage repoints it), never a blob that lost its name for good (the next run would
        find the blob, take the warm path and never write the name)."""
        os.fchmod(fd, BLOB_MODE)
        os.fsync(fd)
        target = os.path.join("..", "blobs", "sha256", digest)
        _replace_symlink(target, self._p("images", image.name), self._p("tmp"))
        if not image.sha256 and image.pin is not None:
            _replace_symlink(target, self._p("refs", image.pin), self._p("tmp"))
        _fsync_dir(self._p("images"))
        self._ensure_pin_file(digest)  # before the blob appears: a job may pin it at once
        from .imageformat import record
        record(self.root, digest, fd)  # SIF or SquashFS: what the starter's runtime needs
        final = self.blob_path(digest)
        os.replace(tmp_path, final)  # an existing identical blob is simply replaced
        _fsync_dir(os.path.dirname(final))
        self.record_use(final)
        return self.path_for(image)

    def sweep_temps(self, dry_run: bool = False) -> List[str]:
        """Remove temp files whose writer is gone: its flock died with it, and so did
        the process named in the file name (the second test keeps live downloads safe
        where flock is a no-op). With dry_run, only name them."""
        from contextlib import suppress
        removed: List[str] = []
        try:
            names = os.listdir(self._p("tmp"))
        except OSError:
            return removed
        for fn in names:
            path = self._p("tmp", fn)
            if fn.endswith(".cmd") and os.path.isdir(path):
                # A command source's private directory (fetch/command.py): live while
                # its stager holds the directory's flock or its pid runs, the same two
                # tests as for temp files (one sweep for both, not one per module).
                if _dir_is_dead(path, fn[:-4]):
                    import shutil
                    if not dry_run:
                        shutil.rmtree(path, ignore_errors=True)
                    removed.append(fn)
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as e:
                # A name-index link on its way into place (_replace_symlink): no
                # flock to test, the writer's pid in its name tells.
                if e.errno == errno.ELOOP and not _writer_alive(fn):
                    with suppress(OSError):
                        if not dry_run:
                            os.unlink(path)
                        removed.append(fn)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live writer holds it
            if _writer_alive(fn):
                os.close(fd)
                continue
            try:
                with suppress(OSError):
                    if not dry_run:
                        os.unlink(path)
                    removed.append(fn)
            finally:
                os.close(fd)
        return removed

    def inflight_names(self) -> Set[str]:
        """Names of images a live process is downloading now (from tmp/'s temp names,
        NAME.PID.SIZE.RANDOM.part; image names may hold dots, the rest may not)."""
        names: Set[str] = set()
        try:
            for fn in os.listdir(self._p("tmp")):
                if fn.endswith(".part") and _writer_alive(fn):
                    names.add(fn.rsplit(".", 4)[0])
        except OSError:
            pass
        return names

    def inflight_bytes(self) -> int:
        """Bytes that downloads in progress will still need (from their temp names)."""
        total = 0
        try:
            for fn in os.listdir(self._p("tmp")):
                parts = fn.split(".")
                try:
                    expected = int(parts[-3])
                    have = os.stat(self._p("tmp", fn)).st_size
                except (ValueError, IndexError, OSError):
                    continue
                total += max(expected - have, 0)
        except OSError:
            pass
        return total

    # ------------------------------------------------------------ listing

    def entries(self, names: bool = True,
                sizes: Optional[Dict[str, int]] = None) -> List[Entry]:
        """Every complete blob, with its names, size, last use and pin state.

        One pass, sized for the load sensor's every cycle over thousands of blobs:
        `names=False` skips the name index; `sizes` (digest -> size, kept by the caller)
        saves a stat per blob, since a content-addressed blob never changes; pins come
        from one read of /proc/locks rather than a lock attempt per blob."""
        from . import claims
        from .eviction import Entry  # dataclasses stay off the warm path
        index = self._names() if names else {}
        pinned = self._pinned_digests()
        held = claims.live(self.root)
        out: List[Entry] = []
        try:
            it = os.scandir(self._p("blobs", "sha256"))
        except OSError:
            return out
        used_dir = self._p("used")
        stat_ = os.stat
        with it:
            for de in it:
                size = sizes.get(de.name) if sizes is not None else None
                if size is None:
                    try:
                        st = de.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    size = st.st_size
                    if sizes is not None:
                        sizes[de.name] = size
                try:
                    last = stat_(f"{used_dir}/{de.name}").st_mtime
                except OSError:
                    last = 0.0
                is_pinned = (de.name in pinned if pinned is not None
                             else self.is_pinned(de.name))
                out.append(Entry(de.name, size, last,
                                 tuple(sorted(index[de.name])) if de.name in index else (),
                                 is_pinned, tuple(sorted(held.get(de.name, ())))))
        return out

    def _names(self) -> Dict[str, List[str]]:
        names: Dict[str, List[str]] = {}
        try:
            for n in os.listdir(self._p("images")):
                try:
                    target = os.readlink(self._p("images", n))
                except OSError:
                    continue
                names.setdefault(os.path.basename(target), []).append(n)
        except OSError:
            pass
        return names

    def _pinned_digests(self) -> Optional[Set[str]]:
        """Digests whose pin file someone holds a flock on, from /proc/locks (matched
        by device and inode), or None where that cannot be read (then per blob)."""
        try:
            with open("/proc/locks") as f:
                held: Set[str] = set()
                for line in f:
                    parts = line.split()
                    if len(parts) < 6 or "->" in parts[1] or parts[1] != "FLOCK":
                        continue  # a blocked waiter holds nothing; POSIX locks are not pins
                    held.add(parts[5])
        except OSError:
            return None
        if not held:
            return set()
        out: Set[str] = set()
        try:
            with os.scandir(self._p("pins")) as it:
                for de in it:
                    if not de.name.endswith(".pin"):
                        continue
                    try:
                        st = de.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
                    if key in held:
                        out.add(de.name[:-4])
        except OSError:
            return set()
        return out

    def scan(self, names: bool = True, sizes: Optional[Dict[str, int]] = None) -> CacheScan:
        """What eviction and the sensor decide from (sge/eviction.py)."""
        from .eviction import CacheScan
        return CacheScan(tuple(self.entries(names, sizes)), self.inflight_bytes(),
                         self.free_bytes(), time.time())

    def limits(self) -> Limits:
        from .eviction import Limits
        return Limits(self.max_size, self.low_water, self.min_free, self.evict_grace)

    def used_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    # ------------------------------------------------------------ eviction

    def room(self) -> int:
        """Bytes a new image could have right now, evicting what may be evicted: the
        load sensor reports it (img_cache_room) so that the scheduler can steer a
        cold image away from a host whose cache is full of images in use."""
        from .eviction import room_for_new
        return room_for_new(self.scan(), self.limits())

    def wait_for_room(self, need: int, deadline: float, log: Optional[LogFn] = None,
                      ready: Optional[Callable[[], object]] = None) -> List[Entry]:
        """make_room(need), waiting while the cache is only *busy* (full of pinned or
        just-handed-out images) until `deadline` (time.monotonic()); raises CacheBusy
        after it. A full cache is a scheduling condition, not a failure: tasks of a
        second array wait here for the first array's images to fall out of use.
        `ready()` true ends the wait: another task staged the image meanwhile, and
        making room would only evict it again (found by the two-array test: hosts
        staged the same image three times)."""
        said = False
        while True:
            if ready is not None and ready():
                return []
            try:
                return self.make_room(need)
            except CacheBusy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                if log is not None and not said:
                    log(f"cache {self.root} is full of images in use; waiting up to "
                        f"{left:.0f}s for room")
                    said = True
                # Pins drop and grace periods end without any event to block on:
                # a short poll, bounded by the deadline.
                time.sleep(min(max(left, 0.05), 1.0))

    def make_room(self, need: int, keep: Sequence[str] = ()) -> List[Entry]:
        """Before a download of `need` bytes: if it would break the cap (or leave the
        filesystem with less than min_free), evict least-recently-used unpinned blobs
        down to the low-water mark. Returns the evicted entries."""
        self.ensure_layout()
        fd = _open_created(self._p("locks", ".evict.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return self._evict(need, keep)
        finally:
            os.close(fd)

    def plan(self, need: int = 0, keep: Sequence[str] = ()) -> EvictionPlan:
        """The eviction `make_room(need)` would do now (`gc --dry-run` prints it)."""
        from .eviction import plan_eviction
        return plan_eviction(self.scan(), need, self.limits(), keep)

    def _evict(self, need: int, keep: Sequence[str]) -> List[Entry]:
        evicted: List[Entry] = []
        for _ in range(5):
            plan = self.plan(need, keep)
            # A job may pin an image between the scan and its removal: then plan again.
            done = [e for e in plan.evict if self._remove_unpinned(e)]
            evicted += done
            _events.evicted_entries(self.root, done)  # sge/metrics/events.py
            if len(done) == len(plan.evict):
                break
        if not plan.fits:
            from .units import format_size
            used, free = plan.used_after, plan.free_after
            if plan.busy:
                raise CacheBusy(
                    f"cache {self.root} is full of images in use: {format_size(need)} "
                    f"needed, {format_size(used)} used of {format_size(self.max_size or 0)} "
                    f"cap; the rest is pinned by running jobs or was handed to a starting "
                    f"job less than {self.evict_grace:g}s ago")
            raise CacheFull(
                f"cache {self.root} cannot make room for {format_size(need)}: "
                f"{format_size(used)} used of {format_size(self.max_size or 0)} cap, "
                f"{format_size(free)} free on disk, the rest is pinned by running jobs or "
                f"was handed to a starting job less than {self.evict_grace:g}s ago")
        return evicted

    def _remove_unpinned(self, entry: Entry) -> bool:
        """Delete a blob unless a job pins or claims it or it was handed out within the
        grace period; holding the pin lock exclusively while deleting makes a concurrent
        `pinned()` or `claim()` wait and then see it gone. Claims and last use are read
        again under the lock: the plan came from an earlier scan, and a prolog may have
        handed the blob to a job since (`claim` does that under the lock shared)."""
        from . import claims
        fd = _open_pin(self._p("pins", f"{entry.digest}.pin"))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
            if claims.holders(self.root, entry.digest):
                return False
            try:
                last = os.stat(self._p("used", entry.digest)).st_mtime
            except OSError:
                last = 0.0
            if last > time.time() - self.evict_grace:
                return False
            self._unlink_blob(entry.digest)
            return True
        finally:
            os.close(fd)

    def _unlink_blob(self, digest: str, to: Optional[str] = None) -> None:
        # The blob goes before its names, for the reason publish() puts them first.
        if to:
            os.replace(self.blob_path(digest), to)
        else:
            try:
                os.unlink(self.blob_path(digest))
            except FileNotFoundError:
                pass
        _fsync_dir(self._p("blobs", "sha256"))
        target = os.path.join("..", "blobs", "sha256", digest)
        for sub in ("images", "refs"):
            try:
                for n in os.listdir(self._p(sub)):
                    try:
                        if os.readlink(self._p(sub, n)) == target:
                            os.unlink(self._p(sub, n))
                    except OSError:
                        pass
            except OSError:
                pass
        for extra in (self._p("used", digest),):
            try:
                os.unlink(extra)
            except OSError:
                pass
        from .imageformat import forget
        forget(self.root, digest)

    def quarantine(self, digest: str) -> str:
        """Move a bad blob out of the way (kept for inspection, no longer served)."""
        self.ensure_layout()
        dest = self._p("quarantine", f"{digest}.{int(time.time())}")
        self._unlink_blob(digest, to=dest)
        return dest


def _open_pin(path: str) -> int:
    # Pin files are opened read-only by job owners: create them world-readable.
    try:
        return _open_created(path, os.O_RDONLY)
    except OSError as e:
        raise CacheError(f"cannot create pin file {path}: {e.strerror}") from None


def _open_created(path: str, flags: int) -> int:
    """Open `path`, creating it with FILE_MODE whatever the process umask (a root
    prolog started with umask 077 made pin files job owners could not open)."""
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        pass
    return fd


def _makedirs(path: str) -> None:
    """os.makedirs with DIR_MODE for every directory it creates, whatever the umask
    (makedirs applies the umask, and gives the parents it creates not even `mode`: under
    umask 0 a fresh cache root was world-writable, under 077 unreadable to jobs)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def _left(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    import time
    return max(deadline - time.monotonic(), 0.001)


def _flock(fd: int, op: int, timeout: Optional[float], what: str) -> None:
    """Blocking flock, bounded by `timeout` with an interval timer: the waiter sleeps
    in the kernel and wakes within microseconds of release (no polling loop)."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if not timeout:
        fcntl.flock(fd, op)
        return
    import signal

    class _Expired(Exception):
        pass

    def _alarm(signum: int, frame: object) -> None:
        raise _Expired()

    try:
        old = signal.signal(signal.SIGALRM, _alarm)
    except ValueError:
        # Not the main thread, where alone Python runs signal handlers: block without
        # the bound. (Asked of signal.signal rather than threading, whose import
        # cost every waiter of a storm about 0.5 ms.)
        fcntl.flock(fd, op)
        return
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        fcntl.flock(fd, op)
    except _Expired:
        raise LockTimeout(f"gave up waiting {timeout:.0f}s for the lock of {what} "
                          f"(another process is still staging it)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _replace_symlink(target: str, link: str, tmp_dir: str) -> None:
    """Atomically (re)point `link`. The new link is made in tmp/ (same filesystem),
    named like a temp file (NAME.PID.0.RANDOM.new) so that, if its writer dies before
    the rename, sweep_temps removes it: made beside `link`, it was a stray name in the
    index for good (found by the kill matrix)."""
    name = f"{os.path.basename(link)}.{os.getpid()}.0.{os.urandom(3).hex()}.new"
    tmp = os.path.join(tmp_dir, name)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
