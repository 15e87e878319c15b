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
import os
import signal
import sys

GO, RESCHEDULE, JOB_ERROR = 0, 99, 100


class _Signalled(Exception):
    def __init__(self, signum):
        self.signum = signum


def _on_signal(signum, frame):
    raise _Signalled(signum)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name = os.environ.get("SGE_IMAGE")
    if not name:
        return GO  # not an image job
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM, signal.SIGPIPE):
        signal.signal(sig, _on_signal)
    out = sys.stdout  # the job's -o file
    try:
        return _run(name, argv, out)
    except _Signalled as e:
        _say(out, f"interrupted by signal {e.signum} while staging {name!r}; rescheduling")
        return RESCHEDULE
    except BaseException as e:  # never let Grid Engine see a traceback's exit code 1
        _say(out, f"internal error while staging {name!r}: {type(e).__name__}: {e}; rescheduling")
        return RESCHEDULE


def _run(name, argv, out):
    from .. import config
    from ..errors import SgeImageError
    from .hookargs import config_arg
    job = _job_id()
    try:
        # Never SGE_IMAGE_CONFIG: the job owner sets the environment this root process sees.
        settings = config.load(config_arg(argv) or config.DEFAULT_PATH)
    except SgeImageError as e:
        _say(out, f"cannot read the site config: {e}")
        return _reschedule_or_fail(None, job, out)
    from ..cache import Cache
    from ..stage import ensure
    try:
        image = settings.image(name)
    except SgeImageError as e:
        _say(out, f"{e}; the job cannot run (fix its -l image= request)")
        return JOB_ERROR
    cache = Cache.from_settings(settings)
    path = cache.lookup(image)
    try:
        if path is None:
            from ..log import Log
            from ..sink import Progress
            log = Log.from_settings(settings, echo=out, tag=f"sge-image prolog {job}")
            progress = Progress(name, out, settings.values["fetch"]["progress_interval"], tty=False)
            path = ensure(name, settings, progress, log)
            _forget_attempts(cache, job)
        else:
            cache.record_use(path)
        _export_path(path)
        return GO
    except SgeImageError as e:
        if e.transient:
            _say(out, f"staging {name!r} failed, will retry: {e}")
            return _reschedule_or_fail(cache, job, out, settings.values["prolog"]["max_reschedules"])
        _say(out, f"staging {name!r} failed: {e}")
        return JOB_ERROR


def _job_id():
    task = os.environ.get("SGE_TASK_ID", "undefined")
    job = os.environ.get("JOB_ID", "0")
    return f"{job}.{task}" if task not in ("undefined", "") else job


def _reschedule_or_fail(cache, job, out, limit=3):
    """99 while this job has been rescheduled fewer than `limit` times on this host."""
    if cache is None:
        return RESCHEDULE
    path = os.path.join(cache.root, "jobs", f"{job}.attempts")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+") as f:
            f.seek(0)
            count = len(f.read().splitlines()) + 1
            f.write("x\n")
    except OSError:
        return RESCHEDULE
    if count > limit:
        _say(out, f"giving up after {limit} reschedules on this host; the job is held in "
                  f"error (qmod -cj {job.split('.')[0]} retries it)")
        _forget_attempts(cache, job)
        return JOB_ERROR
    return RESCHEDULE


def _forget_attempts(cache, job):
    try:
        os.unlink(os.path.join(cache.root, "jobs", f"{job}.attempts"))
    except OSError:
        pass


def _export_path(path):
    spool = os.environ.get("SGE_JOB_SPOOL_DIR")
    if not spool:
        return  # run by hand, outside Grid Engine
    line = f"SGE_IMAGE_PATH={path}\n".encode()
    fd = os.open(os.path.join(spool, "environment"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _say(out, msg):
    try:
        out.write(f"sge-image prolog: {msg}\n")
        out.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
