"""Handle on the lab's running Grid Engine cluster (qsub, qacct, queue errors) for the
tests (tests/ge/conftest.py makes it a fixture) and the benchmarks."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "lab" / "ge-cluster.sh"
FLAVORS = ("soge", "ocs")
# a first 'up' installs packages; apt may wait up to 900 s for the dpkg lock
UP_TIMEOUT = 1800

JobId = Union[int, str]

# qsub -terse prints "12" or, for array jobs, "12.1-20:1"
_TERSE = re.compile(r"^(\d+)(?:\.(\d+)-(\d+):(\d+))?$")
_RECORD_SEP = re.compile(r"^=+\s*$")


class GEError(RuntimeError):
    """A Grid Engine command failed."""


class GECluster:
    """Handle on the running cluster; every command runs with ``self.env``."""

    def __init__(self, hosts: List[str], env: Dict[str, str], flavor: str = "soge"):
        self.hosts = hosts
        self.env = env
        self.flavor = flavor
        self._tasks: Dict[int, int] = {}  # job id -> number of array tasks

    # ------------------------------------------------------------- plumbing
    def run(self, cmd: List[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise GEError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def qconf(self, *args: str) -> str:
        """Run ``qconf ARGS``; return stdout, raise GEError with stderr on failure."""
        return self.run(["qconf", *args]).stdout

    def script(self, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
        """Run ``lab/ge-cluster.sh ARGS`` for this cluster's flavour."""
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "GE_FLAVOR": self.flavor})

    def execd_spool(self, host: str) -> str:
        """The execd's spool directory of an exec host (its ``execd.pid`` is there)."""
        if self.flavor == "ocs":
            return os.path.join(self.env["SGE_ROOT"], self.env["SGE_CELL"], "spool", host)
        return os.path.join("/var/spool/gridengine/execd", host)

    # ----------------------------------------------------------------- jobs
    def qsub(self, args: List[str]) -> int:
        """Submit with ``qsub -terse ARGS``; return the numeric job id (also for arrays)."""
        out = self.run(["qsub", "-terse", *args]).stdout
        # a client JSV's LOG lines also land on stdout: the id is the last line
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        m = _TERSE.match(lines[-1]) if lines else None
        if not m:
            raise GEError(f"qsub printed no job id: {out!r}")
        job_id = int(m.group(1))
        if m.group(2):
            first, last, step = (int(g) for g in m.group(2, 3, 4))
            self._tasks[job_id] = len(range(first, last + 1, step))
        return job_id

    def wait_done(self, job_id: JobId, timeout: float = 120) -> None:
        """Wait until ``qstat -j`` no longer knows the job (finished or deleted)."""
        jid = str(job_id).split(".")[0]
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            proc = self.run(["qstat", "-j", jid], check=False)
            last = (proc.stdout + proc.stderr).strip()
            # only this answer means "gone"; a qmaster hiccup must not count
            if proc.returncode != 0 and "do not exist" in last:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {jid} still known after {timeout} s:\n{last[-2000:]}")
            time.sleep(0.25)

    def qacct(self, job_id: JobId, timeout: float = 30, records: Optional[int] = None) -> List[Dict[str, str]]:
        """Accounting records of a job (one dict per record, values as strings).

        The qmaster writes the accounting file a few seconds after a job ends, so
        this polls until every array task has a record (or ``records`` records
        exist: a rescheduled task has one record per attempt).
        """
        jid = int(str(job_id).split(".")[0])
        want_tasks = self._tasks.get(jid, 1)
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run(["qacct", "-j", str(jid)], check=False)
            recs = parse_qacct(proc.stdout) if proc.returncode == 0 else []
            tasks = {r.get("taskid") for r in recs}
            if recs and len(tasks) >= want_tasks and (records is None or len(recs) >= records):
                return recs
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"qacct -j {jid}: {len(recs)} record(s) after {timeout} s: "
                    f"{(proc.stderr or proc.stdout).strip()[-500:]}")
            time.sleep(0.5)

    # --------------------------------------------------------------- queues
    def queue_errors(self) -> List[str]:
        """Queue instances (``all.q@node1``) whose state in ``qstat -f`` contains E."""
        out = self.run(["qstat", "-f", "-u", "*"]).stdout
        bad = []
        for line in out.splitlines():
            f = line.split()
            # queuename qtype resv/used/tot load_avg arch [states]
            if len(f) >= 6 and "@" in f[0] and "E" in f[5]:
                bad.append(f[0])
        return bad

    def clear_errors(self) -> None:
        """Clear the error state of every queue instance (``qmod -c``)."""
        for q in self.queue_errors():
            self.run(["qmod", "-c", q])


def parse_qacct(text: str) -> List[Dict[str, str]]:
    """Split ``qacct -j`` output into records of ``key -> value`` (value = rest of line)."""
    recs: List[Dict[str, str]] = []
    cur: Optional[Dict[str, str]] = None
    for line in text.splitlines():
        if _RECORD_SEP.match(line):
            cur = {}
            recs.append(cur)
            continue
        if cur is None or not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        cur[key] = value.strip()
    return [r for r in recs if r]
