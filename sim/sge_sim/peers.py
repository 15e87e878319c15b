"""The node agent in the model: exec hosts serve verified blobs to each other.

Why a separate piece: the origin, not the hosts' links, is what collapses a
cold day, and only copies between exec hosts take it out of the path.

* Every host that holds an image, or is pulling it, can serve it: at most
  ``peer_upload_slots`` uploads at once, sharing ``peer_upload_gbit``.  A
  transfer runs at min(receiver's link / its peer transfers, sender's upload /
  its uploads), re-evaluated whenever a transfer starts or ends.
* Pipelining: a host may stream from a peer whose own pull is still running.
  Its bytes cannot overtake the source's: when it has caught up it parks and
  ends ``pipeline_lag_s`` after the source (last chunk, verify, publish).
  Without pipelining a host waits for the source to finish, then copies.
* Discovery: what the load sensor reports (``warm_view``, in-flight pulls
  included, so with the sensor's lag) plus, with ``peer_redirect``, the hosts
  that got the image along the seed's chain (a busy server names the hosts it
  is serving).
* Seed: when no peer is known to have or pull the image, the host asks the
  image's seed, the first host of a rendezvous ranking (a hash of image and
  host), to stage it; the seed pulls from the origin and the asker streams
  from it.  Every host computes the same seed, so a burst spread over many
  cold hosts still makes one origin pull.
* Source order: a peer with the whole image, fewest uploads first; then one
  pulling it (pipelined); then the seed; the origin only if every known peer
  is saturated or the ranking is exhausted.
* Trust nothing: a dead agent costs ``peer_timeout_s``, a lying one a whole
  transfer that fails verification (and the transfers that streamed from it);
  either way the receiver excludes that peer for the image and picks again.
"""
from __future__ import annotations

import heapq
from typing import Dict, Iterable, List, Literal, Optional, Protocol, Set, Tuple, Union

from .links import MixedNet
from .model import Flow, HostCache, SimConfig

# A peer that can serve an image: it has the whole copy, or a pull of it in flight.
Usable = Union[Tuple[Literal[True], None], Tuple[Literal[False], Flow]]

SEED_RANKS = 16  # the seed ranking kept per image (fallbacks after dead seeds)


class AgentEngine(Protocol):
    """The engine as the agent drives it: its state and the pull steps it lends.

    Why spelled out here: the engine builds the agent, so this module may not
    import the engine's; the engine matches this shape (mypy checks it there)."""

    sim: SimConfig
    H: int
    caches: List[HostCache]
    warm_view: List[Set[int]]
    in_window: bool
    peer_pulls: List[int]

    def _start_pull(self, h: int, img: int, t: float, prewarm: bool,
                    kind: int) -> Optional[Flow]: ...

    def _origin_started(self, fl: Flow, t: float) -> None: ...

    def _replace_flow(self, fl: Flow, t: float) -> Flow: ...


def rendezvous(img: int, hosts: int, k: int = SEED_RANKS) -> List[int]:
    """The k hosts with the highest hash of (image, host): the same list on every host."""
    def score(h: int) -> int:
        x = (img * 0x9E3779B97F4A7C15 + h * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) \
            & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
        x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return x ^ (x >> 32)
    return heapq.nlargest(k, range(hosts), key=score)


