#!/usr/bin/env python3
"""Compare the placement policies on the simulated cluster.

    python bench/sim_policies.py [--hosts 1000 --hours 24 --seed 1 --out bench/out]
    python bench/sim_policies.py --agent-report    # the node agent, before and after

Runs every policy on the same seeded job stream, prints the headline table
(egress vs the lower bound, warm starts overall and for the 10 most used
images, start latency p50/p95/p99, slot-hours idle on pulls, run time), where
the cold starts of the top-10 images come from, and writes
``sim_policies.png`` and ``sim_policies.json`` to the out dir.  The model and
its defaults are described in ``sim/sge_sim``; the what-if flags below change one
assumption at a time.

``--agent-report`` runs the node agent's before/after instead: steady state,
day one (empty caches, no warm-up) and 20 new image versions a day, each at
10 and 100 Gbit/s origins, with the soft policy (before) and the agent
(after), on a workload with a small share of parallel jobs; it prints origin
egress against one copy per image version, top-10 warm starts, start
latency, idle slot-hours, the cold windows (start latency of the first 10 and
30 minutes and of new versions' tasks; per new version the slowest host and
its fan-out against Kraken's bound) and the issue's goals, runs the
cache-pressure scenario of two arrays on caches that hold one image, and
writes ``sim_agent.png`` and ``sim_agent.json``.  ``--weak-peers`` adds agent
rows with weak peers (1 upload slot at 1 Gbit/s); ``--routes`` compares the
routes the peer plan offers (redirects 1 or 6 deep, a busy tree waited for or
left to the origin) and ``--what-ifs`` the agent with one piece off or with
racks, on day one and with new versions at the first origin.

Every run prints the commit of the code and its command line first.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the kit and the simulator's own distribution (sim/), installed or not
sys.path[:0] = [REPO, os.path.join(REPO, "sim")]

from sge_sim import (  # noqa: E402
    DEFAULT_POLICY,
    POLICIES,
    SimConfig,
    WorkloadConfig,
    agent_goals,
    format_agent_table,
    format_cold_table,
    format_details,
    format_table,
    format_whatif_table,
    plot,
    plot_agent,
    run_scenario,
    simulate,
    summarize,
)
from sge_sim.report import GOAL_EGRESS_RATIO, GOAL_WARM_TOP10  # noqa: E402


def parse_args(argv=None):
    d, w = SimConfig(), WorkloadConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=d.hosts)
    ap.add_argument("--hours", type=float, default=d.hours, help="measured window")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated, from: " + ", ".join(POLICIES))
    ap.add_argument("--procs", type=int, default=1,
                    help="policies simulated in parallel (1 gives clean per-policy times)")
    ap.add_argument("--markdown", action="store_true",
                    help="print the tables as markdown too (BENCHMARKS.md's form)")
    g = ap.add_argument_group("what-if (defaults are the model's)")
    g.add_argument("--slots", type=int, default=d.slots)
    g.add_argument("--jobs-per-month", type=float, default=w.jobs_per_month)
    g.add_argument("--runtime-median", type=float, default=w.runtime_median_s,
                   help="seconds; sets the utilisation")
    g.add_argument("--images", type=int, default=w.n_images)
    g.add_argument("--new-images-per-day", type=float, default=w.new_images_per_day)
    g.add_argument("--warmup-hours", type=float, default=d.warmup_hours)
    g.add_argument("--initial-fill", type=float, default=d.initial_fill,
                   help="0 = cold caches at t=0")
    g.add_argument("--cache-gb", type=float, default=d.cache_cap_gb)
    g.add_argument("--registry-gbit", type=float, default=d.registry_gbit)
    g.add_argument("--schedule-interval", type=float, default=d.schedule_interval)
    g.add_argument("--load-report-time", type=float, default=d.load_report_time)
    g.add_argument("--max-pending-tasks", type=int, default=d.max_pending_tasks_per_job,
                   help="array tasks considered per job and run; 0 = all")
    g.add_argument("--load-adjustment", type=float, default=d.job_load_adjustment)
    g.add_argument("--report-inflight-as-warm", action="store_true",
                   help="load sensor reports images while their pull runs")
    g.add_argument("--peer-upload-gbit", type=float, default=d.peer_upload_gbit)
    g.add_argument("--peer-upload-slots", type=int, default=d.peer_upload_slots)
    g.add_argument("--no-peer-pipeline", action="store_true",
                   help="agent: peers serve only whole copies")
    g.add_argument("--no-peer-seed", action="store_true",
                   help="agent: no seed; a host that finds no peer pulls from the origin")
    g.add_argument("--no-peer-redirect", action="store_true",
                   help="agent: peers are found only through the sensor and the seed")
    g.add_argument("--pe-share", type=float, default=w.pe_share,
                   help="share of single-task jobs that are parallel jobs")
    r = ap.add_argument_group("node agent report")
    r.add_argument("--agent-report", action="store_true", help="before/after for the node agent")
    r.add_argument("--origins", default="10,100", help="origin Gbit/s, comma-separated")
    r.add_argument("--scenarios", default="steady,day one,20 new/day")
    r.add_argument("--report-pe-share", type=float, default=0.002,
                   help="parallel jobs in the report's workload")
    r.add_argument("--after-pressure", default="wait", choices=("wait", "overflow"),
                   help="cache pressure behaviour of the after rows")
    r.add_argument("--weak-peers", action="store_true",
                   help="agent rows with weak peers too (1 upload slot, 1 Gbit/s)")
    r.add_argument("--routes", action="store_true",
                   help="the plan's routes: redirects 1 or 6 deep x busy tree waited for or "
                        "left to the origin, normal and weak peers")
    r.add_argument("--what-ifs", action="store_true",
                   help="the agent with one piece off, or with racks")
    r.add_argument("--what-if-scenarios", default="day one,20 new/day",
                   help="scenarios of --routes and --what-ifs (at the first origin)")
    r.add_argument("--rack-size", type=int, default=40, help="hosts per rack (--what-ifs)")
    r.add_argument("--rack-oversub", default="4,20",
                   help="rack uplinks N:1 (--what-ifs), comma-separated")
    return ap.parse_args(argv)


def configs(a):
    sim = SimConfig(hosts=a.hosts, hours=a.hours, seed=a.seed, slots=a.slots,
                    warmup_hours=a.warmup_hours, initial_fill=a.initial_fill,
                    cache_cap_gb=a.cache_gb, registry_gbit=a.registry_gbit,
                    schedule_interval=a.schedule_interval, load_report_time=a.load_report_time,
                    max_pending_tasks_per_job=a.max_pending_tasks,
                    job_load_adjustment=a.load_adjustment,
                    report_inflight_as_warm=a.report_inflight_as_warm,
                    peer_upload_gbit=a.peer_upload_gbit, peer_upload_slots=a.peer_upload_slots,
                    peer_pipeline=not a.no_peer_pipeline, peer_seed=not a.no_peer_seed,
                    peer_redirect=not a.no_peer_redirect)
    if a.agent_report:
        a.pe_share = a.report_pe_share
    # keep the per-host rate of the site when the cluster is scaled down
    jpm = a.jobs_per_month * a.hosts / SimConfig().hosts
    wl = WorkloadConfig(jobs_per_month=jpm, runtime_median_s=a.runtime_median,
                        n_images=a.images, new_images_per_day=a.new_images_per_day,
                        pe_share=a.pe_share)
    return sim, wl


SCENARIOS = {
    # name: (SimConfig changes, WorkloadConfig changes)
    "steady": ({}, {}),
    "day one": ({"initial_fill": 0.0, "warmup_hours": 0.0}, {}),
    "20 new/day": ({}, {"new_images_per_day": 20.0}),
}


WEAK = {"peer_upload_slots": 1, "peer_upload_gbit": 1.0}

# The routes the peer plan (sge/peerplan.py) offers: how deep busy answers are
# followed, and whether a busy tree is waited for or left to the origin.
ROUTES = [
    ("plan: 6 deep, busy tree waited for", {}),
    ("6 deep, busy tree to the origin", {"peer_wait_when_busy": False}),
    ("1 deep, busy tree waited for", {"peer_redirect_depth": 1}),
    ("before the plan: 1 deep, to origin", {"peer_redirect_depth": 1,
                                            "peer_wait_when_busy": False}),
]


def what_ifs(a):
    racks = [(f"racks of {a.rack_size}, {k:g}:1 uplinks",
              {"rack_size": a.rack_size, "rack_oversub": k})
             for k in (float(x) for x in a.rack_oversub.split(",") if x.strip())]
    return [
        ("no pipelining", {"peer_pipeline": False}),
        ("no redirects", {"peer_redirect": False}),
        ("no seed", {"peer_seed": False}),
        *racks,
        ("no disk/hash ceiling", {"host_disk_gbyte_s": None, "host_hash_gbyte_s": None}),
    ]


def _f(x, fmt="{:,.0f}"):
    return "-" if isinstance(x, float) and math.isnan(x) else fmt.format(x)


def _q(r, key, parts=("p50", "p99", "max")):
    vals = [r[f"{key}_{p}_s"] for p in parts]
    return "-" if any(math.isnan(v) for v in vals) else " / ".join(f"{v:,.0f}" for v in vals)


def _md(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def md_policies(sums):
    """The placement table as BENCHMARKS.md shows it."""
    return _md(["policy", "egress TB", "lower bound TB", "egress / bound", "warm starts",
                "top-10 warm", "start p50 / p95 / p99 s", "idle slot-h", "sim wall s"],
               [[("soft (the kit's default)" if s["policy"] == DEFAULT_POLICY else s["policy"]),
                 f"{s['egress_tb']:.1f}", f"{s['lb_tb']:.1f}", f"{s['egress_ratio']:.2f}",
                 f"{s['warm_share']:.1%}", f"{s['warm_share_top10']:.1%}",
                 f"{s['p50_s']:.1f} / {s['p95_s']:,.0f} / {s['p99_s']:,.0f}",
                 f"{s['idle_slot_hours']:,.0f}", f"{s['wall_s']:.1f}"] for s in sums])


def _who(r):
    return "agent, weak peers" if r.get("variant") == "weak" else \
        ("soft (before)" if r["policy"] == "soft" else f"{r['policy']} (after)")


def md_agent(rows):
    """The node agent's rows, the cold windows and the what-ifs as BENCHMARKS.md shows them."""
    return _md(["scenario", "origin Gbit/s", "policy", "origin TB", "one copy TB",
                "origin ÷ one copy", "origin pulls", "peer TB", "top-10 warm",
                "start p50 / p95 / p99 s", "idle slot-h", "never started", "PE jobs missing the image"],
               [[r["scenario"], f"{r['origin_gbit']:g}", _who(r), f"{r['egress_tb']:.2f}",
                 f"{r['copy_tb']:.3f}",
                 "n/a" if not r["copy_tb"] else f"**{r['origin_per_copy']:.2f}**" if r["policy"] == "agent"
                 else f"{r['origin_per_copy']:,.0f}",
                 f"{r['downloads']:,}", f"{r['peer_tb']:.1f}", f"{r['warm_share_top10']:.1%}",
                 f"{r['p50_s']:,.1f} / {r['p95_s']:,.0f} / {r['p99_s']:,.0f}",
                 f"{r['idle_slot_hours']:,.0f}", f"{r['unstarted_tasks']:,}",
                 f"{r['pe_missing']:,} of {r['pe_jobs']:,}"] for r in rows])


