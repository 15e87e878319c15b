"""Metrics, the headline table and the plot.

Definitions (all over the measured window; tasks are those submitted in it):

* egress: bytes of every pull started from the window start until the run
  ends (prolog pulls and pre-pulls).
* lower bound: each host pulls each image it needs once: the sum of image
  sizes over distinct (host, image) pairs of tasks dispatched in that time,
  minus pairs the host already held (or was pulling) at the window start.  It
  depends on where the policy put the tasks, so compare absolute egress across
  policies and egress/LB for re-pull waste within one.
* packing bound: a placement-independent reference: for each image, the hosts
  its peak slot demand needs if packed onto whole hosts, less the hosts that
  held it at the window start, times its size.  Pulls to hosts beyond that
  (spreading a burst over many cold hosts) are inside the lower bound but not
  inside this one.
* warm start: the image was complete in the host's cache when the task was
  dispatched (no wait).  Top-10 = the 10 images with the most tasks.
* start latency: task start (after any pull) minus submit.
* idle slot-hours: slot time between dispatch and start, spent waiting on pulls.
* one copy per image version: the sizes of the images run in the window that
  no host held at its start, each once: what an origin must send at least.
  Origin egress over it is the node agent's goal (<= 1.5); peer bytes are
  reported beside it.
* parallel jobs: one latency each (all hosts start together); "PE missing"
  counts those that started with the image absent on one of their hosts.
* cold windows: start latency p50/p99 of the tasks submitted in the first 10
  and 30 minutes of the window (on day one, the cold start), and of the tasks of
  new image versions (first submitted in the window, held by no host at its
  start: on day one every image).
* per new version (`engine.Engine._versions`): the slowest host, from its first
  submission until the last host that needed it in the next 10 minutes had a
  verified copy (the scheduler's dispatch included); its fan-out, the longest
  any host that needed it waited from its task's dispatch to a verified copy;
  and Kraken's bound for it, 2 x one origin pull of it alone (size over the
  slowest of origin, host link, disk and hashing) plus ``pipeline_lag_s`` per
  hop of its longest chain of pipelined copies.  "Kraken share": the versions
  whose fan-out is within the bound; "÷ bound": fan-out over bound (p50, max).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

GOAL_EGRESS_RATIO = 1.05
GOAL_WARM_TOP10 = 0.90
GOAL_ORIGIN_PER_COPY = 1.5   # node agent: origin egress / one copy per image version
GOAL_AGENT_WARM_TOP10 = 0.95
GOAL_DAY_ONE_VS_STEADY = 2.0  # day-one start latency / steady state's
GOAL_WEAK_ORIGIN_PER_COPY = 3.0  # ... with weak peers (1 upload slot, 1 Gbit/s)
COLD_WINDOWS = (600.0, 1800.0)   # the first 10 and 30 minutes of the window
QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)


def _percentiles(values: Sequence[float], qs: Sequence[float]) -> List[float]:
    if not len(values):
        return [math.nan] * len(qs)
    try:
        import numpy as np  # noqa: PLC0415 - the report is read without numpy too
        return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]
    except ImportError:  # pragma: no cover - numpy is optional here
        s = sorted(values)
        out = []
        for q in qs:
            pos = (len(s) - 1) * q / 100.0
            lo = int(math.floor(pos))
            hi = min(lo + 1, len(s) - 1)
            out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
        return out


def _nan_max(values: Sequence[float]) -> float:
    return max(values) if len(values) else math.nan


def cold_window(res: Dict[str, Any]) -> Dict[str, Any]:
    """The cold-window figures of one run (see the module doc)."""
    out: Dict[str, Any] = {}
    lat, sub, img = res["latencies"], res.get("lat_submit", ()), res.get("lat_image", ())
    if len(sub) != len(lat):  # a result without them: nothing to say
        sub, img = (), ()
    w0 = res["window"][0]
    for span in COLD_WINDOWS:
        tag = f"cold{int(span // 60)}"
        vals = [x for x, s in zip(lat, sub) if s - w0 < span]
        out[f"{tag}_tasks"] = len(vals)
        out[f"{tag}_p50_s"], out[f"{tag}_p99_s"] = _percentiles(vals, (50, 99))
    new = set(res.get("new_versions", ()))
    vals = [x for x, i in zip(lat, img) if i in new]
    out["new_tasks"] = len(vals)
    out["new_p50_s"], out["new_p99_s"] = _percentiles(vals, (50, 99))
    vs = res.get("versions", [])
    out["versions"] = len(vs)
    out["versions_censored"] = sum(1 for v in vs if v["censored"])
    for key in ("slowest", "fanout", "bound"):
        xs = [v[f"{key}_s"] for v in vs if not math.isnan(v[f"{key}_s"])]
        out[f"{key}_p50_s"], out[f"{key}_p99_s"] = _percentiles(xs, (50, 99))
        out[f"{key}_max_s"] = _nan_max(xs)
    judged = [v for v in vs if not math.isnan(v["fanout_s"])]
    out["kraken_share"] = (sum(1 for v in judged if v["fanout_s"] <= v["bound_s"])
                           / len(judged) if judged else math.nan)
    over = [v["fanout_s"] / v["bound_s"] for v in judged]
    out["over_bound_p50"] = _percentiles(over, (50,))[0]
    out["over_bound_max"] = _nan_max(over)
    judged = [v for v in vs if not math.isnan(v["slowest_s"])]
    out["kraken_share_submit"] = (sum(1 for v in judged if v["slowest_s"] <= v["bound_s"])
                                  / len(judged) if judged else math.nan)
    out["depth_max"] = max((v["depth"] for v in vs), default=0)
    return out


def summarize(res: Dict[str, Any], top: int = 10) -> Dict[str, Any]:
    """Headline numbers of one run (small, picklable: no per-task lists)."""
    tasks, warm = res["img_tasks"], res["img_warm"]
    order = sorted(range(len(tasks)), key=lambda i: (-tasks[i], i))
    top_ix = [i for i in order[:top] if tasks[i]]
    n_all = sum(tasks)
    n_top = sum(tasks[i] for i in top_ix)
    qs = _percentiles(res["latencies"], QUANTILES)
    qmap = dict(zip(QUANTILES, qs))
    lb = res["lb_bytes"]
    eg = res["egress_bytes"]
    cp = res.get("copy_bytes", 0.0)
    s = {
        "policy": res["policy"],
        "hosts": res["hosts"],
        "egress_tb": eg / 1e12,
        "lb_tb": lb / 1e12,
        "pack_tb": res.get("pack_bytes", 0.0) / 1e12,
        "egress_ratio": eg / lb if lb else (math.inf if eg else 1.0),
        "prewarm_tb": res["prewarm_bytes"] / 1e12,
        "downloads": res["downloads"],
        "evictions": res["evictions"],
        "cap_overflows": res["cap_overflows"],
        "warm_share": sum(warm) / n_all if n_all else math.nan,
        "warm_share_top10": sum(warm[i] for i in top_ix) / n_top if n_top else math.nan,
        "top10_images": top_ix,
        "p50_s": qmap[50],
        "p95_s": qmap[95],
        "p99_s": qmap[99],
        "latency_quantiles": qmap,
        "idle_slot_hours": res["wait_slot_seconds"] / 3600.0,
        "measured_tasks": res["measured_tasks"],
        "unstarted_tasks": res["measured_tasks"] - res["started_tasks"],
        "cold_top10": {r: sum(v[i] for i in top_ix) for r, v in res["cold"].items()},
        "cold_all": {r: sum(v) for r, v in res["cold"].items()},
        "wall_s": res.get("wall_s", math.nan),
        "cpu_s": res.get("cpu_s", math.nan),
        "censored_latencies": res.get("censored_latencies", 0),
        "copy_tb": cp / 1e12,
        "origin_per_copy": eg / cp if cp else (math.inf if eg else 1.0),
        "peer_tb": res.get("peer_bytes", 0.0) / 1e12,
        "peer_failures": res.get("peer_failures", 0),
        "peer_saturated": res.get("peer_saturated", 0),
        "pe_jobs": res.get("pe_jobs", 0),
        "pe_missing": res.get("pe_missing", 0),
        "room_waits": res.get("room_waits", 0),
        "requeued_tasks": res.get("requeued_tasks", 0),
        "cap_overflows_all": res["cap_overflows"],
    }
    s.update(cold_window(res))
    s["goal_met"] = (s["egress_ratio"] <= GOAL_EGRESS_RATIO
                     and s["warm_share_top10"] >= GOAL_WARM_TOP10)
    return s


COLUMNS = (
    ("policy", "{:<13}", "policy"),
    ("egress_tb", "{:>7.1f}", "egr TB"),
    ("lb_tb", "{:>6.1f}", "LB TB"),
    ("egress_ratio", "{:>6.3f}", "egr/LB"),
    ("warm_share", "{:>6.1%}", "warm"),
    ("warm_share_top10", "{:>6.1%}", "warm10"),
    ("p50_s", "{:>6.1f}", "p50 s"),
    ("p95_s", "{:>7.1f}", "p95 s"),
    ("p99_s", "{:>7.1f}", "p99 s"),
    ("idle_slot_hours", "{:>8.1f}", "idle sh"),
    ("wall_s", "{:>6.1f}", "wall s"),
)


def format_table(summaries: List[Dict[str, Any]]) -> str:
    """The headline table: one row per policy."""
    head, rows = [], []
    for key, fmt, title in COLUMNS:
        width = len(fmt.format(0.0)) if key != "policy" else 13
        head.append(title.rjust(width) if key != "policy" else title.ljust(width))
    for s in summaries:
        rows.append("  ".join(fmt.format(s[key]) for key, fmt, _ in COLUMNS))
    line = "  ".join(head)
    return "\n".join([line, "-" * len(line)] + rows)


def format_details(summaries: List[Dict[str, Any]]) -> str:
    """Second table: where the cold starts of the top-10 images come from."""
    lines = ["policy         pulls  evict  prewarm TB  pack TB  unstarted  | top-10 cold starts: "
             "joined  stale  warm_full  no_warm  (lag_miss)"]
    for s in summaries:
        c = s["cold_top10"]
        lines.append(f"{s['policy']:<13} {s['downloads']:>6} {s['evictions']:>6} "
                     f"{s['prewarm_tb']:>11.1f} {s['pack_tb']:>8.1f} {s['unstarted_tasks']:>10}  |"
                     f"{c['joined']:>27} {c['stale']:>6} {c['warm_full']:>10} "
                     f"{c['no_warm']:>8} {c['lag_miss']:>11}")
    return "\n".join(lines)


def plot(summaries: List[Dict[str, Any]], path: str, title: Optional[str] = None) -> str:
    """Write a PNG: start latency percentiles, egress vs lower bound, warm share."""
    # matplotlib is the `plot` extra: only the figures need it
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [s["policy"] for s in summaries]
    x = list(range(len(names)))
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))

    ax = axes[0]
    w = 0.26
    for j, (key, label) in enumerate((("p50_s", "p50"), ("p95_s", "p95"), ("p99_s", "p99"))):
        vals = [max(s[key], 0.1) for s in summaries]
        bars = ax.bar([i + (j - 1) * w for i in x], vals, w, label=label)
        for b, v in zip(bars, [s[key] for s in summaries]):
            ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("seconds from submit to task start (log)")
    ax.set_title("Task start latency")
    ax.legend()

    ax = axes[1]
    w = 0.38
    eg = [s["egress_tb"] for s in summaries]
    lb = [s["lb_tb"] for s in summaries]
    b1 = ax.bar([i - w / 2 for i in x], eg, w, label="registry egress")
    ax.bar([i + w / 2 for i in x], lb, w, label="lower bound (each host pulls\neach image it needs once)",
           color="0.7")
    for b, s in zip(b1, summaries):
        ax.annotate(f"{s['egress_tb']:.1f} TB\n{s['egress_ratio']:.2f}x LB",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("TB in the measured window")
    ax.set_title("Registry egress")
    ax.set_ylim(0, max(eg + lb + [0.1]) * 1.25)
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[2]
    a = [100 * s["warm_share"] for s in summaries]
    t = [100 * s["warm_share_top10"] for s in summaries]
    ax.bar([i - w / 2 for i in x], a, w, label="all images")
    bt = ax.bar([i + w / 2 for i in x], t, w, label="10 most used images")
    for b, v in zip(bt, t):
        ax.annotate(f"{v:.1f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(100 * GOAL_WARM_TOP10, color="red", ls="--", lw=1, label="goal (top 10)")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of task starts that were warm")
    ax.set_title("Warm starts")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- node agent

def _label(r: Dict[str, Any]) -> str:
    """A row's policy, with its variant if any ("agent/weak")."""
    return r["policy"] + (f"/{r['variant']}" if r.get("variant") else "")


