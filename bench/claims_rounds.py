#!/usr/bin/env python3
"""Rounds of a parallel job, then a cold array, on caches that hold one image: does every
task find its image at start and again after a sleep? (RELIABILITY.md, job claims)

    GE_FLAVOR=soge|ocs python bench/claims_rounds.py [--rounds 20 --tasks 30]   (as root)

The sequence in which a task once found no image (the default install, no starter): a
parallel job of image `demo` over every host, then at once a `--tasks` array of an
image no host holds, 24 MiB each, on hosts whose `cache.max_size` (40M) holds one of
them, with the node agent on. Every task (the parallel job's master too) runs
`test -r "$SGE_IMAGE_PATH"` when it starts and again after `--sleep` seconds, longer
than `cache.evict_grace`, so only a claim can have kept the image. Rounds alternate
two cold images, so each array's image was evicted by the previous parallel job.

Per round: tasks that found their image at start and after the sleep, tasks that did
not (their output line), origin GETs of the array's image, queue instances in error,
and the seconds the round took. The kit is installed once and uninstalled at the end,
and the cluster lock (the one the tests take) is held throughout.
"""
import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.gecluster import SCRIPT, GECluster  # noqa: E402
from tests.support.gekit import MB, QHOST_PINNED, kit_work, make_kit  # noqa: E402

LOCK = "/var/tmp/sge-image-kit-ge.lock"
PE = "claimspe"
JOB = """#!/bin/sh
test -r "$SGE_IMAGE_PATH" || { echo "MISSING at start: job $JOB_ID.$SGE_TASK_ID on $(hostname) path '$SGE_IMAGE_PATH'"; exit 3; }
sleep "$1"
test -r "$SGE_IMAGE_PATH" || { echo "MISSING later: job $JOB_ID.$SGE_TASK_ID on $(hostname) path '$SGE_IMAGE_PATH'"; exit 4; }
echo "ok $JOB_ID.$SGE_TASK_ID $(hostname)"
"""


def cluster(flavor):
    env = dict(os.environ, GE_FLAVOR=flavor)
    p = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"ge-cluster.sh up failed:\n{p.stderr[-2000:]}")
    for line in subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, env=env,
                               check=True).stdout.splitlines():
        m = re.match(r"export (\w+)=(.*)$", line.strip())
        if m:
            os.environ[m.group(1)] = os.path.expandvars(m.group(2))
    if flavor == "soge":
        for var in ("SGE_QMASTER_PORT", "SGE_EXECD_PORT"):
            os.environ.pop(var, None)
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/bin", "/usr/sbin") if d not in path])
    hosts = subprocess.run([str(SCRIPT), "hosts"], capture_output=True, text=True, env=env,
                           check=True).stdout.split()
    return GECluster(hosts, dict(os.environ), flavor)


def add_pe(c, work):
    path = os.path.join(work, "pe.conf")
    with open(path, "w") as f:
        f.write(f"pe_name {PE}\nslots 999\nuser_lists NONE\nxuser_lists NONE\n"
                "start_proc_args NONE\nstop_proc_args NONE\nallocation_rule $round_robin\n"
                "control_slaves TRUE\njob_is_first_task TRUE\nurgency_slots min\n"
                "accounting_summary FALSE\n")
        f.write("qsort_args NONE\n" if c.flavor == "soge" else
                "ign_sreq_on_mhost FALSE\nmaster_forks_slaves FALSE\ndaemon_forks_slaves FALSE\n")
    remove_pe(c)
    c.run(["qconf", "-Ap", path])
    c.run(["qconf", "-aattr", "queue", "pe_list", PE, "all.q"])


def remove_pe(c):
    c.run(["qconf", "-dattr", "queue", "pe_list", PE, "all.q"], check=False)
    c.run(["qconf", "-dp", PE], check=False)


