"""Upgrading the kit in place while an array runs: no task fails, no queue goes into
error, and every long-running part (load sensors, node agents, JSVs) ends up on the new
code.

Version N is this checkout as the tests install it; N+1 is a copy whose version is
bumped, installed over it into the same virtualenv with pip (which removes the old
files before it writes the new ones: a prolog may start in between), followed by
`sge-image install`, as a site upgrades.
"""
import os
import re
import shutil
import subprocess
import time

import psutil
import pytest

from tests.support.common import ROOT
from tests.support.gekit import MB, QHOST_PINNED, kit_work, make_kit

TASKS = 36
JOB = ('#!/bin/sh\n'
       'test -r "$SGE_IMAGE_PATH" || { echo "no image at start"; exit 3; }\n'
       'sleep 5\n'
       'test -r "$SGE_IMAGE_PATH" || { echo "image gone later"; exit 4; }\n'
       'echo ok\n')


@pytest.fixture(scope="module")
def kit(ge_cluster):
    qhost = os.path.join(kit_work(ge_cluster), "qhost-pinned")
    k = make_kit(ge_cluster, {"up": {"size": 8 * MB, "seed": 601}},
                 extra={"agent": {"enabled": True, "seed_wait": 60, "pe_wait": 60,
                                  "qhost": [qhost]}})
    k.script("qhost-pinned", QHOST_PINNED)
    k.sge_image("install")
    yield k
    ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
    k.sge_image("uninstall", check=False)
    k.server.close()


def _next_version(tmp_path):
    """A copy of this checkout whose version is one minor release up."""
    src = tmp_path / "kit-next"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "bench", "tests", "docs", "*.egg-info", "build", "__pycache__"))
    init = src / "sge" / "__init__.py"
    text = init.read_text()
    old = re.search(r'__version__ = "(\d+)\.(\d+)\.(\d+)"', text)
    new = f"{old.group(1)}.{int(old.group(2)) + 1}.0"
    init.write_text(text.replace(old.group(0), f'__version__ = "{new}"'))
    return str(src), new


def _kit_procs(kit, marker):
    """Processes of this install whose command line has `marker`, with start times."""
    out = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = p.info["cmdline"] or []
        if kit.config in cmd and any(marker in c for c in cmd):
            out.append((p.pid, p.info["create_time"]))
    return out


def _done_tasks(c, jid):
    proc = c.run(["qacct", "-j", str(jid)], check=False)
    return len(re.findall(r"^taskid\s+\d+", proc.stdout, re.M)) if proc.returncode == 0 else 0


def test_upgrade_in_place_while_an_array_runs(kit, tmp_path):
    c = kit.cluster
    src, version = _next_version(tmp_path)
    job = kit.script("upgrade.sh", JOB)
    out = kit.out("upgrade")
    jid = c.qsub(["-t", f"1-{TASKS}", "-l", "image=up", "-o", out, "-j", "y", job])
    deadline = time.monotonic() + 180
    while _done_tasks(c, jid) < 4:
        assert time.monotonic() < deadline, "the array never got going"
        time.sleep(0.5)
    t_upgrade = time.time()
    pip = subprocess.run([kit.python, "-m", "pip", "install", "-q", "--no-deps",
                          "--force-reinstall", src], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    r = kit.sge_image("install")
    assert "write launcher" in r.stdout, r.stdout  # every launcher names the new version
    assert _done_tasks(c, jid) < TASKS, "the array ended before the upgrade: nothing was shown"
    c.wait_done(jid, timeout=600)
    recs = c.qacct(jid, timeout=60)
    ok = {r["taskid"] for r in recs if r["exit_status"] == "0" and r["failed"].startswith("0")}
    assert len(ok) == TASKS, [r for r in recs if r["taskid"] not in ok]
    assert c.queue_errors() == []
    text = "".join(open(os.path.join(out, f)).read() for f in os.listdir(out))
    assert text.count("ok") == TASKS and "no image" not in text and "gone" not in text, text
    # The long-running parts restart on the new code: execd restarts a load sensor whose
    # file changed (and the sensor's supervisor its agent), qmaster a changed JSV.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        sensors = _kit_procs(kit, "sge.ge.loadsensor")
        agents = _kit_procs(kit, "sge.agent")
        if (len(sensors) == len(c.hosts) and all(t > t_upgrade for _, t in sensors)
                and agents and all(t > t_upgrade for _, t in agents)):
            break
        time.sleep(1)
    assert len(sensors) == len(c.hosts) and all(t > t_upgrade for _, t in sensors), sensors
    assert agents and all(t > t_upgrade for _, t in agents), agents
    # qmaster runs one JSV per worker thread and restarts one whose file changed when
    # that thread next verifies a job: a few submissions reach every thread. (An old
    # JSV stays alive until then, but never verifies a job again.)
    for _ in range(20):
        c.wait_done(c.qsub(["-l", "image=up", "-b", "y", "/bin/true"]), timeout=120)
        jsvs = _kit_procs(kit, "jsv")
        if jsvs and all(t > t_upgrade for _, t in jsvs):
            break
    assert jsvs and all(t > t_upgrade for _, t in jsvs), jsvs
    v = subprocess.run([kit.python, "-I", "-m", "sge.cli", "--version"], capture_output=True,
                       text=True)
    assert v.stdout.split() == ["sge-image-kit", version], v
