"""Grid Engine faults on a real cluster, with the kit installed: qdel during staging,
an execd killed and restarted during staging, the load sensor killed, reschedules up to
the cap. After each: no queue instance in error (qstat -f shows no E), the job in the
state the prolog's exit codes document, nothing published partially, and the next job
for the same image runs.
"""
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.reliability.conftest import cache_problems, settled_problems
from tests.support.gekit import MB, assert_cluster_unchanged, cluster_snapshot, kit_work, make_kit
from tests.support.httpserver import Fault

IMAGES = {"slow": {"size": 6 * MB}, "slowf": {"size": 6 * MB}, "slow2": {"size": 6 * MB},
          "warm3": {}, "capped": {}, "quick": {}}
MARK = "sge-image-faults-mark"


@pytest.fixture(scope="module")
def kit(ge_cluster):
    runtime = os.path.join(kit_work(ge_cluster), "fake-apptainer")
    k = make_kit(ge_cluster, IMAGES, starter_runtime=[runtime, "exec"])
    # After make_kit, which first undoes the install of a run that died: the cluster
    # as this module found it is what it must leave.
    before = cluster_snapshot(ge_cluster)
    k.script("fake-apptainer", '#!/bin/sh\n[ "$1" = exec ] || exit 64\nimg=$2; shift 2\n'
             'head -c 1 "$img" > /dev/null || exit 65\nexec "$@"\n')
    k.sge_image("install", "--starter")
    yield k
    ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
    if k.sge_image("uninstall", check=False).returncode != 0:
        # Resumable: complexes go once every execd reported without the sensor.
        k.sge_image("uninstall", check=False)
    k.server.close()
    for h in ge_cluster.hosts:
        _chmod_cache(k, h, 0o755)
    assert_cluster_unchanged(ge_cluster, before)


@pytest.fixture(autouse=True)
def queues_stay_clean(kit):
    yield
    bad = kit.cluster.queue_errors()
    kit.cluster.clear_errors()  # leave the cluster usable whatever happened
    assert bad == [], f"queue instances in error: {bad}"


def _chmod_cache(kit, host, mode):
    d = kit.cache_dir(host)
    if os.path.isdir(d):
        os.chmod(d, mode)


def _wait_for_part(kit, host, timeout=60):
    """The path of a temp file with bytes in it: a prolog is downloading."""
    tmp = os.path.join(kit.cache_dir(host), "tmp")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(tmp):
            for f in os.listdir(tmp):
                p = os.path.join(tmp, f)
                if f.endswith(".part") and os.path.exists(p) and os.path.getsize(p) > 0:
                    return p
        time.sleep(0.1)
    raise TimeoutError(f"no download started on {host}")


def _state(cluster, jid):
    for line in cluster.run(["qstat", "-u", "*"]).stdout.splitlines():
        f = line.split()
        if f[:1] == [str(jid)]:
            return f[4]
    return None


def _wait_error_state(cluster, jid, timeout=180):
    """Until the job is held in error (Eqw; ERq once it was rescheduled); -> the state."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = _state(cluster, jid)
        if state and "E" in state and "q" in state:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"job {jid}: state {state}, not held in error")


def _prologs(jid=None):
    """Live prolog processes (of job `jid`)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "sge.ge.prolog" in " ".join(p.info["cmdline"] or []):
                if jid is None or p.environ().get("JOB_ID") == str(jid):
                    out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _run_image_job(kit, image, host, name):
    out = kit.out(name)
    jid = kit.cluster.qsub(["-l", f"image={image}", "-l", f"hostname={host}", "-o", f"{out}/o",
                            "-j", "y", "-b", "y", "/bin/sh", "-c",
                            'test -r "$SGE_IMAGE_PATH" && echo ran'])
    kit.cluster.wait_done(jid, timeout=180)
    rec = kit.cluster.qacct(jid)[-1]
    assert rec["exit_status"] == "0" and rec["failed"].startswith("0"), rec
    assert "ran" in open(f"{out}/o").read()
    return jid


