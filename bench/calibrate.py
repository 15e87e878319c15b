#!/usr/bin/env python3
"""Calibrate the placement simulator against the real local Grid Engine.

    python bench/calibrate.py [--tasks 300 --seed 1 --out bench/out]   (as root)

Runs one small scenario twice, on the real test cluster (``lab/ge-cluster.sh``:
qmaster + exec hosts node1..node3, schedule_interval 1 s, load_report_time 5 s) and
in ``sge_sim.run_scenario``, and compares where the tasks ran and which host pulled
which image.

Real side: the kit is built and installed the way ``tests/ge/test_kit_e2e.py`` does
it (``tests.support.gekit.make_kit``), images come from the rate-limited test HTTP server
on 127.0.0.1 (a pull takes a few seconds), one image is pulled onto one host before
the run and reported by the load sensor (so the soft request has something to
prefer), then the scenario's arrays and single jobs of short ``sleep`` tasks are
submitted with ``-l image=NAME`` at their offsets.  Placements come from ``qacct``;
downloads per host and image from the kit's log (one "staged" line per pull, with
the host's name), cross-checked with the server's GET count and the per-host cache
directories.  While the jobs run, ``qstat`` is polled (when each task was dispatched
and when the finished job was removed: the slot cycle as the scheduler sees it) and
so is ``qhost -F img_sensor_time`` (when each host's load report reached the
qmaster, i.e. its report phase, and the load it reported).  Each task also records
when execd received it (the mtime of its spool ``config``), when it started and
ended, which splits the overhead into its parts.  The whole time the cluster lock
(/var/tmp/sge-image-kit-ge.lock, the one the tests take) is held, and the kit is
uninstalled at the end whatever happens (and --slots put back to 4).

Simulated side: the same hosts, slots, warm image and jobs (submit offsets as
actually submitted), policy soft, load_report_time 5 s with the measured phases, the
reported load_avg per host (it breaks ties before seq_no), SGE's default load
adjustment (np_load_avg=0.50, 7:30 decay), 50 array tasks per job and run, no CPU
load from sleep tasks, runtime = sleep + the measured cycle overhead, pull time =
the measured one per image.  The scheduler interval is 0.1 s (--sim-interval): the
real one runs within ~0.2 s of a submit or a job end (flush_submit_sec and
flush_finish_sec are set), not on a 1 s grid; the 1 s grid is one of the variants.
Variants rerun the simulation with one input changed (the real cycle of each task,
a 1 s grid, no overhead, report phase 0, no reported load, no load adjustment,
policy none), to show what each input is worth and how well the comparison tells
the policies apart.

Output: a side-by-side table (per host x image: real vs simulated placements and
downloads, totals), ``OUT/calibration[-TAG].json`` (scenario, settings,
measurements, per-task records of both sides, variants) and
``OUT/calibration[-TAG].md``.  ``--replay JSON`` reruns only the simulation against
an earlier measurement (for changes to the simulator).

Scenario knobs: --tasks, --seed, --span (submit offsets), --max-array, --slots,
--lead-in (each cold image first runs one single task, arrays follow later, so
the images settle on one host each and the soft request is what keeps them there).
"""
import argparse
import fcntl
import glob
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the kit and the simulator's own distribution (sim/), installed or not
sys.path[:0] = [REPO, os.path.join(REPO, "sim")]

from sge_sim import run_scenario  # noqa: E402

LOCK = "/var/tmp/sge-image-kit-ge.lock"
CLUSTER = os.path.join(REPO, "lab", "ge-cluster.sh")
SENSOR_TIME = "img_sensor_time"
MB = 1 << 20

# Image name -> (size in MiB, popularity weight).  The first is pre-warmed.
IMAGES = {"calalpha": (3, 0.5), "calbeta": (4, 0.3), "calgamma": (6, 0.2)}
ARRAY_SIZES = (3, 4, 6, 8, 12, 16, 24, 32, 48)
SLEEPS = (1, 2, 3)

TASK_SCRIPT = """#!/bin/sh
# calibration task: when execd got it (its spool config), when it started and ended
r=$(stat -c %.9Y "$SGE_JOB_SPOOL_DIR/config" 2>/dev/null || echo nan)
s=$(date +%s.%N)
sleep "$1"
e=$(date +%s.%N)
echo "CAL host=$(hostname) job=$JOB_ID task=$SGE_TASK_ID image=$SGE_IMAGE recv=$r start=$s end=$e"
"""


# ---------------------------------------------------------------------- scenario

def make_scenario(tasks, seed, span, max_array=max(ARRAY_SIZES), lead_in=0.0):
    """Seeded jobs: arrays and single jobs, images by popularity, offsets in [0, span].

    With ``lead_in`` each image not warm anywhere is first run by one single-task
    job (at 0, 1, 2 ... s) and the random jobs start at ``lead_in``: with a
    lead-in longer than a pull plus one load report, the images are reported warm
    on one host each before any array asks for them."""
    rng = random.Random(seed)
    sizes = [n for n in ARRAY_SIZES if n <= max_array] or [max_array]
    names = list(IMAGES)
    weights = [IMAGES[n][1] for n in names]
    lead = []
    if lead_in > 0:
        lead = [{"image": n, "tasks": 1, "sleep": 1, "submit": float(i)} for i, n in enumerate(names[1:])]
    jobs = []
    left = tasks - len(lead)
    while left > 0:
        if left < 3 or rng.random() < 0.4:
            n = 1
        else:
            n = min(left, rng.choice(sizes))
        jobs.append({"image": rng.choices(names, weights)[0], "tasks": n,
                     "sleep": rng.choice(SLEEPS)})
        left -= n
    start = lead_in if lead else 0.0
    offsets = sorted([start] + [round(rng.uniform(start, span), 1) for _ in jobs[1:]])
    for j, off in zip(jobs, offsets):
        j["submit"] = off
    return lead + jobs