def _pair(a: float, b: float) -> str:
    return f"{a:,.0f}/{b:,.0f}" if not (math.isnan(a) or math.isnan(b)) else "-"


def _triple(r: Dict[str, Any], key: str) -> str:
    vals = [r[f"{key}_p50_s"], r[f"{key}_p99_s"], r[f"{key}_max_s"]]
    if any(math.isnan(v) for v in vals):
        return "-"
    return "/".join(f"{v:,.0f}" for v in vals)


def _ratio(r: Dict[str, Any]) -> str:
    a, b = r["over_bound_p50"], r["over_bound_max"]
    return "-" if math.isnan(a) or math.isnan(b) else f"{a:.1f}/{b:.1f}"


def _share(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0%}"


def format_agent_table(rows: List[Dict[str, Any]]) -> str:
    """Before/after: one row per (scenario, origin, policy[/variant]); rows carry
    "scenario", "origin_gbit" and optionally "variant" beside the summary."""
    head = (f"{'scenario':<14} {'origin':>6} {'policy':<11} {'origin TB':>9} {'1 copy TB':>9} "
            f"{'ratio':>6} {'peer TB':>8} {'top10':>6} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} "
            f"{'idle sh':>9} {'unstarted':>9} {'PE miss':>9}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['scenario']:<14} {r['origin_gbit']:>6g} {_label(r):<11} "
                   f"{r['egress_tb']:>9.2f} {r['copy_tb']:>9.2f} {r['origin_per_copy']:>6.2f} "
                   f"{r['peer_tb']:>8.1f} {r['warm_share_top10']:>6.1%} {r['p50_s']:>8.1f} "
                   f"{r['p95_s']:>8.1f} {r['p99_s']:>8.1f} {r['idle_slot_hours']:>9,.0f} "
                   f"{r['unstarted_tasks']:>9,} {r['pe_missing']:>4}/{r['pe_jobs']:<4}")
    return "\n".join(out)


