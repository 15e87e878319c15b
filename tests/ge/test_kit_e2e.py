"""End to end on a real Grid Engine: qsub -l image=NAME through the installed kit."""
import glob
import os
import time

import pytest

from tests.support.gekit import assert_cluster_unchanged, cluster_snapshot, kit_work, make_kit

IMAGES = {"demo": {"size": 4 << 20}, "warm": {}, "flaky": {}, "gone": {}}


@pytest.fixture(scope="module")
def kit(ge_cluster):
    before = cluster_snapshot(ge_cluster)
    runtime = os.path.join(kit_work(ge_cluster), "fake-apptainer")
    k = make_kit(ge_cluster, IMAGES, starter_runtime=[runtime, "exec"])
    k.script("fake-apptainer", '#!/bin/sh\n# stands in for `apptainer exec IMAGE CMD...`\n'
             '[ "$1" = exec ] || exit 64\nimg=$2; shift 2\n'
             'echo "RUNTIME image=$img pinned=$(ls /proc/$$/fd | wc -l)"\nexec "$@"\n')
    k.server.add_file("gone.sif", b"")
    os.unlink(os.path.join(k.work, "srv", "gone.sif"))  # 404 from now on
    k.sge_image("install", "--starter")
    k.before = before
    yield k
    ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
    k.sge_image("uninstall", check=False)
    k.server.close()


def _task_hosts(recs):
    return sorted(r["hostname"] for r in recs)


def test_install_is_idempotent(kit):
    snap = cluster_snapshot(kit.cluster)
    r = kit.sge_image("install", "--starter")
    assert r.stdout.strip().endswith("0 changes"), r.stdout
    assert_cluster_unchanged(kit.cluster, snap)


def test_array_on_one_cold_host_downloads_once(kit):
    c = kit.cluster
    out = kit.out("array")
    job = kit.script("array.sh", '#!/bin/sh\n'
                     'test -r "$SGE_IMAGE_PATH" || { echo "no image at $SGE_IMAGE_PATH"; exit 3; }\n'
                     'echo "ok $(hostname) $SGE_IMAGE $SGE_IMAGE_PATH"\n')
    jid = c.qsub(["-t", "1-24", "-l", "image=demo", "-l", "hostname=node1",
                  "-o", f"{out}/$TASK_ID.out", "-j", "y", job])
    c.wait_done(jid, timeout=240)
    recs = c.qacct(jid)
    assert len(recs) == 24
    assert all(r["exit_status"] == "0" and r["failed"].startswith("0") for r in recs), recs
    assert set(_task_hosts(recs)) == {"node1"}
    assert kit.server.gets("demo.sif") == 1
    texts = [open(p).read() for p in glob.glob(f"{out}/*.out")]
    assert len(texts) == 24
    assert all("ok node1 demo " + kit.cache_dir("node1") in t for t in texts), texts[:2]
    # The starter ran each job through the runtime with the cached image.
    assert all("RUNTIME image=" + kit.cache_dir("node1") in t for t in texts)
    # The load sensor now reports it on node1 only.
    kit.wait_sensor("node1", "img_demo")
    assert kit.sensor_value("node2", "img_demo") is None
    assert c.queue_errors() == []


def test_jobs_prefer_the_warm_host(kit):
    c = kit.cluster
    kit.sge_image("pull", "warm", "-q", host="node2")
    kit.wait_sensor("node2", "img_warm")
    out = kit.out("warm")
    jid = c.qsub(["-t", "1-4", "-l", "image=warm", "-o", f"{out}/$TASK_ID.out", "-j", "y",
                  "-b", "y", "/bin/sleep", "3"])
    c.wait_done(jid, timeout=120)
    assert _task_hosts(c.qacct(jid)) == ["node2"] * 4
    assert kit.server.gets("warm.sif") == 1  # only the pull above


