"""Session fixture ``ge_cluster``: a real multi-host Grid Engine cluster on this machine.

``lab/ge-cluster.sh up`` installs and starts Grid Engine (qmaster on this host, one
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
from typing import List

import pytest

from tests.support.gecluster import FLAVORS, SCRIPT, UP_TIMEOUT, GECluster


@pytest.fixture(scope="session")
def _cluster_lock():
    """One test session at a time drives the cluster (it has one global config)."""
    import fcntl
    fd = os.open("/var/tmp/sge-image-kit-ge.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    os.close(fd)


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
        pytest.skip("ge_cluster needs root: lab/ge-cluster.sh installs packages, "
                    "edits /etc/hosts and starts Grid Engine daemons")
    flavor_env = {**os.environ, "GE_FLAVOR": ge_flavor}
    proc = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=UP_TIMEOUT,
                          env=flavor_env)
    if proc.returncode != 0:
        pytest.fail(f"GE_FLAVOR={ge_flavor} lab/ge-cluster.sh up exited {proc.returncode}\n"
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
