"""Append one event line to the host's event file: what the hooks and the staging code
call. Lean on purpose: the prolog's warm path runs this, so it imports only `os`.

Metrics are on exactly when `<cache>/metrics/events` exists: the load sensor creates
it when `metrics.textfile_dir` is set and removes it when it is not. Appenders never
create it, so with metrics off an event costs one failed open and nothing else.

One event is one `os.write` of a short line to a descriptor opened with O_APPEND: on a
local filesystem the kernel appends each such write whole, so concurrent prologs
never interleave bytes (the cache is node-local by design). Format, fields separated
by one space, the kind first (fold.py parses it):

    prolog IMAGE hit|miss CODE SECONDS
    stage IMAGE origin|peer|peer_inflight BYTES SECONDS
    evict IMAGE|- BYTES
    room_wait ok|timeout SECONDS
    peer_fail refused|timeout|busy|error
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Iterable

    from ..eviction import Entry

DIR = "metrics"
EVENTS = "events"
# A host whose load sensor is dead folds nothing: stop appending rather than fill the
# cache's disk with lines no one reads.
MAX_FILE = 64 << 20
MAX_LINE = 256


def events_path(cache_root: str) -> str:
    return f"{cache_root}/{DIR}/{EVENTS}"


def append(cache_root: str, line: str) -> None:
    """Append `line` (no newline) if metrics are on; never raises."""
    try:
        fd = os.open(events_path(cache_root),
                     os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # metrics off (no file), or no cache yet
    try:
        if os.fstat(fd).st_size < MAX_FILE:
            data = (line[:MAX_LINE - 1] + "\n").encode("ascii", "replace")
            os.write(fd, data)
    except OSError:
        pass  # a full disk must not fail a job for a metric
    finally:
        os.close(fd)


def prolog(cache_root: str, image: str, hit: bool, code: int, seconds: float) -> None:
    append(cache_root, f"prolog {image} {'hit' if hit else 'miss'} {code} {seconds:.6f}")


def staged(cache_root: str, image: str, source: str, nbytes: int, seconds: float) -> None:
    append(cache_root, f"stage {image} {source} {nbytes} {seconds:.6f}")


def evicted(cache_root: str, image: str, nbytes: int) -> None:
    append(cache_root, f"evict {image or '-'} {nbytes}")


def room_wait(cache_root: str, outcome: str, seconds: float) -> None:
    append(cache_root, f"room_wait {outcome} {seconds:.6f}")


def evicted_entries(cache_root: str, entries: Iterable[Entry]) -> None:
    for e in entries:
        evicted(cache_root, e.names[0] if e.names else "", e.size)


PEER_FAILURES = ("refused", "timeout", "busy", "error")


def peer_failed(temp_path: str, exc: BaseException) -> None:
    """A transfer from another host's agent that failed, by why (the client's view:
    a peer refusing connections is an agent down or a port closed). `temp_path` is
    the download's temp file, `<cache>/tmp/...`: it names the cache."""
    text = str(exc)
    if isinstance(exc, ConnectionRefusedError):
        reason = "refused"
    elif isinstance(exc, TimeoutError) or "timed out" in text or "no data for" in text:
        reason = "timeout"
    elif "HTTP 503" in text:
        reason = "busy"
    else:
        reason = "error"
    append(os.path.dirname(os.path.dirname(temp_path)), f"peer_fail {reason}")