# ---------------------------------------------------------------------- helpers

def take_lock():
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {LOCK} (a test session uses the cluster) ...", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def cluster_up(slots):
    env = dict(os.environ, GE_SLOTS=str(slots))
    p = subprocess.run([CLUSTER, "up"], capture_output=True, text=True, env=env, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"ge-cluster.sh up failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    out = subprocess.run([CLUSTER, "env"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.match(r"export (\w+)=(.*)$", line.strip())
        if m:
            os.environ[m.group(1)] = m.group(2)
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in ("/usr/bin", "/usr/sbin") if d not in path] + path)
    return subprocess.run([CLUSTER, "hosts"], capture_output=True, text=True, check=True).stdout.split()


def queue_states(cluster, flag):
    """Queue instances whose state in ``qstat -f`` has FLAG."""
    out = cluster.run(["qstat", "-f", "-u", "*"], check=False).stdout
    return [f[0] for f in (ln.split() for ln in out.splitlines())
            if len(f) >= 6 and "@" in f[0] and flag in f[5]]


class TimedRequests(list):
    """The test server's request log, with the time of each request."""

    def __init__(self):
        super().__init__()
        self.times = []

    def append(self, item):
        self.times.append(time.time())
        super().append(item)


def time_gets(server):
    """Record (path, start, end) of every GET the server answers."""
    server.requests = TimedRequests()
    done = []
    base = server.httpd.RequestHandlerClass

    class Timed(base):
        def do_GET(self):
            t0 = time.time()
            try:
                super().do_GET()
            finally:
                with server.lock:
                    done.append((self.path, t0, time.time()))

    server.httpd.RequestHandlerClass = Timed
    return done


class TaskWatch(threading.Thread):
    """Polls ``qstat -s r -g d``: when each task appeared on a host and when it left,
    as the qmaster (and so the scheduler) saw it.  Times are the midpoints between
    the poll that did not list the task and the one that did."""

    def __init__(self, cluster, period=0.2):
        super().__init__(daemon=True)
        self.cluster, self.period = cluster, period
        self.seen = {}    # (job id, task) -> [host, first t, last t]
        self.prev_t = None
        self.live = set()
        self.stop = threading.Event()

    def poll(self):
        t0 = time.time()
        out = self.cluster.run(["qstat", "-s", "r", "-u", "*", "-g", "d"], check=False).stdout
        t = (t0 + time.time()) / 2
        now = set()
        for line in out.splitlines():
            f = line.split()
            if len(f) < 9 or not f[0].isdigit() or "@" not in f[7]:
                continue
            key = (int(f[0]), f[9] if len(f) > 9 else "undefined")
            now.add(key)
            if key not in self.seen:
                first = t if self.prev_t is None else (self.prev_t + t) / 2
                self.seen[key] = [f[7].split("@", 1)[1], first, None]
        for key in self.live - now:
            self.seen[key][2] = (self.prev_t + t) / 2
        self.live = now
        self.prev_t = t

    def run(self):
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception:
                pass
            self.stop.wait(self.period)


class ReportWatch(threading.Thread):
    """Polls ``qhost -F img_sensor_time``: when a host's value changes, a load report
    of that host has reached the qmaster.  Keeps the arrival times per host."""

    def __init__(self, cluster, hosts, period=0.2):
        super().__init__(daemon=True)
        self.cluster, self.hosts, self.period = cluster, hosts, period
        self.arrivals = {h: [] for h in hosts}
        self.last = {}
        self.loads = {h: [] for h in hosts}
        self.stop = threading.Event()

    def poll(self):
        t0 = time.time()
        out = self.cluster.run(["qhost", "-F", SENSOR_TIME], check=False).stdout
        t1 = time.time()
        host = None
        for line in out.splitlines():
            f = line.split()
            if f and f[0] in self.arrivals:
                host = f[0]
                # HOSTNAME ARCH NCPU NSOC NCOR NTHR LOAD ...: the load the scheduler sorts by
                if len(f) > 6 and (not self.loads[host] or self.loads[host][-1][1] != f[6]):
                    self.loads[host].append((t1, f[6]))
            for w in f:
                if host and w.startswith("hl:" + SENSOR_TIME + "="):
                    v = w.split("=", 1)[1]
                    if host in self.last and self.last[host] != v:
                        # seen between this poll and the previous one
                        self.arrivals[host].append((t0 + t1) / 2 - self.period / 2)
                    self.last[host] = v

    def run(self):
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception:  # a qmaster hiccup must not end the watch
                pass
            self.stop.wait(self.period)


