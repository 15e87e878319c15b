"""Links in the model: host-to-host transfers (PeerNet) and, with the origin's network,
one interface for the engine (MixedNet). Separate from the agent's choices
(peers.py), which decide who sends; this decides how fast."""
from __future__ import annotations

import heapq
from typing import Dict, List, Set, Tuple

from .model import Flow, Network
from .units import INF


class PeerNet:
    """Host-to-host transfers: each gets min(link / receiver's transfers,
    upload / sender's transfers).  Few flows run at once, so rates are simply
    recomputed for all of them at each start or end."""

    def __init__(self, link_Bps: float, upload_Bps: float):
        self.link = float(link_Bps)
        self.up = float(upload_Bps)
        self.flows: Set[Flow] = set()
        self.n_dst: Dict[int, int] = {}
        self.n_src: Dict[int, int] = {}
        self.tu = 0.0

    @property
    def active(self) -> int:
        return len(self.flows)

    def _advance(self, t: float) -> None:
        dt = t - self.tu
        if dt > 0:
            for f in self.flows:
                f.rem -= f.rate * dt
        self.tu = max(self.tu, t)

    def _rates(self) -> None:
        link, up, nd, ns = self.link, self.up, self.n_dst, self.n_src
        for f in self.flows:
            f.rate = min(link / nd[f.host], up / ns[f.src])

    def _count(self, f: Flow, d: int) -> None:
        for m, k in ((self.n_dst, f.host), (self.n_src, f.src)):
            v = m.get(k, 0) + d
            if v:
                m[k] = v
            else:
                del m[k]

    def add(self, t: float, fl: Flow) -> None:
        self._advance(t)
        fl.inpeer = True
        self.flows.add(fl)
        self._count(fl, +1)
        self._rates()

    def remove(self, t: float, fl: Flow) -> None:
        self._advance(t)
        if fl in self.flows:
            self.flows.discard(fl)
            self._count(fl, -1)
            fl.inpeer = False
            self._rates()

    def next_time(self) -> float:
        best = INF
        tu = self.tu
        for f in self.flows:
            tt = tu + max(0.0, f.rem) / f.rate
            if tt < best:
                best = tt
        return best

    def pop_done(self, t: float) -> List[Flow]:
        self._advance(t)
        # in start order: the set's own order follows memory addresses
        done = sorted((f for f in self.flows if f.rem <= 1.0), key=lambda f: f.fid)
        for f in done:
            self.flows.discard(f)
            self._count(f, -1)
            f.inpeer = False
        if done:
            self._rates()
        return done


class MixedNet:
    """The origin's network model plus peer transfers plus timed events
    (a pipelined copy's last chunk, a dead peer's timeout), one interface."""

    def __init__(self, origin: Network, peer: PeerNet) -> None:
        self.origin = origin
        self.peer = peer
        self.later_heap: List[Tuple[float, int, Flow]] = []
        self.seq = 0

    @property
    def active(self) -> int:
        return self.origin.active + self.peer.active + len(self.later_heap)

    def add(self, t: float, fl: Flow) -> None:
        if fl.src >= 0:
            self.peer.add(t, fl)
        else:
            self.origin.add(t, fl)

    def later(self, t: float, fl: Flow) -> None:
        self.seq += 1
        heapq.heappush(self.later_heap, (t, self.seq, fl))

    def next_time(self) -> float:
        best = min(self.origin.next_time(), self.peer.next_time())
        if self.later_heap and self.later_heap[0][0] < best:
            best = self.later_heap[0][0]
        return best

    def pop_done(self, t: float) -> List[Flow]:
        out = list(self.origin.pop_done(t)) if self.origin.active else []
        if self.peer.active:
            out += self.peer.pop_done(t)
        lh = self.later_heap
        while lh and lh[0][0] <= t + 1e-9:
            fl = heapq.heappop(lh)[2]
            if fl.state == 0:
                out.append(fl)
        return out
