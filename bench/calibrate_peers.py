#!/usr/bin/env python3
"""Calibrate the simulator's peer model (sim/sge_sim/peers.py) against the real node agent.

    GE_HOSTS="node1:127.0.0.11 ... node6:127.0.0.16" python bench/calibrate_peers.py \\
        [--tasks 30 --sleep 2 --rate-mib 4 --rounds 2 --out bench/out]     (as root)

What bench/calibrate.py does for placement, for the agent: one cold burst, run on the
real cluster and replayed in ``sge_sim.run_scenario`` with policy ``agent``.

Real side (per round): the kit installed with the node agent on every exec host, as
``tests/ge/test_agent_e2e.py`` installs it; every sensor reporting before the run (the
steady state of a site, not the seconds after install); one image no host holds,
served by the test HTTP server at ``--rate-mib`` (the origin); an array of
``--tasks`` tasks of ``sleep --sleep`` submitted at t=0.  Measured: origin GETs and
their duration (the server's log), copies between agents (the kit log's "from peer"
lines), and per host when its blob got its last byte (mtime) and when its first task
started (the task's own clock).  The kit is uninstalled after each round, whatever
happens, and the cluster lock (the one the tests take) is held throughout.

Simulated side: the same hosts, slots, image size, array and submit time; the origin
pull takes the measured time; load reports every 5 s (the test cluster's) with
in-flight pulls reported; the peer model's decisions are the kit's peer plan
(sge/peerplan.py: the seed, redirects through busy hosts, the polls of the seed with
their backoff), as the agent's are; ``--pipeline`` streams from downloads in
progress as the agent does (off: whole copies only, the agent before it served
downloads in progress).

Output: a per-host table (first task start, real and simulated), totals, and
``OUT/calibration-peers[-TAG].json``.  ``--replay JSON`` reruns only the simulation.
With GE_HOSTS set, the default exec hosts are brought back at the end, under the lock.
"""
import argparse
import glob
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the kit and the simulator's own distribution (sim/), installed or not
sys.path[:0] = [HERE, REPO, os.path.join(REPO, "sim")]

from calibrate import CLUSTER, TASK_SCRIPT, cluster_up, take_lock, time_gets  # noqa: E402

from sge_sim import run_scenario  # noqa: E402

MB = 1 << 20
IMAGE = "calpeer"
PORT = 645  # the default agent.port


