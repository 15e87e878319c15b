"""The master task's prolog stages a parallel job's image on the job's other hosts.

Grid Engine runs no prolog for the tasks of a parallel job (`qrsh -inherit`), so the
master's prolog asks the agent of every other host in the job's host file to stage
the image, with a request signed by the root-only key, and waits (at most
`agent.pe_wait` seconds, a deadline that every exchange ends by, however slowly a
host answers) until all of them have it. Only an answer signed with the key counts;
any other (a busy 503, a process on the agent's port) is "ask again". It maps onto the
prolog's rules: a permanent failure on any host (the image's sources refuse it) is a
job error; anything else that keeps a host from the image (an agent down, a full
disk, the wait running out) is transient, a reschedule.
"""
from __future__ import annotations

import os
import time

from ..errors import FetchError

TYPE_CHECKING = False  # not typing's: it costs ~2 ms on a warm path (BENCHMARKS.md)
if TYPE_CHECKING:
    from typing import Callable, List, Optional, Set

    from ..config import Settings

HOST_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}\Z"  # compiled on use: the warm prolog imports this


def hostfile_hosts(path: str) -> List[str]:
    """The distinct host names of a PE host file (`host slots queue processors`)."""
    import re
    host_re = re.compile(HOST_PATTERN)
    hosts: List[str] = []
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f.read(1 << 20).splitlines():
                words = line.split()
                if words and host_re.match(words[0]) and words[0] not in hosts:
                    hosts.append(words[0])
    except OSError:
        return []
    return hosts


def hostfile_path() -> Optional[str]:
    """execd writes `pe_hostfile` into the job's spool directory (root's and
    sgeadmin's, not the job owner's); $PE_HOSTFILE names the same file."""
    spool = os.environ.get("SGE_JOB_SPOOL_DIR")
    if spool:
        path = os.path.join(spool, "pe_hostfile")
        return path if os.path.exists(path) else None
    return os.environ.get("PE_HOSTFILE") or None


def stage_other_hosts(name: str, settings: Settings, log: Callable[[str], None],
                      sleep: Callable[[float], None] = time.sleep) -> List[str]:
    """Stage `name` on every other host of this parallel job; raises FetchError
    (transient or not) when that cannot be done. No-op for other jobs."""
    agent = settings.agent
    path = hostfile_path()
    if not path or not agent.enabled:
        return []
    from . import hosts as _hosts
    others = [h for h in hostfile_hosts(path) if not _hosts.is_me(h)]
    if not others:
        return []
    from .auth import key_path, read_key
    from .peers import stage_request
    try:
        key = read_key(key_path(settings))
    except Exception as e:
        raise FetchError(f"cannot ask the job's other hosts to stage {name!r}: {e}",
                         transient=True) from None
    log(f"parallel job: staging {name} on {', '.join(others)}")
    pending = {h: "not asked yet" for h in others}
    busy: Set[str] = set()  # hosts whose caches are full of images in use: waiting, not failing
    deadline = time.monotonic() + agent.pe_wait
    while True:
        for host in list(pending):
            # Issue 17: a host trickling its answer held this loop (as root, under
            # the image lock) past pe_wait; each exchange now ends by both bounds.
            end = min(deadline, time.monotonic() + agent.exchange_deadline)
            if end <= time.monotonic():
                break
            try:
                answer = stage_request(host, name, key, agent,
                                       settings.fetch.connect_timeout,
                                       source=_hosts.my_host(), deadline=end,
                                       step=settings.fetch.read_timeout)
            except Exception as e:  # agent restarting, host busy: ask again
                pending[host] = f"agent unreachable ({type(e).__name__}: {e})"
                continue
            if answer.state == "ready":
                del pending[host]
                log(f"parallel job: {name} is on {host}")
            elif answer.state == "refused":  # a wrong key or clock: asking again cannot help
                raise FetchError(f"host {host} refused to stage {name!r}: {answer.message}",
                                 transient=True)
            elif answer.state == "failed" and not answer.transient:
                raise FetchError(f"host {host} cannot stage {name!r}: {answer.message}",
                                 transient=False)
            else:
                pending[host] = f"{answer.state}: {answer.message}".rstrip(": ")
                (busy.add if answer.busy else busy.discard)(host)
        if not pending:
            return others
        if time.monotonic() >= deadline:
            if set(pending) <= busy:
                # Busy is not failure (issue 9): rescheduled without spending the budget.
                from ..errors import CacheBusy
                raise CacheBusy(f"parallel job: the caches of "
                                f"{', '.join(sorted(pending))} are full of images in use")
            raise FetchError(f"parallel job: {name!r} not on "
                             + "; ".join(f"{h} ({why})" for h, why in pending.items())
                             + f" after {agent.pe_wait:.0f}s", transient=True)
        sleep(max(0.0, min(1.0, deadline - time.monotonic())))
