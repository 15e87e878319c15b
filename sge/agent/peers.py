"""Fetch an image from other exec hosts' agents before the catalog's sources.

What to ask, in what order, and when to give up is the peer plan's (sge/peerplan.py:
the hint, hosts reporting the image, the seed, busy hosts' named receivers as a tree,
polling, the origin), which the simulator drives as well; this module carries out its
steps over the network. Every peer byte goes through the sink that verifies an origin
download; a peer that is busy, slow, dead or lying, or whose download in progress
stops short, costs one step, and when the plan says the origin, `fetch` returns None
and the caller goes to the catalog's sources.

A staging that a peer asked for never delegates again (the agent passes
`Peers(delegate=False)`): two hosts that disagree on the seed cannot wait on each other.
Staging (sge/stage.py) takes the peer source as a parameter; nothing here is switched
by a module global.

Time and room are bounded as tightly as bytes (issue 17). Every exchange (connect,
request, the answer's whole head; a staging answer whole) ends by
`agent.exchange_deadline` (sge/agent/deadline.py); all of a pull's time on peers,
blob bodies included, ends by `agent.peer_budget`, and then the pull goes to the
catalog's sources. A peer never writes more than the catalog's size, or for an entry
without one more than the cache's cap; a disk that fills while a peer streams is
not the cache's problem: nothing is evicted for a peer, the origin is asked.
Staging answers count only when signed with the key (sge/agent/auth.py).
"""
from __future__ import annotations

import http.client
import json
import random
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set

from ..errors import CacheFull, FetchError, SgeImageError
from ..fetch import httpwire as wire
from ..metrics import events as _events
from ..peerplan import Answer, Kind, PeerPlan
from . import hosts as _hosts
from . import redirects
from .auth import AuthError, check_answer, key_path, read_key, sign
from .deadline import Budget, DeadlineSocket, connect
from .protocol import HEADER as PROTOCOL_HEADER
from .protocol import PROTOCOL, StageAnswer
from .redirects import HEADER as REDIRECT_HEADER

if TYPE_CHECKING:
    from ..config import AgentSettings, Image, Settings
    from ..fetch import Context
    from ..sink import Sink



class _NoRoom(Exception):
    """The disk filled while a peer streamed: stop asking peers."""


class BlobAnswer:
    """How a peer answered a blob GET that gave no verified blob: its HTTP status
    (404: no such blob there; 503: busy) and, when busy, the hosts it named as
    receiving the blob (sge/agent/redirects.py)."""
    __slots__ = ("code", "peers")

    def __init__(self) -> None:
        self.code: Optional[int] = None
        self.peers: Optional[str] = None


class Peers:
    """Other exec hosts' agents as a source for sge/stage.py, which takes one as a
    parameter. `delegate`: whether this staging may ask a seed host to pull for it
    (False for a staging a peer asked for). `hint`: a host said to have the image (a
    parallel job's master, whose staging request named it), tried first."""

    def __init__(self, delegate: bool = True, hint: Optional[str] = None) -> None:
        self.delegate = delegate
        self.hint = hint

    def fetch(self, image: Image, sink: Sink, ctx: Context, settings: Settings) -> Optional[str]:
        """Fill `sink` with `image` from a peer and return its verified sha256, or None."""
        agent = settings.agent
        if not agent.enabled or not agent.peers or not image.sha256:
            return None
        budget = Budget(agent.peer_budget)
        # A size-less entry: a peer may send up to the cache's cap, no more (issue 17:
        # an endless body filled the cache filesystem).
        limit = image.size if image.size is not None else settings.cache.max_size
        try:
            digest = _fetch(image, sink, ctx, settings, budget, limit, self.delegate,
                            self.hint)
        except _NoRoom:
            return None
        if digest is None and budget.spent():
            ctx.log(f"image {image.name}: {agent.peer_budget:.0f}s on peers spent "
                    f"(agent.peer_budget); using the sources")
        return digest

    def __repr__(self) -> str:
        return f"Peers(delegate={self.delegate}, hint={self.hint!r})"


