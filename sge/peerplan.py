"""The peer plan: which other host a pull asks for an image, in what order, how long
it waits, and when it gives up on peers for the origin.

One source of truth (issue 18). The node agent's client (sge/agent/peers.py) carries
out each step over the network; the simulator (sge_sim) answers each step from its
model of the cluster. Both drive this module, so the model makes the decisions the
code makes and no stronger ones. Pure: no sockets, no clock, no randomness of its
own (the caller passes `now` and a `random.Random`), no file access.

The order, for one pull:
1. `hint`: a host said to have the image (a parallel job's master), whole blob.
2. Hosts whose load sensor reports the image (whole, or its download in progress:
   qhost does not tell them apart), at most MAX_HAVE_TRIES, shuffled, whole blob;
   then those that had no whole blob (404), for their download in progress (not in
   a staging another host asked for: those downloads may be fed by this host).
3. The image's seed: the first host of a rendezvous ranking of the live hosts by
   sha256(digest:host), the same on every host. The pull asks it to stage the image,
   streams from its download as it lands, and polls (POLL_MIN to POLL_MAX seconds)
   while it is busy or not begun; a seed that is dead, unreachable or failing for now
   is dropped and the next of the ranking asked, MAX_SEEDS in all, each for at most
   `seed_wait` seconds. This host being the seed, the pull goes to the origin: it is
   the one origin pull.
4. The origin.

A fan-out tree, not a star. A busy host (all upload slots taken) answers 503 with
up to MAX_NAMED hosts it is sending the image to; the pull asks those for their
download in progress, and when one of them is busy too, the hosts *it* names, up to
MAX_REDIRECT_DEPTH hops and MAX_REDIRECTS asks a round. Each host that streams
serves while it receives, so a burst of N cold hosts fills a tree of fan-out
`upload_slots` whose depth is about log(N)/log(upload_slots), and one origin pull
serves the cluster. A pull that finds every host of the tree busy waits for a slot
(polls the seed) rather than pulling from the origin: the origin is asked when the
peers cannot help (no seed, this host is the seed, the seeds fail, `seed_wait` or the
pull's peer budget runs out). With one-level redirects and the origin for a busy
tree, the simulator measures 1.87x one copy on day one (24.9x with weak peers); with
the plan, 1.00x (BENCHMARKS.md, node agent in the simulator).
"""
from __future__ import annotations

import enum
import hashlib
from collections import deque

TYPE_CHECKING = False  # typing costs ~2 ms; the prolog imports this only when cold
if TYPE_CHECKING:
    from random import Random
    from typing import Callable, Deque, Iterable, List, Optional, Sequence, Set

MAX_HAVE_TRIES = 3       # hosts reporting the image, asked for the whole blob
MAX_SEEDS = 3            # seeds of the ranking asked in turn
MAX_STREAM_CUTS = 3      # streams from a seed's download cut short, per seed
MAX_NAMED = 4            # hosts a busy answer names (the server: sge/agent/redirects.py)
MAX_REDIRECT_DEPTH = 6   # hops through busy answers (4 slots: 4**6 hosts deep enough)
MAX_REDIRECTS = 12       # hosts named by busy answers asked in one round
POLL_MIN, POLL_MAX, POLL_GROWTH = 0.25, 2.0, 1.5


class Kind(enum.Enum):
    BLOB = "blob"        # GET the whole blob
    STREAM = "stream"    # GET it, a download in progress will do
    STAGE = "stage"      # ask the seed to stage it (a signed request), read its state
    WAIT = "wait"        # sleep `delay` seconds, then ask next()
    ORIGIN = "origin"    # peers cannot help: the catalog's sources


class Answer(enum.Enum):
    GOT = "got"          # a verified image: the pull is done
    MISSING = "missing"  # 404: no such blob there (or its download not begun)
    BUSY = "busy"        # 503: no upload slot free; `named` the hosts it sends to
    REFUSED = "refused"  # 403: the cluster's agents do not serve this host
    FAILED = "failed"    # unreachable, slow, lying, cut short: one attempt spent
    READY = "ready"      # (STAGE) the seed has the image
    STAGING = "staging"  # (STAGE) under way, or asked again later
    NEXT = "next"        # (STAGE) this seed cannot do it now: the next seed
    STOP = "stop"        # (STAGE) no seed can (no key, the sources refuse the image)


class Ask:
    """One step of a plan. `depth`: hops through busy answers (0: asked directly)."""
    __slots__ = ("kind", "host", "delay", "depth")

    def __init__(self, kind: Kind, host: str = "", delay: float = 0.0, depth: int = 0) -> None:
        self.kind = kind
        self.host = host
        self.delay = delay
        self.depth = depth

    def __repr__(self) -> str:
        what = f" {self.host}" if self.host else f" {self.delay:.2f}s" if self.delay else ""
        return f"Ask({self.kind.value}{what}{f' depth {self.depth}' if self.depth else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ask) and (self.kind, self.host, self.delay, self.depth) == \
            (other.kind, other.host, other.delay, other.depth)


