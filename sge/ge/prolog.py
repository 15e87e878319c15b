"""The queue prolog: stage the job's image before the job starts.

Son of Grid Engine 8.1.9 reads only three prolog outcomes safely (measured): 0 runs
the job, 99 reschedules it, 100 puts the job (not the queue) in error. Any other exit
code, or death by a signal, puts the whole queue instance into error state and every
later job avoids the host. So every path out of here is one of 0/99/100, signals
included, and 99 is capped per job and host: a source that stays down must not
reschedule a job forever.

The image comes from `SGE_IMAGE`, which the JSV adds to the job environment. The
cached file's path is appended to `$SGE_JOB_SPOOL_DIR/environment` as `SGE_IMAGE_PATH`
so the job and the starter method see it (that file is sgeadmin's 0644: root@ only).
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from types import FrameType
    from typing import Callable, List, NoReturn, Optional, TextIO

    from ..cache import Cache
    from ..config import Image, Settings
    from ..sink import Progress

GO, RESCHEDULE, JOB_ERROR = 0, 99, 100
TRAPPED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGQUIT, signal.SIGALRM)


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


_signalled = False


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    # The first signal ends the staging; later ones (Grid Engine or an admin may signal
    # again) must not interrupt the code that reports 99 (found by the kill matrix).
    global _signalled
    if _signalled:
        return
    _signalled = True
    raise _Signalled(signum)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = os.environ.get("SGE_IMAGE")
    if not name:
        return GO  # not an image job
    for sig in TRAPPED:
        signal.signal(sig, _on_signal)
    # A job output pipe whose reader went away is an EPIPE that JobOutput drops, not a
    # signal that turns a staged image into a reschedule.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # the job's -o file; JobOutput has what Log and Progress use of a stream
    out: TextIO = JobOutput(sys.stdout)  # type: ignore[assignment]
    started = time.monotonic()
    _outcome.clear()
    try:
        code = _run(name, argv, out)
    except _Signalled as e:
        _say(out, f"interrupted by signal {e.signum} while staging {name!r}; rescheduling")
        code = RESCHEDULE
    except BaseException as e:  # never let Grid Engine see a traceback's exit code 1
        _say(out, f"internal error while staging {name!r}: {type(e).__name__}: {e}; rescheduling")
        code = RESCHEDULE
    _record_exit(code, started)
    return code


# [cache root, image, found cached]: what the exit's metrics event says (sge/metrics/)
_outcome: List[object] = []


def _record_exit(code: int, started: float) -> None:
    """One event line per prolog (sge/metrics/events.py: a single append, nothing when
    metrics are off); a failure here must not change the exit code."""
    if not _outcome:
        return
    try:
        from ..metrics import events
        root, image, hit = _outcome
        events.prolog(str(root), str(image), bool(hit), code, time.monotonic() - started)
    except Exception:  # noqa: BLE001 - e.g. an import during an upgrade in place
        pass


def _run(name: str, argv: List[str], out: TextIO) -> int:
    from .. import config
    from ..cluster.hookargs import config_arg
    from ..errors import SgeImageError
    job = _job_id()
    try:
        # Never SGE_IMAGE_CONFIG: the job owner sets the environment this root process sees.
        settings = config.load(config_arg(argv) or config.DEFAULT_PATH)
    except SgeImageError as e:
        _say(out, f"cannot read the site config: {e}")
        return _reschedule_or_fail(None, job, out)
    _outcome[:] = [settings.cache_root, name, False]
    from ..cache import Cache
    try:
        image = settings.image(name)
    except SgeImageError as e:
        _say(out, f"{e}; the job cannot run (fix its -l image= request)")
        return JOB_ERROR
    cache = Cache.from_settings(settings)
    path = cache.lookup(image)
    _outcome[2] = path is not None
    try:
        if os.geteuid() == 0:
            # Root hands this cache's files to every job on the host: refuse one that
            # job owners could have changed (sge/security.py). Transient: a chmod or
            # chown fixes it, so 99, bounded by the reschedule cap below.
            from ..security import check
            check(cache.root, path)
        if path is None:
            from ..log import Log
            from ..sink import Progress
            log = Log.from_settings(settings, echo=out, tag=f"sge-image prolog {job}")
            progress = Progress(name, out, settings.fetch.progress_interval, tty=False)
            path = _stage(name, settings, progress, log)
            _forget_attempts(cache, job)
        from ..runtimes import staging_refusal
        refusal = staging_refusal(name, path, settings.starter.runtime, cache.root,
                                  os.environ.get("SGE_JOB_SPOOL_DIR"))
        if refusal:
            _say(out, f"{refusal}; the job cannot run")
            return JOB_ERROR
        # Claimed after the format check: a job that cannot run holds nothing.
        path = _hand_out(cache, image, lambda: _stage(name, settings))
        _stage_parallel_hosts(name, settings, out, job)
        _export_path(path)
        return GO
    except SgeImageError as e:
        if e.busy:
            # Busy is not failure: rescheduled without spending the job's budget, so a
            # full cache never sends a task to Eqw (it waited cache.room_wait here).
            _say(out, f"{e}; rescheduling: the job waits for a host with room")
            return RESCHEDULE
        if e.transient:
            _say(out, f"staging {name!r} failed, will retry: {e}")
            return _reschedule_or_fail(cache, job, out, settings.prolog.max_reschedules)
        _say(out, f"staging {name!r} failed: {e}")
        return JOB_ERROR


def _stage(name: str, settings: Settings, progress: Optional[Progress] = None,
           log: Optional[Callable[[str], None]] = None) -> str:
    """The cold path: staging, with other hosts' agents as the first source."""
    from ..agent.peers import Peers
    from ..stage import ensure
    return ensure(name, settings, progress, log, Peers())


