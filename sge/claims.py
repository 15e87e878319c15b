"""Job claims: which running jobs on this host use which cached blob.

A claim is what keeps a job's image for the job's whole life, with or without the
starter method (issue: without the starter, only `cache.evict_grace` protected a job,
and a job that started late or opened its image again later could find it evicted).

    claims/<job>.<task>   "<sha256 hex> <the job's active_jobs directory>\\n"

The prolog writes the claim (as root, under the blob's pin lock, see
`Cache.claim`); the epilog removes it. A claim is *live* only while the directory it
names exists: Grid Engine's execd keeps `<spool>/active_jobs/<job>.<task>` for
exactly as long as the job runs on this host, so a job that ended without an epilog
(`qdel -f`, an execd crash, a queue with the site's own epilog) stops holding its image
at once, and the load sensor's sweep removes the file later. A claim that names no
such directory is never recorded: nothing could ever end it.

Stdlib only and no lock: the prolog's warm path reads nothing here, and writes one
small file by rename.
"""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

DIR = "claims"
MODE = 0o644


def job_key(job_id: str, task_id: str) -> Optional[str]:
    """`12.3` for task 3 of array job 12, `12.1` for a plain job (Grid Engine's own
    name of its active_jobs directory); None unless both are plain numbers, since the
    key becomes a file name that root writes."""
    if not _number(job_id):
        return None
    task = task_id if _number(task_id) else "1"
    return f"{job_id}.{task}"


def _number(s: str) -> bool:
    return s.isascii() and s.isdigit() and 0 < len(s) <= 20


def job_dir_ok(key: str, spool_dir: str) -> bool:
    """Whether `spool_dir` is where Grid Engine keeps this job while it runs:
    an absolute, normalised `.../active_jobs/<job>.<task>`."""
    return (os.path.isabs(spool_dir) and os.path.normpath(spool_dir) == spool_dir
            and os.path.basename(spool_dir) == key
            and os.path.basename(os.path.dirname(spool_dir)) == "active_jobs"
            and "\n" not in spool_dir and " " not in spool_dir)


def running(job_dir: str) -> bool:
    """Whether Grid Engine still keeps the job's directory: a directory whose owner also
    owns `active_jobs` (the execd's user), which no other user can write. A job owner
    cannot make such a directory, so no claim can be kept alive by a job's own hand."""
    import stat
    try:
        st = os.lstat(job_dir)
        parent = os.lstat(os.path.dirname(job_dir))
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(parent.st_mode)
            and st.st_uid == parent.st_uid and not parent.st_mode & 0o022)


def write(root: str, key: str, digest: str, spool_dir: str) -> None:
    """Record that job `key` uses blob `digest`: a temp file renamed into place, never
    following a link below the root (root writes here on behalf of jobs)."""
    dfd = _claims_dir(root, create=True)
    try:
        tmp = f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, MODE,
                     dir_fd=dfd)
        try:
            os.fchmod(fd, MODE)  # O_CREAT applied the umask
            os.write(fd, f"{digest} {spool_dir}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, key, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def release(root: str, key: str) -> bool:
    """Remove job `key`'s claim (the epilog); True if there was one."""
    try:
        dfd = _claims_dir(root)
    except OSError:
        return False
    try:
        os.unlink(key, dir_fd=dfd)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def read(root: str) -> List[Tuple[str, str, str, bool]]:
    """Every claim as (job key, digest, job dir, live)."""
    out: List[Tuple[str, str, str, bool]] = []
    base = os.path.join(root, DIR)
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for key in names:
        if key.startswith("."):
            continue
        try:
            with open(os.path.join(base, key)) as f:
                digest, _, spool = f.read(4096).strip().partition(" ")
        except OSError:
            continue
        out.append((key, digest, spool, job_dir_ok(key, spool) and running(spool)))
    return out


def live(root: str) -> Dict[str, List[str]]:
    """digest -> the job keys whose live claims hold it."""
    held: Dict[str, List[str]] = {}
    for key, digest, _, is_live in read(root):
        if is_live:
            held.setdefault(digest, []).append(key)
    return held


def holders(root: str, digest: str) -> List[str]:
    """The jobs whose live claims hold `digest` (eviction asks just before it unlinks)."""
    return live(root).get(digest, [])


def sweep(root: str) -> List[str]:
    """Remove claims whose job no longer runs here (no epilog ran: `qdel -f`, an execd
    crash, a queue with another epilog) and temp files a killed prolog left; returns the
    job keys removed. The load sensor runs it every cycle."""
    from .tempfiles import pid_alive
    gone: List[str] = []
    base = os.path.join(root, DIR)
    for key, _, _, is_live in read(root):
        if not is_live and release(root, key):
            gone.append(key)
    try:
        for name in os.listdir(base):
            if name.startswith(".") and name.endswith(".tmp"):
                pid = name.rsplit(".", 2)[-2]
                if pid.isdigit() and not pid_alive(int(pid)):
                    try:
                        os.unlink(os.path.join(base, name))
                    except OSError:
                        pass
    except OSError:
        pass
    return gone


def _claims_dir(root: str, create: bool = False) -> int:
    """The claims directory, opened without following a link below the cache root."""
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if create:
            try:
                os.mkdir(DIR, 0o755, dir_fd=rfd)
                os.chmod(DIR, 0o755, dir_fd=rfd)  # mkdir applied the umask
            except FileExistsError:
                pass
        try:
            return os.open(DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=rfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(e.errno, f"{root}/{DIR} is not a directory") from None
            raise
    finally:
        os.close(rfd)
