"""Fetch an image from other exec hosts' agents before the catalog's sources.

Order: a live host that reports the image and holds it whole (its agent serves the
verified blob), then one that reports it while still downloading it (its agent streams
the download in progress, sge/agent/inflight.py), then the image's seed host, chosen
by rendezvous hashing over the live hosts, which is asked to stage the image: when
three cold hosts start the same image in the same second, all three pick the same
seed, the seed pulls from the origin once and the others stream from its download as
it lands (or copy the blob once it is done). Every peer byte goes through the sink
that verifies an origin download; a peer that is busy, slow, dead or lying, or whose
download in progress stops short, costs one attempt and `fetch` returns None, and the
caller goes to the origin. A busy peer (503) names the hosts it is sending the blob
to; those that are live cluster hosts are asked for their download in progress, each
once per pull (sge/agent/redirects.py).

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
from typing import TYPE_CHECKING, Callable, List, Literal, NamedTuple, Optional, Union

from ..errors import CacheFull, FetchError, SgeImageError
from ..fetch import httpwire as wire
from ..metrics import events as _events
from . import hosts as _hosts
from .auth import AuthError, check_answer, key_path, read_key, sign
from .deadline import Budget, DeadlineSocket, connect
from .protocol import HEADER as PROTOCOL_HEADER
from .protocol import PROTOCOL, StageAnswer
from .redirects import HEADER as REDIRECT_HEADER
from .redirects import Redirects

if TYPE_CHECKING:
    from ..config import AgentSettings, Image, Settings
    from ..fetch import Context
    from ..sink import Sink

MAX_HAVE_TRIES = 3
MAX_SEEDS = 3
MAX_STREAM_TRIES = 3    # streams from a seed's download in progress, per seed
POLL_MIN, POLL_MAX = 0.25, 2.0


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


class Streamed(NamedTuple):
    """The image came from the seed's download in progress while we waited."""
    digest: str


# What waiting on a seed host ends in (_await_seed): it has the image ("ready"), the
# stream got it meanwhile (Streamed), try the next seed ("next"), or stop asking seeds.
SeedOutcome = Union[Literal["ready", "next", "stop"], Streamed]


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
    if hint and not _hosts.is_me(hint):
        # The host that asked us has it (a parallel job's master): the load sensor
        # may not report it for another load_report_time.
        digest = get_blob(hint, image, sink, ctx, agent, budget=budget, limit=limit)
        if digest:
            return digest
    try:
        live, have = _hosts.live_hosts(image.complex, agent.live_window,
                                       _hosts.reader(agent.qhost))
    except Exception as e:  # no qhost, qmaster down: the origin it is
        ctx.log(f"image {image.name}: no peer list ({type(e).__name__}: {e}); using the sources")
        return None
    redirects = Redirects(live)
    others = [h for h in have if not _hosts.is_me(h)]
    random.shuffle(others)
    # qhost does not tell a whole blob from a download in progress (the load sensor
    # reports both): ask for whole blobs first, then stream from the hosts that had
    # none (404), which are likely mid-download.
    missing = []
    for host in others[:MAX_HAVE_TRIES]:
        answer = BlobAnswer()
        if budget.spent():
            return None
        digest = _get(host, image, sink, ctx, agent, redirects, budget, limit, answer=answer)
        if digest:
            return digest
        if answer.code == 403:
            # Agents serve the cluster's hosts only; this one (an admin host, a login
            # node) is not among them, and no other agent would answer otherwise.
            ctx.log(f"image {image.name}: this host is not one the cluster's agents serve "
                    f"(peer {host} answered 403); using the sources")
            return None
        if answer.code == 404:
            missing.append(host)
    for host in missing:
        if budget.spent():
            return None
        digest = _get(host, image, sink, ctx, agent, redirects, budget, limit, inflight=True)
        if digest:
            return digest
    if not delegate:
        return None
    # A seed that dies or cannot be reached is dropped and the seed chosen again among
    # the rest: the hosts that waited on it agree on the next one, so a killed seed
    # costs one more origin download, not one per waiting host. The hosts tried
    # above stay candidates: the seed itself is among them once its sensor reports
    # its pull in flight (its agent serves only whole blobs: 404), and a host that
    # dropped it chose another seed than the rest, often itself: a second origin
    # download (a cold array made 2 in one of four runs on the 3-host cluster; this
    # path explains it).
    candidates = list(live)
    for _ in range(MAX_SEEDS):
        if budget.spent():
            return None
        seed = _hosts.seed_for(image.sha256, candidates)
        if seed is None or _hosts.is_me(seed):
            return None
        streams: List[Optional[int]] = []

        def stream(seed: str = seed, streams: List[Optional[int]] = streams) -> Optional[str]:
            # The seed's download in progress, as it lands: a 404 (not begun yet:
            # waiting for its lock or for room) is free; a stream cut short counts.
            if len(streams) >= MAX_STREAM_TRIES:
                return None
            answer = BlobAnswer()
            digest = _get(seed, image, sink, ctx, agent, redirects, budget, limit,
                          inflight=True, answer=answer)
            if not digest and answer.code != 404:
                streams.append(answer.code)
            return digest
        outcome = _await_seed(seed, image, ctx, settings, stream, budget)
        if isinstance(outcome, Streamed):
            return outcome.digest
        if outcome == "ready":
            digest = _get(seed, image, sink, ctx, agent, redirects, budget, limit)
            if digest:
                return digest
        elif outcome == "stop":
            return None
        candidates.remove(seed)
    return None


