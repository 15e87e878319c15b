"""Links in the model: every transfer over the hosts' links (LinkNet) and, with the
timed events of the agent, one interface for the engine (MixedNet). Separate from the
agent's choices (peers.py), which decide who sends; this decides how fast."""
from __future__ import annotations

import heapq
from typing import List, Optional, Tuple

import numpy as np

from .model import Flow, Network
from .units import INF

# Resources a transfer can use, at most this many (a peer copy across racks: the
# receiver's link in, the sender's link out, the sender's rack up, the receiver's down).
_PER_FLOW = 4


class LinkNet:
    """Origin pulls (``src`` -1) and peer copies sharing what they cross, max-min fair.

    What is shared, each with a capacity (bytes/s):

    * the origin's egress (``registry_Bps``; None: no limit), by the origin pulls;
    * each host's link in, by every transfer into the host, origin or peer, capped
      by its disk (``in_Bps`` = min(link, disk write));
    * each host's link out, by its uploads to peers (``out_Bps`` = min(link, the
      agent's upload limit)); full duplex, so apart from the link in;
    * with racks (``rack_size`` > 0; hosts 0..rack_size-1 are rack 0, and so on), each
      rack's uplink, each way, ``uplink_Bps``: an origin pull enters its host's
      rack, a peer copy between two racks leaves one and enters the other.

    and no transfer runs faster than ``flow_Bps`` (its hashing thread).

    Rates are the max-min fair share (progressive filling: every transfer's rate
    rises together until a resource is full or a transfer reaches its own cap; the
    transfers held there keep that rate, the others rise on), recomputed whenever
    the set of transfers changes, lazily before time next moves, so the transfers a
    scheduling run starts in one instant cost one computation.  Vectorised with
    numpy over the transfers in flight: tens to a few thousand at once.
    """

    def __init__(self, hosts: int, in_Bps: float, out_Bps: float,
                 registry_Bps: Optional[float] = None, flow_Bps: float = INF,
                 rack_size: int = 0, uplink_Bps: float = INF) -> None:
        self.H = hosts
        self.rack_size = rack_size
        racks = -(-hosts // rack_size) if rack_size > 0 else 0
        # resource 0 is "none" (an unused column of a transfer's resources)
        self.IN, self.OUT = 2, 2 + hosts
        self.RIN, self.ROUT = 2 + 2 * hosts, 2 + 2 * hosts + racks
        cap = np.empty(2 + 2 * hosts + 2 * racks)
        cap[0] = INF
        cap[1] = INF if registry_Bps is None else float(registry_Bps)
        cap[self.IN:self.OUT] = float(in_Bps)
        cap[self.OUT:self.RIN] = float(out_Bps)
        cap[self.RIN:] = float(uplink_Bps)
        self.cap = cap
        # a resource is full when what is left of it is below this (never one
        # without a limit)
        self.tol = np.where(np.isfinite(cap), cap * 1e-9, -1.0)
        self.flow_cap = float(flow_Bps)
        n = 64
        self.res = np.zeros((n, _PER_FLOW), dtype=np.intp)
        self.rem = np.zeros(n)
        self.rate = np.zeros(n)
        self.live = np.zeros(n, dtype=bool)
        self.flows: List[Optional[Flow]] = [None] * n
        self.free = list(range(n - 1, -1, -1))
        self.idx = np.zeros(0, dtype=np.intp)  # live slots at the last solve
        self.dirty = False
        self.active = 0
        self.tu = 0.0
        self.solves = 0  # how often the rates were computed (cost of a run)

    # ---------------------------------------------------------------- bookkeeping

    def _grow(self) -> None:
        n = len(self.flows)
        self.res = np.concatenate([self.res, np.zeros((n, _PER_FLOW), dtype=np.intp)])
        self.rem = np.concatenate([self.rem, np.zeros(n)])
        self.rate = np.concatenate([self.rate, np.zeros(n)])
        self.live = np.concatenate([self.live, np.zeros(n, dtype=bool)])
        self.flows.extend([None] * n)
        self.free.extend(range(2 * n - 1, n - 1, -1))

    def resources(self, fl: Flow) -> List[int]:
        """What fl crosses (see the class doc)."""
        h, s = fl.host, fl.src
        out = [self.IN + h]
        rs = self.rack_size
        if s < 0:
            out.append(1)
            if rs:
                out.append(self.RIN + h // rs)
        else:
            out.append(self.OUT + s)
            if rs and h // rs != s // rs:
                out += [self.RIN + h // rs, self.ROUT + s // rs]
        return out

    def _advance(self, t: float) -> None:
        dt = t - self.tu
        if dt > 0:
            if self.dirty:
                self._solve()
            i = self.idx
            if i.size:
                self.rem[i] -= self.rate[i] * dt
            self.tu = t

    def _solve(self) -> None:
        """Max-min fair rates of the live transfers (progressive filling)."""
        self.dirty = False
        self.solves += 1
        idx = self.idx = np.flatnonzero(self.live)
        if not idx.size:
            return
        res = self.res[idx]
        left = self.cap.copy()
        rate = np.empty(idx.size)
        todo = np.arange(idx.size)
        level = 0.0
        fcap = self.flow_cap
        nres = len(left)
        while todo.size:
            r = res[todo]
            cnt = np.bincount(r.ravel(), minlength=nres)
            cnt[0] = 0
            used = np.flatnonzero(cnt)
            share = left[used] / cnt[used]
            step = float(share.min()) if used.size else INF
            if level + step >= fcap:  # every transfer left reaches its own cap
                rate[todo] = fcap
                break
            level += step
            left[used] -= step * cnt[used]
            full = left <= self.tol
            hit = full[r].any(axis=1)
            rate[todo[hit]] = level
            todo = todo[~hit]
        self.rate[idx] = rate

    # ---------------------------------------------------------------- Network

    def add(self, t: float, fl: Flow) -> None:
        self._advance(t)
        if not self.free:
            self._grow()
        k = self.free.pop()
        fl.k = k
        fl.inpeer = True
        self.flows[k] = fl
        row = self.resources(fl)
        self.res[k] = row + [0] * (_PER_FLOW - len(row))
        self.rem[k] = fl.size
        self.rate[k] = 0.0
        self.live[k] = True
        self.active += 1
        self.dirty = True

    def _drop(self, fl: Flow) -> None:
        k = fl.k
        self.live[k] = False
        self.flows[k] = None
        self.free.append(k)
        fl.inpeer = False
        self.active -= 1
        self.dirty = True

    def remove(self, t: float, fl: Flow) -> None:
        """fl stops before its end (its source's bytes did not verify)."""
        self._advance(t)
        if fl.inpeer:
            self._drop(fl)

    def next_time(self) -> float:
        if self.dirty:
            self._solve()
        i = self.idx
        if not i.size:
            return INF
        return self.tu + float((np.maximum(self.rem[i], 0.0) / self.rate[i]).min())

    def pop_done(self, t: float) -> List[Flow]:
        self._advance(t)
        i = self.idx
        if not i.size:
            return []
        ended = i[self.rem[i] <= 1.0]  # within a byte: done
        done = []
        for k in ended.tolist():
            fl = self.flows[k]
            if fl is not None:
                done.append(fl)
        done.sort(key=lambda f: f.fid)  # in start order
        for fl in done:
            self._drop(fl)
            fl.done = True
            fl.t_done = t
        return done


class MixedNet:
    """The links (origin pulls and peer copies, `LinkNet`) plus timed events (a
    pipelined copy's last chunk, a dead peer's timeout, a poll round's wait), one
    interface.  ``origin``: pulls that take a fixed, measured time (calibration
    scenarios, `model.FixedNetwork`) instead of sharing the links."""

    def __init__(self, peer: LinkNet, origin: Optional[Network] = None) -> None:
        self.origin = origin
        self.peer = peer
        self.later_heap: List[Tuple[float, int, Flow]] = []
        self.seq = 0

    @property
    def active(self) -> int:
        o = self.origin.active if self.origin is not None else 0
        return o + self.peer.active + len(self.later_heap)

    def add(self, t: float, fl: Flow) -> None:
        if fl.src < 0 and self.origin is not None:
            self.origin.add(t, fl)
        else:
            self.peer.add(t, fl)

    def later(self, t: float, fl: Flow) -> None:
        self.seq += 1
        heapq.heappush(self.later_heap, (t, self.seq, fl))

    def next_time(self) -> float:
        best = self.peer.next_time()
        if self.origin is not None:
            best = min(best, self.origin.next_time())
        if self.later_heap and self.later_heap[0][0] < best:
            best = self.later_heap[0][0]
        return best

    def pop_done(self, t: float) -> List[Flow]:
        out = list(self.origin.pop_done(t)) if self.origin is not None and \
            self.origin.active else []
        if self.peer.active:
            out += self.peer.pop_done(t)
        lh = self.later_heap
        while lh and lh[0][0] <= t + 1e-9:
            fl = heapq.heappop(lh)[2]
            if fl.state == 0:
                out.append(fl)
        return out
