"""Parallel (PE) jobs: one task over several hosts, started together.

Why: Grid Engine runs a prolog on the master host only, so today a parallel
job's image is staged there and nowhere else.  The agent policy stages it on
every host of the job and starts the job when all have it; other policies
reproduce today's behaviour and count the jobs that started with the image
missing on a host (``pe_missing``).  A job of k hosts x s slots is booked as
k x s slot-tasks (slots, pins, load, FINISH events) and one latency.
"""
from __future__ import annotations

from heapq import heappush
from typing import TYPE_CHECKING, Dict, FrozenSet, List, Set, Tuple

from .events import FINISH, PAIR_BITS
from .workload import Job

if TYPE_CHECKING:

    import numpy as np

    from .model import Flow, HostCache, SimConfig
    from .policies import Policy


def _shape(job: Job) -> Tuple[int, int]:
    """(hosts, slots per host) of a parallel job: only those reach this part."""
    assert job.pe is not None
    return job.pe


class ParallelJobs:
    """Engine part: placement, staging and start of parallel jobs."""

    if TYPE_CHECKING:  # the engine's state and methods this part uses
        sim: SimConfig
        policy: Policy
        H: int
        slots: List[int]
        free: List[int]
        caches: List[HostCache]
        warm_view: List[Set[int]]
        heap: List[Tuple[float, int, int, int]]
        ring: np.ndarray
        ring_t: np.ndarray
        ring_i: int
        ring_n: int
        running: int
        busy_img: List[int]
        peak_img: List[int]
        placements: List[int]
        place_img: List[Dict[int, int]]
        in_window: bool
        init_present: List[FrozenSet[int]]
        needed: Set[int]
        new_img: List[bool]
        need_t: Dict[int, float]
        got_t: Dict[int, float]
        wait_s: float
        pe_pending: List[Job]
        pe_missing: int

        def _keys(self, t: float) -> np.ndarray: ...

        def _start_pull(self, h: int, img: int, t: float, prewarm: bool) -> Flow: ...

        def _load_step(self, h: int, t: float, d: int) -> None: ...

        def _measured_start(self, job: Job, img: int, t: float, warm: bool) -> None: ...

    def _ring_row(self, cnt: Dict[int, int], t: float) -> None:
        """Record this run's dispatches per host (for the load adjustment)."""
        if not cnt:
            return
        row = [0] * self.H
        for h, n in cnt.items():
            row[h] = n
        r = self.ring_i
        self.ring[r] = row
        self.ring_t[r] = t
        self.ring_i = (r + 1) % len(self.ring_t)
        self.ring_n += 1

    # ------------------------------------------------------------------ parallel jobs

    def _pe_dispatch(self, t: float) -> Dict[int, int]:
        """Place pending parallel jobs, in submit order, before the array tasks of
        the run (as a higher priority would).  A job takes ``slots`` on each of
        ``hosts`` hosts, chosen by the same queue sort (soft request met, then
        load, then seq_no); one that does not fit waits and later ones may pass
        it (no reservation).  Returns the slots taken per host."""
        free = self.free
        key: List[float] = []  # hosts' sort keys, computed once a job may fit
        taken: Dict[int, int] = {}
        left = []
        adj = self.sim.job_load_adjustment if self.sim.load_adjustment_decay > 0 else 0.0
        cands: Dict[int, List[int]] = {}  # per slot count: hosts with that many free
        for job in self.pe_pending:
            k, sp = _shape(job)
            cand = cands.get(sp)
            if cand is None:
                cand = cands[sp] = [h for h in range(self.H) if free[h] >= sp]
            if len(cand) < k:
                left.append(job)
                continue
            if not key:
                key = self._keys(t).tolist()
            warm = self.warm_view[job.img] if self.policy.soft else ()
            hosts = sorted(cand, key=lambda h: (h not in warm, key[h], h))[:k]
            for h in hosts:
                free[h] -= sp
                key[h] += adj * sp / self.slots[h]
                taken[h] = taken.get(h, 0) + sp
            for n, lst in cands.items():
                cands[n] = [h for h in lst if free[h] >= n]
            self._pe_stage(job, hosts, t)
        self.pe_pending = left
        return taken

    def _pe_stage(self, job: Job, hosts: List[int], t: float) -> None:
        """Book the job's slots and pins; with the agent stage the image on every
        host before the start, else only the master's prolog pulls it."""
        k, sp = _shape(job)
        img = job.img
        job.next = 1
        job.pe_hosts = hosts
        job.pe_t = t
        job.pe_run = self.ring_n
        job.gate = 0
        self.running += k * sp
        self.busy_img[img] += k * sp
        if self.busy_img[img] > self.peak_img[img]:
            self.peak_img[img] = self.busy_img[img]
        job.pe_warm = all(img in self.caches[h].present for h in hosts)
        for n, h in enumerate(hosts):
            c = self.caches[h]
            c.pins[img] = c.pins.get(img, 0) + sp
            self.placements[h] += sp
            pi = self.place_img[h]
            pi[img] = pi.get(img, 0) + sp
            if self.in_window and img not in self.init_present[h]:
                pair = (h << PAIR_BITS) | img
                if self.new_img[img] and job.measured and pair not in self.need_t:
                    self.need_t[pair] = t
                    if img not in c.present:
                        self.got_t.pop(pair, None)
                self.needed.add(pair)
            if job.recs is not None and n == 0:
                job.recs[0]["host"] = h
                job.recs[0]["dispatch"] = t
                job.recs[0]["pe_hosts"] = list(hosts)
            if img in c.present:
                c.present.move_to_end(img)
                continue
            if n > 0 and not self.policy.agent:
                continue  # no prolog on the other hosts of a parallel job
            fl = c.inflight.get(img)
            if fl is None:
                fl = self._start_pull(h, img, t, False)
            fl.waiters.append((job.runtimes[0], job, t, 0, job.pe_run))
            job.gate += 1
        if job.gate == 0:
            self._pe_start(job, t)

    def _pe_arrived(self, job: Job, t: float) -> None:
        job.gate -= 1
        if job.gate == 0:
            self._pe_start(job, t)

    def _pe_start(self, job: Job, t: float) -> None:
        k, sp = _shape(job)
        img, rt = job.img, job.runtimes[0]
        missing = sum(1 for h in job.pe_hosts if img not in self.caches[h].present)
        run = job.pe_run << PAIR_BITS
        for h in job.pe_hosts:
            if self.sim.load_from_running:
                self._load_step(h, t, +sp)
            for _ in range(sp):
                heappush(self.heap, (t + rt, FINISH, h, img | run))
        if job.measured:
            self._measured_start(job, img, t, job.pe_warm)
            self.wait_s += (t - job.pe_t) * k * sp
            if missing:
                self.pe_missing += 1
        if job.recs is not None:
            r = job.recs[0]
            r["start"], r["end"], r["warm"] = t, t + rt, job.pe_warm
            r["image_on_all_hosts"] = not missing

