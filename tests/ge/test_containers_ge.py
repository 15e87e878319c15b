"""Jobs run inside their image, for real: Charliecloud's ch-run through the kit's starter
method, on each Grid Engine (issue 19).

The image is a busybox SquashFS with its own /etc/os-release, served by the tests' HTTP
server like any catalog image. Every job below that prints IMAGE-OS read that file from
inside the container: the host has no such os-release.
"""
import glob
import json
import os
import shutil
import time

import pytest

from tests.support.gekit import QHOST_PINNED, kit_work, make_kit
from tests.support.images import os_release, sif_image, squashfs_image

pytestmark = pytest.mark.skipif(not shutil.which("ch-run"), reason="charliecloud-runtime is "
                                "not installed (scripts/setup.sh installs it)")

RELEASE = os_release("Kit Container Linux", "19.0")
MARK = 'PRETTY_NAME="Kit Container Linux 19.0'
PE = "ctrpe"
SLEEP_MARK = "4321"   # `sleep 4321` names the qdel test's process


@pytest.fixture(scope="module")
def kit(ge_cluster):
    qhost = os.path.join(kit_work(ge_cluster), "qhost-pinned")
    images = {"ctr": {"data": squashfs_image(RELEASE), "file": "ctr.sqfs"},
              # a SIF the catalog declares: refused at qsub, charliecloud cannot run it
              "sifdecl": {"data": sif_image(RELEASE), "format": "sif"},
              # a SIF the catalog says nothing about: refused when staged
              "sifplain": {"data": sif_image(os_release("Plain SIF"))}}
    k = make_kit(ge_cluster, images, starter_runtime="charliecloud",
                 extra={"agent": {"enabled": True, "seed_wait": 120, "pe_wait": 120,
                                  "qhost": [qhost]}})
    k.script("qhost-pinned", QHOST_PINNED)
    k.sge_image("install", "--starter")
    k.starter = os.path.join(k.work, "hooks", "starter")
    yield k
    ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
    _remove_pe(ge_cluster)
    k.sge_image("uninstall", check=False)
    k.server.close()


@pytest.fixture(autouse=True)
def queues_stay_clean(kit):
    yield
    bad = kit.cluster.queue_errors()
    kit.cluster.clear_errors()
    assert bad == [], f"queue instances in error: {bad}"


def _qsub_as(c, user, args):
    """qsub as another user (setpriv keeps the cluster's environment)."""
    import pwd
    pw = pwd.getpwnam(user)
    env = {**c.env, "USER": user, "LOGNAME": user, "HOME": "/"}
    import subprocess
    r = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                        "--clear-groups", "qsub", "-terse", *args], env=env,
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1].split(".")[0])


INSIDE = ('#!/bin/sh\n'
          'grep PRETTY_NAME /etc/os-release | sed "s/^/IMAGE-OS $(hostname) /"\n'
          'echo "CWD $(pwd)"\n'
          'echo "ENV job=$JOB_ID task=$SGE_TASK_ID image=$SGE_IMAGE user=$USER"\n'
          'touch "$TMPDIR/probe" && echo "TMPDIR ok $TMPDIR"\n'
          'test -r "$SGE_JOB_SPOOL_DIR/environment" && echo "SPOOL ok $SGE_JOB_SPOOL_DIR"\n'
          'test -n "$CH_RUNNING" && echo "RUNTIME charliecloud"\n')


def test_a_job_reads_its_images_os_release_as_an_ordinary_user(kit):
    """Unprivileged (nobody): user namespaces, and FUSE through /dev/fuse (0666)."""
    c = kit.cluster
    out = kit.out("inside")
    os.chmod(out, 0o777)  # makedirs applied the umask; nobody writes its output here
    job = kit.script("inside.sh", INSIDE)
    jid = _qsub_as(c, "nobody", ["-l", "image=ctr", "-l", f"hostname={c.hosts[0]}",
                                 "-wd", out, "-o", f"{out}/o", "-j", "y", job])
    c.wait_done(jid, timeout=180)
    rec = c.qacct(jid)[0]
    text = open(f"{out}/o").read()
    assert rec["exit_status"] == "0" and rec["failed"].startswith("0"), (rec, text)
    assert f"IMAGE-OS {c.hosts[0]} {MARK}" in text, text
    assert "CWD /mnt/0" in text, text  # the -wd directory, bound where the image allows
    assert f"ENV job={jid} task=undefined image=ctr user=nobody" in text, text
    assert "TMPDIR ok /tmp" in text and "SPOOL ok /mnt/2" in text, text
    assert "RUNTIME charliecloud" in text, text
    assert kit.server.gets("ctr.sqfs") == 1


