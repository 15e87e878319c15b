"""The node agent in the model: exec hosts serve verified blobs to each other.

Why a separate piece: the origin, not the hosts' links, is what collapses a
cold day, and only copies between exec hosts take it out of the path.

* Every host that holds an image, or is pulling it, can serve it: at most
  ``peer_upload_slots`` uploads at once, sharing ``peer_upload_gbit``.  How
  fast a copy goes is the links' part (`links.LinkNet`): a max-min fair share
  of the receiver's link in (with its origin pulls, under its disk's ceiling),
  the sender's link out and, with racks, the uplinks it crosses, re-evaluated
  whenever a transfer starts or ends.
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

import hashlib
import random
from typing import Dict, Iterable, List, Optional, Protocol, Set

from sge.peerplan import MAX_NAMED, Answer, Ask, Kind, PeerPlan, seed_for

from .links import MixedNet
from .model import Flow, HostCache, SimConfig


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


def seed_host(img: int, hosts: int) -> int:
    """The host the agent asks first to stage image `img` (the plan's rendezvous
    ranking over the model's host names)."""
    digest = hashlib.sha256(f"img{img}".encode()).hexdigest()
    return int(str(seed_for(digest, [f"h{i}" for i in range(hosts)]))[1:])


class Agent:
    """The node agent's decisions, made by the kit's own peer plan (sge/peerplan.py):
    each step a real pull would take is answered from the model's state at once
    (a blob GET, a stream of a download in progress, a staging request, a wait), so
    the model asks whom the code asks, follows busy answers as deep as the code does,
    and waits or goes to the origin when the code does (see module doc)."""

    def __init__(self, eng: AgentEngine, net: MixedNet, dead: Iterable[int] = (),
                 lying: Iterable[int] = ()) -> None:
        self.eng = eng
        self.net = net  # the engine's network: origin, peers and timed events
        sim = eng.sim
        self.slots = sim.peer_upload_slots
        self.pipeline = sim.peer_pipeline
        self.seed = sim.peer_seed
        self.redirect_depth = sim.peer_redirect_depth if sim.peer_redirect else 0
        self.wait_when_busy = sim.peer_wait_when_busy
        self.seed_wait = sim.peer_seed_wait_s
        self.budget = sim.peer_budget_s
        self.lag = sim.pipeline_lag_s
        self.timeout = sim.peer_timeout_s
        self.up_used = [0] * eng.H
        self.sending: List[List[Flow]] = [[] for _ in range(eng.H)]  # what each host uploads
        self.names = [f"h{i}" for i in range(eng.H)]
        self.index = {n: i for i, n in enumerate(self.names)}
        self.digests: Dict[int, str] = {}
        self.rng = random.Random(sim.seed)
        self.dead = set(dead)
        self.lying = set(lying)
        # measurements
        self.peer_bytes = 0.0
        self.peer_transfers = 0
        self.failures = 0
        self.saturated = 0       # busy answers (503)
        self.seed_pulls = 0
        self.waits = 0           # poll rounds spent waiting for a slot or a seed
        self.max_depth = 0       # the longest chain of copies in flight

    def _digest(self, img: int) -> str:
        d = self.digests.get(img)
        if d is None:
            d = self.digests[img] = hashlib.sha256(f"img{img}".encode()).hexdigest()
        return d

    def _plan(self, fl: Flow, t: float) -> PeerPlan:
        if fl.plan is None:
            me = self.names[fl.host]
            fl.plan = PeerPlan(self._digest(fl.img), self.names,
                               [self.names[s] for s in self.eng.warm_view[fl.img]],
                               me.__eq__, self.rng,
                               # a staging a seed does for others never delegates
                               delegate=self.seed and fl.kind != 2, whole_only=fl.kind == 2,
                               seed_wait=self.seed_wait, redirect_depth=self.redirect_depth,
                               wait_when_busy=self.wait_when_busy)
            fl.t_plan = t
        return fl.plan

    # ---------------------------------------------------------------- choice

    def route(self, fl: Flow, t: float) -> None:
        """Take fl's plan forward from t until it starts a transfer, waits, or goes
        to the origin."""
        plan = self._plan(fl, t)
        while True:
            ask = plan.next(t) if t - fl.t_plan < self.budget else Ask(Kind.ORIGIN)
            fl.ask = ask
            if ask.kind is Kind.ORIGIN:
                self._from_origin(fl, t)
                return
            if ask.kind is Kind.WAIT:
                self.waits += 1
                fl.src, fl.parent, fl.polling = -1, None, True
                self.net.later(t + ask.delay, fl)
                return
            s = self.index[ask.host]
            if s in self.dead:  # its agent never answers: the step's answer comes later
                self._from_dead(fl, s, t)
                return
            if ask.kind is Kind.STAGE:
                plan.answer(ask, self._stage(s, fl.img, t), t)
                continue
            c = self.eng.caches[s]
            parent: Optional[Flow] = None
            if fl.img not in c.present:
                parent = c.inflight.get(fl.img)
                if ask.kind is Kind.BLOB or not self.pipeline or parent is None \
                        or not self._flowing(parent, fl.host):
                    plan.answer(ask, Answer.MISSING, t)
                    continue
            if self.up_used[s] >= self.slots:
                self.saturated += 1
                named = [self.names[x.host] for x in self.sending[s] if x.img == fl.img]
                plan.answer(ask, Answer.BUSY, t, named[:MAX_NAMED])
                continue
            self._from_peer(fl, s, parent, t)
            return

    def _flowing(self, f: Flow, h: int) -> bool:
        """A download in progress serves while its bytes move (not waiting for room,
        a seed or a slot) and if it does not itself stream from h."""
        if f.blocked or f.timeout or f.polling:
            return False
        p: Optional[Flow] = f
        while p is not None:
            if p.host == h:
                return False
            p = p.parent
        return True

    def _stage(self, s: int, img: int, t: float) -> Answer:
        """The seed's answer to a staging request: it has it, is at it (or starts it
        now: one origin pull for the cluster), or cannot (no room: the next seed)."""
        c = self.eng.caches[s]
        if img in c.present:
            return Answer.READY
        f = c.inflight.get(img)
        if f is not None:
            return Answer.NEXT if f.blocked else Answer.STAGING
        if self.eng._start_pull(s, img, t, False, kind=2) is None:
            return Answer.NEXT
        self.seed_pulls += 1
        return Answer.STAGING

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
        fl.src = s
        fl.parent = parent
        fl.rem = fl.size
        fl.depth = 0
        if parent is not None:
            parent.children.append(fl)
            fl.depth = parent.depth + 1
            self.max_depth = max(self.max_depth, fl.depth)
        self.up_used[s] += 1
        self.sending[s].append(fl)
        eng = self.eng
        if eng.in_window:
            self.peer_bytes += fl.size
            self.peer_transfers += 1
        eng.peer_pulls[fl.host] += 1
        self.net.add(t, fl)

    def _release(self, fl: Flow) -> None:
        self.up_used[fl.src] -= 1
        self.sending[fl.src].remove(fl)

    # ---------------------------------------------------------------- outcomes

    def arrived(self, fl: Flow, t: float) -> bool:
        """fl's bytes are all here (or its peer timed out, or its wait is over).
        True when it is verified now; otherwise the agent has parked it, or taken
        its plan a step further."""
        if fl.polling:  # its poll round's wait is over: the plan's next step
            fl.polling = False
            self.route(fl, t)
            return False
        if fl.src < 0:
            return True
        if fl.timeout:  # a dead agent: the step failed (a dead seed: the next seed)
            fl.timeout = False
            self.failures += 1
            if fl.plan is not None and fl.ask is not None:
                fl.plan.answer(fl.ask, Answer.NEXT if fl.ask.kind is Kind.STAGE
                               else Answer.FAILED, t)
            self.route(fl, t)
            return False
        p = fl.parent
        if p is not None and p.state == 0:
            fl.parked = True  # caught up with the source's own pull
            return False
        if fl.src in self.lying:
            self._fail(fl, t)
            return False
        self._release(fl)
        return True

    def finished(self, fl: Flow, t: float) -> None:
        """fl is verified: what streamed from it may end now."""
        kids, fl.children = fl.children, []
        for ch in kids:
            if ch.state != 0:
                continue
            ch.parent = None
            if ch.parked:
                ch.parked = False
                self.net.later(t + self.lag, ch)

    def _fail(self, fl: Flow, t: float) -> None:
        """fl cannot be used (its bytes did not verify, or its source's pull failed):
        drop it, fail what streamed from it, and take the plan a step further."""
        eng = self.eng
        if fl.inpeer:
            self.net.peer.remove(t, fl)
        if fl.src >= 0 and not fl.timeout and not fl.polling:
            self._release(fl)
        fl.state = 2
        self.failures += 1
        kids, fl.children = fl.children, []
        nf = eng._replace_flow(fl, t)
        nf.plan, nf.t_plan = fl.plan, fl.t_plan
        if fl.plan is not None and fl.ask is not None:
            fl.plan.answer(fl.ask, Answer.FAILED, t)
        self.route(nf, t)
        for ch in kids:
            if ch.state == 0:
                self._fail(ch, t)

    def evicted(self, h: int, img: int) -> None:
        """Nothing to forget: who has what is read from the caches at each step."""