def md_cold(rows):
    return _md(["scenario", "origin Gbit/s", "policy", "first 10 min p50 / p99 s",
                "first 30 min p50 / p99 s", "new versions' tasks p50 / p99 s", "new versions",
                "slowest host p50 / p99 / max s", "fan-out p50 / p99 / max s",
                "Kraken bound p50 s", "fan-out ÷ bound p50 / max", "fan-out within the bound"],
               [[r["scenario"], f"{r['origin_gbit']:g}", _who(r), _q(r, "cold10", ("p50", "p99")),
                 _q(r, "cold30", ("p50", "p99")), _q(r, "new", ("p50", "p99")), r["versions"],
                 _q(r, "slowest"), _q(r, "fanout"), _f(r["bound_p50_s"], "{:.1f}"),
                 "-" if math.isnan(r["over_bound_max"]) else
                 f"{r['over_bound_p50']:.1f} / {r['over_bound_max']:.1f}",
                 _f(r["kraken_share"], "{:.0%}")] for r in rows])


def md_whatif(rows):
    return _md(["scenario", "peers", "variant", "origin TB", "origin ÷ one copy", "origin pulls",
                "start p50 / p99 s (24 h)", "first 10 min p50 / p99 s",
                "slowest host p50 / p99 / max s", "fan-out within Kraken's bound", "idle slot-h"],
               [[r["scenario"], r["peers"], r["variant"], f"{r['egress_tb']:.2f}",
                 f"{r['origin_per_copy']:.2f}" if r["copy_tb"] else "n/a", f"{r['downloads']:,}",
                 f"{r['p50_s']:,.1f} / {r['p99_s']:,.0f}", _q(r, "cold10", ("p50", "p99")),
                 _q(r, "slowest"), _f(r["kraken_share"], "{:.0%}"),
                 f"{r['idle_slot_hours']:,.0f}"] for r in rows])


