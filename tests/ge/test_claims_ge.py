"""A job keeps its image for its whole life without the starter method (the default
install): the prolog claims it, eviction waits for room instead of taking it, the
epilog ends the claim, and a job killed without its epilog holds nothing afterwards.

The cache holds one image. Before claims, a task that opened its image again after
`cache.evict_grace` found it gone as soon as another image's task needed the room.
"""
import os
import time

import pytest

from tests.support.gekit import MB, kit_work, make_kit

IMAGES = {"first": {"size": 24 * MB, "seed": 201}, "second": {"size": 24 * MB, "seed": 202},
          "third": {"size": 4 * MB, "seed": 203}}
GRACE = 5
HOST = "node1"
# Opens the image at start and again well past the grace period.
JOB = ('#!/bin/sh\n'
       'test -r "$SGE_IMAGE_PATH" || { echo "no image at start: $SGE_IMAGE_PATH"; exit 3; }\n'
       'sleep ${HOLD:-0}\n'
       'test -r "$SGE_IMAGE_PATH" || { echo "image gone later: $SGE_IMAGE_PATH"; exit 4; }\n'
       'head -c 1048576 "$SGE_IMAGE_PATH" > /dev/null || exit 5\n'
       'echo ok\n')


@pytest.fixture(scope="module")
def kit(ge_cluster):
    k = make_kit(ge_cluster, IMAGES, extra={"cache": {
        "root": os.path.join(kit_work(ge_cluster), "cache", "{host}"), "min_free": 0,
        "max_size": "40M",      # holds one of the large images, never both
        "evict_grace": GRACE,
        "room_wait": 240}})
    k.sge_image("install")  # the default: no starter method, so no pin
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


def _claims_dir(kit):
    return os.path.join(kit.cache_dir(HOST), "claims")


def _claims(kit):
    try:
        return sorted(n for n in os.listdir(_claims_dir(kit)) if not n.startswith("."))
    except FileNotFoundError:
        return []


def _running_tasks(c, jid):
    n = 0
    for line in c.run(["qstat", "-u", "*"]).stdout.splitlines():
        f = line.split()
        if f[:1] == [str(jid)] and "r" in f[4]:
            n += 1
    return n


def _wait(what, pred, timeout=180):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_running_job_keeps_its_image_while_another_image_needs_the_room(kit):
    c = kit.cluster
    job = kit.script("claims.sh", JOB)
    out = kit.out("claims")
    first = c.qsub(["-t", "1-3", "-l", "image=first", "-l", f"hostname={HOST}", "-v", "HOLD=30",
                    "-o", out, "-j", "y", job])
    _wait("the first array to run", lambda: _running_tasks(c, first) == 3)
    assert _claims(kit) == [f"{first}.1", f"{first}.2", f"{first}.3"]
    status = kit.sge_image("status", host=HOST).stdout
    assert f"{first}.1 {first}.2 {first}.3" in status, status
    time.sleep(GRACE + 3)  # well past the grace period: only the claims protect it now
    second = c.qsub(["-t", "1-2", "-l", "image=second", "-l", f"hostname={HOST}",
                     "-o", out, "-j", "y", job])
    c.wait_done(first, timeout=300)
    c.wait_done(second, timeout=400)
    for jid in (first, second):
        recs = c.qacct(jid, timeout=60)
        ok = [r for r in recs if r["exit_status"] == "0" and r["failed"].startswith("0")]
        assert len({r["taskid"] for r in ok}) == len({r["taskid"] for r in recs}), recs
    text = "".join(open(os.path.join(out, f)).read() for f in os.listdir(out))
    assert "gone" not in text and "no image" not in text, text
    assert kit.server.gets("first.sif") == 1 and kit.server.gets("second.sif") == 1
    # The epilog ended every claim, not the sensor's sweep (which logs what it removes).
    assert _claims(kit) == []
    log = open(os.path.join(kit.work, "sge-image.log")).read()
    assert f"removed the claim of job {first}." not in log


def test_a_job_killed_without_its_epilog_holds_nothing(kit):
    c = kit.cluster
    job = kit.script("claims.sh", JOB)
    out = kit.out("claims-kill")
    jid = c.qsub(["-l", "image=third", "-l", f"hostname={HOST}", "-v", "HOLD=300", "-o", out,
                  "-j", "y", job])
    _wait("the job to run", lambda: _running_tasks(c, jid) == 1)
    _wait("its claim", lambda: _claims(kit) == [f"{jid}.1"])
    c.run(["qdel", "-f", str(jid)])
    c.wait_done(jid, timeout=120)
    # Whether or not an epilog ran, the claim holds nothing once Grid Engine dropped the
    # job, and it is gone from the disk within a few sensor cycles.
    _wait("the claim to go", lambda: _claims(kit) == [], timeout=60)
    dry = kit.sge_image("gc", "--dry-run", host=HOST).stdout
    assert "claimed" not in dry, dry
