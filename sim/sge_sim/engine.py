"""Discrete-event engine: Grid Engine-like scheduling runs, prolog pulls, LRU caches.

What is modelled, and which Grid Engine behaviour it stands for:

* Scheduling runs every ``schedule_interval``; pending jobs are taken in
  submit order, at most ``max_pending_tasks_per_job`` array tasks of a job per
  run (SGE's default 50).  A task that cannot be placed stays pending.  (With
  ``flush_submit_sec``/``flush_finish_sec`` set, SGE also runs right after
  submits and job ends: a short interval stands for that; measured on the test
  cluster by ``bench/calibrate.py``.)
* Queue sort (``queue_sort_method load``): unmet soft requests first, then the
  host's np_load_avg, then seq_no (host order).  The scheduler re-sorts after
  every dispatch because each dispatch adds a load adjustment.
* np_load_avg = (5-minute load average of executing tasks
  + job_load_adjustment x sum over tasks dispatched in the last
  load_adjustment_decay seconds and still running of (1 - age / decay)) /
  slots.  That is SGE's load correction (linear decay, divided by the processor
  count for ``np_`` values), summed over the *running* jobs only (its
  ``correct_load``): a task that ended no longer weighs on its host.  The load
  average is evaluated at scheduling time: its own ~40 s sampling lag is small
  next to the 5-minute average.  Tasks waiting for a pull do not add CPU load.
  Scenarios can add the load the hosts reported (``host_load``): the real
  scheduler sorts by it before seq_no, so it breaks ties between equal hosts.
* Free slots are exact (slots are a consumable qmaster books at dispatch).
* Image complexes lag: a host reports what its cache holds at its load reports
  (every ``load_report_time``, each host at its own phase).  A pull that
  completes becomes visible to the scheduler at the host's next report; an
  eviction likewise.  Until then the scheduler may send tasks to a host that
  in fact has the image (a missed warm start) or no longer has it.
* Prolog: a task dispatched to a host that has the image starts at once (a warm
  start).  Otherwise it takes the host's lock for the image: the first task
  starts the pull, the others wait for it.  The task holds its slot while it
  waits (that is the slot time idle on pulls).
* Cache: a pull that would exceed the cap evicts least-recently-used unpinned
  images down to the low-water mark; images used by tasks on the host are
  pinned.  Use = task start and task end.  When pins leave no room the pull
  goes over the cap, or with ``cache_pressure="wait"`` waits (`pressure`).
* Node agent (policy ``agent``, `peers`): pulls come from peers or the
  origin, pulls in flight are reported, a seed per image pulls from the origin.
* Transfers (`links`, model.py's doc): max-min fair shares of the origin's
  egress, each host's link in (under its disk's write rate) and out, and with
  racks their uplinks; no transfer faster than one sha256 thread.
* Cold windows (`_versions`, report.py): per new image version, when each host
  that needed it had a verified copy.
* Parallel jobs (`parallel`): one task over several hosts, placed before the
  array tasks of a run, staged on the master only or (agent) on every host.

Hot paths (dispatch, task end) are written inline with local variables: 1,000
hosts x one day is ~1.3 M tasks and has to run in well under a minute.  Each
scheduling run sorts the free hosts by load once (numpy).  Hosts not yet
dispatched to in the run keep that order (a union-find "next" array skips the
others); hosts dispatched to move to a small sorted list with their raised
load.  The least loaded host is the better of the two heads; for an image's
warm set it is the first member met in each (large sets), or the top of a
lazily repaired heap over the set (small sets).  Pending jobs sit in one FIFO
list per (image, hard request), merged in submit order, so a hard request that
cannot be met skips its whole list in O(1).
"""
from __future__ import annotations

import math
import random
import time
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import deque
from heapq import heapify, heappop, heappush, heapreplace
from typing import (
    AbstractSet,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Literal,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypedDict,
    Union,
    overload,
)

import numpy as np

from .events import DL, FINISH, PAIR_BITS, PAIR_MASK, PRESSURE, PREWARM, SCHED, WINDOW
from .links import LinkNet, MixedNet
from .model import FixedNetwork, Flow, HostCache, Network, SharedNetwork, SimConfig
from .parallel import ParallelJobs
from .peers import Agent
from .policies import Policy, PrewarmConfig, get_policy
from .pressure import CachePressure
from .report import cold_window
from .units import GB, GBIT, INF
from .workload import Job, WorkloadConfig, generate_jobs, image_sizes, zipf_weights

# A new version's "slowest host" counts the hosts that needed it this soon after its
# first submission (the cold window; report.py also reports the window's first 30 min).
COLD_WINDOW_S = 600.0
COLD_REASONS = ("joined", "stale", "warm_full", "no_warm", "lag_miss")
NO_WARM: FrozenSet[int] = frozenset()  # a job without a warm request sees no warm host

# Load the hosts reported from outside the simulated tasks: (sorted times, one row
# of per-host values per time), a step function.
HostLoad = Tuple[Sequence[float], np.ndarray]