def format_cold_table(rows: List[Dict[str, Any]]) -> str:
    """The cold windows of each row: start latency p50/p99 (s) of the tasks submitted
    in the window's first 10 and 30 minutes and of the new versions' tasks; per new
    version the slowest host and the fan-out (p50/p99/max over versions, s), the
    median Kraken bound and the share of versions whose fan-out is within it
    (``cold_window``)."""
    head = (f"{'scenario':<14} {'origin':>6} {'policy':<11} {'10 min p50/p99':>15} "
            f"{'30 min p50/p99':>15} {'new p50/p99':>15} {'versions':>8} "
            f"{'slowest host p50/p99/max':>25} {'fan-out p50/p99/max':>22} {'bound p50':>9} "
            f"{'÷ bound p50/max':>15} {'Kraken':>6}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['scenario']:<14} {r['origin_gbit']:>6g} {_label(r):<11} "
                   f"{_pair(r['cold10_p50_s'], r['cold10_p99_s']):>15} "
                   f"{_pair(r['cold30_p50_s'], r['cold30_p99_s']):>15} "
                   f"{_pair(r['new_p50_s'], r['new_p99_s']):>15} {r['versions']:>8} "
                   f"{_triple(r, 'slowest'):>25} {_triple(r, 'fanout'):>22} "
                   f"{r['bound_p50_s']:>9.1f} {_ratio(r):>15} {_share(r['kraken_share']):>6}")
    return "\n".join(out)


