"""Download temp files and their writers. A temp file is named
NAME.PID.SIZE.RANDOM.part and flocked by its writer; a command source works in
NAME.PID.SIZE.RANDOM.cmd beside it. Whoever finds one judges it by this one rule: dead
when no process holds its lock and its PID is gone. The cache's sweep, the claims'
sweep and the command source all use it, so it sits below each of them. On every warm
path (the cache imports it): shutil and typing only where needed."""
from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Optional


def temp_name(name: str, size: int) -> str:
    """A new temp file name for image `name` of `size` bytes (0: unknown)."""
    return f"{name}.{os.getpid()}.{size}.{os.urandom(4).hex()}.part"


def sweep_command_dirs(tmpdir: str) -> None:
    """Remove the command source's `*.cmd` directories in `tmpdir` whose stager is gone
    (the rule sweep_temps applies to them too)."""
    import shutil
    try:
        names = [n for n in os.listdir(tmpdir) if n.endswith(".cmd")]
    except OSError:
        return
    for n in names:
        path = os.path.join(tmpdir, n)
        if dir_is_dead(path, n[:-4]):
            shutil.rmtree(path, ignore_errors=True)


def dir_is_dead(path: str, temp_name: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live stager holds it
    finally:
        os.close(fd)
    return not writer_alive(temp_name)


def writer_pid(temp_name: str) -> Optional[int]:
    try:
        return int(temp_name.split(".")[-4])
    except (ValueError, IndexError):
        return None


def writer_alive(temp_name: str) -> bool:
    """Temp files are named NAME.PID.SIZE.RANDOM.part; is that PID running?"""
    pid = writer_pid(temp_name)
    if pid is None:
        return False
    if pid == os.getpid():
        return False
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
