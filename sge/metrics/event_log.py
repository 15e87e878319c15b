"""Reading the event file incrementally, across rotations, truncations and crashes.

The load sensor reads what was appended since its last cycle, from a cursor kept with
the counters (state.py), so that counts and cursor are saved together in one atomic
write and a sensor killed between reading and saving reads the same lines again
rather than losing or doubling them.

A cursor is (file identity, offset, the bytes just before the offset). A file that is
not the one the cursor names (rotated, deleted and made again) is read from its
start; one that is shorter than the offset, or whose bytes before it changed, was
truncated or rewritten in place (`: > events`) and is read from its start too.
Only whole lines are taken: a line still being written stays for the next cycle.

Rotation keeps appenders lock-free: once the sensor has read a file past ROTATE_AT
it links it to `events.old` and renames a fresh empty file over `events`, so there
is never a moment without an `events` for an appender to find. A process that
opened the old file just before that appends into `events.old`, which the next cycle
reads to its end and removes.
"""
from __future__ import annotations

import os

from .events import EVENTS

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

    # file identity "dev:ino" -> [offset, hex of the bytes before it]
    Cursors = Dict[str, List[object]]

OLD = EVENTS + ".old"
NEW = EVENTS + ".new"
ROTATE_AT = 1 << 20
MAX_READ = 4 << 20      # per file and cycle: a backlog is read over several cycles
TAIL = 32               # bytes before the offset that must not change
FILE_MODE = 0o644


def read_new(metrics_dir: str, cursors: Cursors, create: bool = True) -> Tuple[List[str], Cursors, int]:
    """-> (new whole lines, the cursors to save, bytes skipped as unreadable).
    `create`: make the event file when missing (metrics on)."""
    lines: List[str] = []
    out: Cursors = {}
    seen: Cursors = dict(cursors)   # with where this call left each file it read
    skipped = 0
    old_path = os.path.join(metrics_dir, OLD)
    fd = _open(old_path)
    if fd is not None:
        try:
            ident, off, tail = _position(fd, cursors)
            got, off, tail, bad, at_end = _read(fd, off, tail, final=True)
            lines += got
            skipped += bad
            seen[ident] = [off, tail]
        finally:
            os.close(fd)
        if at_end:
            try:
                os.unlink(old_path)
            except FileNotFoundError:
                pass
        else:
            out[ident] = [off, tail]
    path = os.path.join(metrics_dir, EVENTS)
    fd = _open(path)
    if fd is None and create:
        fd = _create(path)
    if fd is not None:
        try:
            # `events` may be the file just drained as events.old (a rotation cut
            # short between its link and its rename): go on from where that left off.
            ident, off, tail = _position(fd, seen)
            got, off, tail, bad, _ = _read(fd, off, tail, final=False)
            lines += got
            skipped += bad
            out[ident] = [off, tail]
        finally:
            os.close(fd)
    return lines, out, skipped


def rotate_if_due(metrics_dir: str, cursors: Cursors) -> bool:
    """Start a fresh `events` once the current one has been read past ROTATE_AT."""
    path = os.path.join(metrics_dir, EVENTS)
    if os.path.lexists(os.path.join(metrics_dir, OLD)):
        return False  # the last rotation is not drained yet
    fd = _open(path)
    if fd is None:
        return False
    try:
        st = os.fstat(fd)
        cur = cursors.get(_ident(st))
        if cur is None or int(cur[0]) < ROTATE_AT:  # type: ignore[call-overload]
            return False
    finally:
        os.close(fd)
    new = os.path.join(metrics_dir, NEW)
    try:
        os.unlink(new)  # a leftover of a sensor killed mid-rotation
    except FileNotFoundError:
        pass
    os.close(_create(new))
    # link first, rename second: `events` always exists, and until the rename both
    # names are one file (a crash in between leaves `events.old` == `events`, which
    # read_new drains from the same cursor and removes).
    os.link(path, os.path.join(metrics_dir, OLD))
    os.rename(new, path)
    return True


def remove(metrics_dir: str) -> None:
    """Metrics off: no event file, so appenders stop writing."""
    for name in (EVENTS, OLD, NEW):
        try:
            os.unlink(os.path.join(metrics_dir, name))
        except FileNotFoundError:
            pass


def _open(path: str) -> Optional[int]:
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _create(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
    except FileExistsError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    os.fchmod(fd, FILE_MODE)  # whatever the umask: appenders are root, readers anyone
    return fd


def _ident(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


def _position(fd: int, cursors: Cursors) -> Tuple[str, int, str]:
    """Where to read `fd` from: its cursor if the file is still the one it names."""
    st = os.fstat(fd)
    ident = _ident(st)
    cur = cursors.get(ident)
    if not cur:
        return ident, 0, ""
    off, tail = int(cur[0]), str(cur[1])  # type: ignore[call-overload]
    if off > st.st_size:
        return ident, 0, ""  # truncated
    if tail:
        want = bytes.fromhex(tail)
        if off < len(want) or os.pread(fd, len(want), off - len(want)) != want:
            return ident, 0, ""  # truncated and written again past the old offset
    return ident, off, tail


def _read(fd: int, off: int, tail: str, final: bool) -> Tuple[List[str], int, str, int, bool]:
    """Whole lines from `off` -> (lines, new offset, new tail, bytes skipped, at end).
    `final`: no writer is left (a rotated file), so a last line without its newline is
    a line cut short, skipped rather than waited for."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, min(size - off, MAX_READ), off) if size > off else b""
    end = data.rfind(b"\n") + 1
    skipped = 0
    if end == 0 and len(data) >= MAX_READ:
        end = skipped = len(data)  # one "line" of megabytes: not a line the kit wrote
    elif final and end < len(data) and off + len(data) >= size:
        skipped = len(data) - end
        end = len(data)
    whole, off = data[:end - skipped] if end > skipped else b"", off + end
    if end:
        tail = data[max(0, end - TAIL):end].hex()
    lines = [ln for ln in whole.decode("ascii", "replace").split("\n") if ln]
    return lines, off, tail, skipped, off >= size
