"""Cluster model: configuration, node-local image caches, and download bandwidth.

Everything here is plain data plus the two pieces of physics the placement
question depends on: how full a host's cache is (and what LRU throws out when a
pull would not fit), and how fast a pull goes when many hosts pull at once.

Defaults (`SimConfig`) resemble the site the kit is built for; all are
parameters:

=========================  ==========  =============================================
parameter                  default     why
=========================  ==========  =============================================
hosts                      1000        site size
slots                      48          32-64 slot exec hosts; one slot per task
cache_cap_gb               200         node-local cache cap
cache_low_water            0.8         LRU evicts down to 80 % of the cap
host_link_gbit             10          per-host NIC, full duplex: shared in by every
                                       transfer into the host (origin pulls and peer
                                       copies), out by its uploads to peers
host_disk_gbyte_s          1.03        write + fsync of a host's cache disk, shared by
                                       every transfer into the host (measured here:
                                       sequential write + fsync, 1.03 GB/s)
host_hash_gbyte_s          1.39        sha256 of one transfer (one hashing thread per
                                       transfer; measured here: Python hashlib from
                                       a file, 1.39 GB/s)
rack_size                  0           hosts per rack (0: off, a non-blocking core)
rack_oversub               4           with racks: a rack's uplink carries
                                       rack_size x host link / rack_oversub each way
                                       (4: 4:1); origin traffic always crosses it,
                                       a peer copy when the two hosts' racks differ
registry_gbit              100         registry total egress limit
schedule_interval          15 s        SGE default ``schedule_interval 0:0:15``
load_report_time           40 s        SGE default ``load_report_time 0:0:40``
load_avg_tau               300 s       np_load_avg is the 5-minute load average
load_from_running          True        executing tasks are CPU bound (1 load/slot)
job_load_adjustment        0.5         SGE default ``job_load_adjustments np_load_avg=0.50``
load_adjustment_decay      450 s       SGE default ``load_adjustment_decay_time 0:7:30``
max_pending_tasks_per_job  50          SGE default: array tasks considered per run
report_inflight_as_warm    False       what-if: the sensor reports pulls in flight
                                       (the agent policy always does)
peer_upload_gbit           10          agent: per-host upload limit for peers
peer_upload_slots          4           agent: concurrent uploads per host (then 503)
peer_pipeline              True        agent: stream from a peer's pull in flight
pipeline_lag_s             1.0         agent: a streamed copy ends this long after
                                       its source's (the last chunk, verify, fsync)
peer_seed                  True        agent: a per-image seed host (rendezvous hash)
                                       pulls from the origin for the others
peer_redirect              True        agent: a busy peer names the hosts it serves,
                                       so they are found before the sensor reports them
peer_redirect_depth        6           agent: hops through busy answers (the kit's
                                       sge/peerplan.py; 1: what the agent did before)
peer_wait_when_busy        True        agent: a busy tree is waited for (polled), not
                                       left for the origin (False: the model before)
peer_seed_wait_s           600         agent.seed_wait: then the next seed
peer_budget_s              900         agent.peer_budget: a pull's time on peers
peer_timeout_s             10          agent: a dead peer costs this, then a retry
cache_pressure             overflow    "overflow": a pull that pins block goes over
                                       the cap; "wait": it waits for room (bounded)
pressure_wait_s            300         "wait": then its tasks go back to pending
initial_fill               0.8         caches start filled to the low-water mark
warmup_hours               2           simulated before the measured window
hours                      24          measured window (tasks submitted in it)
max_drain_hours            12          then run on until measured tasks started
=========================  ==========  =============================================

What a transfer costs.  A pull verifies as it writes: the kit's sink reads,
hashes and writes on separate threads (reader -> hasher -> writer), so the
three overlap and the slowest bounds the rate (a pipeline: the min of the
rates, not the sum of the times).  A transfer into a host therefore runs at
most at ``host_hash_gbyte_s`` (its own hashing thread: exec hosts have cores
to spare), and all transfers into one host together at most at
min(host link, ``host_disk_gbyte_s``) (one cache disk).  With the defaults
that ceiling is the disk, 1.03 GB/s (8.2 Gbit/s): the kit's own peer copy of
1 GiB took 1.09-1.11 s on a quiet machine (BENCHMARKS.md, node agent), 7.8
Gbit/s, and 1.5-3.5 s (2.5-5.5 Gbit/s) with other work on both cores; a
copy's reads on the sending host are not charged (page cache).  Rates are
max-min fair over every shared part: the registry's egress, each host's link
in (with its disk) and out (with ``peer_upload_gbit``), each rack's uplink
each way; they are recomputed whenever a transfer starts or ends
(`links.LinkNet`; without the agent and without racks, the origin's pulls
alone, `SharedNetwork`, which gives the same rates faster).

The agent's parameters are the ones ``bench/calibrate.py`` can set per
scenario (``settings``) and compare against a real multi-host run: measured
peer transfer rate gives ``peer_upload_gbit``, the agent's config gives
``peer_upload_slots``, and the end of a streamed copy after its source's gives
``pipeline_lag_s``.

The initial cache content is a policy-neutral stand-in for "the cluster has
been running for a while": each host holds images drawn by popularity (without
replacement) up to ``initial_fill`` of its cap.  ``initial_fill=0`` gives a cold
start instead.  The warm-up then lets each policy reshape the caches its own way
before anything is measured.  Note what follows from a filled start and a
stationary catalogue: every image is cached on some hosts, so an image-aware
policy needs few pulls.  Cold caches (``initial_fill=0``), new image versions
(``WorkloadConfig.new_images_per_day``) and unthrottled array dispatch
(``max_pending_tasks_per_job=0``) are the regimes where placement is stressed.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Tuple

from .units import GB, GBIT, INF

if TYPE_CHECKING:
    from sge.peerplan import Ask, PeerPlan

    from .workload import Job

    # A task waiting for a pull: (runtime, job, dispatch time, task index, run number).
    Waiter = Tuple[float, Job, float, int, int]


@dataclass
class SimConfig:
    """Cluster, scheduler and run-length parameters (see the module table)."""

    hosts: int = 1000
    slots: int = 48
    cache_cap_gb: Optional[float] = 200.0
    cache_low_water: float = 0.8
    host_link_gbit: float = 10.0
    # What a transfer into a host costs (see the module doc): None for no ceiling.
    host_disk_gbyte_s: Optional[float] = 1.03
    host_hash_gbyte_s: Optional[float] = 1.39
    # Racks (0: off): rack_size hosts each, in host order; uplink each way =
    # rack_size x host link / rack_oversub.
    rack_size: int = 0
    rack_oversub: float = 4.0
    registry_gbit: Optional[float] = 100.0  # None: no registry limit
    schedule_interval: float = 15.0
    load_report_time: float = 40.0
    load_avg_tau: float = 300.0
    load_from_running: bool = True
    job_load_adjustment: float = 0.5
    load_adjustment_decay: float = 450.0
    max_pending_tasks_per_job: int = 50
    # What-if for the load sensor: report an image as soon as its pull starts
    # (a "staging" state the JSV's soft request also matches) instead of only
    # after the pull completed.
    report_inflight_as_warm: bool = False
    # Node agent (policy "agent"): peers serve verified blobs (see sim/sge_sim/peers.py).
    peer_upload_gbit: float = 10.0
    peer_upload_slots: int = 4
    peer_pipeline: bool = True
    pipeline_lag_s: float = 1.0
    peer_seed: bool = True
    peer_redirect: bool = True
    peer_redirect_depth: int = 6
    peer_wait_when_busy: bool = True
    peer_seed_wait_s: float = 600.0
    peer_budget_s: float = 900.0
    peer_timeout_s: float = 10.0
    # Cache pressure: "overflow" (pull over the cap) or "wait" (for room, bounded).
    cache_pressure: str = "overflow"
    pressure_wait_s: float = 300.0
    initial_fill: float = 0.8
    warmup_hours: float = 2.0
    hours: float = 24.0
    # After the measured window closes, keep simulating (arrivals continue) until
    # every measured task has started, but at most this long.
    max_drain_hours: float = 12.0
    seed: int = 1


    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def host_in_Bps(self) -> float:
        """What all transfers into one host get together: its link or its disk."""
        link = self.host_link_gbit * GBIT
        disk = self.host_disk_gbyte_s
        return link if disk is None else min(link, disk * GB)

    def transfer_Bps(self) -> float:
        """What one transfer into a host can reach (its hashing thread)."""
        return INF if self.host_hash_gbyte_s is None else self.host_hash_gbyte_s * GB

    def pull_alone_s(self, size: float) -> float:
        """One origin pull of `size` bytes with nothing else moving: size over the
        slowest of the registry, the host's link, its disk and its hashing."""
        reg = INF if self.registry_gbit is None else self.registry_gbit * GBIT
        return size / min(reg, self.host_in_Bps(), self.transfer_Bps())