@pytest.mark.parametrize("how", [["qdel"], ["qdel", "-f"]], ids=["qdel", "qdel-f"])
def test_qdel_while_the_prolog_downloads(kit, how):
    """Documented outcome (measured): execd lets a running prolog finish, so the
    download completes and is published whole and verified; the job never runs."""
    c = kit.cluster
    image = "slow" if how == ["qdel"] else "slowf"
    kit.server.faults[f"{image}.sif"] = Fault(rate=MB)  # 6 s
    out = kit.out(f"del-{image}")
    jid = c.qsub(["-l", f"image={image}", "-l", "hostname=node1", "-o", f"{out}/o", "-j", "y",
                  "-b", "y", "/bin/sh", "-c", f"touch {out}/job-ran"])
    _wait_for_part(kit, "node1")
    assert _prologs(jid)
    c.run([*how, str(jid)])
    c.wait_done(jid, timeout=120)
    deadline = time.monotonic() + 60
    while _prologs(jid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _prologs(jid), "the prolog outlived its deleted job"
    assert not os.path.exists(f"{out}/job-ran")
    assert cache_problems(kit.cache_dir("node1"), kit.images) == []
    blob = os.path.join(kit.cache_dir("node1"), "blobs", "sha256", kit.images[image]["sha256"])
    assert os.path.exists(blob)  # the prolog was let finish: published whole, verified
    # The next job for the image runs; a temp file a killed download left is swept.
    kit.server.faults.pop(f"{image}.sif")
    _run_image_job(kit, image, "node1", f"del-{image}-next")
    assert settled_problems(kit.cache_dir("node1"), kit.images, [image]) == []
    kit.wait_sensor("node1", f"img_{image}")


def test_execd_killed_during_staging_and_restarted(kit):
    c = kit.cluster
    kit.server.faults["slow2.sif"] = Fault(rate=MB // 3)  # 18 s
    out = kit.out("execd")
    jid = c.qsub(["-l", "image=slow2", "-l", "hostname=node2", "-o", f"{out}/o", "-j", "y",
                  "-b", "y", "/bin/sh", "-c", 'test -r "$SGE_IMAGE_PATH" && echo ran'])
    _wait_for_part(kit, "node2")
    with open(os.path.join(c.execd_spool("node2"), "execd.pid")) as f:
        execd = int(f.read().strip())
    proc = psutil.Process(execd)
    proc.kill()
    proc.wait(10)
    # The shepherd (and its prolog) outlive the execd; bring the execd back.
    up = c.script("up", timeout=600)
    assert up.returncode == 0, up.stderr[-2000:]
    c.wait_done(jid, timeout=240)
    rec = c.qacct(jid)[-1]
    # Documented outcome: the restarted execd picks the job up again and it runs.
    assert rec["exit_status"] == "0" and rec["failed"].startswith("0"), rec
    assert "ran" in open(f"{out}/o").read()
    assert settled_problems(kit.cache_dir("node2"), kit.images, ["slow2"]) == []
    assert kit.server.gets("slow2.sif") == 1  # the download was not repeated
    kit.server.faults.pop("slow2.sif")
    kit.wait_sensor("node2", "img_slow2")


def _sensor_procs(host):
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "sge.ge.loadsensor" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("HOST") == host:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _sensor_time(kit, host):
    v = kit.sensor_value(host, "img_sensor_time")
    return int(float(v)) if v else 0


def test_load_sensor_killed_is_restarted(kit):
    kit.sge_image("pull", "warm3", "-q", host="node3")
    kit.wait_sensor("node3", "img_warm3")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        old = _sensor_procs("node3")
        assert len(old) == 1, old
        old[0].send_signal(sig)
        old[0].wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = _sensor_procs("node3")
            if new and new[0].pid != old[0].pid:
                break
            time.sleep(0.2)
        assert len(new) == 1 and new[0].pid != old[0].pid, new
        # Values keep coming: the timestamp moves on and the image is still reported.
        t0 = _sensor_time(kit, "node3")
        deadline = time.monotonic() + 60
        while _sensor_time(kit, "node3") <= t0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _sensor_time(kit, "node3") > t0
        assert kit.sensor_value("node3", "img_warm3") is not None


def test_unsafe_cache_reschedules_to_the_cap_then_holds_the_job(kit):
    c = kit.cluster
    kit.sge_image("pull", "quick", "-q", host="node3")
    kit.wait_sensor("node3", "img_quick")
    _chmod_cache(kit, "node3", 0o777)  # a job owner could now plant files
    try:
        # The sensor stops reporting the unsafe cache's images.
        kit.wait_sensor("node3", "img_quick", want=False)
        out = kit.out("capped")
        jid = c.qsub(["-l", "image=capped", "-l", "hostname=node3", "-o", f"{out}/o", "-j", "y",
                      "-b", "y", "/bin/true"])
        assert _wait_error_state(c, jid, timeout=240) == "ERq"  # R: it was rescheduled
        recs = c.qacct(jid, records=3)
        assert [r["failed"].split()[0] for r in recs].count("25") == 3, recs  # rescheduled
        text = open(f"{out}/o").read()
        assert f"chmod go-w {kit.cache_dir('node3')}" in text, text
        assert "giving up after 3 reschedules" in text, text
    finally:
        _chmod_cache(kit, "node3", 0o755)
    kit.wait_sensor("node3", "img_quick")
    r = c.run(["qmod", "-cj", str(jid)], check=False)  # exits 1 even when it worked
    assert "cleared error state" in r.stdout + r.stderr, r
    c.wait_done(jid, timeout=180)
    deadline = time.monotonic() + 60
    while True:  # the run after the fix: its accounting record comes last
        recs = c.qacct(jid, records=4)
        if recs[-1]["failed"].startswith("0") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert recs[-1]["exit_status"] == "0" and recs[-1]["failed"].startswith("0"), recs
    assert kit.server.gets("capped.sif") == 1  # staged once the cache was fixed
    assert settled_problems(kit.cache_dir("node3"), kit.images, ["capped", "quick"]) == []


def test_job_environment_cannot_steer_the_prologs_writes(kit, tmp_path_factory):
    """The prolog runs as root with the job's environment: what the job sets with -v
    must not choose where root writes."""
    c = kit.cluster
    bait = os.path.join(kit.work, MARK)
    os.makedirs(bait)
    open(os.path.join(bait, "environment"), "w").close()
    out = kit.out("env")
    jid = c.qsub(["-l", "image=quick", "-l", "hostname=node1", "-o", f"{out}/o", "-j", "y",
                  "-v", f"SGE_JOB_SPOOL_DIR={bait},JOB_ID=../../{MARK},SGE_TASK_ID=../{MARK}",
                  "-b", "y", "/bin/sh", "-c", 'test -r "$SGE_IMAGE_PATH" && echo ran'])
    c.wait_done(jid, timeout=180)
    assert c.qacct(jid)[-1]["exit_status"] == "0"
    assert "ran" in open(f"{out}/o").read()
    assert os.path.getsize(os.path.join(bait, "environment")) == 0
    found = subprocess.run(["find", kit.work, "-name", f"*{MARK}*"], capture_output=True,
                           text=True).stdout.split()
    assert found == [bait], found