def _fetch(image: Image, sink: Sink, ctx: Context, settings: Settings, budget: Budget,
           limit: int, delegate: bool, hint: Optional[str]) -> Optional[str]:
    assert image.sha256 is not None  # Peers.fetch asks peers only for a digest
    agent = settings.agent
    try:
        live, have = _hosts.live_hosts(image.complex, agent.live_window,
                                       _hosts.reader(agent.qhost))
    except Exception as e:  # no qhost, qmaster down: the hint, if any, then the origin
        ctx.log(f"image {image.name}: no peer list ({type(e).__name__}: {e}); using the sources")
        live, have = [], []
    plan = PeerPlan(image.sha256, live, have, _hosts.is_me, random.Random(), hint=hint,
                    delegate=delegate, seed_wait=agent.seed_wait)
    return follow_plan(plan, image, sink, ctx, settings, budget, limit, live)


def follow_plan(plan: PeerPlan, image: Image, sink: Sink, ctx: Context, settings: Settings,
                budget: Budget, limit: Optional[int], live: Sequence[str]) -> Optional[str]:
    """Carry out the plan's steps (sge/peerplan.py) until a verified image (its
    sha256) or the origin (None). Every step ends by the pull's budget."""
    agent = settings.agent
    by_ip: Optional[Dict[str, str]] = None  # resolved at the first busy answer only
    key: Optional[bytes] = None
    said: Set[str] = set()   # what was logged once for this pull
    while True:
        if budget.spent():
            return None
        ask = plan.next(time.monotonic())
        if ask.kind is Kind.ORIGIN:
            if plan.notable:
                ctx.log(f"image {image.name}: {plan.why}; using the sources")
            return None
        if ask.kind is Kind.WAIT:
            time.sleep(max(0.0, min(ask.delay, budget.left())))
            continue
        if ask.kind is Kind.STAGE:
            if key is None:
                try:
                    key = read_key(key_path(settings))
                except Exception as e:
                    ctx.log(f"image {image.name}: cannot sign a staging request ({e}); "
                            f"using the sources")
                    return None
            answer = ask_seed(ask.host, image, key, ctx, agent,
                              min(plan.seed_end, budget.until(agent.exchange_deadline)))
            if answer is Answer.STAGING and "wait " + ask.host not in said:
                said.add("wait " + ask.host)
                ctx.log(f"image {image.name}: waiting for seed host {ask.host} to stage it")
            plan.answer(ask, answer, time.monotonic())
            continue
        blob = BlobAnswer()
        digest = get_blob(ask.host, image, sink, ctx, agent, inflight=ask.kind is Kind.STREAM,
                          answer=blob, budget=budget, limit=limit)
        if digest:
            return digest
        named: List[str] = []
        if blob.code == 503:
            if by_ip is None:
                by_ip = _by_ip(live)
            named = [h for h in (by_ip.get(ip) for ip in redirects.parse(blob.peers)) if h]
            if "busy " + ask.host not in said:
                said.add("busy " + ask.host)
                ctx.log(f"image {image.name}: peer {ask.host} is busy and names "
                        f"{REDIRECT_HEADER} {(blob.peers or '')[:200]!r}: "
                        + (f"trying {', '.join(named)}" if named else "none to follow"))
        plan.answer(ask, _answer_of(blob), time.monotonic(), named)


def _answer_of(blob: BlobAnswer) -> Answer:
    return {404: Answer.MISSING, 503: Answer.BUSY, 403: Answer.REFUSED}.get(
        blob.code or 0, Answer.FAILED)


def _by_ip(live: Sequence[str]) -> Dict[str, str]:
    """Address -> live host name: a busy answer names addresses, and only a live
    cluster host's is followed, so a lying peer cannot send a pull anywhere else (a
    cluster host serves wrong bytes at worst, which the sink refuses)."""
    out: Dict[str, str] = {}
    for h in live:
        addr = _hosts.address_of(h)
        if addr is not None:
            out.setdefault(addr, h)
    return out