class Agent:
    """Source choice and failure handling for the engine's pulls (see module doc)."""

    def __init__(self, eng: AgentEngine, net: MixedNet, dead: Iterable[int] = (),
                 lying: Iterable[int] = ()) -> None:
        self.eng = eng
        self.net = net  # the engine's network: origin, peers and timed events
        sim = eng.sim
        self.slots = sim.peer_upload_slots
        self.pipeline = sim.peer_pipeline
        self.seed = sim.peer_seed
        self.redirect = sim.peer_redirect
        self.lag = sim.pipeline_lag_s
        self.timeout = sim.peer_timeout_s
        self.poll = sim.peer_poll_s
        self.up_used = [0] * eng.H
        self.tree: Dict[int, Set[int]] = {}     # image -> hosts along the seed's chain
        self.excl: Dict[Tuple[int, int], Set[int]] = {}  # (host, image) -> peers that failed it
        self.ranks: Dict[int, List[int]] = {}
        self.dead = set(dead)
        self.lying = set(lying)
        # measurements
        self.peer_bytes = 0.0
        self.peer_transfers = 0
        self.failures = 0
        self.saturated = 0
        self.seed_pulls = 0

    # ---------------------------------------------------------------- choice

    def _usable(self, s: int, img: int, h: int) -> Optional[Usable]:
        """(complete?, flow in flight) if s can serve img to h now, else None.

        A pull in flight serves only while its bytes move (not waiting on a
        dead peer or for room) and if it does not itself stream from h."""
        c = self.eng.caches[s]
        if img in c.present:
            return True, None
        f = c.inflight.get(img)
        if f is None or f.blocked or f.timeout or f.deferred or f.polling:
            return None
        p: Optional[Flow] = f
        while p is not None:
            if p.host == h:
                return None
            p = p.parent
        return False, f

    def route(self, fl: Flow, t: float) -> None:
        """Choose fl's source and start it (origin, peer, or wait on one)."""
        eng = self.eng
        h, img = fl.host, fl.img
        ex = self.excl.get((h, img), ())
        best = None
        saw = False
        groups = (self.tree.get(img, ()), eng.warm_view[img]) if self.redirect \
            else (eng.warm_view[img],)
        for group in groups:
            for s in group:
                if s == h or s in ex:
                    continue
                u = self._usable(s, img, h)
                if u is None or (not u[0] and not self.pipeline):
                    continue
                saw = True
                n = self.up_used[s]
                if n >= self.slots:
                    continue
                # whole copies first, then the shortest chain to one, then idle
                sc = (0, 0, n, s) if u[0] else (1, u[1].depth, n, s)
                if best is None or sc < best[0]:
                    best = (sc, s, u[1])
                    if sc[0] == 0 and n == 0:
                        break
            if best is not None and best[0][0] == 0 and best[0][2] == 0:
                break
        if best is not None:
            self._from_peer(fl, best[1], best[2], t)
            return
        if saw:
            self.saturated += 1
            self._from_origin(fl, t)
            return
        if self.seed:
            ranks = self.ranks.get(img)
            if ranks is None:
                ranks = self.ranks[img] = rendezvous(img, eng.H)
            for s in ranks:
                if s in ex:
                    continue
                if s == h:
                    break  # this host is the seed: it pulls from the origin
                if s in self.dead:
                    self._from_dead(fl, s, t)
                    return
                u = self._usable(s, img, h)
                busy = eng.caches[s].inflight.get(img)
                if u is None and busy is not None:
                    if busy.blocked:
                        continue  # the seed waits for room: the next seed
                    # the seed is itself getting past a dead peer: wait for it
                    fl.deferred, fl.src, fl.parent = True, s, busy
                    busy.children.append(fl)
                    return
                if u is None:
                    sf = eng._start_pull(s, img, t, False, kind=2)
                    if sf is None:  # no room on the seed now: the next one
                        self.excl.setdefault((h, img), set()).add(s)
                        continue
                    self.seed_pulls += 1
                    self.tree.setdefault(img, set()).add(s)
                    u = self._usable(s, img, h)
                    if u is None:  # the seed itself is waiting on a dead or busy peer
                        continue
                if self.up_used[s] >= self.slots:
                    self.saturated += 1
                    break
                if not u[0] and not self.pipeline:
                    fl.deferred = True
                    fl.src = s
                    fl.parent = u[1]
                    u[1].children.append(fl)
                    return
                self._from_peer(fl, s, u[1], t)
                return
        self._from_origin(fl, t)

    def _from_origin(self, fl: Flow, t: float) -> None:
        fl.src = -1
        fl.parent = None
        self.eng._origin_started(fl, t)
        self.net.add(t, fl)

    def _from_dead(self, fl: Flow, s: int, t: float) -> None:
        fl.src = s
        fl.parent = None
        fl.timeout = True
        self.net.later(t + self.timeout, fl)

    def _from_peer(self, fl: Flow, s: int, parent: Optional[Flow], t: float) -> None:
        if s in self.dead:
            self._from_dead(fl, s, t)
            return
        fl.src = s
        fl.parent = parent
        fl.deferred = False
        fl.rem = fl.size
        fl.depth = 0
        if parent is not None:
            parent.children.append(fl)
            fl.depth = parent.depth + 1
        self.up_used[s] += 1
        self.tree.setdefault(fl.img, set()).add(fl.host)
        eng = self.eng
        if eng.in_window:
            self.peer_bytes += fl.size
            self.peer_transfers += 1
        eng.peer_pulls[fl.host] += 1
        self.net.add(t, fl)

    # ---------------------------------------------------------------- outcomes

    def arrived(self, fl: Flow, t: float) -> bool:
        """fl's bytes are all here (or its peer timed out).  True when it is
        verified now; otherwise the agent has parked it, or failed and re-routed it."""
        if fl.polling:  # its seed finished peer_poll_s ago: it asks now
            fl.polling = False
            self.route(fl, t)
            return False
        if fl.src < 0:
            return True
        if fl.timeout:
            self._fail(fl, t, exclude=True)
            return False
        p = fl.parent
        if p is not None and p.state == 0:
            fl.parked = True  # caught up with the source's own pull
            return False
        if fl.src in self.lying:
            self._fail(fl, t, exclude=True)
            return False
        self.up_used[fl.src] -= 1
        return True

    def finished(self, fl: Flow, t: float) -> None:
        """fl is verified: what streamed from it may end now."""
        kids, fl.children = fl.children, []
        # Hosts waiting on it poll at their own moments (each began its backoff at
        # its own prolog's start): fl ends at a uniform point between two polls, so
        # the k-th of n learns it after (2k+1)/n * peer_poll_s, not all in the
        # same instant (which would find its upload slots full).
        polls = sum(1 for ch in kids if ch.state == 0 and ch.deferred) if self.poll > 0 else 0
        k = 0
        for ch in kids:
            if ch.state != 0:
                continue
            ch.parent = None
            if ch.deferred and polls:
                ch.deferred, ch.polling = False, True
                self.net.later(t + self.poll * (2 * k + 1) / polls, ch)
                k += 1
            elif ch.deferred:
                ch.deferred = False
                self.route(ch, t)
            elif ch.parked:
                ch.parked = False
                self.net.later(t + self.lag, ch)

    def _fail(self, fl: Flow, t: float, exclude: bool) -> None:
        """fl cannot be used: drop it, fail what streamed from it, pull again."""
        eng = self.eng
        if fl.inpeer:
            self.net.peer.remove(t, fl)
        if fl.src >= 0 and not fl.timeout and not fl.deferred and not fl.polling:
            self.up_used[fl.src] -= 1
        if exclude:
            self.excl.setdefault((fl.host, fl.img), set()).add(fl.src)
        fl.state = 2
        self.failures += 1
        kids, fl.children = fl.children, []
        nf = eng._replace_flow(fl, t)
        self.route(nf, t)
        for ch in kids:
            if ch.state != 0:
                continue
            if ch.deferred:
                ch.deferred = False
                ch.parent = None
                self.route(ch, t)
            else:
                self._fail(ch, t, exclude=False)

    def evicted(self, h: int, img: int) -> None:
        tr = self.tree.get(img)
        if tr is not None:
            tr.discard(h)