def one_round(kit, n, args, job):
    c = kit.cluster
    cold = "coldA" if n % 2 else "coldB"
    out = kit.out(f"round{n}")
    gets0 = kit.server.gets(f"{cold}.sif")
    t0 = time.monotonic()
    pe = c.qsub(["-pe", PE, str(len(c.hosts)), "-l", "image=demo", "-o", out, "-j", "y",
                 job, str(args.sleep)])
    arr = c.qsub(["-t", f"1-{args.tasks}", "-l", f"image={cold}", "-o", out, "-j", "y",
                  job, str(args.sleep)])
    c.wait_done(pe, timeout=args.timeout)
    c.wait_done(arr, timeout=args.timeout)
    took = time.monotonic() - t0
    recs = c.qacct(pe, timeout=60) + c.qacct(arr, timeout=60)
    text = "".join(open(os.path.join(out, f)).read() for f in sorted(os.listdir(out)))
    missing = [ln for ln in text.splitlines() if ln.startswith("MISSING")]
    ok = sum(1 for ln in text.splitlines() if ln.startswith("ok "))
    failed = [r for r in recs if r["exit_status"] != "0" or not r["failed"].startswith("0")]
    errors = c.queue_errors()
    c.clear_errors()
    row = {"round": n, "array_image": cold, "tasks": args.tasks + 1, "ok": ok,
           "missing": missing, "failed_records": len(failed), "attempts": len(recs),
           "origin_gets": kit.server.gets(f"{cold}.sif") - gets0, "queue_errors": errors,
           "seconds": round(took, 1)}
    print(f"round {n:2}: {ok}/{args.tasks + 1} found their image at start and after "
          f"{args.sleep:g} s; missing {len(missing)}; attempts {len(recs)}; origin GETs of "
          f"{cold} {row['origin_gets']}; queue errors {errors or 'none'}; {took:.0f} s",
          flush=True)
    for ln in missing:
        print("   " + ln, flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--sleep", type=float, default=8.0,
                    help="seconds between a task's two checks (> --grace)")
    ap.add_argument("--grace", type=float, default=3.0,
                    help="cache.evict_grace (short: only a claim protects the second check)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    args = ap.parse_args(argv)
    flavor = os.environ.get("GE_FLAVOR", "soge")
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    c = cluster(flavor)
    images = {"demo": {"size": 24 * MB, "seed": 401}, "coldA": {"size": 24 * MB, "seed": 402},
              "coldB": {"size": 24 * MB, "seed": 403}}
    qhost = os.path.join(kit_work(c), "qhost-pinned")
    kit = make_kit(c, images, extra={
        "cache": {"root": os.path.join(kit_work(c), "cache", "{host}"), "min_free": 0,
                  "max_size": "40M", "evict_grace": args.grace, "room_wait": 300},
        "agent": {"enabled": True, "seed_wait": 120, "pe_wait": 300, "qhost": [qhost]}})
    kit.script("qhost-pinned", QHOST_PINNED)
    job = kit.script("round.sh", JOB)
    rows = []
    try:
        kit.sge_image("install")
        add_pe(c, kit.work)
        time.sleep(10)  # every sensor and agent up
        for n in range(1, args.rounds + 1):
            rows.append(one_round(kit, n, args, job))
    finally:
        c.run(["qdel", "-u", "*", "-f"], check=False)
        remove_pe(c)
        kit.sge_image("uninstall", check=False)
        kit.server.close()
    total = sum(r["tasks"] for r in rows)
    ok = sum(r["ok"] for r in rows)
    print(f"\n{flavor}: {len(rows)} rounds, {ok}/{total} tasks found their image at start and "
          f"after {args.sleep:g} s (evict_grace {args.grace:g} s); missing "
          f"{sum(len(r['missing']) for r in rows)}; queue errors "
          f"{sum(len(r['queue_errors']) for r in rows)}; origin GETs per array "
          f"{sorted({r['origin_gets'] for r in rows})}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"claims-rounds-{flavor}.json"), "w") as f:
        json.dump({"flavor": flavor, "args": vars(args), "rounds": rows}, f, indent=1)
    return 0 if ok == total and not any(r["queue_errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