def provenance(argv=None):
    """The commit of the code that runs and the command line, for the tables' headers."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "sim", "sge", "bench")
    args = sys.argv[1:] if argv is None else list(argv)
    return (f"commit {head}{' (with uncommitted changes)' if dirty else ''}: "
            f"python bench/sim_policies.py {' '.join(args)}".rstrip())


def _one_row(job):
    key, sim, wl = job
    s = summarize(simulate(key[2], sim, wl))
    return key, s


def _label(key):
    scen, gbit, pol, changes = key
    what = ", ".join(f"{k} {v}" for k, v in changes if k != "cache_pressure")
    return f"{scen} @ {gbit:g} Gbit/s {pol}{f' ({what})' if what else ''}"


def _run(jobs, procs):
    """Each distinct job once (a row of two tables runs once); {key: summary}."""
    uniq = {}
    for key, sim, wl in jobs:
        uniq.setdefault(key, (key, sim, wl))
    todo = list(uniq.values())
    out = {}

    def got(key, s):
        out[key] = s
        print(f"  {_label(key):<90} {s['wall_s']:6.1f} s wall", flush=True)
    if procs > 1:
        from multiprocessing import Pool
        with Pool(procs) as pool:
            for key, s in pool.imap_unordered(_one_row, todo):
                got(key, s)
    else:
        for j in todo:
            got(*_one_row(j))
    return out


def _job(sim0, wl0, scen, gbit, pol, changes, a):
    ds, dw = SCENARIOS[scen]
    extra = {"cache_pressure": a.after_pressure} if pol == "agent" else {}
    extra.update(changes)
    key = (scen, gbit, pol, tuple(sorted(extra.items())))
    return key, replace(sim0, registry_gbit=gbit, **ds, **extra), replace(wl0, **dw)


def agent_report(a, argv=None):
    """Before (soft) and after (agent) per scenario and origin bandwidth; with
    --weak-peers, --routes and --what-ifs the agent's variants too."""
    sim0, wl0 = configs(a)
    scens = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    origins = [float(x) for x in a.origins.split(",")]
    main = []  # (scenario, origin, policy, variant, job)
    for scen in scens:
        for g in origins:
            for pol in ("soft", "agent"):
                main.append((scen, g, pol, "", _job(sim0, wl0, scen, g, pol, {}, a)))
            if a.weak_peers and scen != "steady":
                main.append((scen, g, "agent", "weak", _job(sim0, wl0, scen, g, "agent", WEAK, a)))
    wi_scens = [x.strip() for x in a.what_if_scenarios.split(",") if x.strip()]
    extra = []  # (scenario, peers, variant, job)
    for scen in wi_scens if (a.routes or a.what_ifs) else ():
        for peers, pc in (("normal", {}), ("weak", WEAK)):
            if a.routes:
                for name, rc in ROUTES:
                    extra.append((scen, peers, name,
                                  _job(sim0, wl0, scen, origins[0], "agent", {**pc, **rc}, a)))
            if a.what_ifs:
                for name, wc in what_ifs(a):
                    if peers == "weak" and name != "no pipelining":
                        continue
                    extra.append((scen, peers, name,
                                  _job(sim0, wl0, scen, origins[0], "agent", {**pc, **wc}, a)))
    print(provenance(argv))
    print(f"{sim0.hosts} hosts x {sim0.slots} slots, {wl0.task_rate:.2f} tasks/s, "
          f"{wl0.n_images} images, parallel jobs {wl0.pe_share:.1%} of single jobs "
          f"({wl0.pe_hosts_min}-{wl0.pe_hosts_max} hosts x {wl0.pe_slots_per_host} slots); "
          f"host link {sim0.host_link_gbit:g} Gbit/s in and out, disk {sim0.host_disk_gbyte_s} GB/s, "
          f"sha256 {sim0.host_hash_gbyte_s} GB/s per transfer, racks "
          f"{f'of {sim0.rack_size}, {sim0.rack_oversub:g}:1' if sim0.rack_size else 'off'}; "
          f"peers: upload {sim0.peer_upload_gbit:g} Gbit/s, {sim0.peer_upload_slots} slots, "
          f"pipeline {'on' if sim0.peer_pipeline else 'off'} (lag {sim0.pipeline_lag_s:g} s), "
          f"seed {'on' if sim0.peer_seed else 'off'}, "
          f"redirects {'on' if sim0.peer_redirect else 'off'} ({sim0.peer_redirect_depth} deep), "
          f"busy tree {'waited for' if sim0.peer_wait_when_busy else 'left to the origin'}; "
          f"after rows: cache pressure {a.after_pressure}; weak peers: 1 slot, 1 Gbit/s")
    t0 = time.perf_counter()
    done = _run([m[-1] for m in main] + [e[-1] for e in extra], a.procs)
    rows = []
    for scen, g, pol, variant, (key, _, _) in main:
        r = dict(done[key])
        r.update(scenario=scen, origin_gbit=g, variant=variant)
        rows.append(r)
    wrows = []
    for scen, peers, variant, (key, _, _) in extra:
        r = dict(done[key])
        r.update(scenario=scen, origin_gbit=origins[0], peers=peers, variant=variant)
        wrows.append(r)
    print()
    print(format_agent_table(rows))
    print()
    print("cold windows (s): start latency of the tasks submitted in the window's first 10 and "
          "30 minutes and of new versions' tasks; per new version the slowest host (from its "
          "first submission, hosts that needed it within 10 minutes) and its fan-out (the "
          "longest any host waited from its task's dispatch), p50/p99/max over versions; "
          "Kraken's bound (2 x one origin pull alone + 1 s per pipelined hop) and the share of "
          "versions whose fan-out is within it")
    print(format_cold_table(rows))
    print()
    for r in rows:
        print(f"{r['scenario']:<12} {r['origin_gbit']:>5g} {r['policy']:<6} {r['variant']:<5} "
              f"origin pulls {r['downloads']:>6}, peer failures {r['peer_failures']}, peers "
              f"saturated {r['peer_saturated']}, room waits {r['room_waits']}, requeued "
              f"{r['requeued_tasks']}, over cap {r['cap_overflows_all']}, warm all "
              f"{r['warm_share']:.1%}, slowest host from submission within the bound "
              f"{r['kraken_share_submit']:.0%}, longest pipelined chain {r['depth_max']}, "
              f"wall {r['wall_s']:.1f} s")
    print()
    print("goals (agent): origin <= 1.5 x one copy (weak peers: <= 3 x), top-10 warm >= 95 %, "
          "day one within 2 x steady state, nothing unstarted; new versions within Kraken's bound")
    for line in agent_goals(rows):
        print("  " + line)
    if wrows:
        print()
        print(f"what-ifs of the agent at a {origins[0]:g} Gbit/s origin (routes: the peer plan's "
              f"redirect depth and what a pull does when the whole tree is busy; weak peers: "
              f"1 upload slot at 1 Gbit/s)")
        print(format_whatif_table(wrows))
    print(f"\nall runs: {time.perf_counter() - t0:.1f} s")
    print()
    print(pressure_report())
    if a.markdown:
        print()
        print(md_agent(rows))
        print()
        print(md_cold(rows))
        if wrows:
            print()
            print(md_whatif(wrows))
    os.makedirs(a.out, exist_ok=True)
    png = os.path.join(a.out, "sim_agent.png")
    plot_agent([r for r in rows if not r["variant"]], png,
               title=f"Node agent, before (soft) and after: {sim0.hosts} hosts, "
                     f"{sim0.hours:g} h, {wl0.jobs_per_month / 1e6:.1f} M jobs/month")
    with open(os.path.join(a.out, "sim_agent.json"), "w") as f:
        json.dump({"provenance": provenance(argv), "sim": sim0.as_dict(),
                   "workload": wl0.as_dict(), "rows": rows, "what_ifs": wrows}, f,
                  indent=1, default=str)
    print(f"\nwrote {png}")
    return rows, wrows


