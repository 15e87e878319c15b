"""Is a cache safe for root to hand out to jobs?

Every job on a host runs the blobs of its node-local cache. A blob, or a directory on
the way to one, that a job owner can write is a way to plant a trojan in another
user's job, run as that user, or (through the root prolog writing there) to make root
write where it should not. So the root prolog refuses, and the load sensor does not
report, a cache whose root, subdirectories or blob in use is group/world-writable or
owned by another user, and each message says the command that fixes it.

Cheap enough for every job: a few lstat calls on the way to the root, its fixed
subdirectories and the one blob about to be used; never a walk of the cache.
"""
from __future__ import annotations

import os
import pwd
import shlex
import stat

from . import cache as _cache
from .errors import CacheError

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import List, Optional, Set

# The cache's own layout (one list, in sge/cache.py), the parents it implies, the
# prolog's reschedule counters (sge/ge/prolog.py) and the metrics events root appends
# to (sge/metrics/events.py).
SUBDIRS = ("blobs",) + _cache.SUBDIRS + ("jobs", "metrics")


class UnsafeCache(CacheError):
    """Transient by design: an admin's chmod/chown fixes it, and the job then runs."""


def problems(root: str, blob: Optional[str] = None, euid: Optional[int] = None) -> List[str]:
    """What makes the cache at `root` unsafe for `euid` (default: ours), one sentence
    with its fix each; empty when safe. Missing parts are fine: the cache creates
    them with safe modes."""
    euid = os.geteuid() if euid is None else euid
    out: List[str] = []
    for d in _ancestors(root):
        _check(d, euid, out, ancestor=True)
    _check(root, euid, out, follow=True)
    for sub in SUBDIRS:
        _check(os.path.join(root, sub), euid, out)
    if blob is not None:
        out.extend(blob_problems(root, blob, euid))
    return out


def blob_problems(root: str, blob: str, euid: Optional[int] = None) -> List[str]:
    """The blob-only part of `problems`, for callers that checked the directories."""
    euid = os.geteuid() if euid is None else euid
    out: List[str] = []
    _check(blob, euid, out, follow=True, blob=True)
    blobs = os.path.join(root, "blobs", "sha256")
    if out or (os.path.dirname(blob) == blobs and not os.path.islink(blob)):
        return out  # the usual case: a file in the checked blobs directory
    real = os.path.realpath(blob)
    if os.path.dirname(real) != os.path.realpath(blobs):
        out.append(f"{blob} leads to {real}, outside the cache's blobs: remove "
                   f"{shlex.quote(blob)}")
    return out


def check(root: str, blob: Optional[str] = None) -> None:
    """Raise UnsafeCache naming every problem and its fix; return None when safe."""
    found = problems(root, blob)
    if found:
        raise UnsafeCache(explain(root, found))


def explain(root: str, found: List[str]) -> str:
    who = _user(os.geteuid())
    return (f"refusing to use the cache {root}: other users could change what jobs run. "
            + "; ".join(found)
            + f" (or for the whole cache: chown -R {who} {shlex.quote(root)} && "
              f"chmod -R go-w {shlex.quote(root)})")


def _ancestors(root: str) -> List[str]:
    """Every directory above the root, as configured and as resolved: whoever can write
    one of them can swap the cache (or a symlink leading to it) for their own."""
    seen: Set[str] = set()
    out: List[str] = []
    for start in (os.path.abspath(root), os.path.realpath(root)):
        p = os.path.dirname(start)
        while True:
            if p not in seen:
                seen.add(p)
                out.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
    return out


def _check(path: str, euid: int, out: List[str], follow: bool = False, ancestor: bool = False,
           blob: bool = False) -> None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        out.append(f"{path} cannot be checked ({e.strerror})")
        return
    q = shlex.quote(path)
    if stat.S_ISLNK(st.st_mode):
        if not ancestor:  # an ancestor symlink is judged by its directory and its target
            out.append(f"{path} is a symlink: replace it with a directory owned by "
                       f"{_user(euid)}")
        return
    if blob and not stat.S_ISREG(st.st_mode):
        out.append(f"{path} is not a regular file: remove it")
        return
    if not blob and not stat.S_ISDIR(st.st_mode):
        out.append(f"{path} is not a directory: remove it")
        return
    owners = (0, euid) if ancestor else (euid,)
    if st.st_uid not in owners:
        out.append(f"{path} is owned by {_user(st.st_uid)}, not {_user(euid)}: "
                   f"chown {_user(euid)} {q}")
    if st.st_mode & 0o022:
        # A sticky directory (like /tmp) above the root is fine: others may add
        # entries but cannot rename or remove ours.
        if not (ancestor and st.st_mode & stat.S_ISVTX):
            who = "group and others" if st.st_mode & 0o022 == 0o022 else (
                "its group" if st.st_mode & 0o020 else "others")
            out.append(f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): "
                       f"chmod go-w {q}")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)
