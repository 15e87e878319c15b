"""The node agent's counts: uploads, 503s, refused connections, staging requests.

The agent's HTTP side runs as `agent.user` (nobody) and cannot open root's event file,
and a refused-connection flood must not become a line per connection on disk. So the
agent keeps its counts in memory and rewrites one small fixed-width record in place
(`pwrite` at offset 0) on each change, to a file that its root side opens before it
forks (the server inherits the descriptor): `<cache>/metrics/agent.PID.NS.counts`,
one per agent start. The root side takes an exclusive flock on it; the lock lasts
as long as either side lives, so the load sensor tells a live agent (`agent_up`)
from a dead one by trying the lock, folds each file's growth into the persistent
counters, and removes a dead agent's file after its last fold.

A record is `v1 KEY=VALUE... crc=CRC32`: a read that raced a rewrite fails its
checksum and is read again, or left for the next cycle.
"""
from __future__ import annotations

import fcntl
import os
import time
import zlib

from .events import DIR

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    import threading
    from typing import Dict, List, Optional, Tuple

    from ..config import Settings

KEYS = ("uploads_whole", "uploads_inflight", "upload_bytes", "busy_slots",
        "busy_connections", "refused", "stage_ready", "stage_staging", "stage_failed",
        "stage_refused")
STAGE_ANSWERS = ("ready", "staging", "failed", "refused")
PREFIX, SUFFIX = "agent.", ".counts"
DIR_MODE, FILE_MODE = 0o755, 0o644

_fd: Optional[int] = None
_counts: Dict[str, int] = {k: 0 for k in KEYS}
_lock: Optional[threading.Lock] = None


# ------------------------------------------------------------ the agent's side

def open_for_agent(settings: Settings, cache_root: str) -> None:
    """Root side, after the port is bound and before the fork. Never raises: an
    agent without a counts file serves as before (and shows as not up).

    The file is made with metrics off too, so that turning them on later finds the
    running agent (it reads its config only at start). Then no sensor folds and
    removes the files of dead agents: each start removes them itself, or an agent
    that dies at every start would leave one file a second."""
    global _fd, _lock
    import threading
    _lock = threading.Lock()
    d = os.path.join(cache_root, DIR)
    try:
        try:
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)  # whatever the umask
        except FileExistsError:
            pass
        if not settings.metrics.textfile_dir:
            remove_dead(d)
        path = os.path.join(d, f"{PREFIX}{os.getpid()}.{time.time_ns()}{SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _fd = fd
        _write()
    except OSError:
        pass


def count(key: str, n: int = 1) -> None:
    """Add `n` to `key` (one of KEYS) and rewrite the record; never raises."""
    if _fd is None or _lock is None:
        return
    with _lock:
        _counts[key] = _counts.get(key, 0) + n
        _write()


def count_upload(inflight: bool, nbytes: int) -> None:
    count("uploads_inflight" if inflight else "uploads_whole")
    count("upload_bytes", nbytes)


def count_stage_answer(state: object) -> None:
    count(f"stage_{state}" if state in STAGE_ANSWERS else "stage_failed")


def _write() -> None:
    if _fd is None:
        return
    try:
        os.pwrite(_fd, record(_counts), 0)
    except OSError:
        pass


def record(counts: Dict[str, int]) -> bytes:
    """Fixed width (20 digits a value): a rewrite never leaves a longer old tail."""
    body = "v1 " + " ".join(f"{k}={counts.get(k, 0):020d}" for k in KEYS)
    return f"{body} crc={zlib.crc32(body.encode()):08x}\n".encode()


# ------------------------------------------------------------ the sensor's side

def parse(data: bytes) -> Optional[Dict[str, int]]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    line = text.split("\n", 1)[0]
    body, sep, crc = line.rpartition(" crc=")
    if not sep or f"{zlib.crc32(body.encode()):08x}" != crc:
        return None
    words = body.split(" ")
    if words[0] != "v1":
        return None
    out: Dict[str, int] = {}
    for w in words[1:]:
        k, _, v = w.partition("=")
        if not v.isdigit():
            return None
        out[k] = int(v)
    return out


def read_all(metrics_dir: str) -> List[Tuple[str, Optional[Dict[str, int]], bool]]:
    """Every agent counts file -> (file name, its values or None, agent alive)."""
    out: List[Tuple[str, Optional[Dict[str, int]], bool]] = []
    try:
        names = [n for n in os.listdir(metrics_dir) if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    except OSError:
        return out
    for name in sorted(names):
        try:
            fd = os.open(os.path.join(metrics_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            alive = _locked(fd)
            values = None
            for _ in range(3):  # a read that raced a rewrite fails its checksum
                values = parse(os.pread(fd, 4096, 0))
                if values is not None:
                    break
            out.append((name, values, alive))
        finally:
            os.close(fd)
    return out


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def remove_dead(metrics_dir: str) -> None:
    """Metrics off: the files of agents that are gone hold counts no one will fold."""
    for name, _, alive in read_all(metrics_dir):
        if not alive:
            try:
                os.unlink(os.path.join(metrics_dir, name))
            except OSError:
                pass
