"""Everyday workload shapes on the real cluster (issue 9): two arrays whose images do not
both fit in any host's cache, an install that would break submission, and the JSV
processes an uninstall leaves behind.

Figures (reschedules, downloads, makespan against the arrays run one after the other)
are printed for RELIABILITY.md; they are not asserted.
"""
import os
import shutil
import subprocess
import time

import psutil
import pytest

from tests.support.gekit import MB, assert_cluster_unchanged, cluster_snapshot, kit_work, make_kit

IMAGES = {"left": {"size": 24 * MB, "seed": 1}, "right": {"size": 24 * MB, "seed": 2},
          "interactive": {"size": 2 * MB, "seed": 3}}  # only the qrsh tests use it
TASKS = 30


@pytest.fixture(scope="module")
def kit(ge_cluster):
    k = make_kit(ge_cluster, IMAGES, extra={"cache": {
        "root": os.path.join(kit_work(ge_cluster), "cache", "{host}"), "min_free": 0,
        "max_size": "40M",      # holds one image, never both
        "evict_grace": 15,      # shortened from 60 s; the mechanism is the same
        "room_wait": 120}})
    before = cluster_snapshot(ge_cluster)
    k.installed = k.sge_image("install")
    k.before = before
    yield k
    ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
    k.sge_image("uninstall", check=False)
    k.server.close()


@pytest.fixture(autouse=True)
def queues_stay_clean(kit):
    yield
    bad = kit.cluster.queue_errors()
    kit.cluster.clear_errors()
    assert bad == [], f"queue instances in error: {bad}"


JOB = ('#!/bin/sh\n'
       'test -r "$SGE_IMAGE_PATH" || { echo "no image at $SGE_IMAGE_PATH"; exit 3; }\n'
       'head -c 1048576 "$SGE_IMAGE_PATH" > /dev/null || exit 4\n'
       'sleep 2\n')


def _run_arrays(kit, names, together):
    c = kit.cluster
    job = kit.script("shape.sh", JOB)
    out = kit.out("shapes")
    t0 = time.monotonic()
    jids = []
    for name in names:
        jids.append(c.qsub(["-t", f"1-{TASKS}", "-l", f"image={name}", "-o", out, "-j", "y", job]))
        if not together:
            c.wait_done(jids[-1], timeout=900)
    for jid in jids:
        c.wait_done(jid, timeout=900)
    took = time.monotonic() - t0
    recs = {jid: c.qacct(jid, timeout=60) for jid in jids}
    return jids, recs, took


def _summary(recs):
    ok = sum(1 for rs in recs.values() for r in rs
             if r["exit_status"] == "0" and r["failed"].startswith("0"))
    attempts = sum(len(rs) for rs in recs.values())
    return ok, attempts


def test_two_arrays_larger_than_any_cache_all_succeed(kit):
    """Issue: the second array's 30 tasks went to Eqw after 227 reschedules. A cache full
    of images in use is busy, not failed: every task runs, none is held in error."""
    c = kit.cluster
    gets0 = {n: kit.server.gets(f"{n}.sif") for n in IMAGES}
    jids, recs, together = _run_arrays(kit, ["left", "right"], together=True)
    ok, attempts = _summary(recs)
    per_task = {}
    for rs in recs.values():
        for r in rs:
            per_task.setdefault((r["jobnumber"], r["taskid"]), []).append(r)
    # every task has exactly one successful record; earlier records are reschedules
    done = [t for t, rs in per_task.items()
            if any(r["exit_status"] == "0" and r["failed"].startswith("0") for r in rs)]
    assert len(done) == 2 * TASKS, (len(done), attempts)
    gets = {n: kit.server.gets(f"{n}.sif") - gets0[n] for n in IMAGES}
    # nothing was held in error: qstat knows none of the jobs any more
    for jid in jids:
        r = c.run(["qstat", "-j", str(jid)], check=False)
        assert r.returncode != 0
    # one after the other, for the makespan comparison
    gets1 = {n: kit.server.gets(f"{n}.sif") for n in IMAGES}
    _, recs2, serial = _run_arrays(kit, ["left", "right"], together=False)
    ok2, attempts2 = _summary(recs2)
    gets2 = {n: kit.server.gets(f"{n}.sif") - gets1[n] for n in IMAGES}
    print(f"\nSHAPES together: {2 * TASKS}/{2 * TASKS} ok, {attempts - 2 * TASKS} reschedules, "
          f"downloads {gets}, makespan {together:.0f}s; one after the other: "
          f"{ok2} ok, {attempts2 - 2 * TASKS} reschedules, downloads {gets2}, "
          f"makespan {serial:.0f}s")
    assert ok2 == 2 * TASKS