def _wait_port(host, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((socket.gethostbyname(host), PORT), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"no node agent listening on {host}")


def run_real(args, round_no):
    from tests.support.gecluster import GECluster
    from tests.support.gekit import QHOST_PINNED, kit_work, make_kit
    from tests.support.httpserver import Fault

    hosts = cluster_up(args.slots)
    cluster = GECluster(hosts, dict(os.environ))
    if cluster.run(["qstat", "-u", "*"]).stdout.strip():
        raise SystemExit("the cluster has jobs already; refusing to measure on a busy cluster")
    size = int(args.size_mib * MB)
    qhost = os.path.join(kit_work(cluster), "qhost-pinned")
    kit = make_kit(cluster, {IMAGE: {"size": size, "seed": 500 + round_no}},
                   extra={"agent": {"enabled": True, "seed_wait": 120, "pe_wait": 120,
                                    "qhost": [qhost]}})
    kit.script("qhost-pinned", QHOST_PINNED)
    gets = time_gets(kit.server)
    kit.server.faults[f"{IMAGE}.sif"] = Fault(rate=args.rate_mib * MB)
    try:
        kit.sge_image("install")
        for h in hosts:
            _wait_port(h)
            kit.wait_sensor(h, "img_sensor_time")
        time.sleep(6)  # one more report each: every host's sensor reports
        out = kit.out("calpeer")
        script = kit.script("calpeer.sh", TASK_SCRIPT)
        t0 = time.time()
        jid = cluster.qsub(["-t", f"1-{args.tasks}", "-l", f"image={IMAGE}",
                            "-o", f"{out}/$JOB_ID.$TASK_ID", "-j", "y", script, str(args.sleep)])
        submitted = time.time() - t0
        cluster.wait_done(jid, timeout=args.timeout)
        t_done = time.time() - t0
        recs = cluster.qacct(jid, timeout=60)
        bad = [r for r in recs if r["exit_status"] != "0" or not r["failed"].startswith("0")]
        if bad:
            raise RuntimeError(f"{len(bad)} task(s) failed: {bad[:3]}")
        starts = {}
        for path in glob.glob(os.path.join(out, "*")):
            m = re.search(r"^CAL host=(\S+) .* start=(\S+) end=(\S+)$", open(path).read(), re.M)
            if m:
                starts.setdefault(m.group(1), []).append(float(m.group(2)) - t0)
        lines = [ln for ln in open(os.path.join(kit.work, "sge-image.log")) if f"image {IMAGE}:" in ln]
        peer = {}
        for ln in lines:
            m = re.match(r"\S+ (\S+) sge-image .* bytes from peer (\S+), verified", ln)
            if m:
                peer[m.group(1)] = m.group(2)
        blob = {}
        for h in starts:
            p = os.path.join(kit.cache_dir(h), "blobs", "sha256", kit.images[IMAGE]["sha256"])
            blob[h] = round(os.stat(p).st_mtime - t0, 3)
        with kit.server.lock:
            origin = [(round(a - t0, 3), round(b - t0, 3)) for _, a, b in gets]
        return {"hosts": hosts, "slots": args.slots, "size": size, "tasks": args.tasks,
                "sleep": args.sleep, "rate_mib_s": args.rate_mib, "submitted_s": round(submitted, 3),
                "done_s": round(t_done, 2), "origin_gets": origin, "peer_from": peer,
                "first_start": {h: round(min(v), 3) for h, v in sorted(starts.items())},
                "tasks_per_host": {h: len(v) for h, v in sorted(starts.items())},
                "blob_done": dict(sorted(blob.items())),
                "load": os.getloadavg()[0]}
    finally:
        cluster.run(["qdel", "-u", "*", "-f"], check=False)
        for _ in range(6):
            if kit.sge_image("uninstall", check=False).returncode == 0:
                break
            time.sleep(6)
        kit.server.close()


def _default_cluster():
    """Back to the default exec hosts, still under the lock: the tests expect them
    (`up` stops and removes the extra hosts)."""
    env = {k: v for k, v in os.environ.items() if k != "GE_HOSTS"}
    p = subprocess.run([CLUSTER, "up"], capture_output=True, text=True, env=env, timeout=1800)
    print(f"default cluster {'up' if p.returncode == 0 else 'NOT restored: ' + p.stderr[-500:]}",
          flush=True)


def simulate(real, args, **over):
    """The real round's scenario in the model; returns its summary."""
    # The seed's staging as its first task sees it: dispatch, prolog start, qhost,
    # asking the seed, the origin pull (the model starts the pull at dispatch, one
    # scheduling run after the submit).
    seed = min(b for _, b in real["origin_gets"]) - real["submitted_s"] - args.sim_interval
    settings = {
        "schedule_interval": args.sim_interval, "first_schedule": 0.0,
        "load_report_time": 5.0, "report_phase": 0.0, "load_from_running": False,
        "peer_pipeline": args.pipeline, "peer_seed": True,
        "peer_upload_gbit": args.peer_gbit, "host_link_gbit": 10.0,
    }
    settings.update(over)
    scen = {"policy": "agent",
            "hosts": [{"name": h, "slots": real["slots"]} for h in real["hosts"]],
            "images": {IMAGE: {"download_s": round(seed, 3), "size_gb": real["size"] / 1e9}},
            "jobs": [{"image": IMAGE, "submit": real["submitted_s"],
                      "runtime": real["sleep"] + args.overhead, "tasks": real["tasks"]}],
            "settings": settings}
    s = run_scenario(scen)
    first = {}
    for t in s["tasks"]:
        if t["host"] is not None and t["start"] is not None:
            first[t["host"]] = min(first.get(t["host"], t["start"]), t["start"])
    return {"origin": sum(s["downloads"].values()), "peer": sum(s["peer_transfers"].values()),
            "first_start": {h: round(v, 3) for h, v in sorted(first.items())},
            "tasks_per_host": {h: n for h, n in sorted(s["placements"].items()) if n},
            "end_s": round(s["end_time"], 2)}


def lags(first):
    """Each other host's first start after the first host's (the seed's): the part
    the peer model is about (whole copies, polls of the seed, upload slots)."""
    t = sorted(first.values())
    return [round(x - t[0], 2) for x in t[1:]]


def compare(real, sim):
    r_first, s_first = real["first_start"], sim["first_start"]
    r_lag, s_lag = lags(r_first), lags(s_first)
    return {
        "origin real / sim": f"{len(real['origin_gets'])} / {sim['origin']}",
        "peer copies real / sim": f"{len(real['peer_from'])} / {sim['peer']}",
        "hosts that ran tasks real / sim": f"{len(r_first)} / {len(s_first)}",
        "seed host's first start real / sim s": f"{min(r_first.values()):.2f} / {min(s_first.values()):.2f}",
        "the others' first start after it, real s": ", ".join(f"{x:.2f}" for x in r_lag),
        "the others' first start after it, sim s": ", ".join(f"{x:.2f}" for x in s_lag),
        "median / last lag real vs sim s": f"{statistics.median(r_lag):.2f} / {r_lag[-1]:.2f} vs "
                                            f"{statistics.median(s_lag):.2f} / {s_lag[-1]:.2f}",
        "every host started real / sim s": f"{max(r_first.values()):.2f} / {max(s_first.values()):.2f}",
        "image on every host (blob mtime), real s": f"{max(real['blob_done'].values()):.2f}",
        "origin GET real s": ", ".join(f"{a:.2f}-{b:.2f}" for a, b in real["origin_gets"]),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--sleep", type=float, default=2.0, help="task runtime, s")
    ap.add_argument("--size-mib", type=float, default=24.0)
    ap.add_argument("--rate-mib", type=float, default=4.0, help="origin rate, MiB/s")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--replay", metavar="JSON")
    # the model's inputs
    ap.add_argument("--sim-interval", type=float, default=0.1,
                    help="the model's schedule_interval (the real one runs within ~0.2 s of "
                         "a submit: flush_submit_sec)")
    ap.add_argument("--overhead", type=float, default=1.0,
                    help="seconds a task's slot is held beyond its sleep (prolog, shepherd)")
    ap.add_argument("--peer-gbit", type=float, default=7.5,
                    help="peer copy rate (BENCHMARKS.md, node agent: 1 GiB in 1.14 s)")
    ap.add_argument("--pipeline", action="store_true",
                    help="model peers that stream a download in progress (peer_pipeline)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.replay:
        with open(args.replay) as f:
            rounds = json.load(f)["rounds"]
    else:
        if os.geteuid() != 0:
            raise SystemExit("calibrate_peers.py must run as root (it drives the local Grid Engine)")
        lock = take_lock()
        try:
            rounds = []
            for i in range(args.rounds):
                real = run_real(args, i)
                rounds.append({"real": real})
                print(f"round {i + 1}: {json.dumps(real)}", flush=True)
        finally:
            if os.environ.get("GE_HOSTS"):
                _default_cluster()
            os.close(lock)
    for r in rounds:
        r["sim"] = simulate(r["real"], args)
        r["compare"] = compare(r["real"], r["sim"])
        print(f"\n{len(r['real']['hosts'])} hosts x {r['real']['slots']} slots, "
              f"{r['real']['tasks']} tasks, load {r['real']['load']:.1f}")
        print(f"{'host':8} {'tasks real/sim':>15} {'first start real':>17} {'sim':>7} {'blob real':>10}")
        for h in r["real"]["hosts"]:
            rf, sf = r["real"]["first_start"].get(h), r["sim"]["first_start"].get(h)
            print(f"{h:8} {r['real']['tasks_per_host'].get(h, 0):>7}/{r['sim']['tasks_per_host'].get(h, 0):<7} "
                  f"{rf if rf is not None else '-':>17} {sf if sf is not None else '-':>7} "
                  f"{r['real']['blob_done'].get(h, '-'):>10}")
        for k, v in r["compare"].items():
            print(f"  {k}: {v}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"calibration-peers{'-' + args.tag if args.tag else ''}.json")
    with open(path, "w") as f:
        json.dump({"args": vars(args), "rounds": rounds}, f, indent=1)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