class Engine(ParallelJobs, CachePressure):
    """One simulation: a cluster, a policy and a job stream.

    ``jobs`` must be in submit order.  ``initial[h]`` lists the images host h
    holds at t=0 (reported warm from the start).  ``window`` = (t0, t1): tasks
    submitted in it are measured; egress and the lower bound count from t0 on.
    With ``end_when_done`` the run ends when every job has run (scenarios);
    otherwise when every measured task has started.
    """

    def __init__(self, sim: SimConfig, policy: Union[str, Policy], sizes: Sequence[float],
                 jobs: Iterable[Job], *,
                 slots: Optional[Sequence[int]] = None,
                 initial: Optional[Sequence[Iterable[int]]] = None,
                 network: Optional[Network] = None,
                 report_phase: Optional[Sequence[float]] = None,
                 first_schedule: float = 0.0,
                 window: Optional[Tuple[float, float]] = None,
                 end_when_done: bool = False,
                 max_time: float = INF,
                 host_load: Optional[HostLoad] = None,
                 dead_agents: Iterable[int] = (),
                 lying_agents: Iterable[int] = ()) -> None:
        self.sim = sim
        self.policy: Policy = get_policy(policy)
        # The list is shared with the job stream, which appends the sizes of new
        # image versions as they are released (see WorkloadConfig.new_images_per_day).
        self.sizes = sizes
        NI = self.NI = len(self.sizes)
        self.slots: List[int] = list(slots) if slots is not None else [sim.slots] * sim.hosts
        slots = self.slots
        H = self.H = len(slots)
        self.free = list(slots)
        cap = None if sim.cache_cap_gb is None else sim.cache_cap_gb * GB
        self.caches = [HostCache(cap, sim.cache_low_water) for _ in range(H)]
        self.warm_view: List[Set[int]] = [set() for _ in range(NI)]
        self.hidden: List[Set[int]] = [set() for _ in range(NI)]  # complete, not yet reported
        if initial is not None:
            for h, imgs in enumerate(initial):
                for img in imgs:
                    self.caches[h].add_present(img, self.sizes[img])
                    self.warm_view[img].add(h)
        # How fast transfers go (model.py's module doc): with the agent or racks every
        # transfer shares the links (LinkNet); otherwise the origin's pulls alone
        # (SharedNetwork: the same rates, faster); a given network (measured pull
        # times) serves the origin's pulls.
        link = sim.host_link_gbit * GBIT
        registry = None if sim.registry_gbit is None else sim.registry_gbit * GBIT
        self.links: Optional[LinkNet] = None
        if self.policy.agent or sim.rack_size > 0:
            self.links = LinkNet(
                H, sim.host_in_Bps(), min(link, sim.peer_upload_gbit * GBIT), registry,
                sim.transfer_Bps(), sim.rack_size,
                sim.rack_size * link / sim.rack_oversub if sim.rack_size > 0 else INF)
        self.net: Network
        if network is not None:
            self.net = network
        elif self.links is not None:
            self.net = self.links
        else:
            self.net = SharedNetwork(sim.host_in_Bps(), registry, sim.transfer_Bps())
        self.agent: Optional[Agent] = None
        self.inflight_vis = sim.report_inflight_as_warm or self.policy.agent
        if self.policy.agent:
            assert self.links is not None
            mixed = MixedNet(self.links, network)
            self.net = mixed
            self.agent = Agent(self, mixed, dead_agents, lying_agents)
        self.wait_room = sim.cache_pressure == "wait"
        if sim.cache_pressure not in ("wait", "overflow"):
            raise ValueError(f"cache_pressure: 'wait' or 'overflow', not {sim.cache_pressure!r}")
        T = sim.load_report_time
        if report_phase is None:
            rng = random.Random(sim.seed * 31 + 5)
            report_phase = [rng.uniform(0.0, T) for _ in range(H)]
        self.phase = [float(p) for p in report_phase]
        self.jobs = iter(jobs)
        self.next_job: Optional[Job] = next(self.jobs, None)
        self.first_schedule = first_schedule
        if window is None:
            w0 = sim.warmup_hours * 3600.0
            window = (w0, w0 + sim.hours * 3600.0)
        self.W0, self.W1 = float(window[0]), float(window[1])
        self.end_when_done = end_when_done
        self.max_time = max_time
        # Load from outside the simulated tasks, as the hosts reported it.
        self.ext_load = host_load

        # load average state per host: executing tasks x, average e0 at time tc
        self.x = [0] * H
        self.e0 = [0.0] * H
        self.tc = [0.0] * H
        # load adjustments: dispatch counts of recent runs (rows) per host
        nrows = int(math.ceil(sim.load_adjustment_decay / max(sim.schedule_interval, 1e-9))) + 2
        self.ring = np.zeros((max(nrows, 1), H))
        self.ring_t = np.full(max(nrows, 1), -INF)
        self.ring_i = 0
        self.ring_n = 0  # rows written so far; a task's FINISH carries its run's number
        self.inv_slots = np.array([1.0 / s for s in slots])

        self.heap: List[Tuple[float, int, int, int]] = []  # (time, kind, a, b)
        # (visible at, seq, host, image, +1/-1)
        self.vis: List[Tuple[float, int, int, int, int]] = []
        self.vis_seq = 0
        # Pending jobs, one FIFO list per (image, hard request): a hard job whose
        # warm hosts are all full lets every later one of its list be skipped.
        self.pending: Dict[int, List[Job]] = {}
        self.adm_seq = 0
        self.qhead: Dict[int, int] = {}
        self.fid = 0
        self.dl_token = 0
        self.dl_next: Optional[float] = None
        self.running = 0  # dispatched, not yet ended

        # pre-warm daemon
        self.pre = self.policy.prewarm
        self.pre_sub: deque[Tuple[float, int, int]] = deque()  # (submit, image, tasks)
        self.pre_cnt = [0] * NI
        self.pre_queue: deque[Tuple[int, int]] = deque()  # (host, image)
        self.pre_queued: Set[Tuple[int, int]] = set()
        self.pre_inflight = 0
        self.pre_set: Set[int] = set()

        # measurements
        self.in_window = self.W0 <= 0.0
        self.init_present: List[FrozenSet[int]] = []  # per host, set at the window start
        self.needed: Set[int] = set()
        self.egress = 0.0
        self.downloads = 0
        self.pre_bytes = 0.0
        self.pre_downloads = 0
        self.evictions = 0
        self.lat: List[float] = []
        # ... and of each, the task's submit time and image (the cold windows: report.py)
        self.lat_sub = array("d")
        self.lat_img = array("l")
        self.wait_s = 0.0
        self.m_total = 0
        self.m_started = 0
        self.img_tot = [0] * NI
        self.busy_img = [0] * NI  # slots held by tasks of the image
        self.peak_img = [0] * NI  # ... at most, since the window start
        self.held_img = [0] * NI  # hosts holding the image at the window start
        # New image versions: first submitted in the window, held by no host at its
        # start.  When each host that needed one (a measured task of it dispatched
        # there) first did, and when it had a verified copy; the longest chain of
        # pipelined copies each went through.
        self.first_sub = [INF] * NI
        self.new_img = [False] * NI
        self.vdepth = [0] * NI
        self.need_t: Dict[int, float] = {}  # (host, image) pair: first need
        self.got_t: Dict[int, float] = {}   # (host, image) pair: verified copy since
        self.pull_alone: Optional[Dict[int, float]] = getattr(network, "durations", None)
        self.img_warm = [0] * NI
        self.cold = {r: [0] * NI for r in COLD_REASONS}
        self.placements = [0] * H
        self.place_img: List[Dict[int, int]] = [dict() for _ in range(H)]
        self.pulls = [0] * H       # origin pulls per host
        self.peer_pulls: List[int] = [0] * H  # peer transfers per receiving host
        self.room_waits = 0        # pulls that waited for cache room
        self.requeued = 0          # tasks sent back to pending after waiting for room
        self.pe_pending: List[Job] = []
        self.pe_jobs = 0           # measured parallel jobs
        self.pe_missing = 0        # ... that started with the image missing on a host
        self.end_time = 0.0
        self._censored: Optional[int] = None

    # ------------------------------------------------------------------ helpers

    def _next_report(self, h: int, t: float) -> float:
        """Time of host h's first load report at or after t."""
        T = self.sim.load_report_time
        if T <= 0:
            return t
        ph = self.phase[h]
        return ph + math.ceil((t - ph) / T - 1e-12) * T

    def _vis(self, h: int, img: int, d: int, t: float) -> None:
        self.vis_seq += 1
        heappush(self.vis, (self._next_report(h, t), self.vis_seq, h, img, d))

    def _load_step(self, h: int, t: float, d: int) -> None:
        """Executing-task count on h changes by d; fold the past into the average."""
        tau = self.sim.load_avg_tau
        xh = self.x[h]
        if tau > 0:
            self.e0[h] = xh + (self.e0[h] - xh) * math.exp((self.tc[h] - t) / tau)
        self.tc[h] = t
        self.x[h] = xh + d

    def _resched_dl(self) -> None:
        nt = self.net.next_time()
        if nt < INF and nt != self.dl_next:
            self.dl_token += 1
            self.dl_next = nt
            heappush(self.heap, (nt, DL, self.dl_token, 0))

    @overload
    def _start_pull(self, h: int, img: int, t: float, prewarm: bool,
                    kind: Literal[0] = 0) -> Flow: ...

    @overload
    def _start_pull(self, h: int, img: int, t: float, prewarm: bool,
                    kind: int) -> Optional[Flow]: ...

    def _start_pull(self, h: int, img: int, t: float, prewarm: bool,
                    kind: int = 0) -> Optional[Flow]:
        """Make room and start a pull of img to h.  With cache_pressure "wait" a
        pull pins block waits for room (tasks join it as usual); a seed staging
        that cannot get room returns None (the asker picks another seed)."""
        c = self.caches[h]
        size = self.sizes[img]
        for e in c.make_room(size, overflow=not self.wait_room):
            self._evicted(h, e, t)
        self.fid += 1
        fl = Flow(self.fid, h, img, size, t, prewarm, 1 if prewarm else kind)
        if self.wait_room and not c.fits(size):
            if kind == 2:
                return None
            fl.blocked = True
            c.inflight[img] = fl
            c.blocked.append(fl)
            self.room_waits += 1
            heappush(self.heap, (t + self.sim.pressure_wait_s, PRESSURE, h, fl.fid))
            return fl
        c.inflight[img] = fl
        self._launch(fl, t)
        return fl

    def _evicted(self, h: int, e: int, t: float) -> None:
        self._vis(h, e, -1, t)
        self.hidden[e].discard(h)
        if self.agent is not None:
            self.agent.evicted(h, e)
        if self.in_window:
            self.evictions += 1

    def _launch(self, fl: Flow, t: float) -> None:
        """Space is reserved: start fl from the origin or (agent) a peer."""
        self.caches[fl.host].used += fl.size
        if self.inflight_vis:
            self._vis(fl.host, fl.img, +1, t)
        if self.agent is not None:
            self.agent.route(fl, t)
        else:
            self._origin_started(fl, t)
            self.net.add(t, fl)
        self._resched_dl()

    def _origin_started(self, fl: Flow, t: float) -> None:
        self.pulls[fl.host] += 1
        if self.in_window:
            self.egress += fl.size
            self.downloads += 1
            if fl.prewarm:
                self.pre_bytes += fl.size
                self.pre_downloads += 1

    def _replace_flow(self, fl: Flow, t: float) -> Flow:
        """A failed pull's successor on the same host: same space, same waiters."""
        self.fid += 1
        nf = Flow(self.fid, fl.host, fl.img, fl.size, t, fl.prewarm, fl.kind)
        nf.waiters = fl.waiters
        fl.waiters = []
        self.caches[fl.host].inflight[fl.img] = nf
        return nf

    def _exec_start(self, t: float, h: int, img: int, rt: float, job: Job, tdisp: float,
                    i: int, warm: bool, run: int) -> None:
        if self.sim.load_from_running:
            self._load_step(h, t, +1)
        heappush(self.heap, (t + rt, FINISH, h, img | (run << PAIR_BITS)))
        if job.measured:
            self._measured_start(job, img, t, warm)
            self.wait_s += t - tdisp
        if job.recs is not None:
            r = job.recs[i]
            r["start"] = t
            r["end"] = t + rt
            r["warm"] = warm

    def _measured_start(self, job: Job, img: int, t: float, warm: bool) -> None:
        """A measured job starts (one task, or a parallel job on all its hosts): its
        start latency, when it was submitted and its image (the cold windows), and
        the image's warm-start count."""
        self.lat.append(t - job.submit)
        self.lat_sub.append(job.submit)
        self.lat_img.append(img)
        self.m_started += 1
        self.img_tot[img] += 1
        if warm:
            self.img_warm[img] += 1

    def _pulls_done(self, t: float) -> None:
        self.dl_next = None
        agent = self.agent
        for fl in self.net.pop_done(t):
            if agent is not None and not agent.arrived(fl, t):
                continue
            h, img = fl.host, fl.img
            c = self.caches[h]
            fl.state = 1
            del c.inflight[img]
            c.present[img] = fl.size  # most recently used
            if self.new_img[img]:
                self.got_t.setdefault((h << PAIR_BITS) | img, t)
                if fl.depth > self.vdepth[img]:
                    self.vdepth[img] = fl.depth
            if not self.inflight_vis:
                self._vis(h, img, +1, t)
                self.hidden[img].add(h)
            for rt, job, tdisp, i, run in fl.waiters:
                if job.pe is not None:
                    self._pe_arrived(job, t)
                else:
                    self._exec_start(t, h, img, rt, job, tdisp, i, False, run)
            if fl.prewarm:
                self.pre_inflight -= 1
            if agent is not None:
                agent.finished(fl, t)
        if self.pre is not None:
            self._pre_pump(t, self.pre)
        self._resched_dl()

    # ------------------------------------------------------------------ pre-warm

    def _pre_tick(self, t: float, pre: PrewarmConfig) -> None:
        sub, cnt = self.pre_sub, self.pre_cnt
        while sub and sub[0][0] < t - pre.window_s:
            _, img, n = sub.popleft()
            cnt[img] -= n
        ranked = sorted((i for i in range(self.NI) if cnt[i] > 0), key=lambda i: (-cnt[i], i))
        # hysteresis: an image stays pre-warmed while it ranks in the top 2K, so
        # ranks near K flapping in and out do not pull onto every host each time
        keep = set(ranked[:2 * pre.top]) & self.pre_set
        self.pre_set = set(ranked[:pre.top]) | keep
        nh = int(math.ceil(pre.host_fraction * self.H))
        for img in sorted(self.pre_set, key=lambda i: (-cnt[i], i)):
            for h in range(nh):
                c = self.caches[h]
                if img in c.present or img in c.inflight or (h, img) in self.pre_queued:
                    continue
                self.pre_queued.add((h, img))
                self.pre_queue.append((h, img))
        self._pre_pump(t, pre)

    def _pre_pump(self, t: float, pre: PrewarmConfig) -> None:
        q = self.pre_queue
        while q and self.pre_inflight < pre.max_inflight:
            h, img = q.popleft()
            self.pre_queued.discard((h, img))
            c = self.caches[h]
            if img in c.present or img in c.inflight:
                continue
            self._start_pull(h, img, t, True)
            self.pre_inflight += 1

    # ------------------------------------------------------------------ scheduling

    def _grow_images(self, n: int) -> None:
        """A new image version appeared in the job stream."""
        k = n - self.NI
        self.NI = n
        for lst in (self.img_tot, self.img_warm, self.pre_cnt, self.busy_img, self.peak_img,
                    self.held_img, *self.cold.values()):
            lst.extend([0] * k)
        self.warm_view.extend(set() for _ in range(k))
        self.hidden.extend(set() for _ in range(k))
        self.first_sub.extend([INF] * k)
        self.new_img.extend([False] * k)
        self.vdepth.extend([0] * k)

    def _admit(self, t: float) -> None:
        nj = self.next_job
        pol = self.policy
        W0, W1 = self.W0, self.W1
        while nj is not None and nj.submit <= t:
            if nj.img >= self.NI:
                self._grow_images(nj.img + 1)
            if self.first_sub[nj.img] == INF:
                self.first_sub[nj.img] = nj.submit
                if W0 <= nj.submit < W1 and not self.held_img[nj.img]:
                    self.new_img[nj.img] = True
            # JSV decision; made with the scheduler's view at admission, which
            # is at most one scheduling interval after the submit.
            nj.hard = pol.jsv_hard(len(self.warm_view[nj.img]))
            if W0 <= nj.submit < W1:
                nj.measured = True
                self.m_total += len(nj.runtimes)
            if self.pre is not None:
                self.pre_sub.append((nj.submit, nj.img, len(nj.runtimes)))
                self.pre_cnt[nj.img] += len(nj.runtimes)
            self.adm_seq += 1
            nj.seq = self.adm_seq
            if nj.pe is not None:
                if nj.measured:
                    self.m_total += 1 - len(nj.runtimes)
                    self.pe_jobs += 1
                self.pe_pending.append(nj)
            else:
                self.pending.setdefault(nj.img * 2 + nj.hard, []).append(nj)
            nj = next(self.jobs, None)
        self.next_job = nj

    def _keys(self, t: float) -> np.ndarray:
        sim = self.sim
        H = self.H
        if sim.load_from_running:
            x = np.array(self.x, dtype=float)
            if sim.load_avg_tau > 0:
                e0 = np.array(self.e0)
                tc = np.array(self.tc)
                load = x + (e0 - x) * np.exp((tc - t) / sim.load_avg_tau)
            else:
                load = x
        else:
            load = np.zeros(H)
        if self.ext_load is not None:
            ext_t, ext_v = self.ext_load
            i = bisect_right(ext_t, t) - 1
            load = load + ext_v[max(i, 0)]
        D = sim.load_adjustment_decay
        if sim.job_load_adjustment > 0 and D > 0:
            w = 1.0 - (t - self.ring_t) / D
            np.maximum(w, 0.0, out=w)
            if w.any():
                load = load + sim.job_load_adjustment * (w @ self.ring)
        return load * self.inv_slots

    def _schedule(self, t: float) -> None:
        warm_view, hidden = self.warm_view, self.hidden
        vis = self.vis
        while vis and vis[0][0] <= t:
            _, _, h, img, d = heappop(vis)
            if d > 0:
                warm_view[img].add(h)
                hidden[img].discard(h)
            else:
                warm_view[img].discard(h)
        self._admit(t)
        pe_cnt = self._pe_dispatch(t) if self.pe_pending else {}
        pending = self.pending
        if not pending:
            self._ring_row(pe_cnt, t)
            return
        free = self.free
        free_a = np.array(free)
        idx = np.flatnonzero(free_a)
        if idx.size == 0:
            self._ring_row(pe_cnt, t)
            return
        key_a = self._keys(t)
        if pe_cnt:
            adj0 = self.sim.job_load_adjustment if self.sim.load_adjustment_decay > 0 else 0.0
            for h, n in pe_cnt.items():
                key_a[h] += adj0 * n / self.slots[h]
        ks = key_a[idx]
        o = np.argsort(ks, kind="stable")  # ties: lower host index (seq_no) first
        ok = ks[o].tolist()
        oh = idx[o].tolist()
        norder = len(oh)
        key = key_a.tolist()
        pos = [0] * self.H
        for p, h in enumerate(oh):
            pos[h] = p
        # Hosts not yet dispatched to in this run keep their run-start key and
        # their place in `oh`; `nxt` skips the others (union-find "next alive").
        # Hosts dispatched to (and still free) sit in `bl`, sorted by current key.
        nxt = list(range(norder + 1))
        bl: List[Tuple[float, int]] = []
        touched = set()
        gp = 0
        sim = self.sim
        adj = sim.job_load_adjustment if sim.load_adjustment_decay > 0 else 0.0
        adjinc = [adj / s for s in self.slots]
        cnt = [0] * self.H
        for h, n in pe_cnt.items():
            cnt[h] += n
        ndisp_pe = sum(pe_cnt.values())
        wstate: Dict[int, List[Any]] = {}  # image: [heap of (key, host)] or [None, walk position]
        dead = set()  # images whose reported-warm hosts are all full in this run
        soft = self.policy.soft
        maxpt = sim.max_pending_tasks_per_job
        caches, heap = self.caches, self.heap
        in_window = self.in_window
        init_present, needed = self.init_present, self.needed
        lfr = sim.load_from_running
        placements, place_img = self.placements, self.place_img
        cold = self.cold
        c_joined, c_stale, c_full, c_none, c_lag = (cold[r] for r in COLD_REASONS)
        img_tot, img_warm, lat = self.img_tot, self.img_warm, self.lat
        lat_sub, lat_img = self.lat_sub, self.lat_img
        new_img, need_t, got_t = self.new_img, self.need_t, self.got_t
        busy_img, peak_img = self.busy_img, self.peak_img
        load_step = self._load_step
        ndisp = 0
        run = self.ring_n << PAIR_BITS  # this run's row number, carried by FINISH events
        stop = False

        # jobs in admission order across the lists (k-way merge)
        qhead = self.qhead  # finished jobs at the front of each list are skipped
        merge = [(lst[qhead.get(q, 0)].seq, q, qhead.get(q, 0)) for q, lst in pending.items()]
        heapify(merge)
        finished = set()
        while merge:
            _, q, ji = heappop(merge)
            lst = pending[q]
            job = lst[ji]
            img = job.img
            if job.hard and img in dead:
                continue  # and so is the rest of this list
            if ji + 1 < len(lst):
                heappush(merge, (lst[ji + 1].seq, q, ji + 1))
            quota = len(job.runtimes) - job.next
            if not quota:
                continue  # done in an earlier run, not yet compacted away
            if maxpt and quota > maxpt:
                quota = maxpt
            st = None
            S: AbstractSet[int] = NO_WARM
            if soft or job.hard:
                S = warm_view[img]
                if S:
                    st = wstate.get(img)
                    if st is None:
                        if len(S) * 8 < norder:
                            # few warm hosts: a heap of them, repaired lazily
                            wh = [(key[h], h) for h in S if free[h]]
                            heapify(wh)
                            st = [wh]
                        else:
                            st = [None, 0]  # walk the load order
                        wstate[img] = st
            while quota:
                h = -1
                if st is not None:
                    # least loaded host with a free slot among those reported warm
                    wh = st[0]
                    if wh is not None:
                        while wh:
                            k, h2 = wh[0]
                            if not free[h2]:
                                heappop(wh)
                                continue
                            kh = key[h2]
                            if k != kh:
                                heapreplace(wh, (kh, h2))
                                continue
                            h = h2
                            break
                    else:
                        p = st[1]
                        while True:
                            r = p
                            while nxt[r] != r:
                                r = nxt[r]
                            while nxt[p] != r:
                                nxt[p], p = r, nxt[p]
                            p = r
                            if p >= norder or oh[p] in S:
                                break
                            p += 1
                        st[1] = p
                        ka = kb = None
                        if p < norder:
                            h = oh[p]
                            ka = ok[p]
                        for e in bl:
                            if e[1] in S:
                                kb = e
                                break
                        if kb is not None and (ka is None or kb < (ka, h)):
                            h = kb[1]
                        elif ka is None:
                            # none left; free warm hosts only get fewer in a run
                            st = wstate[img] = [[]]
                if h < 0:
                    if job.hard:
                        dead.add(img)
                        break  # pends until a host reported warm has a free slot
                    p = gp
                    r = p
                    while nxt[r] != r:
                        r = nxt[r]
                    while nxt[p] != r:
                        nxt[p], p = r, nxt[p]
                    gp = r
                    if r < norder:
                        h = oh[r]
                        if bl and bl[0] < (ok[r], h):
                            h = bl[0][1]
                    elif bl:
                        h = bl[0][1]
                    else:
                        stop = True  # no free slot anywhere
                        break
                # ---- bookkeeping of the host order for the dispatch below
                kh = key[h]
                if h in touched:
                    del bl[bisect_left(bl, (kh, h))]
                else:
                    touched.add(h)
                    nxt[pos[h]] = pos[h] + 1
                free[h] -= 1
                kh += adjinc[h]
                key[h] = kh
                if free[h]:
                    insort(bl, (kh, h))
                # ---- dispatch one task of job to host h
                quota -= 1
                ndisp += 1
                cnt[h] += 1
                i = job.next
                job.next = i + 1
                rt = job.runtimes[i]
                placements[h] += 1
                bi = busy_img[img] + 1
                busy_img[img] = bi
                if bi > peak_img[img]:
                    peak_img[img] = bi
                pi = place_img[h]
                pi[img] = pi.get(img, 0) + 1
                c = caches[h]
                pins = c.pins
                pins[img] = pins.get(img, 0) + 1
                if in_window and img not in init_present[h]:
                    pair = (h << PAIR_BITS) | img
                    if new_img[img] and job.measured and pair not in need_t:
                        need_t[pair] = t
                        if img not in c.present:
                            got_t.pop(pair, None)  # an earlier copy is gone: the next
                    needed.add(pair)
                if job.recs is not None:
                    job.recs[i]["host"] = h
                    job.recs[i]["dispatch"] = t
                pr = c.present
                if img in pr:
                    pr.move_to_end(img)
                    # warm start: the prolog finds the image, the task runs now
                    if lfr:
                        load_step(h, t, +1)
                    heappush(heap, (t + rt, FINISH, h, img | run))
                    if job.measured:
                        lat.append(t - job.submit)
                        lat_sub.append(job.submit)
                        lat_img.append(img)
                        self.m_started += 1
                        img_tot[img] += 1
                        img_warm[img] += 1
                    if job.recs is not None:
                        r = job.recs[i]
                        r["start"] = t
                        r["end"] = t + rt
                        r["warm"] = True
                else:
                    fl = c.inflight.get(img)
                    if job.measured:
                        if fl is not None:
                            c_joined[img] += 1
                        elif h in S:
                            c_stale[img] += 1
                        elif S:
                            c_full[img] += 1
                        else:
                            c_none[img] += 1
                        for h2 in hidden[img]:
                            if free[h2]:
                                c_lag[img] += 1
                                break
                    if fl is None:
                        fl = self._start_pull(h, img, t, False)
                    fl.waiters.append((rt, job, t, i, self.ring_n))
            if job.next == len(job.runtimes):
                finished.add(q)
            if stop:
                break

        self.running += ndisp
        ndisp += ndisp_pe
        if ndisp:
            for q in finished:
                lst = pending[q]
                hd = qhead.get(q, 0)
                n = len(lst)
                while hd < n and lst[hd].next == len(lst[hd].runtimes):
                    hd += 1
                if hd * 2 >= n:  # compact lazily: amortised O(1) per finished job
                    lst = [j for j in lst[hd:] if j.next < len(j.runtimes)]
                    hd = 0
                    if lst:
                        pending[q] = lst
                    else:
                        del pending[q]
                qhead[q] = hd
            r = self.ring_i
            self.ring[r] = cnt
            self.ring_t[r] = t
            self.ring_i = (r + 1) % len(self.ring_t)
            self.ring_n += 1

    # ------------------------------------------------------------------ main loop

    def _done(self, t: float) -> bool:
        if self.end_when_done:
            if self.next_job is None and self.running == 0 and self.net.active == 0:
                # All work ran, or what still pends can never be placed: no task
                # will end, no pull complete and no report change what is warm.
                return not self.pending or not self.vis
            return t >= self.max_time
        if t < self.W1:
            return False
        if t >= self.W1 + self.sim.max_drain_hours * 3600.0:
            return True
        all_in = self.next_job is None or self.next_job.submit >= self.W1
        return all_in and self.m_started >= self.m_total

    def _snapshot(self) -> None:
        self.in_window = True
        self.init_present = [frozenset(c.present) | frozenset(c.inflight) for c in self.caches]
        for held in self.init_present:
            for img in held:
                self.held_img[img] += 1
        self.peak_img[:] = self.busy_img

    def run(self) -> Dict[str, Any]:
        sim = self.sim
        heap = self.heap
        interval = sim.schedule_interval
        if self.W0 <= 0.0:
            self._snapshot()
        else:
            heappush(heap, (self.W0, WINDOW, 0, 0))
        heappush(heap, (self.first_schedule, SCHED, 0, 0))
        pre = self.pre
        if pre is not None:
            heappush(heap, (self.first_schedule, PREWARM, 0, 0))
        free, caches, busy_img = self.free, self.caches, self.busy_img
        lfr = sim.load_from_running
        load_step = self._load_step
        ring = self.ring
        nrow = len(self.ring_t)
        t = 0.0
        while heap:
            t, kind, a, b = heappop(heap)
            if kind == FINISH:
                # task end: slot freed, pin dropped, image touched for LRU, and the
                # load adjustment of its dispatch dropped (SGE sums it over running
                # jobs only) unless its run's row has left the ring (weight 0 by then)
                run = b >> PAIR_BITS
                b &= PAIR_MASK
                if self.ring_n - run <= nrow:
                    ring[run % nrow, a] -= 1
                free[a] += 1
                self.running -= 1
                busy_img[b] -= 1
                c = caches[a]
                c.pins[b] -= 1
                pr = c.present
                if b in pr:
                    pr.move_to_end(b)
                if lfr:
                    load_step(a, t, -1)
                if c.blocked:
                    self._unblock(a, t)
            elif kind == DL:
                if a == self.dl_token:
                    self._pulls_done(t)
            elif kind == SCHED:
                self._schedule(t)
                if self._done(t):
                    break
                heappush(heap, (t + interval, SCHED, 0, 0))
            elif kind == WINDOW:
                self._snapshot()
            elif kind == PREWARM:
                if pre is not None:  # only scheduled with a pre-warm policy
                    self._pre_tick(t, pre)
                    heappush(heap, (t + pre.interval_s, PREWARM, 0, 0))
            elif kind == PRESSURE:
                self._requeue(a, b, t)
        self.end_time = t
        return self.result()

    def _censor(self) -> int:
        """Measured tasks that never started count with latency >= end - submit."""
        end = self.end_time
        n = 0
        waiting = [job for c in self.caches for fl in c.inflight.values()
                   for (_, job, _, _, _) in fl.waiters if job.pe is None]
        pe = {id(job): job for c in self.caches for fl in c.inflight.values()
              for (_, job, _, _, _) in fl.waiters if job.pe is not None}
        waiting += list(pe.values()) + self.pe_pending
        for job in waiting:
            if job.measured:
                self.lat.append(end - job.submit)
                self.lat_sub.append(job.submit)
                self.lat_img.append(job.img)
                n += 1
        for job in (j for lst in self.pending.values() for j in lst):
            if job.measured:
                k = len(job.runtimes) - job.next
                self.lat.extend([end - job.submit] * k)
                self.lat_sub.extend(array("d", [job.submit]) * k)
                self.lat_img.extend(array("l", [job.img]) * k)
                n += k
        return n

    def _versions(self) -> List[Dict[str, Any]]:
        """Per new image version (first submitted in the window, held by no host at
        its start): how long it took to reach the hosts that needed it.

        * ``slowest_s``: from its first submission until the last of the hosts that
          needed it within COLD_WINDOW_S of that submission had a verified copy (the
          issue's "slowest host"; it includes the scheduler's dispatch of the tasks);
        * ``fanout_s``: the longest any host that needed it waited, from the
          dispatch of its first task of the version until its verified copy (0 for
          a host that had it already): the distribution's own share, what Kraken's
          bound speaks of (hosts asking at once);
        * ``bound_s``: Kraken's bound, 2 x one origin pull of the image alone plus
          ``pipeline_lag_s`` per hop of the longest chain of pipelined copies it went
          through (``depth``);
        * ``censored``: a host never had it by the end (counted at the end)."""
        end = self.end_time
        lag = self.sim.pipeline_lag_s
        by_img: Dict[int, List[Tuple[float, float]]] = {}
        got = self.got_t
        censored: Set[int] = set()
        for pair, need in self.need_t.items():
            img = pair & PAIR_MASK
            ready = got.get(pair)
            if ready is None:
                ready = end
                censored.add(img)
            by_img.setdefault(img, []).append((need, ready))
        out = []
        for img in range(self.NI):
            if not self.new_img[img]:
                continue
            t0 = self.first_sub[img]
            hosts = by_img.get(img, [])
            early = [r for n, r in hosts if n - t0 <= COLD_WINDOW_S]
            alone = (self.pull_alone[img] if self.pull_alone is not None
                     else self.sim.pull_alone_s(self.sizes[img]))
            out.append({
                "image": img, "first_submit": t0, "hosts": len(hosts),
                "slowest_s": max(r for r in early) - t0 if early else math.nan,
                "fanout_s": max(max(0.0, r - n) for n, r in hosts) if hosts else math.nan,
                "pull_alone_s": alone, "depth": self.vdepth[img],
                "bound_s": 2.0 * alone + lag * self.vdepth[img],
                "censored": img in censored,
            })
        return out

    def result(self) -> Dict[str, Any]:
        sizes = self.sizes
        if self._censored is None:
            self._censored = self._censor()
        censored = self._censored
        lb = 0.0
        for pair in self.needed:
            lb += sizes[pair & PAIR_MASK]
        # Packing bound: hosts needed if each image's peak slot demand were packed
        # onto as few hosts as possible, less those holding it at the start.
        per_host = max(self.slots)
        pack = sum(max(0, -(-self.peak_img[i] // per_host) - self.held_img[i]) * sizes[i]
                   for i in range(self.NI))
        # One copy per image version: each image run in the window that no host
        # held (or was pulling) at its start, once: what the origin must send.
        held = set().union(*self.init_present) if self.init_present else set()
        copy = sum(sizes[i] for i in {p & PAIR_MASK for p in self.needed} - held)
        ag = self.agent
        return {
            "policy": self.policy.name,
            "hosts": self.H,
            "egress_bytes": self.egress,
            "downloads": self.downloads,
            "prewarm_bytes": self.pre_bytes,
            "prewarm_downloads": self.pre_downloads,
            "lb_bytes": lb,
            "lb_pairs": len(self.needed),
            "pack_bytes": pack,
            "copy_bytes": copy,
            "peer_bytes": ag.peer_bytes if ag else 0.0,
            "peer_transfers": ag.peer_transfers if ag else 0,
            "peer_failures": ag.failures if ag else 0,
            "peer_saturated": ag.saturated if ag else 0,
            "room_waits": self.room_waits,
            "pe_jobs": self.pe_jobs,
            "pe_missing": self.pe_missing,
            "requeued_tasks": self.requeued,
            "evictions": self.evictions,
            "cap_overflows": sum(c.overflows for c in self.caches),
            "latencies": self.lat,
            "lat_submit": self.lat_sub,
            "lat_image": self.lat_img,
            "new_versions": [i for i in range(self.NI) if self.new_img[i]],
            "versions": self._versions(),
            "censored_latencies": censored,
            "wait_slot_seconds": self.wait_s,
            "measured_tasks": self.m_total,
            "started_tasks": self.m_started,
            "img_tasks": list(self.img_tot),
            "img_warm": list(self.img_warm),
            "cold": {r: list(v) for r, v in self.cold.items()},
            "window": (self.W0, self.W1),
            "end_time": self.end_time,
        }


# ---------------------------------------------------------------------- full runs

def initial_caches(sim: SimConfig, wl: WorkloadConfig, sizes: Sequence[float]) -> List[List[int]]:
    """Per host, images drawn by popularity without replacement up to
    ``initial_fill`` of the cap (most popular draws most recently used)."""
    if sim.cache_cap_gb is None or sim.initial_fill <= 0:
        return [[] for _ in range(sim.hosts)]
    rng = random.Random(sim.seed * 104729 + 3)
    w = zipf_weights(len(sizes), wl.zipf_s)
    target = sim.initial_fill * sim.cache_cap_gb * GB
    out = []
    for _ in range(sim.hosts):
        # Efraimidis-Spirakis: descending u^(1/w) (as log u / w, which cannot
        # underflow) is weighted sampling without replacement
        keys = [math.log(1.0 - rng.random()) / w[i] for i in range(len(sizes))]
        order = sorted(range(len(sizes)), key=lambda i: -keys[i])
        used, picked = 0.0, []
        for i in order:
            if used + sizes[i] <= target:
                picked.append(i)
                used += sizes[i]
        out.append(picked[::-1])  # first drawn = most recently used
    return out


def simulate(policy: Union[str, Policy] = "soft", sim: Optional[SimConfig] = None,
             workload: Optional[WorkloadConfig] = None) -> Dict[str, Any]:
    """Run one policy on the seeded workload; return the raw result dict
    (see `report.summarize`)."""
    sim = sim or SimConfig()
    wl = workload or WorkloadConfig()
    sizes = image_sizes(wl, sim.seed)
    start, cpu = time.perf_counter(), time.process_time()
    eng = Engine(sim, policy, sizes, generate_jobs(wl, sim.seed, sizes),
                 initial=initial_caches(sim, wl, sizes))
    res = eng.run()
    res["wall_s"] = time.perf_counter() - start
    res["cpu_s"] = time.process_time() - cpu
    res["image_sizes"] = sizes
    res["sim"] = sim.as_dict()
    res["workload"] = wl.as_dict()
    return res


# ---------------------------------------------------------------------- calibration

class ScenarioSettings(TypedDict):
    """A scenario's ``settings`` (JSON values; see `SCENARIO_SETTINGS`)."""

    schedule_interval: float
    first_schedule: float
    load_report_time: float
    report_phase: Union[float, Dict[str, float]]
    job_load_adjustment: float
    load_adjustment_decay: float
    max_pending_tasks_per_job: int
    load_from_running: bool
    load_avg_tau: float
    host_load: Optional[Dict[str, Union[float, List[List[float]]]]]
    report_inflight_as_warm: bool
    cache_cap_gb: Optional[float]
    cache_low_water: float
    host_link_gbit: float
    host_disk_gbyte_s: Optional[float]
    host_hash_gbyte_s: Optional[float]
    rack_size: int
    rack_oversub: float
    registry_gbit: Optional[float]
    max_time: float
    peer_upload_gbit: float
    peer_upload_slots: int
    peer_pipeline: bool
    pipeline_lag_s: float
    peer_seed: bool
    peer_redirect: bool
    peer_redirect_depth: int
    peer_wait_when_busy: bool
    peer_seed_wait_s: float
    peer_budget_s: float
    peer_timeout_s: float
    dead_agents: List[str]
    lying_agents: List[str]
    cache_pressure: str
    pressure_wait_s: float


SCENARIO_SETTINGS: ScenarioSettings = {
    # scheduler and sensor (SGE defaults)
    "schedule_interval": 15.0,
    "first_schedule": 0.0,
    "load_report_time": 40.0,
    "report_phase": 0.0,
    "job_load_adjustment": 0.5,
    "load_adjustment_decay": 450.0,
    "max_pending_tasks_per_job": 50,
    # sleep jobs on a test cluster put no CPU load on the host
    "load_from_running": False,
    "load_avg_tau": 300.0,
    # load from outside the tasks as the scheduler saw it (reported load_avg,
    # same units as job_load_adjustment): {"n1": 0.6 or [[t, load], ...]} steps
    "host_load": None,
    "report_inflight_as_warm": False,
    # cache (no cap unless given)
    "cache_cap_gb": None,
    "cache_low_water": 0.8,
    # only used for images without download_s (and for peer copies)
    "host_link_gbit": 10.0,
    # what a transfer into a host costs (SimConfig): disk write + fsync shared by the
    # host's transfers, sha256 per transfer; None: no ceiling
    "host_disk_gbyte_s": 1.03,
    "host_hash_gbyte_s": 1.39,
    # racks of rack_size hosts in list order (0: none), uplink rack_size x link / oversub
    "rack_size": 0,
    "rack_oversub": 4.0,
    "registry_gbit": 100.0,
    # give up (tasks stay unstarted) after this many simulated seconds
    "max_time": 30 * 86400.0,
    # node agent (policy "agent"; see sim/sge_sim/peers.py): peer transfers are
    # modelled from size_gb, host_link_gbit and these, whatever download_s says
    "peer_upload_gbit": 10.0,
    "peer_upload_slots": 4,
    "peer_pipeline": True,
    "pipeline_lag_s": 1.0,
    "peer_seed": True,
    "peer_redirect": True,
    "peer_redirect_depth": 6,
    "peer_wait_when_busy": True,
    "peer_seed_wait_s": 600.0,
    "peer_budget_s": 900.0,
    "peer_timeout_s": 10.0,
    "dead_agents": [],     # host names whose agent never answers
    "lying_agents": [],    # host names whose agent serves wrong bytes
    # a pull that pinned images keep from fitting: "overflow" or "wait"
    "cache_pressure": "overflow",
    "pressure_wait_s": 300.0,
}


def run_scenario(scenario: Dict[str, Any]) -> Dict[str, Any]:
    """Run an explicit small scenario; return per-host placements and pulls.

    Meant for calibration: build the same cluster on a real Grid Engine (hosts
    with these slots and seq_no order, images pre-staged per ``warm``, the JSV
    of the policy, ``sleep RUNTIME`` jobs submitted at the given offsets) and
    compare ``placements`` and ``downloads`` host by host.

    Input (JSON-compatible)::

        {
          "policy": "soft",                 # none | soft | hard | soft+prewarm
          "hosts": [                        # list order = seq_no order (ties in load)
            {"name": "n1", "slots": 4, "warm": ["blast"]},
            {"name": "n2", "slots": 4}      # "warm": images in the cache at t=0
          ],
          "images": {
            "blast": {"download_s": 30.0, "size_gb": 2.0}
          },                                # download_s: fixed pull time on that
                                            # cluster; if no image has it, pulls
                                            # are modelled from size_gb and the
                                            # host_link/registry settings
          "jobs": [                         # one entry per qsub
            {"image": "blast", "submit": 0.0, "runtime": 300.0, "tasks": 6}
          ],                                # tasks: array size (qsub -t 1-N), default 1;
                                            # runtime: seconds, or a list, one per task;
                                            # "pe": {"hosts": 3, "slots": 4} makes it a
                                            # parallel job (one task; its record gets
                                            # "pe_hosts" and "image_on_all_hosts")
          "settings": {...}                 # optional, see SCENARIO_SETTINGS;
                                            # report_phase: one number for all hosts
                                            # or {"n1": 12.0, ...}; host_load:
                                            # {"n1": [[t, load_avg], ...]} as reported
                                            # (breaks ties the real scheduler breaks
                                            # by load before seq_no)
        }

    Output::

        {"placements": {"n1": 4, "n2": 2},            # tasks dispatched per host
         "downloads": {"n1": 0, "n2": 1},             # origin pulls started per host
         "peer_transfers": {"n1": 0, "n2": 0},        # agent: copies received from peers
         "placements_by_image": {"n1": {"blast": 4}, "n2": {"blast": 2}},
         "tasks": [{"job": 0, "task": 1, "image": "blast", "host": "n1",
                    "submit": 0.0, "dispatch": 0.0, "start": 0.0, "end": 300.0,
                    "warm": true}, ...],              # start None: never started
         "unstarted": 0,
         "egress_gb": 2.0,          # pulled from the registry
         "lower_bound_gb": 2.0,     # each host pulling each image it ran once
         "packing_bound_gb": 2.0,   # peak demand packed on whole hosts, less
                                    # the hosts holding the image at t=0
         "end_time": 330.0,
         "versions": [{"image": 0, "first_submit": 0.0, "slowest_s": ...}],
                                    # per image no host held at t=0 (Engine._versions)
         "cold_window": {"cold10_p50_s": ..., "kraken_share": ...}}
                                    # report.cold_window
    """
    st = SCENARIO_SETTINGS.copy()
    given = scenario.get("settings")  # JSON, of the types ScenarioSettings names
    if given:
        st.update(given)
    hosts = scenario["hosts"]
    names = [h["name"] for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError("host names must be unique")
    img_names = list(scenario["images"])
    img_ix = {n: i for i, n in enumerate(img_names)}
    specs = [scenario["images"][n] or {} for n in img_names]
    sizes = [float(s.get("size_gb", 1.0)) * GB for s in specs]
    fixed = [("download_s" in s) for s in specs]
    if any(fixed) and not all(fixed):
        raise ValueError("give download_s for every image or for none")
    sim = SimConfig(
        hosts=len(hosts), slots=0,
        cache_cap_gb=st["cache_cap_gb"], cache_low_water=st["cache_low_water"],
        host_link_gbit=st["host_link_gbit"], registry_gbit=st["registry_gbit"],
        host_disk_gbyte_s=st["host_disk_gbyte_s"], host_hash_gbyte_s=st["host_hash_gbyte_s"],
        rack_size=st["rack_size"], rack_oversub=st["rack_oversub"],
        schedule_interval=st["schedule_interval"], load_report_time=st["load_report_time"],
        load_avg_tau=st["load_avg_tau"], load_from_running=st["load_from_running"],
        job_load_adjustment=st["job_load_adjustment"],
        load_adjustment_decay=st["load_adjustment_decay"],
        max_pending_tasks_per_job=st["max_pending_tasks_per_job"],
        report_inflight_as_warm=st["report_inflight_as_warm"],
        peer_upload_gbit=st["peer_upload_gbit"], peer_upload_slots=st["peer_upload_slots"],
        peer_pipeline=st["peer_pipeline"], pipeline_lag_s=st["pipeline_lag_s"],
        peer_seed=st["peer_seed"], peer_redirect=st["peer_redirect"],
        peer_redirect_depth=st["peer_redirect_depth"],
        peer_wait_when_busy=st["peer_wait_when_busy"],
        peer_seed_wait_s=st["peer_seed_wait_s"], peer_budget_s=st["peer_budget_s"],
        peer_timeout_s=st["peer_timeout_s"],
        cache_pressure=st["cache_pressure"], pressure_wait_s=st["pressure_wait_s"],
        initial_fill=0.0, warmup_hours=0.0)
    net = None
    if all(fixed) and fixed:
        net = FixedNetwork({i: float(s["download_s"]) for i, s in enumerate(specs)})
    rp = st["report_phase"]
    if isinstance(rp, dict):
        phase = [float(rp.get(n, 0.0)) for n in names]
    else:
        phase = [float(rp)] * len(hosts)
    initial = [[img_ix[i] for i in h.get("warm", ())] for h in hosts]
    host_load: Optional[HostLoad] = None
    if st["host_load"]:
        steps = {n: (v if isinstance(v, (list, tuple)) else [[0.0, v]])
                 for n, v in st["host_load"].items()}
        times = sorted({float(t) for v in steps.values() for t, _ in v})
        rows = []
        for t in times:
            row = []
            for n in names:
                v = sorted(steps.get(n, []), key=lambda e: float(e[0]))
                cur = float(v[0][1]) if v else 0.0  # before its first report: the first value
                for tt, val in v:
                    if float(tt) <= t:
                        cur = float(val)
                row.append(cur)
            rows.append(row)
        host_load = (times, np.array(rows))

    jobs: List[Job] = []
    records: List[List[Dict[str, Any]]] = []
    entries = sorted(enumerate(scenario["jobs"]), key=lambda e: float(e[1].get("submit", 0.0)))
    for ji, spec in entries:
        n = int(spec.get("tasks", 1))
        rt = spec["runtime"]
        rts = [float(r) for r in rt] if isinstance(rt, (list, tuple)) else [float(rt)] * n
        if len(rts) != n:
            raise ValueError(f"job {ji}: {n} tasks but {len(rts)} runtimes")
        img = img_ix[spec["image"]]
        job = Job(ji, float(spec.get("submit", 0.0)), img, rts)
        if spec.get("pe"):
            if n != 1:
                raise ValueError(f"job {ji}: a parallel job has one task")
            job.pe = (int(spec["pe"]["hosts"]), int(spec["pe"]["slots"]))
        job.recs = [{"job": ji, "task": k + 1, "image": spec["image"], "host": None,
                     "submit": job.submit, "dispatch": None, "start": None, "end": None,
                     "warm": None} for k in range(n)]
        records.append(job.recs)
        jobs.append(job)

    eng = Engine(sim, scenario.get("policy", "soft"), sizes, jobs,
                 slots=[int(h["slots"]) for h in hosts], initial=initial, network=net,
                 report_phase=phase, first_schedule=float(st["first_schedule"]),
                 window=(0.0, INF), end_when_done=True,
                 max_time=float(st["max_time"]), host_load=host_load,
                 dead_agents=[names.index(n) for n in st["dead_agents"]],
                 lying_agents=[names.index(n) for n in st["lying_agents"]])
    res = eng.run()
    tasks = [r for recs in sorted(records, key=lambda rs: rs[0]["job"]) for r in recs]
    for r in tasks:
        if r["host"] is not None:
            r["host"] = names[r["host"]]
        if "pe_hosts" in r:
            r["pe_hosts"] = [names[h] for h in r["pe_hosts"]]
    return {
        "placements": {names[h]: eng.placements[h] for h in range(eng.H)},
        "downloads": {names[h]: eng.pulls[h] for h in range(eng.H)},   # from the origin
        "peer_transfers": {names[h]: eng.peer_pulls[h] for h in range(eng.H)},  # received
        "peer_failures": res["peer_failures"],
        "room_waits": res["room_waits"],
        "requeued_tasks": res["requeued_tasks"],
        "cap_overflows": res["cap_overflows"],
        "placements_by_image": {names[h]: {img_names[i]: c for i, c in sorted(eng.place_img[h].items())}
                                for h in range(eng.H)},
        "tasks": tasks,
        "unstarted": sum(1 for r in tasks if r["start"] is None),
        "egress_gb": res["egress_bytes"] / GB,
        "lower_bound_gb": res["lb_bytes"] / GB,
        "packing_bound_gb": res["pack_bytes"] / GB,
        "end_time": eng.end_time,
        # new image versions (every image no host held at t=0) and the cold windows
        "versions": res["versions"],
        "cold_window": cold_window(res),
    }