def _hand_out(cache: Cache, image: Image, stage_again: Callable[[], str]) -> str:
    """Claim the image for this job's whole life (sge/claims.py), or, outside Grid
    Engine, mark its use. An eviction may have taken it since it was found or staged:
    then it is staged again (a few rounds; a cache that loses it every time is busy)."""
    from .. import claims
    from ..errors import CacheBusy, NotCached
    key = claims.job_key(os.environ.get("JOB_ID", ""), os.environ.get("SGE_TASK_ID", ""))
    job_dir = os.environ.get("SGE_JOB_SPOOL_DIR", "")
    for _ in range(3):
        try:
            if key is not None and claims.job_dir_ok(key, job_dir):
                return cache.claim(image, key, job_dir)
            return cache.hand_out(image)
        except NotCached:
            stage_again()
    raise CacheBusy(f"image {image.name!r} was evicted three times before this job could "
                    f"claim it")


def _stage_parallel_hosts(name: str, settings: Settings, out: TextIO, job: str) -> None:
    """A parallel job's other hosts run no prolog: ask their agents (sge/agent/pe.py).
    Raises SgeImageError like staging does, so the same 99/100 rules apply."""
    if not settings.agent.enabled:
        return
    from ..agent import pe
    if pe.hostfile_path() is None:
        return
    from ..log import Log
    pe.stage_other_hosts(name, settings, Log.from_settings(settings, echo=out,
                                                           tag=f"sge-image prolog {job}"))


def _job_id() -> str:
    # Grid Engine sets both, but only digits may reach a file name root writes.
    task = os.environ.get("SGE_TASK_ID", "undefined")
    job = os.environ.get("JOB_ID", "0")
    job = job if _number(job) else "0"
    return f"{job}.{task}" if _number(task) else job


def _number(s: str) -> bool:
    return s.isascii() and s.isdigit() and len(s) <= 20


class _UnsafeCounter(Exception):
    pass


def _reschedule_or_fail(cache: Optional[Cache], job: str, out: TextIO, limit: int = 3) -> int:
    """99 while this job has been rescheduled fewer than `limit` times on this host."""
    if cache is None:
        return RESCHEDULE
    try:
        count = _count_attempt(cache.root, job)
    except _UnsafeCounter as e:
        _say(out, f"{e}, so reschedules cannot be counted safely: the job is held in error "
                  f"instead (qmod -cj {job.split('.')[0]} retries it once that is fixed)")
        return JOB_ERROR
    except OSError:
        return RESCHEDULE
    if count > limit:
        _say(out, f"giving up after {limit} reschedules on this host; the job is held in "
                  f"error (qmod -cj {job.split('.')[0]} retries it)")
        _forget_attempts(cache, job)
        return JOB_ERROR
    return RESCHEDULE


