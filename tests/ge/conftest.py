"""Session fixture ``ge_cluster``: a real multi-host Grid Engine cluster on this machine.

``scripts/ge-cluster.sh up`` installs and starts Grid Engine (qmaster on this host, one
execd per exec host on its own loopback address). The fixture leaves the cluster running
afterwards: the next ``up`` is a fast no-op.

Every test that uses it runs once per engine ("flavour"): Son of Grid Engine 8.1.9
(``soge``, Debian's packages) and Open Cluster Scheduler 9.1.4 (``ocs``, built from
source once). Test ids name it (``test_x[ocs]``). ``--ge-flavor soge`` (or the
environment variable ``GE_FLAVORS=soge``) picks a subset.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ge-cluster.sh"
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
        """Run ``scripts/ge-cluster.sh ARGS`` for this cluster's flavour."""
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


@pytest.fixture(scope="session")
def _cluster_lock():
    """One test session at a time drives the cluster (it has one global config)."""
    import fcntl
    fd = os.open("/var/tmp/sge-image-kit-ge.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    os.close(fd)


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


def selected_flavors(config) -> List[str]:
    """--ge-flavor, else $GE_FLAVORS, else every flavour (comma-separated lists)."""
    raw = config.getoption("ge_flavor", default=None) or os.environ.get("GE_FLAVORS") or ",".join(FLAVORS)
    picked = [f.strip() for f in raw.split(",") if f.strip()]
    bad = [f for f in picked if f not in FLAVORS]
    if bad:
        raise pytest.UsageError(f"unknown Grid Engine flavour(s) {bad}: choose from {list(FLAVORS)}")
    return picked


def pytest_generate_tests(metafunc):
    if "ge_flavor" in metafunc.fixturenames:
        flavors = selected_flavors(metafunc.config)
        metafunc.parametrize("ge_flavor", flavors, ids=flavors, indirect=True, scope="session")


@pytest.fixture(scope="session")
def ge_flavor(request):
    """The engine under test: "soge" or "ocs" (parametrised by pytest_generate_tests)."""
    return request.param


@pytest.fixture(scope="session")
def ge_cluster(_cluster_lock, ge_flavor):
    if os.geteuid() != 0:
        pytest.skip("ge_cluster needs root: scripts/ge-cluster.sh installs packages, "
                    "edits /etc/hosts and starts Grid Engine daemons")
    flavor_env = {**os.environ, "GE_FLAVOR": ge_flavor}
    proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=UP_TIMEOUT,
                          env=flavor_env)
    if proc.returncode != 0:
        pytest.fail(f"GE_FLAVOR={ge_flavor} scripts/ge-cluster.sh up exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}", pytrace=False)
    # The kit's own commands (sge-image install, qconf, qsub) find this engine through
    # the process environment: set it for the session of this flavour, restore after.
    saved = dict(os.environ)
    for line in subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, check=True,
                               env=flavor_env).stdout.splitlines():
        m = re.match(r"export (\w+)=(.*)$", line.strip())
        if m:
            os.environ[m.group(1)] = os.path.expandvars(m.group(2))
    for var in ("SGE_QMASTER_PORT", "SGE_EXECD_PORT"):
        if ge_flavor == "soge":
            os.environ.pop(var, None)  # /etc/services has Son of Grid Engine's ports
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/bin", "/usr/sbin") if d not in path])
    hosts = subprocess.run([str(SCRIPT), "hosts"], capture_output=True, text=True, check=True,
                           env=flavor_env).stdout.split()
    try:
        yield GECluster(hosts, dict(os.environ), ge_flavor)
    finally:
        os.environ.clear()
        os.environ.update(saved)
