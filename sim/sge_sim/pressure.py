"""Cache pressure that waits instead of failing (``cache_pressure="wait"``).

Why: a cache whose images are all pinned by running tasks is busy, not broken.
A pull that cannot get room waits on its host (its tasks hold their slots and
join it as usual) and starts as soon as a task end drops a pin and eviction
can make room; after ``pressure_wait_s`` its tasks give their slots back and
pend again (the prolog's reschedule), here or on another host.  No task fails.
A parallel job keeps its hosts and waits on (its requeue is not modelled).
"""
from __future__ import annotations

from bisect import bisect_left
from heapq import heappush
from typing import TYPE_CHECKING, Dict, List, Tuple

from .events import PRESSURE
from .workload import Job

if TYPE_CHECKING:
    import numpy as np

    from .model import Flow, HostCache, SimConfig


class CachePressure:
    """Engine part: waiting pulls (``HostCache.blocked``) and their bounded wait."""

    if TYPE_CHECKING:  # the engine's state and methods this part uses
        sim: SimConfig
        free: List[int]
        caches: List[HostCache]
        heap: List[Tuple[float, int, int, int]]
        ring: np.ndarray
        ring_t: np.ndarray
        ring_n: int
        running: int
        busy_img: List[int]
        wait_s: float
        requeued: int
        pending: Dict[int, List[Job]]
        qhead: Dict[int, int]

        def _evicted(self, h: int, e: int, t: float) -> None: ...

        def _launch(self, fl: Flow, t: float) -> None: ...

    def _unblock(self, h: int, t: float) -> None:
        """A pin dropped on h: start the pulls that were waiting for room."""
        c = self.caches[h]
        for fl in list(c.blocked):
            for e in c.make_room(fl.size, overflow=False):
                self._evicted(h, e, t)
            if c.fits(fl.size):
                c.blocked.remove(fl)
                fl.blocked = False
                fl.t0 = t
                self._launch(fl, t)

    def _requeue(self, h: int, fid: int, t: float) -> None:
        """A pull waited pressure_wait_s for room: its tasks free their slots and
        pend again (the prolog's reschedule), never fail."""
        c = self.caches[h]
        fl = next((f for f in c.blocked if f.fid == fid), None)
        if fl is None:
            return
        img = fl.img
        pe = [w for w in fl.waiters if w[1].pe is not None]
        if pe:  # a parallel job keeps its hosts and waits on (not modelled: requeue)
            fl.waiters = [w for w in fl.waiters if w[1].pe is None]
            heappush(self.heap, (t + self.sim.pressure_wait_s, PRESSURE, h, fid))
        else:
            c.blocked.remove(fl)
            del c.inflight[img]
        nrow = len(self.ring_t)
        # id(job): (job, [(task index, runtime)])
        back: Dict[int, Tuple[Job, List[Tuple[int, float]]]] = {}
        for rt, job, tdisp, i, run in fl.waiters:
            self.free[h] += 1
            self.running -= 1
            self.busy_img[img] -= 1
            c.pins[img] -= 1
            if self.ring_n - run <= nrow:
                self.ring[run % nrow, h] -= 1
            if job.measured:
                self.wait_s += t - tdisp
            self.requeued += 1
            back.setdefault(id(job), (job, []))[1].append((i, rt))
        if pe:
            fl.waiters = pe
        for job, tasks in back.values():
            nj = Job(job.jid, job.submit, img, [rt for _, rt in tasks])
            nj.measured, nj.hard, nj.seq = job.measured, job.hard, job.seq
            if job.recs is not None:
                nj.recs = [job.recs[i] for i, _ in tasks]
            q = img * 2 + nj.hard
            lst = self.pending.get(q)
            if lst is None:
                self.pending[q] = [nj]
                self.qhead[q] = 0
            else:
                hd = self.qhead.get(q, 0)
                lst.insert(bisect_left(lst, nj.seq, lo=hd, key=lambda j: j.seq), nj)