class HostCache:
    """One host's image cache: complete images in LRU order, pulls in flight, pins.

    ``present`` is ordered least- to most-recently used.  ``pins`` counts tasks
    dispatched to the host that use the image (waiting for the pull or
    executing): the prolog holds the image for them, so LRU may not evict it.
    ``used`` counts complete images and pulls in flight (space is reserved when
    a pull starts).
    """

    __slots__ = ("present", "inflight", "pins", "used", "cap", "low", "overflows", "blocked")

    def __init__(self, cap_bytes: Optional[float], low_water: float = 0.8):
        self.present: "OrderedDict[int, float]" = OrderedDict()
        self.inflight: Dict[int, "Flow"] = {}
        self.pins: Dict[int, int] = {}
        self.used = 0.0
        self.cap = cap_bytes
        # Only read once a pull would break the cap, so never without a cap.
        self.low = INF if cap_bytes is None else cap_bytes * low_water
        self.overflows = 0
        self.blocked: List["Flow"] = []  # pulls waiting for room (cache_pressure="wait")

    def fits(self, size: float) -> bool:
        return self.cap is None or self.used + size <= self.cap

    def add_present(self, img: int, size: float) -> None:
        """Place an image without a pull (initial state)."""
        self.present[img] = size
        self.used += size

    def make_room(self, size: float, overflow: bool = True) -> List[int]:
        """Evict LRU, unpinned images so a pull of ``size`` fits; return evicted ids.

        Models the cache GC: nothing happens while the pull fits under the cap;
        once it would not, evict least-recently-used images until usage plus the
        pull is at the low-water mark.  Pinned images are skipped.  If pins make
        that impossible the pull proceeds over the cap (the prolog never fails a
        job for want of cache space) and ``overflows`` counts it; with
        ``overflow=False`` the caller waits instead (see `fits`).
        """
        cap = self.cap
        if cap is None or self.used + size <= cap:
            return []
        target = self.low
        evicted = []
        pins = self.pins
        present = self.present
        for img in list(present):
            if self.used + size <= target:
                break
            if pins.get(img):
                continue
            self.used -= present.pop(img)
            evicted.append(img)
        if overflow and self.used + size > cap:
            self.overflows += 1
        return evicted