def format_whatif_table(rows: List[Dict[str, Any]]) -> str:
    """What-ifs of the agent: one row per (scenario, peers, variant); rows carry
    "scenario", "peers" and "variant" beside the summary."""
    head = (f"{'scenario':<11} {'peers':<6} {'variant':<36} {'origin TB':>9} {'÷ copy':>7} "
            f"{'pulls':>6} {'p50/p99 s':>11} {'10 min p50/p99':>15} "
            f"{'slowest host p50/p99/max':>25} {'Kraken':>6} {'idle sh':>8}")
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['scenario']:<11} {r['peers']:<6} {r['variant']:<36} "
                   f"{r['egress_tb']:>9.2f} {r['origin_per_copy']:>7.2f} {r['downloads']:>6,} "
                   f"{_pair(r['p50_s'], r['p99_s']):>11} "
                   f"{_pair(r['cold10_p50_s'], r['cold10_p99_s']):>15} "
                   f"{_triple(r, 'slowest'):>25} {_share(r['kraken_share']):>6} "
                   f"{r['idle_slot_hours']:>8,.0f}")
    return "\n".join(out)


def agent_goals(rows: List[Dict[str, Any]], policy: str = "agent") -> List[str]:
    """The issue's goals for the agent rows, one line each: origin egress within
    1.5 x one copy (3 x with weak peers: variant "weak"), top-10 warm starts, day
    one against steady state, and the share of new versions within Kraken's bound."""
    lines = []
    steady = {r["origin_gbit"]: r for r in rows
              if r["policy"] == policy and r["scenario"] == "steady" and not r.get("variant")}
    for r in rows:
        if r["policy"] != policy:
            continue
        weak = r.get("variant") == "weak"
        goal = GOAL_WEAK_ORIGIN_PER_COPY if weak else GOAL_ORIGIN_PER_COPY
        tag = f"{r['scenario']}{' (weak peers)' if weak else ''} @ {r['origin_gbit']:g} Gbit/s"
        ok_c = r["origin_per_copy"] <= goal or r["copy_tb"] == 0
        ok_w = r["warm_share_top10"] >= GOAL_AGENT_WARM_TOP10
        line = (f"{tag:<38} origin/copy {r['origin_per_copy']:.2f} <= {goal:g} "
                f"({'met' if ok_c else 'MISSED'}), top-10 warm {r['warm_share_top10']:.1%} "
                f"({'met' if ok_w else 'MISSED'})")
        if r.get("versions"):
            line += (f", Kraken bound met by {r['kraken_share']:.0%} of {r['versions']} "
                     f"new versions (slowest host max {r['slowest_max_s']:,.0f} s)")
        st = steady.get(r["origin_gbit"])
        if st is not None and r["scenario"] == "day one" and not weak:
            ratios = [r[k] / st[k] if st[k] else math.inf for k in ("p50_s", "p95_s", "p99_s")]
            ok = all(x <= GOAL_DAY_ONE_VS_STEADY for x in ratios) and not r["unstarted_tasks"]
            line += (", start latency vs steady state p50/p95/p99 "
                     + "/".join(f"{x:.2f}" for x in ratios) + f" ({'met' if ok else 'MISSED'})")
        lines.append(line)
    return lines