def test_exit_codes_reach_qacct(kit):
    c = kit.cluster
    out = kit.out("codes")
    jids = {}
    for code, body in (("0", "exit 0"), ("3", "exit 3"), ("137", "kill -9 $$")):
        job = kit.script(f"code{code}.sh", f"#!/bin/sh\ngrep -q Kit /etc/os-release || exit 99\n"
                                           f"{body}\n")
        jids[code] = c.qsub(["-l", "image=ctr", "-o", f"{out}/{code}", "-j", "y", job])
    for code, jid in jids.items():
        c.wait_done(jid, timeout=180)
        rec = c.qacct(jid)[0]
        assert rec["exit_status"].split()[0] == code, (code, rec, open(f"{out}/{code}").read())
        assert rec["failed"].startswith("0"), rec


def _procs_with(word):
    found = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            cmd = open(f"{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if word in cmd:
            found.append((int(d.rsplit("/", 1)[1]), cmd))
    return found


def _pinned(kit, host, name):
    """Whether the starter's pin holds `name` on `host` (status --json: columns move)."""
    rows = json.loads(kit.sge_image("status", "--json", host=host).stdout)["images"]
    return any(name in r["name"].split(",") and r["pinned"] for r in rows)


def test_qdel_mid_run_leaves_no_process_no_mount_and_no_pin(kit):
    c = kit.cluster
    host = c.hosts[1]
    out = kit.out("qdel")
    job = kit.script("long.sh", f"#!/bin/sh\ngrep PRETTY /etc/os-release\nsleep {SLEEP_MARK}\n")
    jid = c.qsub(["-l", "image=ctr", "-l", f"hostname={host}", "-o", f"{out}/o", "-j", "y", job])
    deadline = time.monotonic() + 120
    sleepers = []
    while time.monotonic() < deadline and not sleepers:
        sleepers = [p for p, cmd in _procs_with(f"sleep {SLEEP_MARK}") if "ch-run" not in cmd]
        time.sleep(0.3)
    assert sleepers, "the job never started"
    # It runs inside the container: its mount namespace has the image's FUSE mount.
    mounts = open(f"/proc/{sleepers[0]}/mountinfo").read()
    assert "fuse" in mounts, mounts[-500:]
    runtimes = [p for p, cmd in _procs_with("ch-run") if kit.work in cmd]
    assert runtimes, "no ch-run process for the job"
    assert _pinned(kit, host, "ctr")
    c.run(["qdel", str(jid)])
    c.wait_done(jid, timeout=60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = _procs_with(f"sleep {SLEEP_MARK}") + [
            (p, cmd) for p, cmd in _procs_with("ch-run") if kit.work in cmd]
        if not left:
            break
        time.sleep(0.2)
    assert not left, left
    host_mounts = open("/proc/mounts").read()
    assert ".ch/mnt" not in host_mounts and "squashfuse" not in host_mounts
    assert not _pinned(kit, host, "ctr")  # the pin lived exactly as long as the container


def test_an_array_of_30_runs_inside_the_image_on_every_host(kit):
    c = kit.cluster
    out = kit.out("array")
    job = kit.script("array.sh", "#!/bin/sh\nsleep 2\n"
                     'grep PRETTY_NAME /etc/os-release | sed "s/^/IMAGE-OS $(hostname) /"\n')
    jid = c.qsub(["-t", "1-30", "-l", "image=ctr", "-o", f"{out}/$TASK_ID", "-j", "y", job])
    c.wait_done(jid, timeout=300)
    recs = c.qacct(jid)
    assert len(recs) == 30 and all(r["exit_status"] == "0" for r in recs), recs
    lines = [open(p).read().strip() for p in glob.glob(f"{out}/*")]
    assert len(lines) == 30
    hosts = {r["hostname"] for r in recs}
    assert hosts == set(c.hosts), hosts
    for ln in lines:
        assert ln.startswith("IMAGE-OS ") and ln.endswith(MARK + ' (sge-image-kit test image)"'), ln
    assert {ln.split()[1] for ln in lines} == set(c.hosts)


def _remove_pe(c):
    c.run(["qconf", "-dattr", "queue", "pe_list", PE, "all.q"], check=False)
    c.run(["qconf", "-dp", PE], check=False)


def test_without_the_starter_a_parallel_jobs_hosts_start_the_container(kit, tmp_path):
    """A queue without the starter: the job runs on the host and sees SGE_IMAGE_PATH; a
    parallel job's master starts a task on each host of $PE_HOSTFILE with `qrsh
    -inherit`, and each task starts the container through the kit's starter, from its
    host's own cache (staged there by the node agents for the master's prolog)."""
    c = kit.cluster
    pe = tmp_path / PE
    pe.write_text(f"pe_name {PE}\nslots 999\nuser_lists NONE\nxuser_lists NONE\n"
                  "start_proc_args NONE\nstop_proc_args NONE\nallocation_rule $round_robin\n"
                  "control_slaves TRUE\njob_is_first_task FALSE\nurgency_slots min\n"
                  "accounting_summary FALSE\n"
                  + ("qsort_args NONE\n" if c.flavor == "soge" else
                     "ign_sreq_on_mhost FALSE\nmaster_forks_slaves FALSE\n"
                     "daemon_forks_slaves FALSE\n"))
    _remove_pe(c)
    c.qconf("-Ap", str(pe))
    c.qconf("-aattr", "queue", "pe_list", PE, "all.q")
    c.qconf("-mattr", "queue", "starter_method", "NONE", "all.q")
    qrsh = shutil.which("qrsh", path=c.env["PATH"])
    try:
        out = kit.out("pe")
        # The task's command is a script in the job's working directory, which the
        # starter shows inside the container (qrsh joins its arguments into one line
        # for a shell on the other side: no quoting survives that).
        with open(os.path.join(out, "task.sh"), "w") as f:
            f.write('echo "TASK $(hostname) $(grep PRETTY_NAME /etc/os-release)"\n')
        job = kit.script("pe.sh", '#!/bin/sh\n'
                         'echo "MASTER $(hostname) path=$SGE_IMAGE_PATH"\n'
                         'test -r "$SGE_IMAGE_PATH" && echo "MASTER readable"\n'
                         'grep -q "Kit Container" /etc/os-release || echo "MASTER on the host"\n'
                         'for h in $(awk \'{print $1}\' "$PE_HOSTFILE"); do\n'
                         f'  {qrsh} -inherit "$h" /usr/bin/env SGE_IMAGE=ctr {kit.starter} '
                         '/bin/sh task.sh\n'
                         'done\n')
        jid = c.qsub(["-pe", PE, str(len(c.hosts)), "-l", "image=ctr", "-wd", out,
                      "-o", f"{out}/pe.out", "-j", "y", job])
        c.wait_done(jid, timeout=300)
        text = open(f"{out}/pe.out").read()
        rec = c.qacct(jid)[0]
        assert rec["exit_status"] == "0", (rec, text)
        master = rec["hostname"]
        assert f"MASTER {master} path={kit.cache_dir(master)}" in text, text
        assert "MASTER readable" in text and "MASTER on the host" in text, text
        tasks = [ln.split(" ", 2) for ln in text.splitlines() if ln.startswith("TASK ")]
        assert sorted(t[1] for t in tasks) == sorted(c.hosts), text
        assert all(MARK in t[2] for t in tasks), text
    finally:
        c.qconf("-mattr", "queue", "starter_method", kit.starter, "all.q")
        _remove_pe(c)


def test_an_image_the_runtime_cannot_run_is_refused_in_one_line(kit):
    c = kit.cluster
    # The catalog says SIF: refused at qsub by the JSV, nothing is downloaded.
    r = c.run(["qsub", "-l", "image=sifdecl", "-b", "y", "/bin/true"], check=False)
    assert r.returncode != 0
    assert "is a SIF image" in r.stderr + r.stdout and "charliecloud" in r.stderr + r.stdout
    assert kit.server.gets("sifdecl.sif") == 0
    # The catalog does not say: the prolog finds it out when staging, and holds the job
    # (Eqw) with one line in its output, not the queue.
    out = kit.out("sifplain")
    jid = c.qsub(["-l", "image=sifplain", "-o", f"{out}/o", "-j", "y", "-b", "y", "/bin/true"])
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline and "E" not in state:
        line = [ln for ln in c.run(["qstat"]).stdout.splitlines() if ln.split()[:1] == [str(jid)]]
        state = line[0].split()[4] if line else ""
        time.sleep(0.5)
    assert state == "Eqw"
    said = [ln for ln in open(f"{out}/o").read().splitlines() if "SIF" in ln]
    assert len(said) == 1 and "runs only squashfs" in said[0], said
    c.run(["qdel", str(jid)])