def _kit_processes(kit):
    """Processes started from this kit's install: launchers, JSV, sensors."""
    hooks = os.path.join(kit.work, "hooks")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if hooks in cmd or kit.config in cmd:
            found.append((p.pid, cmd))
    return found


def test_refused_install_leaves_submission_working(kit, tmp_path_factory):
    """Issue: installing from a virtualenv sgeadmin cannot execute was accepted, and then
    every qsub failed. install now runs each launcher as its user first, and refuses."""
    c = kit.cluster
    private = "/root/sge-image-kit-test-venv"  # root's home: other users cannot search it
    if os.stat("/root").st_mode & 0o001:
        pytest.skip("/root is searchable by others on this machine")
    subprocess.run(["rm", "-rf", private], check=True)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip",
                    private], check=True)
    import glob
    [site] = glob.glob(os.path.join(private, "lib", "python3*", "site-packages"))
    [kit_site] = glob.glob(os.path.join(os.path.dirname(os.path.dirname(kit.python)),
                                        "lib", "python3*", "site-packages"))
    with open(os.path.join(site, "kit.pth"), "w") as f:
        f.write(kit_site + "\n")
    try:
        kit.sge_image("uninstall")
        before = cluster_snapshot(c)
        r = subprocess.run([os.path.join(private, "bin", "python3"), "-I", "-m", "sge.cli",
                            "--config", kit.config, "install"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "install refused" in r.stderr
        assert "jsv launcher as sgeadmin" in r.stdout and "cannot search (x) /root" in r.stdout, \
            r.stdout
        assert_cluster_unchanged(c, before)  # nothing changed
        # and the cluster still accepts and runs jobs
        jid = c.qsub(["-b", "y", "/bin/true"])
        c.wait_done(jid, timeout=120)
        assert c.qacct(jid)[0]["exit_status"] == "0"
    finally:
        subprocess.run(["rm", "-rf", private])
        kit.sge_image("install")


def test_no_kit_process_left_after_uninstall(kit):
    """Issue: after uninstall the qmaster's JSV processes stayed alive, pointing at deleted
    launchers. They retire by themselves now, and the sensors get `quit` from execd."""
    c = kit.cluster
    # make qmaster start its JSV processes
    jid = c.qsub(["-b", "y", "-l", "image=left", "/bin/true"])
    c.wait_done(jid, timeout=300)
    assert _kit_processes(kit), "no JSV or sensor process was running"
    kit.sge_image("uninstall")
    deadline = time.monotonic() + 120
    left = _kit_processes(kit)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _kit_processes(kit)
    assert left == []
    # submission still works without the kit
    jid = c.qsub(["-b", "y", "/bin/true"])
    c.wait_done(jid, timeout=120)
    assert c.qacct(jid)[0]["exit_status"] == "0"
    kit.sge_image("install")


# Each engine's shepherd breaks one kind of interactive job once a queue has any prolog
# (measured with `root@/bin/true` as well; sge/ge/engine_quirks.py, RELIABILITY.md):
# Son of Grid Engine 8.1.9 kills it in a pty at random, Open Cluster Scheduler 9.1.4
# cannot start it without one. Each test runs the form that works on its engine.
PTY = {"soge": ["-pty", "n"], "ocs": []}


def test_install_warns_about_the_engines_interactive_prolog_bug(kit):
    """all.q takes interactive jobs (qtype BATCH INTERACTIVE): install names the queue
    and what users must do on this engine."""
    text = kit.installed.stdout + kit.installed.stderr
    lines = [ln for ln in text.splitlines() if ln.startswith("warning: queue all.q takes interactive")]
    assert len(lines) == 1, text
    want = "qrsh -pty n" if kit.cluster.flavor == "soge" else "must not pass -pty n"
    assert want in lines[0], lines


def test_qrsh_job_sees_its_image(kit):
    """Interactive jobs (issue 9): `qrsh -l image=NAME` runs the prolog like a batch job,
    stages the image, and the command sees a readable SGE_IMAGE_PATH; the queue stays
    clean (the autouse check)."""
    c = kit.cluster
    # -noshell: the command's argv as given, on both engines. Without it Open Cluster
    # Scheduler 9.1.4 runs the login shell with `-c` and the arguments joined by spaces,
    # so `sh -c 'a && b'` runs as `sh -c a && b` (measured).
    # Cold: the prolog of an interactive job downloads like any other.
    r = c.run(["qrsh", "-now", "y", *PTY[c.flavor], "-noshell", "-l", "image=interactive", "/bin/sh", "-c",
               'test -r "$SGE_IMAGE_PATH" && echo "IMAGE $(hostname) $SGE_IMAGE_PATH"'],
              check=False, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("IMAGE ")]
    assert r.returncode == 0 and len(lines) == 1, (r.returncode, r.stdout, r.stderr)
    host, path = lines[0].split()[1:]
    assert path.startswith(kit.cache_dir(host) + "/")
    assert kit.server.gets("interactive.sif") == 1


def test_qrsh_under_load_leaves_no_queue_error(kit):
    """The engine bugs above are races or certainties depending on the form: with the
    machine's cores busy (where Son of Grid Engine's race is lost every time, measured),
    the form each engine supports runs its job, repeatedly, and no queue goes into
    error (the autouse check)."""
    c = kit.cluster
    burn = subprocess.Popen(["sh", "-c", "for i in 1 2 3; do (while :; do :; done) & done; wait"],
                            start_new_session=True)
    try:
        for _ in range(3):
            r = c.run(["qrsh", "-now", "y", *PTY[c.flavor], "-noshell", "-l", "image=interactive",
                       "/bin/sh", "-c", 'test -r "$SGE_IMAGE_PATH" && echo IMAGE'],
                      check=False, timeout=300)
            assert r.returncode == 0 and "IMAGE" in r.stdout, (r.returncode, r.stdout, r.stderr)
            assert c.queue_errors() == []
    finally:
        os.killpg(burn.pid, 9)


PE = """pe_name            kit_lab_pe
slots              99
user_lists         NONE
xuser_lists        NONE
start_proc_args    /bin/true
stop_proc_args     /bin/true
allocation_rule    $round_robin
control_slaves     TRUE
job_is_first_task  FALSE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
"""


def test_qrsh_inherit_reaches_every_host_of_a_parallel_job(kit, tmp_path):
    """The lab runs parallel-task clients: `qrsh -inherit` from a job's master task to
    each host of $PE_HOSTFILE connects from the right address (the bind shim reaches
    the shepherd and the job)."""
    c = kit.cluster
    pe = tmp_path / "kit_lab_pe"
    # OCS 9 has no qsort_args and requires the three attributes SoGE 8.1.9 lacks.
    pe.write_text(PE if c.flavor == "soge" else PE.replace(
        "qsort_args         NONE\n",
        "ign_sreq_on_mhost  FALSE\nmaster_forks_slaves FALSE\ndaemon_forks_slaves FALSE\n"))
    # The job's login shell resets PATH: name this engine's qrsh (the lab has both).
    qrsh = shutil.which("qrsh", path=c.env["PATH"])
    c.qconf("-Ap", str(pe))
    try:
        c.qconf("-aattr", "queue", "pe_list", "kit_lab_pe", "all.q")
        job = kit.script("pe.sh", '#!/bin/sh\nfor h in $(awk \'{print $1}\' "$PE_HOSTFILE"); do\n'
                         f'  echo "TASK $h $({qrsh} -inherit "$h" hostname)"\ndone\n')
        out = kit.out("pe")
        jid = c.qsub(["-pe", "kit_lab_pe", str(len(c.hosts)), "-o", f"{out}/pe.out", "-j", "y", job])
        c.wait_done(jid, timeout=300)
        lines = [ln.split() for ln in open(f"{out}/pe.out").read().splitlines()
                 if ln.startswith("TASK ")]
        assert sorted(ln[1] for ln in lines) == sorted(c.hosts)
        assert all(len(ln) == 3 and ln[1] == ln[2] for ln in lines), lines
    finally:
        c.run(["qconf", "-dattr", "queue", "pe_list", "kit_lab_pe", "all.q"], check=False)
        c.run(["qconf", "-dp", "kit_lab_pe"], check=False)