def _await_seed(seed: str, image: Image, ctx: Context, settings: Settings,
                stream: Optional[Callable[[], Optional[str]]] = None,
                budget: Optional[Budget] = None) -> SeedOutcome:
    """Ask the seed's agent to stage the image and wait until it has it: "ready";
    Streamed(sha256) when `stream()` got it from the seed's download in progress
    meanwhile; "next" when the seed is dead, unreachable, failed for now or too slow
    (another seed may do); "stop" when asking any seed is pointless (no key, refused,
    or the image's sources refuse it for good)."""
    agent = settings.agent
    try:
        key = read_key(key_path(settings))
    except Exception as e:
        ctx.log(f"image {image.name}: cannot sign a staging request ({e}); using the sources")
        return "stop"
    budget = budget or Budget(agent.peer_budget)
    # Each poll ends by the seed's wait and the pull's budget, however slowly the
    # seed answers (issue 17: one header byte every 4 s outlived seed_wait).
    deadline = min(time.monotonic() + agent.seed_wait, budget.end)
    delay = POLL_MIN
    asked = False
    while time.monotonic() < deadline:
        try:
            answer = stage_request(seed, image.name, key, agent, ctx.connect_timeout,
                                   deadline=min(deadline, budget.until(agent.exchange_deadline)),
                                   step=ctx.read_timeout)
        except (OSError, http.client.HTTPException, ValueError, AuthError) as e:
            ctx.log(f"image {image.name}: seed host {seed} unreachable ({e})")
            return "next"
        state = answer.state
        if state == "ready":
            return "ready"
        if state not in ("staging", "retry"):  # retry: asked again next round
            ctx.log(f"image {image.name}: seed host {seed}: {state}: {answer.message}")
            return "next" if state == "failed" and answer.transient else "stop"
        if not asked:
            ctx.log(f"image {image.name}: waiting for seed host {seed} to stage it")
            asked = True
        digest = stream() if stream else None
        if digest:
            return Streamed(digest)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(POLL_MAX, delay * 1.5)
    ctx.log(f"image {image.name}: seed host {seed}: time on peers spent" if budget.spent()
            else f"image {image.name}: seed host {seed} did not finish within "
                 f"{agent.seed_wait:.0f}s")
    return "next"


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


def _get(host: str, image: Image, sink: Sink, ctx: Context, agent: AgentSettings,
         redirects: Redirects, budget: Budget, limit: Optional[int], inflight: bool = False,
         answer: Optional[BlobAnswer] = None) -> Optional[str]:
    """get_blob, and when `host` is busy, the live hosts it names as receiving the
    blob (asked for their download in progress; a target's own 503 is not followed)."""
    answer = BlobAnswer() if answer is None else answer
    digest = get_blob(host, image, sink, ctx, agent, inflight=inflight, answer=answer,
                      budget=budget, limit=limit)
    if digest or answer.code != 503 or not answer.peers:
        return digest
    targets = redirects.targets(answer.peers, host)
    ctx.log(f"image {image.name}: peer {host} is busy and names {REDIRECT_HEADER} "
            f"{answer.peers[:200]!r}: "
            + (f"trying {', '.join(targets)}" if targets else "none to follow"))
    for target in targets:
        if budget.spent():
            return None
        digest = get_blob(target, image, sink, ctx, agent, inflight=True, budget=budget,
                          limit=limit)
        if digest:
            return digest
    return None


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
            if resp.status == 403 and answer is not None:
                return None  # not trusted here: the caller says so once, for every peer
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
