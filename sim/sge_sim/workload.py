"""Seeded job stream: Poisson arrivals, Zipf image popularity, array bursts.

Defaults (`WorkloadConfig`) resemble the site; all are parameters:

======================  ===========  ===========================================
parameter               default      meaning
======================  ===========  ===========================================
jobs_per_month          40e6         array tasks count as jobs; 30-day month,
                                     i.e. ~15.4 tasks/s cluster-wide
n_images                100          distinct images
zipf_s                  1.1          popularity of image rank r is ~ 1/r^s
image_gb_min/max        1.5 / 9      image sizes, log-uniform, independent of rank
burst_share             0.5          share of tasks arriving in array bursts
burst_min/max           100 / 1000   array burst size, log-uniform
runtime_median_s        1200         task runtime lognormal: median 20 min,
runtime_sigma           1.0          sigma 1 (mean ~33 min) ...
runtime_min/max_s       60 / 43200   ... clipped to 1 min .. 12 h
new_images_per_day      0            releases of new image versions (Poisson); each
                                     replaces the image of a uniformly drawn
                                     popularity rank from then on
pe_share                0            share of single-task jobs that are parallel
                                     (PE) jobs over several hosts
pe_hosts_min/max        2 / 4        hosts of a PE job, uniform
pe_slots_per_host       16           slots it takes on each (allocation_rule)
======================  ===========  ===========================================

With 1,000 x 48 slots this offers ~64 % slot utilisation.  The other half of the
tasks arrive as single-task jobs.  Image 0 is the most popular.  The same seed
gives the same jobs (times, images, runtimes) whatever policy consumes them,
so policies are compared on identical work; releases draw from their own random
stream, so turning them on changes which image a job uses and nothing else.

The catalogue is stationary by default, as the issue specifies.  Real registries
get new tags every day; ``new_images_per_day`` models that: a released version
is cold on every host, which is when the load sensor's lag meets array bursts.
"""
from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .units import GB

MONTH_DAYS = 30.0


@dataclass
class WorkloadConfig:
    """Job stream parameters (see the module table)."""

    jobs_per_month: float = 40e6
    n_images: int = 100
    zipf_s: float = 1.1
    image_gb_min: float = 1.5
    image_gb_max: float = 9.0
    burst_share: float = 0.5
    burst_min: int = 100
    burst_max: int = 1000
    runtime_median_s: float = 1200.0
    runtime_sigma: float = 1.0
    runtime_min_s: float = 60.0
    runtime_max_s: float = 12 * 3600.0
    new_images_per_day: float = 0.0
    pe_share: float = 0.0
    pe_hosts_min: int = 2
    pe_hosts_max: int = 4
    pe_slots_per_host: int = 16

    @property
    def task_rate(self) -> float:
        """Tasks per second cluster-wide."""
        return self.jobs_per_month / (MONTH_DAYS * 86400.0)

    def mean_burst(self) -> float:
        """Mean of the log-uniform burst size."""
        a, b = self.burst_min, self.burst_max
        if a == b:
            return float(a)
        return (b - a) / math.log(b / a)


    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Job:
    """One qsub: an image, a submit time and one runtime per array task."""

    __slots__ = ("jid", "submit", "img", "runtimes", "next", "hard", "measured", "recs", "seq",
                 "pe", "gate", "pe_hosts", "pe_t", "pe_run", "pe_warm")

    def __init__(self, jid: int, submit: float, img: int, runtimes: List[float]):
        self.jid = jid
        self.submit = submit
        self.img = img
        self.runtimes = runtimes
        self.next = 0          # index of the next task to dispatch
        self.hard = False      # JSV turned the image request into a hard one
        self.measured = False  # submitted inside the measured window
        # per-task records (calibration scenarios only)
        self.recs: Optional[List[Dict[str, Any]]] = None
        self.seq = 0           # admission order (set by the engine)
        # parallel job: (hosts, slots per host); one task
        self.pe: Optional[Tuple[int, int]] = None
        self.gate = 0          # hosts of a PE job still waiting for the image
        self.pe_hosts: Sequence[int] = ()
        self.pe_t = 0.0
        self.pe_run = 0
        self.pe_warm = False

    @property
    def remaining(self) -> int:
        return len(self.runtimes) - self.next


def zipf_weights(n: int, s: float) -> List[float]:
    w = [1.0 / (r + 1) ** s for r in range(n)]
    tot = sum(w)
    return [x / tot for x in w]


def _size_draw(cfg: WorkloadConfig, rng: random.Random) -> float:
    lo, hi = math.log(cfg.image_gb_min), math.log(cfg.image_gb_max)
    return math.exp(rng.uniform(lo, hi)) * GB


def image_sizes(cfg: WorkloadConfig, seed: int) -> List[float]:
    """Image sizes in bytes, log-uniform in [min, max] GB, seeded."""
    rng = random.Random(seed * 7919 + 17)
    return [_size_draw(cfg, rng) for _ in range(cfg.n_images)]


def generate_jobs(cfg: WorkloadConfig, seed: int,
                  sizes: Optional[List[float]] = None) -> Iterator[Job]:
    """Endless stream of jobs in submit order (the engine stops pulling).

    With ``new_images_per_day`` the sizes of released versions are appended to
    ``sizes`` (the list the engine reads) before the first job that uses them.
    """
    rng = random.Random(seed)
    rel_rng = random.Random(seed * 65537 + 11)
    pe_rng = random.Random(seed * 7727 + 29)  # its own stream: PE jobs change nothing else
    current = list(range(cfg.n_images))  # popularity rank -> image id
    rel_rate = cfg.new_images_per_day / 86400.0
    if sizes is None:
        if rel_rate > 0:
            raise ValueError("new_images_per_day needs the sizes list to extend")
        sizes = []  # never extended: no releases
    next_rel = rel_rng.expovariate(rel_rate) if rel_rate > 0 else math.inf
    rate = cfg.task_rate
    single_rate = rate * (1.0 - cfg.burst_share)
    burst_rate = rate * cfg.burst_share / cfg.mean_burst() if cfg.burst_share > 0 else 0.0
    job_rate = single_rate + burst_rate
    p_burst = burst_rate / job_rate
    cum = []
    acc = 0.0
    for w in zipf_weights(cfg.n_images, cfg.zipf_s):
        acc += w
        cum.append(acc)
    cum[-1] = 1.0
    lo_b, hi_b = math.log(cfg.burst_min), math.log(cfg.burst_max)
    mu, sigma = math.log(cfg.runtime_median_s), cfg.runtime_sigma
    rmin, rmax = cfg.runtime_min_s, cfg.runtime_max_s
    expo, rand, logn = rng.expovariate, rng.random, rng.lognormvariate
    t = 0.0
    jid = 0
    while True:
        t += expo(job_rate)
        while t >= next_rel:
            current[rel_rng.randrange(cfg.n_images)] = len(sizes)
            sizes.append(_size_draw(cfg, rel_rng))
            next_rel += rel_rng.expovariate(rel_rate)
        img = current[bisect.bisect_left(cum, rand())]
        if rand() < p_burst:
            n = int(round(math.exp(rng.uniform(lo_b, hi_b))))
        else:
            n = 1
        rts = [min(rmax, max(rmin, logn(mu, sigma))) for _ in range(n)]
        jid += 1
        job = Job(jid, t, img, rts)
        if n == 1 and cfg.pe_share > 0 and pe_rng.random() < cfg.pe_share:
            job.pe = (pe_rng.randint(cfg.pe_hosts_min, cfg.pe_hosts_max), cfg.pe_slots_per_host)
        yield job
