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
latency, idle slot-hours and the issue's goals, runs the cache-pressure
scenario of two arrays on caches that hold one image, and writes
``sim_agent.png`` and ``sim_agent.json``.
"""
import argparse
import json
import math
import os
import random
import sys
import time

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
    format_details,
    format_table,
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


def _one_row(job):
    scen, gbit, policy, sim, wl = job
    s = summarize(simulate(policy, sim, wl))
    s.update(scenario=scen, origin_gbit=gbit)
    return s


def agent_report(a):
    """Before (soft) and after (agent) per scenario and origin bandwidth."""
    from dataclasses import replace
    sim0, wl0 = configs(a)
    jobs = []
    for scen in [x.strip() for x in a.scenarios.split(",") if x.strip()]:
        ds, dw = SCENARIOS[scen]
        for g in [float(x) for x in a.origins.split(",")]:
            for pol in ("soft", "agent"):
                extra = {"cache_pressure": a.after_pressure} if pol == "agent" else {}
                jobs.append((scen, g, pol, replace(sim0, registry_gbit=g, **ds, **extra),
                             replace(wl0, **dw)))
    print(f"{sim0.hosts} hosts x {sim0.slots} slots, {wl0.task_rate:.2f} tasks/s, "
          f"{wl0.n_images} images, parallel jobs {wl0.pe_share:.1%} of single jobs "
          f"({wl0.pe_hosts_min}-{wl0.pe_hosts_max} hosts x {wl0.pe_slots_per_host} slots); "
          f"peers: upload {sim0.peer_upload_gbit:g} Gbit/s, {sim0.peer_upload_slots} slots, "
          f"pipeline {'on' if sim0.peer_pipeline else 'off'} (lag {sim0.pipeline_lag_s:g} s), "
          f"seed {'on' if sim0.peer_seed else 'off'}, "
          f"redirects {'on' if sim0.peer_redirect else 'off'}; after rows: cache pressure {a.after_pressure}")
    t0 = time.perf_counter()
    rows = []
    if a.procs > 1:
        from multiprocessing import Pool
        with Pool(a.procs) as pool:
            rows = pool.map(_one_row, jobs)
    else:
        for j in jobs:
            rows.append(_one_row(j))
            r = rows[-1]
            print(f"  {r['scenario']:<12} {r['origin_gbit']:>5g} Gbit/s  {r['policy']:<6} "
                  f"{r['wall_s']:6.1f} s wall", flush=True)
    print()
    print(format_agent_table(rows))
    print()
    for r in rows:
        print(f"{r['scenario']:<12} {r['origin_gbit']:>5g} {r['policy']:<6} origin pulls "
              f"{r['downloads']:>6}, peer failures {r['peer_failures']}, peers saturated "
              f"{r['peer_saturated']}, room waits {r['room_waits']}, requeued {r['requeued_tasks']}, "
              f"over cap {r['cap_overflows_all']}, warm all {r['warm_share']:.1%}, "
              f"wall {r['wall_s']:.1f} s")
    print()
    print("goals (agent): origin <= 1.5 x one copy, top-10 warm >= 95 %, day one within 2 x "
          "steady state, nothing unstarted")
    for line in agent_goals(rows):
        print("  " + line)
    print(f"\nall runs: {time.perf_counter() - t0:.1f} s")
    print()
    print(pressure_report())
    os.makedirs(a.out, exist_ok=True)
    png = os.path.join(a.out, "sim_agent.png")
    plot_agent(rows, png, title=f"Node agent, before (soft) and after: {sim0.hosts} hosts, "
                                f"{sim0.hours:g} h, {wl0.jobs_per_month / 1e6:.1f} M jobs/month")
    with open(os.path.join(a.out, "sim_agent.json"), "w") as f:
        json.dump({"sim": sim0.as_dict(), "workload": wl0.as_dict(), "rows": rows}, f,
                  indent=1, default=str)
    print(f"\nwrote {png}")
    return rows


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
        return agent_report(a)
    sim, wl = configs(a)
    names = [p.strip() for p in a.policies.split(",") if p.strip()]
    for n in names:
        if n not in POLICIES:
            sys.exit(f"unknown policy {n!r}; one of {', '.join(POLICIES)}")
    util = wl.task_rate * _mean_runtime(wl) / (sim.hosts * sim.slots)
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
        json.dump({"sim": sim.as_dict(), "workload": wl.as_dict(), "summaries": sums}, f,
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