def phases(arrivals, t0, period):
    """Circular mean of (arrival - t0) mod period per host."""
    out = {}
    for h, ts in arrivals.items():
        if not ts:
            continue
        ang = [2 * math.pi * (((t - t0) % period) / period) for t in ts]
        x = sum(math.cos(a) for a in ang) / len(ang)
        y = sum(math.sin(a) for a in ang) / len(ang)
        out[h] = {"phase": round((math.atan2(y, x) / (2 * math.pi) * period) % period, 2),
                  "concentration": round(math.hypot(x, y), 3), "reports": len(ts)}
    return out


def median(xs, default=0.0):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else default


# ---------------------------------------------------------------------- real run

def run_real(args, jobs, t_start):
    from tests.support.gecluster import GECluster
    from tests.support.gekit import cluster_snapshot, make_kit
    from tests.support.httpserver import Fault

    hosts = cluster_up(args.slots)
    print(f"[{time.time() - t_start:5.0f}s] cluster up: {' '.join(hosts)} ({args.slots} slots each)",
          flush=True)
    cluster = GECluster(hosts, dict(os.environ))
    if cluster.run(["qstat", "-u", "*"]).stdout.strip():
        raise SystemExit("the cluster has jobs already; refusing to measure on a busy cluster")
    warm_host = args.warm_host or hosts[len(hosts) // 2]
    warm_image = list(IMAGES)[0]
    from tests.support.gekit import WORK
    leftover = os.path.exists(os.path.join(WORK, "hooks", "install-state.json"))
    # make_kit first undoes a kit install a killed run left behind: compare with after that
    kit = make_kit(cluster, {n: {"size": int(IMAGES[n][0] * MB)} for n in IMAGES})
    before = cluster_snapshot(cluster)
    gets = time_gets(kit.server)
    for n in IMAGES:
        kit.server.faults[f"{n}.sif"] = Fault(rate=args.rate_mib * MB)
    real = {"hosts": hosts, "warm": {warm_host: [warm_image]}, "leftover_install_undone": leftover}
    watch = ReportWatch(cluster, hosts)
    twatch = TaskWatch(cluster)
    try:
        kit.sge_image("install")
        print(f"[{time.time() - t_start:5.0f}s] kit installed", flush=True)
        w0 = time.time()
        kit.sge_image("pull", warm_image, "-q", host=warm_host)
        real["prewarm_pull_s"] = round(time.time() - w0, 2)
        kit.wait_sensor(warm_host, "img_" + warm_image)
        for h in hosts:
            kit.wait_sensor(h, SENSOR_TIME)
        prewarm_gets = kit.server.gets(f"{warm_image}.sif")
        watch.start()
        twatch.start()
        time.sleep(args.phase_watch)  # a few reports per host before the run
        print(f"[{time.time() - t_start:5.0f}s] {warm_image} warm on {warm_host} "
              f"(pull {real['prewarm_pull_s']} s); submitting {len(jobs)} jobs", flush=True)

        out = kit.out("calibrate")
        script = kit.script("caltask.sh", TASK_SCRIPT)
        t0 = time.time()
        ids = []
        for j in jobs:
            delay = t0 + j["submit"] - time.time()
            if delay > 0:
                time.sleep(delay)
            a = ["-l", f"image={j['image']}", "-o", f"{out}/$JOB_ID.$TASK_ID", "-j", "y"]
            if j["tasks"] > 1:
                a += ["-t", f"1-{j['tasks']}"]
            ts = time.time()
            ids.append(cluster.qsub(a + [script, str(j["sleep"])]))
            j["submitted"] = round(ts - t0, 3)
            j["qsub_s"] = round(time.time() - ts, 3)
        print(f"[{time.time() - t_start:5.0f}s] all submitted; waiting", flush=True)
        deadline = time.time() + args.timeout
        pending = set(ids)
        unknown = 0
        while pending:
            q = cluster.run(["qstat", "-u", "*"], check=False).stdout
            known = {int(ln.split()[0]) for ln in q.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()}
            if "Eqw" in q or cluster.queue_errors():
                raise RuntimeError(f"a job or queue went into error:\n{q}\n{cluster.queue_errors()}")
            # an exec host whose execd died shows 'u': its tasks hang in 't' and the
            # run no longer measures the scheduler
            unknown = unknown + 1 if queue_states(cluster, "u") else 0
            if unknown >= 5:
                raise RuntimeError(f"exec host(s) {queue_states(cluster, 'u')} unreachable (state u) "
                                   f"for 5 s: the run is void")
            pending &= known
            if pending and time.time() > deadline:
                raise TimeoutError(f"jobs {sorted(pending)} still there after {args.timeout} s")
            if pending:
                time.sleep(1)
        t_done = time.time()
        watch.stop.set()
        twatch.stop.set()
        twatch.join(5)
        print(f"[{time.time() - t_start:5.0f}s] all done in {t_done - t0:.0f} s; reading qacct", flush=True)

        # ---- placements from qacct, timings from the task outputs
        outputs = {}  # (job id, task) -> the task's output (prolog lines + CAL line)
        for path in glob.glob(os.path.join(out, "*")):
            text = open(path, errors="replace").read()
            m = re.search(r"^CAL host=\S+ job=(\d+) task=(\S+) ", text, re.M)
            if m:
                outputs[(int(m.group(1)), m.group(2) if m.group(2).isdigit() else "undefined")] = text
        tasks = []
        records = 0
        for ji, (j, jid) in enumerate(zip(jobs, ids)):
            recs = cluster.qacct(jid, timeout=60)
            records += len(recs)
            good = {}
            for r in recs:
                if r.get("exit_status") == "0" and r.get("failed", "0").split()[0] == "0":
                    good[r.get("taskid", "undefined")] = r
            if len(good) != j["tasks"]:
                raise RuntimeError(f"job {jid}: {len(good)} of {j['tasks']} tasks ended well: {recs}")
            for tid, r in sorted(good.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 1):
                rec = {"job": ji, "job_id": jid, "task": int(tid) if tid.isdigit() else 1,
                       "image": j["image"], "host": r["hostname"], "sleep": j["sleep"],
                       "submit": j["submitted"]}
                path = f"{jid}.{tid}"
                text = outputs.get((jid, tid if tid.isdigit() else "undefined"), "")
                m = re.search(r"^CAL host=(\S+) .* recv=(\S+) start=(\S+) end=(\S+)$", text, re.M)
                if m:
                    if m.group(1) != rec["host"]:
                        raise RuntimeError(f"{path}: ran on {m.group(1)}, qacct says {rec['host']}")
                    for k, g in (("recv", 2), ("start", 3), ("end", 4)):
                        v = float(m.group(g)) if m.group(g) != "nan" else math.nan
                        rec[k] = round(v - t0, 3)
                rec["pulled"] = " staged " in text
                q = twatch.seen.get((jid, tid if tid.isdigit() else "undefined"))
                if q and q[0] == rec["host"]:
                    rec["q_dispatch"] = round(q[1] - t0, 3)
                    rec["q_end"] = round(q[2] - t0, 3) if q[2] is not None else None
                tasks.append(rec)
        real["qacct_records"] = records

        # ---- downloads: the kit log names the host of every pull
        staged = {}
        log_path = os.path.join(kit.work, "sge-image.log")
        for line in open(log_path, errors="replace"):
            m = re.match(r"(\S+) (\S+) sge-image prolog \S+\[\d+\] image (\S+): staged ", line)
            if m:
                key = (m.group(2), m.group(3))
                staged[key] = staged.get(key, 0) + 1
        cached = {h: sorted(os.listdir(os.path.join(kit.cache_dir(h), "images")))
                  if os.path.isdir(os.path.join(kit.cache_dir(h), "images")) else [] for h in hosts}
        real_gets = {n: kit.server.gets(f"{n}.sif") for n in IMAGES}
        real_gets[warm_image] -= prewarm_gets
        with kit.server.lock:
            get_times = [{"image": p.strip("/").rsplit(".", 1)[0], "start": round(a - t0, 3),
                          "end": round(b - t0, 3)} for p, a, b in gets if b >= t0]
        real.update({
            "t0_unix": t0, "makespan_s": round(t_done - t0, 1), "job_ids": ids, "tasks": tasks,
            "downloads": {f"{h}/{n}": c for (h, n), c in sorted(staged.items())},
            "gets_per_image": real_gets, "get_times": get_times, "cached_after": cached,
            "report_arrivals": {h: [round(t - t0, 2) for t in ts] for h, ts in watch.arrivals.items()},
            "report_phase": phases(watch.arrivals, t0, args.load_report_time),
            "load_avg": {h: [(round(t - t0, 2), v) for t, v in ls] for h, ls in watch.loads.items()},
        })
        return real
    finally:
        watch.stop.set()
        twatch.stop.set()
        cluster.run(["qdel", "-u", "*", "-f"], check=False)
        # Right after a run the hosts still report the image complexes and qmaster
        # refuses to delete them; the kit then asks for another uninstall once the
        # hosts have reported without the sensor (one load_report_time).
        for attempt in range(6):
            r = kit.sge_image("uninstall", check=False)
            if r.returncode == 0:
                break
            time.sleep(args.load_report_time + 1)
        real["uninstall_attempts"] = attempt + 1
        kit.server.close()
        if r.returncode != 0:
            print(f"WARNING: uninstall exited {r.returncode}: {r.stderr[-500:]}", file=sys.stderr)
        after = cluster_snapshot(cluster)
        restored = after == before
        real["cluster_restored"] = restored
        if not restored:
            real["cluster_changed"] = {k: {"before": before.get(k), "after": after.get(k)}
                                       for k in set(before) | set(after) if before.get(k) != after.get(k)}
            print("WARNING: the cluster config differs from before the run", file=sys.stderr)
        if args.slots != 4:
            cluster_up(4)  # back to the default the tests expect
        print(f"[{time.time() - t_start:5.0f}s] kit uninstalled, cluster "
              f"{'as found' if restored else 'CHANGED'}"
              + (", slots back to 4" if args.slots != 4 else ""), flush=True)


# ---------------------------------------------------------------------- measurements

def measure(real, args):
    """Per-task overhead and per-image pull time as the simulator needs them.

    The simulator holds a slot from dispatch for (pull, if any) + runtime, and
    fills it again at its next scheduling run.  On the real cluster a task is
    listed by qstat from its dispatch until the scheduling run that removes the
    finished job, which is also the run that fills the slot again (the next task
    appears in the same poll): that cycle minus the sleep is the overhead of a
    warm task, and a pulling task's extra cycle over that is the pull time of its
    image.  The task's own timestamps split the overhead into dispatch -> execd,
    prolog + shepherd, and job end -> removal."""
    tasks = real["tasks"]
    ok = [t for t in tasks if not math.isnan(t.get("recv", math.nan))]
    # When did each (host, image) pull complete? The start of the task that pulled.
    done_at = {}
    for t in ok:
        if t["pulled"]:
            k = (t["host"], t["image"])
            done_at[k] = min(done_at.get(k, math.inf), t["start"])
    warm = real["warm"]
    for t in ok:
        k = (t["host"], t["image"])
        t["warm"] = t["image"] in warm.get(t["host"], []) or t["recv"] >= done_at.get(k, math.inf)
    q = [t for t in ok if t.get("q_dispatch") is not None and t.get("q_end") is not None]
    if q:
        def occ(t):
            return t["q_end"] - t["q_dispatch"] - t["sleep"]
        source = "qstat"
    else:  # an older record without qstat times: execd receipt to job end
        def occ(t):
            return t["end"] - t["recv"] - t["sleep"]
        q = ok
        source = "task timestamps"
    ovh = median([occ(t) for t in q if t["warm"]])
    # Is a freed slot filled in the run that removes the finished task?
    same, seen = 0, 0
    for t in q:
        if source != "qstat":
            break
        later = [u["q_dispatch"] for u in q if u["host"] == t["host"] and u["q_dispatch"] > t["q_end"] - 0.3]
        if any(u["submit"] < t["q_end"] - 0.5 and u["q_dispatch"] > t["q_end"] + 0.05 for u in q) and later:
            seen += 1
            same += min(later) - t["q_end"] < 0.15
    pull = {}
    for n in IMAGES:
        xs = [occ(t) - ovh for t in q if t["pulled"] and t["image"] == n]
        pull[n] = {"n": len(xs), "median_s": round(median(xs, math.nan), 2),
                   "min_s": round(min(xs), 2) if xs else None,
                   "max_s": round(max(xs), 2) if xs else None}
    gets = {}
    for g in real["get_times"]:
        gets.setdefault(g["image"], []).append(g["end"] - g["start"])
    wq = [t for t in q if t["warm"] and t.get("q_dispatch") is not None]
    parts = {
        "dispatch_to_execd_s": median([t["recv"] - t["q_dispatch"] for t in wq], None),
        "prolog_and_shepherd_s": median([t["start"] - t["recv"] for t in ok if t["warm"]], None),
        "job_end_to_qmaster_s": median([t["q_end"] - t["end"] for t in wq], None),
    }
    # the scheduler's phase: dispatches (qstat midpoints) modulo the interval
    iv = args.schedule_interval
    ang = [2 * math.pi * ((t["q_dispatch"] % iv) / iv) for t in ok if t.get("q_dispatch") is not None]
    sched_phase = None
    if ang:
        x, y = sum(map(math.cos, ang)) / len(ang), sum(map(math.sin, ang)) / len(ang)
        sched_phase = {"phase": round((math.atan2(y, x) / (2 * math.pi) * iv) % iv, 2),
                       "concentration": round(math.hypot(x, y), 3)}
    firsts = {}
    for t in ok:
        if t.get("q_dispatch") is not None:
            firsts[t["job"]] = min(firsts.get(t["job"], math.inf), t["q_dispatch"] - t["submit"])
    lat = list(firsts.values())
    return {
        "source": source,
        "cycle_overhead_s": round(ovh, 3),
        "slot_refilled_in_the_removing_run": f"{same} of {seen}" if seen else None,
        "overhead_parts_s": {k: (round(v, 3) if v is not None else None) for k, v in parts.items()},
        "pull_s": pull,
        "get_s": {n: round(median(v), 2) for n, v in gets.items()},
        "dispatch_phase_mod_interval": sched_phase,
        "submit_to_first_dispatch_s": {"median": round(median(lat), 2), "max": round(max(lat), 2)} if lat else None,
        "tasks_with_timing": len(q),
    }


# ---------------------------------------------------------------------- simulation

def sim_scenario(real, jobs, meas, args, **over):
    hosts = [{"name": h, "slots": args.slots, "warm": real["warm"].get(h, [])} for h in real["hosts"]]
    nominal = {n: IMAGES[n][0] / args.rate_mib for n in IMAGES}
    images = {}
    for n in IMAGES:
        p = meas["pull_s"][n]["median_s"]
        # size_gb: the simulator's peer transfers (policy "agent") run at link rates
        images[n] = {"download_s": round(p if not math.isnan(p) else nominal[n], 2),
                     "size_gb": IMAGES[n][0] * 2 ** 20 / 1e9}
    interval = over.pop("schedule_interval", args.sim_interval)
    # the simulator waits interval/2 on average for the run that refills a slot
    extra = over.pop("runtime_extra", max(0.0, meas["cycle_overhead_s"] - interval / 2))
    sjobs = [{"image": j["image"], "submit": j.get("submitted", j["submit"]),
              "runtime": j["sleep"] + extra, "tasks": j["tasks"]} for j in jobs]
    if over.pop("measured_runtimes", False):
        # each warm task's own real cycle instead of the median (the real tasks'
        # jitter decides which slots free together); in task order, as dispatched
        own = {(t["job"], t["task"]): t["q_end"] - t["q_dispatch"] - interval / 2
               for t in real["tasks"] if t.get("warm") and t.get("q_end") is not None}
        for ji, sj in enumerate(sjobs):
            sj["runtime"] = [max(0.0, own.get((ji, k + 1), sj["runtime"])) for k in range(sj["tasks"])]
    phase = {h: v["phase"] for h, v in real["report_phase"].items()}
    settings = {
        "schedule_interval": interval, "first_schedule": 0.0,
        "load_report_time": args.load_report_time, "report_phase": phase or 0.0,
        "job_load_adjustment": 0.5, "load_adjustment_decay": 450.0,
        "max_pending_tasks_per_job": 50, "load_from_running": False,
    }
    if real.get("load_avg"):
        # the load each host reported (qhost LOAD): the real scheduler sorts by it
        # before seq_no, so it breaks ties between hosts with equal adjustments
        settings["host_load"] = {h: [[t, float(v)] for t, v in steps]
                                 for h, steps in real["load_avg"].items() if steps}
    policy = over.pop("policy", "soft")
    settings.update(over)
    return {"policy": policy, "hosts": hosts, "images": images, "jobs": sjobs, "settings": settings}


def tally(tasks, hosts, warm):
    place = {h: {n: 0 for n in IMAGES} for h in hosts}
    for t in tasks:
        if t["host"] is not None:
            place[t["host"]][t["image"]] += 1
    # no cache cap: a host pulls an image at most once, iff it ran it and did not hold it
    dl = {h: {n: int(place[h][n] > 0 and n not in warm.get(h, [])) for n in IMAGES} for h in hosts}
    return place, dl


# ---------------------------------------------------------------------- report

def table(real, sim, hosts):
    rp, rd = real
    sp, sd = sim
    head = ("host", "image", "placed real", "placed sim", "diff", "pulls real", "pulls sim")
    rows = []
    for h in hosts:
        for n in IMAGES:
            rows.append((h, n, rp[h][n], sp[h][n], sp[h][n] - rp[h][n], rd[h][n], sd[h][n]))
        rows.append((h, "(all)", sum(rp[h].values()), sum(sp[h].values()),
                     sum(sp[h].values()) - sum(rp[h].values()), sum(rd[h].values()), sum(sd[h].values())))
    for n in IMAGES:
        a, b = sum(rp[h][n] for h in hosts), sum(sp[h][n] for h in hosts)
        rows.append(("(all)", n, a, b, b - a, sum(rd[h][n] for h in hosts), sum(sd[h][n] for h in hosts)))
    a = sum(sum(v.values()) for v in rp.values())
    b = sum(sum(v.values()) for v in sp.values())
    rows.append(("(all)", "(all)", a, b, b - a, sum(sum(v.values()) for v in rd.values()),
                 sum(sum(v.values()) for v in sd.values())))
    return head, rows


def fmt_text(head, rows):
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(r):
        return "  ".join(str(x).rjust(w[i]) if i >= 2 else str(x).ljust(w[i])
                         for i, x in enumerate(r))
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in rows])


