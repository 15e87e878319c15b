"""lab/ge-cluster.sh with GE_FLAVOR=ocs: the built Open Cluster Scheduler tree is
cached under a key of the source tarball, the patch and the build options, so a second
`up` reuses it and a changed source or patch builds a new one. (`env` computes the key
without building anything.)"""
import os
import shutil
import subprocess

import pytest

from tests.support.common import ROOT

SCRIPT = os.path.join(ROOT, "lab", "ge-cluster.sh")
SRC = os.path.join(os.path.dirname(ROOT), "shared", "ocs")


def _env(src, **extra):
    out = subprocess.run(["bash", SCRIPT, "env"], capture_output=True, text=True, check=True,
                         env={**os.environ, "GE_FLAVOR": "ocs", "OCS_SRC": str(src),
                              "OCS_HOME": "/nonexistent/ocs", **extra}).stdout
    return dict(line[len("export "):].split("=", 1) for line in out.splitlines())


def test_env_names_the_ocs_cell_ports_and_binaries(tmp_path):
    (tmp_path / "clusterscheduler-9.1.4.tar.gz").write_bytes(b"source")
    (tmp_path / "gcc12-cstddef.patch").write_bytes(b"patch")
    env = _env(tmp_path)
    assert env["SGE_ROOT"].startswith("/nonexistent/ocs/9.1.4-")
    assert env["SGE_CELL"] == "default"
    # beside Son of Grid Engine's 6444/6445 from /etc/services
    assert (env["SGE_QMASTER_PORT"], env["SGE_EXECD_PORT"]) == ("6544", "6545")
    assert env["PATH"] == env["SGE_ROOT"] + "/bin/lx-amd64:$PATH"


def test_cache_key_follows_tarball_and_patch(tmp_path):
    (tmp_path / "clusterscheduler-9.1.4.tar.gz").write_bytes(b"source")
    (tmp_path / "gcc12-cstddef.patch").write_bytes(b"patch")
    first = _env(tmp_path)["SGE_ROOT"]
    assert _env(tmp_path)["SGE_ROOT"] == first  # same inputs: the cached tree
    (tmp_path / "gcc12-cstddef.patch").write_bytes(b"patch 2")
    second = _env(tmp_path)["SGE_ROOT"]
    assert second != first
    (tmp_path / "clusterscheduler-9.1.4.tar.gz").write_bytes(b"source 2")
    assert _env(tmp_path)["SGE_ROOT"] not in (first, second)


@pytest.mark.skipif(not os.path.exists(os.path.join(SRC, "clusterscheduler-9.1.4.tar.gz")),
                    reason="no OCS source beside the checkout")
def test_default_source_is_beside_the_checkout(tmp_path):
    shutil.copy(os.path.join(SRC, "clusterscheduler-9.1.4.tar.gz"), tmp_path)
    shutil.copy(os.path.join(SRC, "gcc12-cstddef.patch"), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OCS_SRC"}
    out = subprocess.run(["bash", SCRIPT, "env"], capture_output=True, text=True, check=True,
                         env={**env, "GE_FLAVOR": "ocs", "OCS_HOME": "/nonexistent/ocs"}).stdout
    assert _env(tmp_path)["SGE_ROOT"] in out