def plot_agent(rows: List[Dict[str, Any]], path: str, title: Optional[str] = None) -> str:
    """Before/after per scenario and origin: origin egress per copy, start latency, idle slots."""
    # matplotlib is the `plot` extra: only the figures need it
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cases: List[Tuple[str, float]] = []
    for r in rows:
        case = (r["scenario"], r["origin_gbit"])
        if case not in cases:
            cases.append(case)
    pols: List[str] = []
    for r in rows:
        if r["policy"] not in pols:
            pols.append(r["policy"])
    by = {(r["scenario"], r["origin_gbit"], r["policy"]): r for r in rows}
    labels = [f"{s}\n{g:g} Gbit/s" for s, g in cases]
    x = list(range(len(cases)))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    w = 0.8 / len(pols)

    ax = axes[0]
    for j, p in enumerate(pols):
        vals = [by[(s, g, p)]["egress_tb"] if (s, g, p) in by else 0 for s, g in cases]
        bars = ax.bar([i + (j - (len(pols) - 1) / 2) * w for i in x], [max(v, 1e-3) for v in vals],
                      w, label="before (soft)" if p == "soft" else f"after ({p})")
        for b, (s, g) in zip(bars, cases):
            row = by.get((s, g, p))
            if row:
                txt = f"{row['egress_tb']:.2f} TB"
                if row["copy_tb"] > 0:
                    txt += f"\n{row['origin_per_copy']:.1f}x"
                ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
    copies = [next((r["copy_tb"] for r in rows if (r["scenario"], r["origin_gbit"]) == c), 0)
              for c in cases]
    for i, cp in zip(x, copies):
        if cp > 0:
            ax.hlines(cp, i - 0.45, i + 0.45, colors="k", lw=1.2)
            ax.hlines(cp * GOAL_ORIGIN_PER_COPY, i - 0.45, i + 0.45, colors="red", lw=1, linestyles="--")
    ax.plot([], [], color="k", lw=1.2, label="one copy per image version")
    ax.plot([], [], color="red", lw=1, ls="--", label="goal: 1.5 x one copy")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, max(r["egress_tb"] for r in rows) * 8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("origin egress, TB (log)")
    ax.set_title("Origin egress (steady state: no new image, one copy = 0)")
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    for j, p in enumerate(pols):
        for q, (key, mk) in enumerate((("p50_s", "o"), ("p95_s", "s"), ("p99_s", "^"))):
            xs = [i + (j - (len(pols) - 1) / 2) * w for i in x]
            ys = [max(by[(s, g, p)][key], 0.1) if (s, g, p) in by else math.nan for s, g in cases]
            ax.scatter(xs, ys, marker=mk, color=f"C{j}",
                       label=f"{'before' if p == 'soft' else 'after'} {key[:3]}")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("seconds from submit to start (log)")
    ax.set_title("Task start latency p50 / p95 / p99")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[2]
    for j, p in enumerate(pols):
        vals = [by[(s, g, p)]["idle_slot_hours"] if (s, g, p) in by else 0 for s, g in cases]
        bars = ax.bar([i + (j - (len(pols) - 1) / 2) * w for i in x], [max(v, 0.1) for v in vals], w,
                      label="before (soft)" if p == "soft" else f"after ({p})")
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:,.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("slot-hours held waiting on pulls (log)")
    ax.set_title("Idle slot-hours")
    ax.legend(fontsize=8)

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