def fmt_md(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        cells = [f"**{x}**" if r[0] == "(all)" or r[1] == "(all)" else str(x) for x in r]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def agreement(real_pd, sim_pd, hosts):
    rp, rd = real_pd
    sp, sd = sim_pd
    n = sum(sum(v.values()) for v in rp.values())
    moved = sum(abs(sp[h][i] - rp[h][i]) for h in hosts for i in IMAGES) / 2
    host_moved = sum(abs(sum(sp[h].values()) - sum(rp[h].values())) for h in hosts) / 2
    pulls_diff = sum(abs(sd[h][i] - rd[h][i]) for h in hosts for i in IMAGES)
    return {"tasks": n, "tasks_placed_differently": moved,
            "placement_agreement": round(1 - moved / n, 3) if n else None,
            "host_total_agreement": round(1 - host_moved / n, 3) if n else None,
            "pull_pairs_differing": pulls_diff,
            "pulls_real": sum(sum(v.values()) for v in rd.values()),
            "pulls_sim": sum(sum(v.values()) for v in sd.values())}


def first_use(real_tasks, sim_tasks, hosts, warm):
    """Per host and image that some side pulled: when it was first dispatched there
    and by which job (real: execd got the task; sim: the scheduling run)."""
    def firsts(tasks, key):
        out = {}
        for t in sorted((t for t in tasks if t["host"] is not None), key=lambda t: t[key]):
            out.setdefault((t["host"], t["image"]), (round(t[key], 1), t["job"]))
        return out
    r, s = firsts(real_tasks, "recv"), firsts(sim_tasks, "dispatch")
    rows = []
    for h in hosts:
        for n in IMAGES:
            if n in warm.get(h, []) or ((h, n) not in r and (h, n) not in s):
                continue
            rows.append({"host": h, "image": n, "real_t": r.get((h, n), (None,))[0],
                         "real_job": r.get((h, n), (None, None))[1], "sim_t": s.get((h, n), (None,))[0],
                         "sim_job": s.get((h, n), (None, None))[1]})
    rows.sort(key=lambda x: min(v for v in (x["real_t"], x["sim_t"]) if v is not None))
    return rows


def warm_share(tasks):
    ts = [t for t in tasks if t.get("warm") is not None and t.get("start") is not None]
    return round(sum(1 for t in ts if t["warm"]) / len(ts), 3) if ts else None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=300, help="tasks in the scenario")
    ap.add_argument("--seed", type=int, default=1, help="scenario seed")
    ap.add_argument("--span", type=float, default=120.0, help="submit offsets fall in [0, SPAN] s")
    ap.add_argument("--max-array", type=int, default=max(ARRAY_SIZES),
                    help=f"largest array job (sizes from {ARRAY_SIZES}); smaller = lighter load")
    ap.add_argument("--lead-in", type=float, default=0.0,
                    help="seconds in which only one single-task job per cold image runs "
                         "(0: none); the random jobs follow")
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--slots", type=int, default=4, help="slots per exec host (GE_SLOTS)")
    ap.add_argument("--rate-mib", type=float, default=1.0,
                    help="image server rate per download, MiB/s (images are 3, 4, 6 MiB)")
    ap.add_argument("--warm-host", help="host holding the first image at the start (default: the middle one)")
    ap.add_argument("--phase-watch", type=float, default=11.0,
                    help="seconds of load reports watched before the first submit")
    ap.add_argument("--timeout", type=float, default=600.0, help="for all jobs to finish")
    ap.add_argument("--tag", default="", help="suffix for the output file names")
    ap.add_argument("--replay", metavar="JSON",
                    help="skip the cluster: simulate again against the real side of an earlier "
                         "calibration*.json (for changes to the simulator)")
    # the cluster's settings (lab/ge-cluster.sh); the simulator is given the same
    ap.add_argument("--schedule-interval", type=float, default=1.0)
    ap.add_argument("--load-report-time", type=float, default=5.0)
    ap.add_argument("--sim-interval", type=float, default=0.1,
                    help="the simulator's schedule_interval: the real scheduler runs within "
                         "~0.2 s of a submit or job end (flush_submit_sec/flush_finish_sec), "
                         "not only every schedule_interval; 1.0 is the strict setting")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0 and not args.replay:
        raise SystemExit("calibrate.py must run as root (it drives the local Grid Engine)")
    t_start = time.time()
    if args.replay:
        # the real side as measured before; only the simulation runs again
        with open(args.replay) as f:
            old = json.load(f)
        real, jobs = old["real"], old["jobs"]
        for k in ("seed", "tasks", "span", "max_array", "slots", "lead_in"):
            setattr(args, k, old.get(k + "_s" if k in ("span", "lead_in") else k, 0.0))
        args.rate_mib = old["rate_mib_s"]
    else:
        jobs = make_scenario(args.tasks, args.seed, args.span, args.max_array, args.lead_in)
    print(f"scenario: seed {args.seed}, {len(jobs)} jobs, {sum(j['tasks'] for j in jobs)} tasks, "
          f"images {', '.join(f'{n} ({IMAGES[n][0]} MiB)' for n in IMAGES)}", flush=True)
    if not args.replay:
        lock = take_lock()
        waited = time.time() - t_start
        try:
            real = run_real(args, jobs, t_start)
        finally:
            os.close(lock)  # releases the flock
        real["lock_wait_s"] = round(waited, 1)
    hosts = real["hosts"]
    meas = measure(real, args)
    scen = sim_scenario(real, jobs, meas, args)
    sim = run_scenario(scen)
    real_pd = tally(real["tasks"], hosts, real["warm"])
    # cross-check the derived real pulls with the kit's log
    logged = {h: {n: real["downloads"].get(f"{h}/{n}", 0) for n in IMAGES} for h in hosts}
    if logged != real_pd[1]:
        print(f"NOTE: pulls in the kit log {logged} differ from 'ran there, was not warm' {real_pd[1]}")
    real_pd = (real_pd[0], logged)
    sim_pd = tally(sim["tasks"], hosts, real["warm"])
    if sum(sum(v.values()) for v in sim_pd[1].values()) != sum(sim["downloads"].values()):
        print(f"NOTE: simulator pulls {sim['downloads']} differ from the per-image tally")
    head, rows = table(real_pd, sim_pd, hosts)
    agree = agreement(real_pd, sim_pd, hosts)

    # what the calibration knobs are worth: the same scenario with one assumption changed
    variants = {}
    for name, over in (("measured_runtimes", {"measured_runtimes": True}),
                       ("interval_1s", {"schedule_interval": 1.0}),
                       ("no_overhead", {"runtime_extra": 0.0}),
                       ("report_phase_0", {"report_phase": 0.0}),
                       ("no_host_load", {"host_load": None}),
                       ("no_load_adjustment", {"job_load_adjustment": 0.0}),
                       ("policy_none", {"policy": "none"})):
        s = run_scenario(sim_scenario(real, jobs, meas, args, **dict(over)))
        pd = tally(s["tasks"], hosts, real["warm"])
        variants[name] = {"agreement": agreement(real_pd, pd, hosts),
                          "placements": pd[0], "pulls": pd[1], "end_time": round(s["end_time"], 1)}

    firsts = first_use(real["tasks"], sim["tasks"], hosts, real["warm"])
    same_job = sum(1 for x in firsts if x["real_job"] == x["sim_job"])
    wall = time.time() - t_start
    command = "python bench/calibrate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.replay:  # the measurement's own command and wall time
        command, wall = old["command"], old["wall_s"]
    gets_total = sum(real["gets_per_image"].values())
    summary = {
        "makespan_real_s": real["makespan_s"],
        "makespan_sim_s": round(max((t["end"] or 0) for t in sim["tasks"]), 1),
        "warm_start_share_real": warm_share(real["tasks"]),
        "warm_start_share_sim": warm_share(sim["tasks"]),
        "server_gets": real["gets_per_image"], "server_gets_total": gets_total,
        **agree,
    }
    text = fmt_text(head, rows)
    print()
    print(text)
    print()
    print(f"placements: {agree['tasks_placed_differently']:.0f} of {agree['tasks']} tasks on another "
          f"host or image cell than in reality (agreement {agree['placement_agreement']:.1%}, "
          f"per-host totals {agree['host_total_agreement']:.1%}); pulls: real {agree['pulls_real']} "
          f"(server GETs {gets_total}), sim {agree['pulls_sim']}, "
          f"{agree['pull_pairs_differing']} host/image pairs differ")
    print(f"warm starts: real {summary['warm_start_share_real']}, sim {summary['warm_start_share_sim']}; "
          f"makespan: real {summary['makespan_real_s']} s, sim {summary['makespan_sim_s']} s")
    print(f"measured ({meas['source']}): cycle = sleep + {meas['cycle_overhead_s']} s "
          f"({', '.join(f'{k} {v}' for k, v in meas['overhead_parts_s'].items())}); pulls "
          + ", ".join(f"{n} {v['median_s']} s" for n, v in meas["pull_s"].items())
          + "; report phases " + ", ".join(f"{h} {v['phase']}" for h, v in real["report_phase"].items()))
    print(f"first job on each pulled host/image ({same_job} of {len(firsts)} the same job): "
          + "; ".join(f"{x['host']}/{x['image']} real {x['real_t']}s job {x['real_job']}, "
                      f"sim {x['sim_t']}s job {x['sim_job']}" for x in firsts))
    for name, v in variants.items():
        a = v["agreement"]
        print(f"variant {name}: placement agreement {a['placement_agreement']}, pulls {a['pulls_sim']}")
    lock_wait = real.get("lock_wait_s", 0.0)
    print(f"wall time {wall:.0f} s" + (f" ({lock_wait:.0f} s of it waiting for the cluster lock)"
                                      if lock_wait >= 1 else ""))

    os.makedirs(args.out, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    doc = {
        "command": command, "resimulated": bool(args.replay),
        "seed": args.seed, "tasks": args.tasks, "span_s": args.span, "max_array": args.max_array,
        "lead_in_s": args.lead_in,
        "slots": args.slots,
        "rate_mib_s": args.rate_mib, "images_mib": {n: IMAGES[n][0] for n in IMAGES},
        "jobs": jobs, "summary": summary, "measured": meas,
        "table": {"head": head, "rows": rows},
        "real": {k: v for k, v in real.items() if k != "t0_unix"},
        "sim_input": scen,
        "sim": {k: sim[k] for k in ("placements", "downloads", "placements_by_image", "unstarted",
                                    "end_time", "tasks")},
        "first_use": firsts, "variants": variants, "wall_s": round(wall, 1),
    }
    with open(os.path.join(args.out, f"calibration{tag}.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    md = [f"### Calibration: real Grid Engine vs simulator (seed {args.seed}, "
          f"{agree['tasks']} tasks, {len(jobs)} jobs, {len(hosts)} hosts x {args.slots} slots)", "",
          f"`{doc['command']}`; "
          f"{list(IMAGES)[0]} warm on {next(iter(real['warm']))} at the start; "
          f"pulls at {args.rate_mib:g} MiB/s.", "",
          fmt_md(head, rows), "",
          f"- placements: {agree['tasks_placed_differently']:.0f} of {agree['tasks']} tasks in another "
          f"host/image cell (agreement {agree['placement_agreement']:.1%}; per-host totals "
          f"{agree['host_total_agreement']:.1%})",
          f"- pulls: real {agree['pulls_real']} (server GETs {gets_total}), simulated {agree['pulls_sim']}; "
          f"{agree['pull_pairs_differing']} host/image pairs differ",
          f"- warm starts: real {summary['warm_start_share_real']}, simulated {summary['warm_start_share_sim']}; "
          f"makespan real {summary['makespan_real_s']} s, simulated {summary['makespan_sim_s']} s",
          f"- measured inputs: slot cycle = sleep + {meas['cycle_overhead_s']} s "
          f"({', '.join(f'{k} {v}' for k, v in meas['overhead_parts_s'].items())}); pull times "
          + ", ".join(f"{n} {v['median_s']} s" if v["n"] else f"{n} not pulled"
                      for n, v in meas["pull_s"].items())
          + "; report phases " + ", ".join(f"{h} {v['phase']} s" for h, v in real["report_phase"].items()),
          "- the simulation with one input changed (placement agreement, pulls): "
          + "; ".join(f"{name} {v['agreement']['placement_agreement']:.1%}, {v['agreement']['pulls_sim']}"
                      for name, v in variants.items()),
          f"- the job that first ran an image on a host that pulled it is the same in "
          f"{same_job} of {len(firsts)} host/image pairs: "
          + "; ".join(f"{x['host']}/{x['image']} job {x['real_job']} at {x['real_t']} s "
                      f"(sim: job {x['sim_job']} at {x['sim_t']} s)" for x in firsts),
          f"- wall time {wall:.0f} s" + (f" ({lock_wait:.0f} s of it waiting for the cluster lock)"
                                         if lock_wait >= 1 else ""), ""]
    with open(os.path.join(args.out, f"calibration{tag}.md"), "w") as f:
        f.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