def ask_seed(seed: str, image: Image, key: bytes, ctx: Context, agent: AgentSettings,
             deadline: float) -> Answer:
    """One signed staging request to the seed, ending by `deadline`, as the plan's
    answer: READY, STAGING (staging, or asked again later), NEXT (dead, unreachable,
    failed for now: another seed may do) or STOP (refused, or the image's sources
    refuse it for good)."""
    try:
        answer = stage_request(seed, image.name, key, agent, ctx.connect_timeout,
                               deadline=deadline, step=ctx.read_timeout)
    except (OSError, http.client.HTTPException, ValueError, AuthError) as e:
        ctx.log(f"image {image.name}: seed host {seed} unreachable ({e})")
        return Answer.NEXT
    if answer.state == "ready":
        return Answer.READY
    if answer.state in ("staging", "retry"):  # retry: asked again next round
        return Answer.STAGING
    ctx.log(f"image {image.name}: seed host {seed}: {answer.state}: {answer.message}")
    return Answer.NEXT if answer.state == "failed" and answer.transient else Answer.STOP


def stage_request(host: str, name: str, key: bytes, agent: AgentSettings, timeout: float = 10.0,
                  source: str = "-", deadline: Optional[float] = None,
                  step: Optional[float] = None) -> StageAnswer:
    """One signed staging request to `host`'s agent -> its signed answer, the whole
    exchange ending by
    `deadline` (default: agent.exchange_deadline from now).

    An answer that is not the agent's own (unsigned or forged: a process on its port,
    the server's own 503 when busy) raises AuthError or ValueError, which callers
    treat as "unreachable, ask again" (issue 17: a busy 503 became "refused" and a
    parallel job was rescheduled)."""
    line = sign(key, name, host, source)
    body = line.encode()
    if deadline is None:
        deadline = time.monotonic() + agent.exchange_deadline
    conn = _connection(host, agent, timeout, deadline, step)
    try:
        conn.request("POST", "/stage", body=body,
                     headers={"Content-Type": "text/plain", "Content-Length": str(len(body)),
                              PROTOCOL_HEADER: PROTOCOL})
        resp = conn.getresponse()
        data = resp.read(64 << 10)
    finally:
        conn.close()
    try:
        answer = json.loads(data.decode() or "{}")
    except UnicodeDecodeError:
        raise ValueError(f"HTTP {resp.status}: malformed answer") from None
    if not isinstance(answer, dict) or "mac" not in answer:
        # During a rolling upgrade an agent of the kit before 0.2 answers unsigned: it is
        # told apart by its missing protocol header, and not believed either (anyone on
        # its port could say the same); the job waits, then is rescheduled.
        older = resp.getheader(PROTOCOL_HEADER) is None and resp.getheader("Server") == "sge-image-agent"
        raise ValueError(f"HTTP {resp.status}: an unsigned answer"
                         + (" (an agent of a kit before protocol 2: upgrade that host)"
                            if older else ""))
    return StageAnswer.from_body(check_answer(key, line, answer), resp.status)