class Flow:
    """One image pull to one host (the prolog's lock makes it one per host+image)."""

    __slots__ = ("fid", "host", "img", "size", "t0", "k", "vf", "done", "waiters",
                 "prewarm", "t_done", "kind", "src", "parent", "children", "parked",
                 "state", "timeout", "rem", "rate", "blocked", "inpeer", "depth",
                 "polling", "plan", "ask", "t_plan")

    def __init__(self, fid: int, host: int, img: int, size: float, t0: float,
                 prewarm: bool = False, kind: int = 0):
        self.fid = fid
        self.host = host
        self.img = img
        self.size = size
        self.t0 = t0
        self.k = 0
        self.vf = 0.0
        self.done = False
        self.waiters: List[Waiter] = []
        self.prewarm = prewarm
        self.t_done = INF
        self.kind = kind          # 0 task pull, 1 pre-warm, 2 seed staging for peers
        self.src = -1             # -1: the origin; else the peer host serving it
        # the peer's own pull in flight that this one streams from
        self.parent: Optional[Flow] = None
        self.children: List[Flow] = []  # pulls streaming from this one while it runs
        self.parked = False       # all bytes the parent had are here: waits for it
        self.state = 0            # 0 running, 1 verified, 2 failed
        self.timeout = False      # the source never answered (dead agent)
        self.rem = size
        self.rate = 0.0
        self.blocked = False      # waits for cache room
        self.inpeer = False
        self.depth = 0            # pulls in flight between this one and a whole copy
        self.polling = False      # waits out a poll round of its peer plan
        self.plan: Optional[PeerPlan] = None  # the agent's plan for this pull (peers.py)
        self.ask: Optional[Ask] = None        # the plan's step it is on
        self.t_plan = 0.0                     # when the plan began (the peer budget)


class Network(Protocol):
    """What the engine needs of a network model (shared, fixed, or with peers)."""

    @property
    def active(self) -> int: ...

    def add(self, t: float, fl: Flow) -> None: ...

    def next_time(self) -> float: ...

    def pop_done(self, t: float) -> List[Flow]: ...