def pressure_report():
    """Issue 9's shape in the model: 3 hosts x 4 slots whose caches hold one of two
    images, arrays of 30 tasks of each submitted together."""
    lines = ["cache pressure: 3 hosts x 4 slots, cache cap 40 MB, two 24 MB images, "
             "two arrays of 30 x 20 s tasks submitted together"]
    for mode in ("overflow", "wait"):
        res = run_scenario({
            "policy": "soft",
            "hosts": [{"name": f"n{i}", "slots": 4} for i in range(3)],
            "images": {"a": {"size_gb": 0.024, "download_s": 2.0},
                       "b": {"size_gb": 0.024, "download_s": 2.0}},
            "jobs": [{"image": "a", "submit": 0, "runtime": 20, "tasks": 30},
                     {"image": "b", "submit": 0, "runtime": 20, "tasks": 30}],
            "settings": {"cache_cap_gb": 0.040, "cache_pressure": mode, "pressure_wait_s": 60.0}})
        started = sum(1 for t in res["tasks"] if t["start"] is not None)
        lines.append(f"  {mode:<8} {started}/{len(res['tasks'])} started, 0 failed, "
                     f"{res['cap_overflows']} pulls over the cap, {res['room_waits']} pulls waited "
                     f"for room, {res['requeued_tasks']} tasks re-queued, origin pulls "
                     f"{sum(res['downloads'].values())}, makespan {res['end_time']:.0f} s")
    return "\n".join(lines)