def get_blob(host: str, image: Image, sink: Sink, ctx: Context, agent: AgentSettings,
             inflight: bool = False, answer: Optional[BlobAnswer] = None,
             budget: Optional[Budget] = None, limit: Optional[int] = None) -> Optional[str]:
    """GET the blob from `host`'s agent into the sink and verify it -> sha256, or None
    (after logging why) with the sink emptied for the next source. With `inflight`,
    a download in progress on that host will do too. `answer` gets how the host
    answered when it gave no blob.

    The connect and the answer's head end by agent.exchange_deadline, the body by the
    budget's end; the body is at most `limit` bytes (default: the catalog's size)."""
    budget = budget or Budget(agent.peer_budget)
    limit = image.size if limit is None else limit
    shown = f"peer {host}"
    try:
        if sink.received:
            sink.reset()
        conn = _connection(host, agent, ctx.connect_timeout,
                           budget.until(agent.exchange_deadline), ctx.read_timeout)
        try:
            headers = {"User-Agent": wire.USER_AGENT}
            if inflight:
                headers["X-Sge-Image-Inflight"] = "1"
            sock = conn.sock  # http.client lets go of it once the answer says close
            conn.request("GET", f"/blobs/sha256/{image.sha256}", headers=headers)
            wire.tune(conn, ctx)
            resp = conn.getresponse()
            # The head is in: the body may take until the budget's end, at the
            # low-speed rate or better.
            if isinstance(sock, DeadlineSocket):
                sock.extend(budget.end)
            if answer is not None:
                answer.code = resp.status
                if resp.status == 503:
                    answer.peers = resp.getheader(REDIRECT_HEADER)
            if resp.getheader("X-Sge-Image-Inflight") == "1":
                shown += " (download in progress)"
            sink.source = "peer_inflight" if resp.getheader("X-Sge-Image-Inflight") == "1" else "peer"
            if resp.status == 404 and inflight:
                return None  # not begun there yet: nothing to log on every poll
            if resp.status in (403, 503) and answer is not None:
                # Not trusted here, or busy: the caller says so once a pull, not on
                # every poll of a busy host (follow_plan).
                return None
            if resp.status != 200:
                raise FetchError(f"{shown}: HTTP {resp.status} {resp.reason}"
                                 + (" (busy)" if resp.status == 503 else ""))
            length = resp.getheader("Content-Length")
            if image.size is not None and length != str(image.size):
                raise FetchError(f"{shown}: offers {length} bytes, expected {image.size}")
            # Without a length the body could be endless; the agent always sends one.
            if length is None or not length.isascii() or not length.isdigit() \
                    or len(length) > 19 or limit is None or int(length) > limit:
                raise FetchError(f"{shown}: offers {length} bytes, more than this pull "
                                 f"takes from a peer ({limit})")
            wire.stream_body(resp, sink, ctx, shown)
        finally:
            conn.close()
        digest = sink.finish(shown)
        ctx.log(f"image {image.name}: {sink.received} bytes from {shown}, verified")
        return digest
    except CacheFull as e:
        # Never evict for a peer's bytes (issue 17: a peer's endless body evicted
        # every image and the pull never asked the origin): drop them, use the sources.
        ctx.log(f"image {image.name}: {shown}: {e}; not evicting for a peer, using the sources")
        sink.reset(after_full=True)
        raise _NoRoom() from None
    except wire.Interrupted as e:
        ctx.log(f"image {image.name}: {shown}: {e}")
        _events.peer_failed(sink.path, e)
    except SgeImageError as e:
        ctx.log(f"image {image.name}: {e}")
        _events.peer_failed(sink.path, e)
    except (OSError, http.client.HTTPException) as e:
        ctx.log(f"image {image.name}: {shown}: {type(e).__name__}: {e}")
        _events.peer_failed(sink.path, e)
    try:
        sink.reset()
    except SgeImageError:
        raise
    return None


def _connection(host: str, agent: AgentSettings, timeout: float, deadline: float,
                step: Optional[float] = None) -> http.client.HTTPConnection:
    """A plain connection to `host`'s agent (never through a proxy), sent from this
    host's own address: agents trust cluster hosts by address, and a host with
    several addresses must speak from the one its name resolves to. The connect
    waits at most `timeout`; it and everything after it end by `deadline`, and no
    single wait is longer than `step` (the read timeout)."""
    addr = _hosts.address_of(host)
    if addr is None:
        raise OSError(f"cannot resolve host {host}")
    src = _hosts.address_of(_hosts.my_host())
    try:
        return connect(addr, agent.port, deadline, timeout, step, src)
    except OSError as e:
        if src is None or e.errno != 99:  # EADDRNOTAVAIL: our name is not ours here
            raise
        return connect(addr, agent.port, deadline, timeout, step)