def test_cluster_status_and_prewarm(kit):
    import json
    status = json.loads(kit.sge_image("status", "--cluster", "--json").stdout)
    warm = {r["image"]: r["warm_hosts"] for r in status["images"]}
    assert warm["warm"] == ["node2"] and warm["demo"] == ["node1"]
    assert all(not h["stale"] and h["free_bytes"] > 0 for h in status["hosts"])
    before = kit.server.gets("warm.sif")
    r = kit.sge_image("prewarm", "warm", "--all")
    assert "node2: already warm" in r.stdout
    assert "prewarm warm: 2 of 2 hosts staged" in r.stdout, r.stdout
    assert kit.server.gets("warm.sif") == before + 2
    for h in ("node1", "node3"):
        kit.wait_sensor(h, "img_warm")
    r = kit.sge_image("prewarm", "warm", "--all")
    assert "nothing to do" in r.stdout
    assert kit.cluster.queue_errors() == []


def test_ocs_request_scopes_for_parallel_jobs(kit):
    """Open Cluster Scheduler 9 only: `-scope master -l image=demo` is mapped like `-l
    image=demo` (left in place it would pend forever: no host reports `image`), and
    `-scope slave -l image=demo` is refused at submit (no prolog runs for slave tasks)."""
    c = kit.cluster
    if c.flavor != "ocs":
        pytest.skip("request scopes (qsub -scope) exist in Open Cluster Scheduler only")
    jid = c.qsub(["-h", "-pe", "make", "1", "-scope", "master", "-l", "image=demo,h_rt=600",
                  "-b", "y", "/bin/true"])
    try:
        info = {}
        for line in c.run(["qstat", "-j", str(jid)]).stdout.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
        assert info.get("master_hard_resource_list") == "h_rt=600", info
        assert info.get("soft_resource_list") == "img_demo=true", info
        assert "SGE_IMAGE=demo" in info.get("env_list", ""), info
    finally:
        c.run(["qdel", str(jid)], check=False)
    r = c.run(["qsub", "-pe", "make", "2", "-scope", "slave", "-l", "image=demo", "-b", "y",
               "/bin/true"], check=False)
    assert r.returncode != 0
    assert "-scope master" in r.stderr + r.stdout


def test_unknown_image_is_rejected_at_submit(kit):
    r = kit.cluster.run(["qsub", "-l", "image=nope", "-b", "y", "/bin/true"], check=False)
    assert r.returncode != 0
    assert "not in the catalog" in r.stderr + r.stdout
    r = kit.cluster.run(["qsub", "-l", "image=../etc", "-b", "y", "/bin/true"], check=False)
    assert r.returncode != 0 and "invalid" in r.stderr + r.stdout


def test_transient_failure_reschedules_without_queue_errors(kit):
    from tests.support.httpserver import Fault
    c = kit.cluster
    kit.server.faults["flaky.sif"] = Fault(status=503, times=2)
    out = kit.out("flaky")
    jid = c.qsub(["-l", "image=flaky", "-l", "hostname=node3", "-o", f"{out}/o", "-j", "y",
                  "-b", "y", "/bin/true"])
    c.wait_done(jid, timeout=240)
    recs = c.qacct(jid, records=3)
    assert [r["failed"].split()[0] for r in recs].count("25") == 2, recs  # 25: rescheduling
    assert recs[-1]["exit_status"] == "0"
    assert kit.server.gets("flaky.sif") == 3
    assert c.queue_errors() == []


def test_permanent_failure_holds_the_job_not_the_queue(kit):
    c = kit.cluster
    out = kit.out("gone")
    jid = c.qsub(["-l", "image=gone", "-o", f"{out}/o", "-j", "y", "-b", "y", "/bin/true"])
    deadline = time.monotonic() + 120
    state = ""
    while time.monotonic() < deadline:
        line = [ln for ln in c.run(["qstat"]).stdout.splitlines() if ln.split()[:1] == [str(jid)]]
        state = line[0].split()[4] if line else ""
        if "E" in state:
            break
        time.sleep(0.5)
    assert state == "Eqw"
    assert "not found" in open(f"{out}/o").read()
    assert c.queue_errors() == []
    c.run(["qdel", str(jid)])


def test_uninstall_restores_the_cluster(kit):
    kit.sge_image("uninstall")
    assert_cluster_unchanged(kit.cluster, kit.before)
    kit.sge_image("install", "--starter")  # for the tests that may follow