def _count_attempt(root: str, job: str) -> int:
    """Add one to ROOT/jobs/JOB.attempts; -> the count. Root writes there on behalf of
    jobs: no link is followed below the root and the directory and file must be root's
    alone, else a job owner could aim the write at any file (or reset the count)."""
    import stat

    from ..cache import FILE_MODE
    jfd = _jobs_dir(root, create=True)
    try:
        try:
            fd = os.open(f"{job}.attempts", os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                         FILE_MODE, dir_fd=jfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _UnsafeCounter(f"{root}/jobs/{job}.attempts is a symlink") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
                raise _UnsafeCounter(f"{root}/jobs/{job}.attempts is not a file of its own")
            os.fchmod(fd, FILE_MODE)  # O_CREAT applied the umask
            count = os.pread(fd, 4096, 0).count(b"\n") + 1
            os.write(fd, b"x\n")
            return count
        finally:
            os.close(fd)
    finally:
        os.close(jfd)


def _jobs_dir(root: str, create: bool = False) -> int:
    import stat

    from ..cache import DIR_MODE
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        made = False
        if create:
            try:
                os.mkdir("jobs", DIR_MODE, dir_fd=rfd)
                made = True
            except FileExistsError:
                pass
        try:
            jfd = os.open("jobs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=rfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _UnsafeCounter(f"{root}/jobs is not a directory") from None
            raise
    finally:
        os.close(rfd)
    st = os.fstat(jfd)
    if made and st.st_uid == os.geteuid():
        os.fchmod(jfd, DIR_MODE)  # mkdir applied the umask
    elif st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(jfd)
        raise _UnsafeCounter(f"{root}/jobs could be changed by other users (owner uid "
                             f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    return jfd


def _forget_attempts(cache: Cache, job: str) -> None:
    try:
        jfd = _jobs_dir(cache.root)
    except (OSError, _UnsafeCounter):
        return
    try:
        os.unlink(f"{job}.attempts", dir_fd=jfd)
    except OSError:
        pass
    finally:
        os.close(jfd)


def _export_path(path: str) -> None:
    spool = os.environ.get("SGE_JOB_SPOOL_DIR")
    if not spool:
        return  # run by hand, outside Grid Engine
    line = f"SGE_IMAGE_PATH={path}\n".encode()
    fd = os.open(os.path.join(spool, "environment"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class JobOutput:
    """The job's output file as the prolog writes to it: gone (Python sets sys.stdout
    to None when fd 1 is closed), full or a broken pipe, writing must never change
    the exit code (issue: with stdout and stderr closed the prolog exited 1)."""

    def __init__(self, stream: Optional[TextIO]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if self.stream is None:
            return 0
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            self.stream = None  # stop trying: every later write would fail the same way
            return 0

    def flush(self) -> None:
        if self.stream is None:
            return
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None

    def isatty(self) -> bool:
        return False


def _say(out: TextIO, msg: str) -> None:
    out.write(f"sge-image prolog: {msg}\n")
    out.flush()


def _exit(code: int) -> NoReturn:
    """Leave without interpreter shutdown: it restores the default signal actions, and a
    signal arriving then was a death by signal, which puts the queue in error (found by
    the kill matrix: a burst of SIGHUP/SIGINT during a download)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # AttributeError: a closed fd's None
            pass
    os._exit(code)


def run() -> None:
    """The process entry: `python -m sge.ge.prolog`, and the launcher's `python -c`
    (prolog/sge-image-prolog), which spares every prolog runpy's imports."""
    try:
        code = main()
    except _Signalled:  # the first signal came just as main() returned
        code = RESCHEDULE
    except BaseException:  # noqa: BLE001 - nothing may reach Grid Engine but 0/99/100
        code = RESCHEDULE
    _exit(code if code in (GO, RESCHEDULE, JOB_ERROR) else RESCHEDULE)


if __name__ == "__main__":
    run()
