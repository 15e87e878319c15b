"""`sge-image prewarm NAME`: stage an image on chosen hosts before a campaign.

Through Grid Engine itself, so it honours everything the cluster already enforces: one
low-priority job per host, pinned with `-l hostname=`, requesting the image like any
user job (the JSV, the prolog's lock, the cache cap and eviction all apply). Hosts
whose sensor already reports the image are skipped, so running it twice stages nothing
twice. Root must not submit: with the default `min_uid 1000` a root job fails and puts
the queue into error state (measured).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from .. import config
from ..cluster import qhost
from . import qconf

if TYPE_CHECKING:
    import argparse
    from typing import Dict, List, Optional, Sequence, TextIO, Tuple

    from ..config import Settings


def choose_hosts(settings: Settings, name: str, count: Optional[int] = None,
                 hostgroup: Optional[str] = None,
                 all_hosts: bool = False) -> Tuple[List[str], List[str]]:
    """(targets, already warm): hosts to stage on, most free cache first."""
    image = settings.image(name)
    views = qhost.read()
    if hostgroup:
        members = set(qconf.parse_conf(qconf.run("-shgrp", hostgroup)).get("hostlist", "").split())
        pool = [h for h in views if h in members]
    else:
        pool = [h for h in views if h in set(qconf.exec_hosts())]
    warm = sorted(h for h in pool if views[h].has(image.complex))
    cold = [h for h in pool if h not in warm]
    cold.sort(key=lambda h: -(views[h].free_bytes or 0))
    if count is not None and not all_hosts and not hostgroup:
        cold = cold[:max(count - len(warm), 0)]
    return cold, warm


def _check_submitter() -> None:
    conf = qconf.show_conf("global") or {}
    try:
        min_uid = int(conf.get("min_uid", "0"))
    except ValueError:
        min_uid = 0
    if os.geteuid() < min_uid:
        raise qconf.QconfError(
            f"uid {os.geteuid()} is below the cluster's min_uid {min_uid}: its jobs would fail "
            f"and put queues in error; run prewarm as a regular user (sudo -u USER ...)")


def prewarm(settings: Settings, name: str, hosts: Sequence[str], wait: bool = True,
            timeout: float = 7200, out: TextIO = sys.stdout) -> int:
    _check_submitter()
    jobs: Dict[str, str] = {}
    t0 = time.monotonic()
    for h in hosts:
        r = subprocess.run(["qsub", "-terse", "-N", f"prewarm-{name}"[:60], "-p", "-500",
                            "-l", f"hostname={h}", "-l", f"image={name}", "-o", "/dev/null",
                            "-j", "y", "-b", "y", "/bin/true"],
                           capture_output=True, text=True, timeout=120)
        lines = [x for x in r.stdout.split() if x.isdigit()]
        if r.returncode != 0 or not lines:
            out.write(f"{h}: not submitted: {(r.stderr or r.stdout).strip()}\n")
            continue
        jobs[lines[-1]] = h
        out.write(f"{h}: job {lines[-1]} submitted\n")
    if not wait:
        return 0
    done: Dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(jobs) and time.monotonic() < deadline:
        for jid in jobs:
            if jid in done:
                continue
            r = subprocess.run(["qstat", "-j", jid], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                done[jid] = time.monotonic() - t0
        time.sleep(1)
    failed = 0
    for jid, h in jobs.items():
        if jid not in done:
            out.write(f"{h}: still running after {timeout:.0f}s (job {jid})\n")
            failed += 1
            continue
        ok = _exit_ok(jid)
        failed += not ok
        out.write(f"{h}: {'staged' if ok else 'FAILED (see qacct -j ' + jid + ')'} "
                  f"after {done[jid]:.0f}s\n")
    out.write(f"prewarm {name}: {len(jobs) - failed} of {len(jobs)} hosts staged in "
              f"{time.monotonic() - t0:.0f}s\n")
    return 0 if not failed else 5


def _exit_ok(jid: str, tries: int = 30) -> bool:
    for _ in range(tries):  # the accounting record lands a moment after the job ends
        r = subprocess.run(["qacct", "-j", jid], capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and "exit_status" in r.stdout:
            fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split(None, 1)) == 2)
            return fields.get("exit_status", "").strip() == "0" and fields.get("failed", "0").strip().startswith("0")
        time.sleep(1)
    return False


def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    qconf.require_qconf()
    settings = config.load(args.config)
    targets, warm = choose_hosts(settings, args.name, args.hosts, args.hostgroup, args.all)
    for h in warm:
        out.write(f"{h}: already warm\n")
    if not targets:
        out.write(f"prewarm {args.name}: nothing to do\n")
        return 0
    return prewarm(settings, args.name, targets, wait=not args.no_wait, out=out)