class SharedNetwork:
    """Max-min fair bandwidth: per-host link shared by that host's pulls, registry
    egress shared by everyone.

    A host with k concurrent pulls gives each at most link/k (``host_link_Bps``:
    what all transfers into the host get together, its link or its disk), and
    no pull more than ``flow_Bps`` (its hashing); the registry's total egress R
    is split max-min fairly, so every flow gets min(link/k, flow, r) where the
    water level r makes the total equal R (or r is unbounded when the links,
    not the registry, are the limit).  Flows are grouped by k: all flows
    of a group progress at the same rate, so each group keeps a virtual clock
    (bytes served per flow) and a heap of virtual finish marks.  A start or end
    costs O(groups + log flows) instead of touching every flow.
    """

    def __init__(self, host_link_Bps: float, registry_Bps: Optional[float],
                 flow_Bps: float = INF):
        self.C = float(host_link_Bps)
        self.F = float(flow_Bps)
        self.R = INF if registry_Bps is None else float(registry_Bps)
        self.tu = 0.0
        self.V = [0.0]
        self.rate = [0.0]
        self.heap: List[List[Tuple[float, int, Flow]]] = [[]]
        self.n = [0]
        self.on_host: Dict[int, List[Flow]] = {}
        self.active = 0

    def _grow(self, k: int) -> None:
        while len(self.V) <= k:
            self.V.append(0.0)
            self.rate.append(0.0)
            self.heap.append([])
            self.n.append(0)

    def _advance(self, t: float) -> None:
        dt = t - self.tu
        if dt > 0:
            V, r, n = self.V, self.rate, self.n
            for k in range(1, len(V)):
                if n[k]:
                    V[k] += r[k] * dt
        self.tu = t

    def _put(self, fl: Flow, k: int, remaining: float) -> None:
        fl.k = k
        fl.vf = self.V[k] + remaining
        self.n[k] += 1
        heapq.heappush(self.heap[k], (fl.vf, fl.fid, fl))

    def _rates(self) -> None:
        C, F, R, n, rate = self.C, self.F, self.R, self.n, self.rate
        ks = [k for k in range(1, len(n)) if n[k]]
        if not ks:
            return
        if sum(n[k] * min(C / k, F) for k in ks) <= R:
            for k in ks:
                rate[k] = min(C / k, F)
            return
        # Water-filling: groups in ascending per-flow cap (descending k).
        r_left, n_left = R, sum(n[k] for k in ks)
        ks.sort(reverse=True)
        level = None
        for k in ks:
            cap = min(C / k, F)
            if level is None and cap * n_left <= r_left:
                rate[k] = cap
                r_left -= cap * n[k]
                n_left -= n[k]
            else:
                if level is None:
                    level = r_left / n_left
                rate[k] = level

    def add(self, t: float, fl: Flow) -> None:
        self._advance(t)
        lst = self.on_host.setdefault(fl.host, [])
        k = len(lst) + 1
        self._grow(k)
        V = self.V
        for o in lst:
            rem = o.vf - V[o.k]
            self.n[o.k] -= 1
            self._put(o, k, rem)
        lst.append(fl)
        self._put(fl, k, fl.size)
        self.active += 1
        self._rates()

    def _top(self, k: int) -> Optional[Tuple[float, int, Flow]]:
        h = self.heap[k]
        while h:
            vf, _, fl = h[0]
            if fl.done or fl.k != k or fl.vf != vf:
                heapq.heappop(h)
                continue
            return h[0]
        return None

    def next_time(self) -> float:
        best = INF
        for k in range(1, len(self.n)):
            if not self.n[k]:
                continue
            top = self._top(k)
            if top is None:
                continue
            tt = self.tu + max(0.0, top[0] - self.V[k]) / self.rate[k]
            if tt < best:
                best = tt
        return best

    def pop_done(self, t: float) -> List[Flow]:
        self._advance(t)
        done = []
        for k in range(1, len(self.n)):
            if not self.n[k]:
                continue
            while True:
                top = self._top(k)
                if top is None or top[0] - self.V[k] > 1.0:  # within a byte: done
                    break
                fl = top[2]
                heapq.heappop(self.heap[k])
                fl.done = True
                fl.t_done = t
                self.n[k] -= 1
                done.append(fl)
        touched = set()
        for fl in done:
            self.on_host[fl.host].remove(fl)
            self.active -= 1
            touched.add(fl.host)
        V = self.V
        for h in touched:
            lst = self.on_host[h]
            if not lst:
                del self.on_host[h]
                continue
            k = len(lst)
            for o in lst:
                if o.k != k:
                    rem = o.vf - V[o.k]
                    self.n[o.k] -= 1
                    self._put(o, k, rem)
        if done:
            self._rates()
        return done


class FixedNetwork:
    """Pulls take a fixed time per image whatever else is pulling.

    For calibration scenarios, where the download time of each image on the
    real test cluster is measured rather than modelled.
    """

    def __init__(self, durations: Dict[int, float]):
        self.durations = durations
        self.heap: List[Tuple[float, int, Flow]] = []
        self.active = 0

    def add(self, t: float, fl: Flow) -> None:
        fl.t_done = t + self.durations[fl.img]
        heapq.heappush(self.heap, (fl.t_done, fl.fid, fl))
        self.active += 1

    def next_time(self) -> float:
        return self.heap[0][0] if self.heap else INF

    def pop_done(self, t: float) -> List[Flow]:
        done = []
        while self.heap and self.heap[0][0] <= t + 1e-9:
            fl = heapq.heappop(self.heap)[2]
            fl.done = True
            self.active -= 1
            done.append(fl)
        return done