def rendezvous(digest: str, hosts: Iterable[str]) -> List[str]:
    """`hosts` ranked by sha256(digest:host), highest first: every host computes the
    same ranking from the same list, and a host joining or leaving moves only its
    own share of the images."""
    return sorted(hosts, key=lambda h: hashlib.sha256(f"{digest}:{h.lower()}".encode()).digest(),
                  reverse=True)


def seed_for(digest: str, hosts: Iterable[str]) -> Optional[str]:
    ranked = rendezvous(digest, hosts)
    return ranked[0] if ranked else None


class PeerPlan:
    """The steps of one pull. Call next(now) for a step, carry it out, and tell the
    plan how it went with answer(step, Answer, named, now); repeat until a step of
    kind ORIGIN, or until an answer GOT.

    `live`: the hosts qhost lists as live at the last load reports; `have`: those of
    them reporting the image; `is_me(host)`: whether a name is this host's.
    `delegate`: False for a staging another host asked for (it never asks a seed:
    two hosts that disagree on the seed cannot wait on each other)."""

    def __init__(self, digest: str, live: Sequence[str], have: Sequence[str],
                 is_me: Callable[[str], bool], rng: Random, *, hint: Optional[str] = None,
                 delegate: bool = True, seed_wait: float = 600.0,
                 redirect_depth: int = MAX_REDIRECT_DEPTH, wait_when_busy: bool = True,
                 whole_only: Optional[bool] = None) -> None:
        self.digest = digest
        self.live = list(live)
        # What-ifs for the simulator (the agent takes the defaults): how deep busy
        # answers are followed, and whether a busy tree is waited for or left for the
        # origin (what the model did before the plan).
        self.redirect_depth = redirect_depth
        self.wait_when_busy = wait_when_busy
        self.round_busy = False
        # A staging another host asked for (a seed's, a parallel job's host's) takes
        # whole blobs only from the hosts that report the image: their downloads in
        # progress may be fed by this host, at one remove or more. (The simulator's
        # "no seed" what-if has pulls that do not delegate yet stream.)
        self.whole_only = (not delegate) if whole_only is None else whole_only
        self.is_me = is_me
        self.seed_wait = seed_wait
        self.steps: Deque[Ask] = deque()
        if hint and not is_me(hint):
            self.steps.append(Ask(Kind.BLOB, hint))
        others = [h for h in have if not is_me(h) and h != hint]
        rng.shuffle(others)
        self.steps.extend(Ask(Kind.BLOB, h) for h in others[:MAX_HAVE_TRIES])
        self.missing: List[str] = []      # asked for the whole blob: 404
        self.missing_done = False
        self.redirects: Deque[Ask] = deque()
        self.asked_round: Set[str] = set()  # asked through busy answers this round
        self.bad: Set[str] = set()          # failed this pull (dead, slow, lying): not again
        self.redirect_budget = MAX_REDIRECTS
        self.rng = rng
        self.delegate = delegate
        self.candidates = list(live)       # seed candidates left
        self.seed: Optional[str] = None
        self.seed_end = 0.0
        self.seeds_asked = 0
        self.cuts = 0                      # streams from this seed cut short
        self.poll = POLL_MIN
        self.seed_state: Optional[Answer] = None  # the seed's last STAGE answer
        self.done = False
        self.why = ""                      # why the plan went to the origin
        self.notable = False               # ... and whether that is worth a log line

    # ------------------------------------------------------------------ steps

    def next(self, now: float) -> Ask:
        if self.done:
            return Ask(Kind.ORIGIN)
        while self.redirects:
            ask = self.redirects.popleft()
            if ask.host not in self.bad:  # failed since it was queued
                return ask
        if self.steps:
            return self.steps.popleft()
        if not self.missing_done:
            self.missing_done = True
            if self.missing and not self.whole_only:
                self.steps.extend(Ask(Kind.STREAM, h) for h in self.missing)
                return self.steps.popleft()
        if not self.delegate:
            return self._origin("a staging another host asked for never delegates", False)
        if self.seed is None:
            return self._next_seed(now)
        if now >= self.seed_end:
            self._drop_seed(f"seed host {self.seed} did not finish within "
                            f"{self.seed_wait:.0f}s")
            return self._next_seed(now)
        return Ask(Kind.STAGE, self.seed)

    def answer(self, ask: Ask, answer: Answer, now: float,
               named: Sequence[str] = ()) -> None:
        """How `ask` went; `named`: for BUSY, the (live, resolved) hosts it named."""
        if answer is Answer.GOT:
            self.done = True
            return
        if answer is Answer.REFUSED and ask.kind is not Kind.STAGE:
            # Agents serve the cluster's hosts only; no other agent would answer
            # otherwise (an admin host, a login node).
            self._origin(f"peer {ask.host} answered 403: this host is not one the "
                         f"cluster's agents serve")
            return
        if answer is Answer.BUSY:
            self.round_busy = True
            self._follow(named, ask)
        if answer is Answer.FAILED and ask.host != self.seed:
            self.bad.add(ask.host)
        if ask.kind is Kind.BLOB and answer is Answer.MISSING and ask.depth == 0 \
                and ask.host != self.seed:
            self.missing.append(ask.host)
        if ask.kind is Kind.STAGE:
            self._staged(answer, now)
            return
        if ask.host == self.seed and ask.depth == 0:
            # A BLOB or STREAM from the seed. Whatever it was, the rest of this round
            # are the redirects it named; then a wait, then the seed asked again.
            if answer is Answer.FAILED and ask.kind is Kind.STREAM:
                self.cuts += 1
            if not self.redirects:
                self._wait_round()
        elif ask.depth and not self.redirects and self.seed is not None:
            self._wait_round()

    # ------------------------------------------------------------------ internals

    def _follow(self, named: Sequence[str], via: Ask) -> None:
        """Queue the hosts a busy answer named: their downloads in progress, one hop
        deeper, each once a round, never this host or the one that named them."""
        if via.depth >= self.redirect_depth:
            return
        hosts: List[str] = []
        for h in list(named)[:MAX_NAMED]:  # a peer may name one host twice: asked once
            if h != via.host and h not in hosts and h not in self.asked_round \
                    and h not in self.bad and not self.is_me(h):
                hosts.append(h)
        self.rng.shuffle(hosts)  # many busy clients spread over the named hosts
        hosts = hosts[:self.redirect_budget]
        self.redirect_budget -= len(hosts)
        self.asked_round.update(hosts)
        # Depth first: the deepest hosts of a tree are the likeliest to have a slot.
        self.redirects.extendleft(Ask(Kind.STREAM, h, depth=via.depth + 1)
                                  for h in reversed(hosts))

    def _staged(self, answer: Answer, now: float) -> None:
        self.seed_state = answer
        if answer is Answer.READY:
            self.steps.append(Ask(Kind.BLOB, self.seed or ""))
        elif answer is Answer.STAGING:
            if self.cuts < MAX_STREAM_CUTS:
                self.steps.append(Ask(Kind.STREAM, self.seed or ""))
            else:
                self._wait_round()
        elif answer is Answer.NEXT or answer is Answer.FAILED:
            self._drop_seed(f"seed host {self.seed} cannot stage it now")
        else:  # STOP, REFUSED: asking any seed is pointless
            self._origin(f"seed host {self.seed} refused ({answer.value})")

    def _wait_round(self) -> None:
        if self.round_busy and not self.wait_when_busy:
            self._origin("every peer asked is busy")
            return
        self.round_busy = False
        self.steps.append(Ask(Kind.WAIT, delay=self.poll))
        self.poll = min(POLL_MAX, self.poll * POLL_GROWTH)
        self.asked_round.clear()
        self.redirect_budget = MAX_REDIRECTS

    def _next_seed(self, now: float) -> Ask:
        if self.seeds_asked >= MAX_SEEDS:
            return self._origin(f"{MAX_SEEDS} seed hosts could not stage it")
        seed = seed_for(self.digest, self.candidates)
        if seed is None:
            return self._origin("no live host to ask", False)
        if self.is_me(seed):
            return self._origin("this host is the image's seed", False)
        self.seed, self.seed_end, self.seeds_asked = seed, now + self.seed_wait, \
            self.seeds_asked + 1
        self.cuts, self.poll, self.seed_state = 0, POLL_MIN, None
        self.steps.clear()
        return Ask(Kind.STAGE, seed)

    def _drop_seed(self, why: str) -> None:
        """A seed that dies, cannot be reached or is too slow is dropped and the seed
        chosen again among the rest (by next()): the hosts that waited on it agree on
        the next one, so a dead seed costs one more origin pull, not one per host."""
        self.why = why
        if self.seed in self.candidates:
            self.candidates.remove(self.seed)
        self.seed = None
        self.steps.clear()
        self.redirects.clear()

    def _origin(self, why: str, notable: bool = True) -> Ask:
        self.done = True
        self.why, self.notable = why, notable
        self.steps.clear()
        self.redirects.clear()
        return Ask(Kind.ORIGIN)