def _one(job):
    policy, sim, wl = job
    return summarize(simulate(policy, sim, wl))


def main(argv=None):
    a = parse_args(argv)
    if a.agent_report:
        return agent_report(a, argv)
    sim, wl = configs(a)
    names = [p.strip() for p in a.policies.split(",") if p.strip()]
    for n in names:
        if n not in POLICIES:
            sys.exit(f"unknown policy {n!r}; one of {', '.join(POLICIES)}")
    util = wl.task_rate * _mean_runtime(wl) / (sim.hosts * sim.slots)
    print(provenance(argv))
    print(f"{sim.hosts} hosts x {sim.slots} slots, {wl.task_rate:.2f} tasks/s "
          f"({wl.jobs_per_month / 1e6:.1f} M jobs/month), offered load {util:.0%}, "
          f"{wl.n_images} images, {wl.new_images_per_day:g} new/day; "
          f"warm-up {sim.warmup_hours:g} h, window {sim.hours:g} h, seed {sim.seed}")
    jobs = [(n, sim, wl) for n in names]
    t0 = time.perf_counter()
    if a.procs > 1:
        from multiprocessing import Pool
        with Pool(min(a.procs, len(jobs))) as pool:
            sums = pool.map(_one, jobs)
    else:
        sums = []
        for j in jobs:
            sums.append(_one(j))
            s = sums[-1]
            print(f"  {s['policy']:<13} simulated in {s['wall_s']:.1f} s wall, "
                  f"{s['cpu_s']:.1f} s CPU", flush=True)
    total = time.perf_counter() - t0

    print()
    print(format_table(sums))
    print()
    print(format_details(sums))
    print()
    for s in sums:
        extra = f", {s['censored_latencies']} never started (latency counted as >= end - submit)" \
            if s["censored_latencies"] else ""
        print(f"wall time {s['policy']:<13} {s['wall_s']:6.1f} s  (CPU {s['cpu_s']:.1f} s){extra}")
    print(f"all policies: {total:.1f} s")
    if a.markdown:
        print()
        print(md_policies(sums))
    for s in sums:
        if s["policy"] == DEFAULT_POLICY:
            print(f"\ngoal for the default policy ({DEFAULT_POLICY}): egress/LB {s['egress_ratio']:.3f}"
                  f" (<= {GOAL_EGRESS_RATIO}), top-10 warm {s['warm_share_top10']:.1%}"
                  f" (>= {GOAL_WARM_TOP10:.0%}): {'met' if s['goal_met'] else 'MISSED'}")

    os.makedirs(a.out, exist_ok=True)
    png = os.path.join(a.out, "sim_policies.png")
    plot(sums, png, title=f"{sim.hosts} hosts, {sim.hours:g} h, "
                          f"{wl.jobs_per_month / 1e6:.1f} M jobs/month, seed {sim.seed}")
    with open(os.path.join(a.out, "sim_policies.json"), "w") as f:
        json.dump({"provenance": provenance(argv), "sim": sim.as_dict(),
                   "workload": wl.as_dict(), "summaries": sums}, f,
                  indent=1, default=str)
    print(f"\nwrote {png}")
    return sums


def _mean_runtime(wl, n=200000):
    """Mean of the clipped lognormal runtime (by sampling; it only labels the run)."""
    rng = random.Random(0)
    mu = math.log(wl.runtime_median_s)
    return sum(min(wl.runtime_max_s, max(wl.runtime_min_s, rng.lognormvariate(mu, wl.runtime_sigma)))
               for _ in range(n)) / n


if __name__ == "__main__":
    main()
