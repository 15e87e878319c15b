#!/usr/bin/env python3
"""Compare the placement policies on the simulated cluster.

    python bench/sim_policies.py [--hosts 1000 --hours 24 --seed 1 --out bench/out]

Runs every policy on the same seeded job stream, prints the headline table
(egress vs the lower bound, warm starts overall and for the 10 most used
images, start latency p50/p95/p99, slot-hours idle on pulls, run time), where
the cold starts of the top-10 images come from, and writes
``sim_policies.png`` and ``sim_policies.json`` to the out dir.  The model and
its defaults are described in ``sge/sim``; the what-if flags below change one
assumption at a time.
"""
import argparse
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sge.sim import (DEFAULT_POLICY, POLICIES, SimConfig, WorkloadConfig,  # noqa: E402
                     format_details, format_table, plot, simulate, summarize)
from sge.sim.report import GOAL_EGRESS_RATIO, GOAL_WARM_TOP10  # noqa: E402


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
    return ap.parse_args(argv)


def configs(a):
    sim = SimConfig(hosts=a.hosts, hours=a.hours, seed=a.seed, slots=a.slots,
                    warmup_hours=a.warmup_hours, initial_fill=a.initial_fill,
                    cache_cap_gb=a.cache_gb, registry_gbit=a.registry_gbit,
                    schedule_interval=a.schedule_interval, load_report_time=a.load_report_time,
                    max_pending_tasks_per_job=a.max_pending_tasks,
                    job_load_adjustment=a.load_adjustment,
                    report_inflight_as_warm=a.report_inflight_as_warm)
    # keep the per-host rate of the site when the cluster is scaled down
    jpm = a.jobs_per_month * a.hosts / SimConfig().hosts
    wl = WorkloadConfig(jobs_per_month=jpm, runtime_median_s=a.runtime_median,
                        n_images=a.images, new_images_per_day=a.new_images_per_day)
    return sim, wl


def _one(job):
    policy, sim, wl = job
    return summarize(simulate(policy, sim, wl))


def main(argv=None):
    a = parse_args(argv)
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
