"""The node agent against real sockets: what it serves, what it refuses, and that a
peer can never make a pull fail or publish wrong bytes.

Agents run as real `python -m sge.agent` processes on their own 127.0.0.x address,
drop to `nobody` after binding, and find "the cluster" through a stand-in qhost.
"""
import hashlib
import json
import os
import socket
import threading
import time

import pytest

from tests.support.agentkit import AgentWorld, body_of, free_port, raw, status_of
from tests.support.common import payload

A, B, STRANGER = "127.0.0.21", "127.0.0.22", "127.0.0.29"
MB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent binds, forks and drops root")


def put_blob(world, host, data):
    """A verified blob in `host`'s cache, as staging leaves it (root's, 0444)."""
    from sge import config
    from sge.cache import Cache
    settings = config.load(world.config(host), use_snapshot=False)
    cache = Cache.from_settings(settings)
    cache.ensure_layout()
    digest = hashlib.sha256(data).hexdigest()
    path = cache.blob_path(digest)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o444)
    return digest, cache


@pytest.fixture
def world(http_server):
    data = payload(3 * MB + 17, seed=10)
    digest = http_server.add_file("img.sif", data)
    images = {"img": {"url": http_server.url("img.sif"), "sha256": digest, "size": len(data)}}
    w = AgentWorld(images, free_port(A))
    w.data, w.digest, w.origin = data, digest, http_server
    yield w
    w.close()


def get(ip, port, path, headers=(), method="GET", source=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    return raw(ip, port, head.encode(), source=source)


# ------------------------------------------------------------------ serving

def test_serves_the_blob_whole_and_by_range(world):
    put_blob(world, A, world.data)
    world.start(A)
    size, path = len(world.data), f"/blobs/sha256/{world.digest}"
    r = get(A, world.port, path)
    assert status_of(r) == 200 and body_of(r) == world.data
    cases = {"bytes=0-0": world.data[:1], "bytes=-1": world.data[-1:],
             f"bytes={size - 1}-": world.data[-1:], "bytes=100-199": world.data[100:200],
             f"bytes=10-{size + 50}": world.data[10:], "bytes=-999999999": world.data}
    for rng, want in cases.items():
        r = get(A, world.port, path, [f"Range: {rng}"])
        assert status_of(r) == 206, rng
        assert body_of(r) == want, rng
    for rng in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        r = get(A, world.port, path, [f"Range: {rng}"])
        assert status_of(r) == 416, rng
        assert f"bytes */{size}".encode() in r
    # Forms the agent does not take are ignored: the whole body, as RFC 9110 allows.
    for rng in ("bytes=0-1,5-6", "bytes=9-2", "items=0-1", "bytes=x-y", "bytes=--1"):
        r = get(A, world.port, path, [f"Range: {rng}"])
        assert status_of(r) == 200 and body_of(r) == world.data, rng
    r = get(A, world.port, path, method="HEAD")
    assert status_of(r) == 200 and body_of(r) == b"" and f"Content-Length: {size}".encode() in r


def test_server_runs_as_its_own_user_after_binding(world):
    import pwd
    uid = str(pwd.getpwnam(world.user).pw_uid)
    put_blob(world, A, world.data)
    p = world.start(A)
    # The port listens before the fork (the root side binds it): on a loaded machine
    # the server child may not exist yet, or not have dropped root yet.
    deadline = time.monotonic() + 20
    while True:
        children = [int(c) for c in open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()]
        uids = [line for line in open(f"/proc/{children[0]}/status")
                if line.startswith("Uid:")][0] if len(children) == 1 else ""
        if set(uids.split()[1:]) == {uid} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(children) == 1
    assert set(uids.split()[1:]) == {uid} and uid not in ("0", "65534")
    assert os.stat(f"/proc/{p.pid}").st_uid == 0  # the root side that stages


@pytest.mark.parametrize("target", [
    "/blobs/sha256/../../../../etc/passwd",
    "/blobs/sha256/%2e%2e/%2e%2e/etc/passwd",
    "/blobs/sha256/..%2f..%2f..%2fetc%2fpasswd",
    "/blobs/sha256/{D}/",
    "/blobs/sha256/{D}?x=1",
    "/blobs/sha256/{U}",
    "/blobs/sha256/{D}%00",
    "//blobs/sha256/{D}",
    "/blobs/sha256/./{D}",
    "/blobs/sha256/",
    "/blobs/",
    "/",
    "/images/img",
    "/etc/passwd",
    "http://127.0.0.21/blobs/sha256/{D}",
])
def test_only_the_exact_digest_path_is_served(world, target):
    put_blob(world, A, world.data)
    world.start(A)
    target = target.replace("{D}", world.digest).replace("{U}", world.digest.upper())
    r = get(A, world.port, target)
    assert status_of(r) in (400, 404), (target, r[:200])
    assert world.data[:64] not in r and b"root:" not in r


def test_symlinks_fifos_and_directories_in_blobs_are_not_served(world):
    _, cache = put_blob(world, A, world.data)
    blobs = os.path.dirname(cache.blob_path(world.digest))
    secret = os.path.join(world.dir, "secret")
    with open(secret, "wb") as f:
        f.write(b"do not serve me")
    os.chmod(secret, 0o644)
    link, fifo, sub = "a" * 64, "b" * 64, "c" * 64
    os.symlink(secret, os.path.join(blobs, link))
    os.mkfifo(os.path.join(blobs, fifo), 0o644)
    os.mkdir(os.path.join(blobs, sub))
    world.start(A)
    for name in (link, fifo, sub):
        r = get(A, world.port, f"/blobs/sha256/{name}")
        assert status_of(r) == 404, name
        assert b"do not serve me" not in r
    r = get(A, world.port, f"/blobs/sha256/{world.digest}")
    assert status_of(r) == 200  # still serving after the fifo


@pytest.mark.parametrize("data,want", [
    (b"\x00\x01\x02garbage\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 400),
    (b"get /blobs/sha256/x HTTP/1.1\r\n\r\n", 400),
    (b"GET /blobs HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET /blobs HTTP/1.1\r\n : empty name\r\n\r\n", 400),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"y" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000 + b"\r\n", 431),
    (b"DELETE /blobs/sha256/" + b"a" * 64 + b" HTTP/1.1\r\n\r\n", 405),
    (b"GET /stage HTTP/1.1\r\n\r\n", 405),
    (b"POST /stage HTTP/1.1\r\n\r\n", 411),
    (b"POST /stage HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413),
    (b"POST /stage HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 413),
])
def test_garbage_requests_get_an_error_and_the_agent_lives(world, data, want):
    put_blob(world, A, world.data)
    world.start(A)
    r = raw(A, world.port, data)
    assert status_of(r) == want, r[:200]
    r = get(A, world.port, f"/blobs/sha256/{world.digest}")
    assert status_of(r) == 200 and body_of(r) == world.data


def test_a_slow_loris_is_cut_off_and_others_are_served_meanwhile(world):
    put_blob(world, A, world.data)
    world.start(A, header_timeout=2)
    s = socket.create_connection((A, world.port), timeout=30)
    got = []

    def dribble():
        try:
            for b in b"GET /blobs/sha256/" + world.digest.encode():
                s.send(bytes([b]))
                time.sleep(0.2)
        except OSError as e:  # the server closed on us: that is the point
            got.append(e)
    t = threading.Thread(target=dribble)
    t.start()
    # Meanwhile a normal client is served.
    r = get(A, world.port, f"/blobs/sha256/{world.digest}")
    assert body_of(r) == world.data
    answer = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    s.close()
    t.join()
    assert status_of(answer) == 408  # closed before the head was complete


def test_too_many_clients_get_503(world):
    big = payload(96 * MB, seed=3)
    digest, _ = put_blob(world, A, big)
    put_blob(world, A, world.data)
    world.start(A, upload_slots=1, max_connections=3, idle_timeout=60)
    # One client takes the only upload slot and does not read: the agent's send blocks.
    hog = socket.create_connection((A, world.port))
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(f"GET /blobs/sha256/{digest} HTTP/1.1\r\n\r\n".encode())
    time.sleep(0.5)
    r = get(A, world.port, f"/blobs/sha256/{world.digest}")
    assert status_of(r) == 503 and b"Retry-After: 2" in r
    # Two more idle connections fill the connection limit; the next is told 503 at once.
    idle = [socket.create_connection((A, world.port)) for _ in range(2)]
    time.sleep(0.3)
    r = raw(A, world.port, b"")
    assert status_of(r) == 503
    for s in idle + [hog]:
        s.close()
    time.sleep(0.5)
    r = get(A, world.port, f"/blobs/sha256/{world.digest}")
    assert status_of(r) == 200 and body_of(r) == world.data


def test_untrusted_addresses_are_refused(world):
    put_blob(world, A, world.data)
    world.start(A)
    r = get(A, world.port, f"/blobs/sha256/{world.digest}", source=STRANGER)
    assert status_of(r) == 403 and world.data[:64] not in r


# ------------------------------------------------------------------ staging requests

def _stage(world, host, line, source=None):
    data = line.encode()
    r = raw(host, world.port, b"POST /stage HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data),
            source=source)
    return status_of(r), json.loads(body_of(r) or b"{}")


def test_forged_replayed_expired_and_misaddressed_requests_are_refused(world):
    from sge.agent.auth import read_key, sign
    world.start(A)
    key = read_key(world.key)
    wrong = b"0" * 64
    cases = {
        "no signature": "img",
        "wrong key": sign(wrong, "img", A),
        "tampered name": sign(key, "other", A).replace("other", "img", 1),
        "tampered source": sign(key, "img", A, "node9").replace("node9", "node8", 1),
        "expired": sign(key, "img", A, now=time.time() - 600),
        "from the future": sign(key, "img", A, now=time.time() + 600),
        "for another host": sign(key, "img", B),
    }
    for why, line in cases.items():
        status, answer = _stage(world, A, line)
        assert status == 403 and answer["state"] == "refused", why
    good = sign(key, "img", A)
    status, answer = _stage(world, A, good)
    assert status == 200 and answer["state"] in ("staging", "ready")
    status, answer = _stage(world, A, good)  # the same request again
    assert status == 403 and "replayed" in answer["message"]
    assert world.origin.gets("img.sif") <= 1
    assert "refused a staging request" in world.log()


def test_a_signed_request_stages_and_unknown_names_fail_permanently(world):
    from sge.agent.auth import read_key, sign
    world.start(A, peers=False)
    key = read_key(world.key)
    deadline = time.monotonic() + 30
    while True:
        status, answer = _stage(world, A, sign(key, "img", A))
        if answer["state"] == "ready" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer["state"] == "ready"
    assert world.origin.gets("img.sif") == 1
    path = os.path.join(world.dir, "cache", A, "blobs", "sha256", world.digest)
    assert open(path, "rb").read() == world.data
    status, answer = _stage(world, A, sign(key, "no-such-image", A))
    assert answer["state"] == "failed" and answer["transient"] is False


# ------------------------------------------------------------------ peers as sources

def _ensure_here(world, monkeypatch, host_ip=None):
    """Stage 'img' in this test process as the client host would (its own cache)."""
    from sge import config
    from sge.agent.peers import Peers
    from sge.stage import ensure
    monkeypatch.setenv("PATH", world.env()["PATH"])
    settings = config.load(world.config("127.0.0.23"), use_snapshot=False)
    return ensure("img", settings, peers=Peers())


def test_a_peer_that_has_it_serves_it_and_the_origin_is_not_asked(world, monkeypatch):
    put_blob(world, A, world.data)
    world.start(A)
    world.set_qhost({A: ["img_img"], "127.0.0.23": []})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 0
    assert f"from peer {A}, verified" in world.log()


def test_a_host_the_agents_do_not_serve_says_so_once_and_uses_the_origin(world, monkeypatch):
    """`sge-image pull` on an admin host: every agent answers 403. It printed one
    "HTTP 403" line per peer, which read like failures; now one line says why."""
    for h in (A, B):
        put_blob(world, h, world.data)
        world.start(h, trust=[A, B])  # the client speaks from 127.0.0.1: a stranger
    world.set_qhost({A: ["img_img"], B: ["img_img"], "127.0.0.23": []})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    log = world.log()
    assert log.count("not one the cluster's agents serve") == 1, log
    assert "HTTP 403" not in log, log


def test_a_lying_peer_costs_a_retry_never_a_corrupt_image(world, monkeypatch):
    # A's "blob" has the right name and size but wrong bytes (a bad disk, a liar).
    lie = bytearray(world.data)
    lie[len(lie) // 2] ^= 0xFF
    _, cache = put_blob(world, A, world.data)
    os.chmod(cache.blob_path(world.digest), 0o644)
    with open(cache.blob_path(world.digest), "wb") as f:
        f.write(bytes(lie))
    world.start(A)
    world.set_qhost({A: ["img_img"]})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    log = world.log()
    assert f"peer {A}: sha256" in log and "does not match" in log


def test_dead_busy_and_truncating_peers_fall_back_to_the_origin(world, monkeypatch):
    # Dead: the qhost list names a host whose agent is not running.
    world.set_qhost({B: ["img_img"]})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1


def test_a_cold_seed_pulls_once_and_serves_the_others(world, monkeypatch):
    # Only B is live besides us: it is the seed. Our pull asks B's agent to stage,
    # waits, and copies from it; the origin sees one download.
    world.start(B)
    world.set_qhost({B: []})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    seed_copy = os.path.join(world.dir, "cache", B, "blobs", "sha256", world.digest)
    assert open(seed_copy, "rb").read() == world.data
    assert f"from peer {B}, verified" in world.log()


def test_a_seed_reported_while_its_pull_is_in_flight_is_still_the_seed(world, monkeypatch):
    # B's sensor reports the image (its pull is in flight) but its agent has no blob
    # yet: the copy from it fails, and B is still the seed every host waits on.
    world.start(B)
    world.set_qhost({B: ["img_img"]})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    assert f"waiting for seed host {B}" in world.log()
    assert f"from peer {B}, verified" in world.log()


def test_a_dead_seed_is_replaced_by_the_next_one(world, monkeypatch):
    # Two live hosts besides us; the image's seed among them has no agent. The pull
    # drops it, every waiting host agrees on the next seed, and that one pulls once.
    from sge.agent.hosts import seed_for
    dead = seed_for(world.digest, [B, "127.0.0.24"])
    alive = B if dead != B else "127.0.0.24"
    world.start(alive)
    world.set_qhost({B: [], "127.0.0.24": []})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    log = world.log()
    assert f"seed host {dead} unreachable" in log
    assert f"from peer {alive}, verified" in log


def test_the_agent_follows_its_supervisor(world):
    import subprocess
    import sys
    sup = subprocess.Popen(["sleep", "600"])
    cfg = world.config(A)
    p = subprocess.Popen([sys.executable, "-m", "sge.agent", "--config", cfg, "--watch", str(sup.pid)],
                         env=world.env(A), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    world.procs.append(p)
    from tests.support.agentkit import wait_listening
    wait_listening(A, world.port, p)
    # The socket listens before the server side is forked: wait for the child too.
    deadline = time.monotonic() + 10
    while not open(f"/proc/{p.pid}/task/{p.pid}/children").read().split():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    child = int(open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()[0])
    sup.kill()
    sup.wait()
    assert p.wait(15) == 0
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}")


# ------------------------------------------------------------------ parallel jobs

def _pe_settings(world, monkeypatch, tmp_path, hosts, **agent):
    from sge import config
    spool = tmp_path / "spool"
    spool.mkdir(parents=True)
    (spool / "pe_hostfile").write_text("".join(f"{h} 1 all.q@{h} UNDEFINED\n" for h in hosts))
    monkeypatch.setenv("SGE_JOB_SPOOL_DIR", str(spool))
    monkeypatch.setenv("PATH", world.env()["PATH"])
    path = world.config("127.0.0.23", **agent)
    return config.load(path, use_snapshot=False)


def test_the_master_prolog_stages_the_other_hosts_of_a_parallel_job(world, monkeypatch, tmp_path):
    from sge.agent.pe import stage_other_hosts
    world.start(A, peers=False)
    world.start(B, peers=False)
    settings = _pe_settings(world, monkeypatch, tmp_path, [socket.gethostname(), A, B])
    lines = []
    assert stage_other_hosts("img", settings, lines.append) == [A, B]
    for h in (A, B):
        blob = os.path.join(world.dir, "cache", h, "blobs", "sha256", world.digest)
        assert open(blob, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 2


def test_parallel_staging_failures_are_permanent_or_transient_as_the_cause(world, monkeypatch, tmp_path):
    from sge.agent.pe import stage_other_hosts
    from sge.errors import FetchError
    os.unlink(os.path.join(world.origin.root, "img.sif"))  # 404: permanent
    world.start(A, peers=False)
    settings = _pe_settings(world, monkeypatch, tmp_path, [A])
    with pytest.raises(FetchError) as e:
        stage_other_hosts("img", settings, lambda m: None)
    assert e.value.transient is False and A in str(e.value)
    # A host whose agent never answers: transient once the wait runs out.
    settings = _pe_settings(world, monkeypatch, tmp_path / "x", [B], pe_wait=2)
    with pytest.raises(FetchError) as e:
        stage_other_hosts("img", settings, lambda m: None)
    assert e.value.transient is True and "unreachable" in str(e.value)


def test_parallel_staging_on_a_busy_host_is_busy_not_failed(world, monkeypatch, tmp_path):
    """A host whose cache is full of images in use answers `busy`: once the wait runs
    out the prolog reschedules without spending the job's budget (issue 9)."""
    from sge.agent import peers
    from sge.agent.pe import stage_other_hosts
    from sge.agent.protocol import StageAnswer
    from sge.errors import CacheBusy
    settings = _pe_settings(world, monkeypatch, tmp_path, [A], pe_wait=1)
    monkeypatch.setattr(peers, "stage_request", lambda *a, **k: StageAnswer(
        "failed", "cache is full of images in use", transient=True, busy=True))
    with pytest.raises(CacheBusy) as e:
        stage_other_hosts("img", settings, lambda m: None, sleep=lambda s: None)
    assert e.value.busy and A in str(e.value)


def test_hostfile_lines_that_are_not_host_names_are_ignored(tmp_path):
    from sge.agent.pe import hostfile_hosts
    p = tmp_path / "hf"
    p.write_text("node1 2 all.q@node1 UNDEFINED\nnode1 1 b.q@node1 UNDEFINED\n"
                 "../../etc 1 q x\n-rf 1 q x\n\nnode2.example.org 4 all.q UNDEFINED\n")
    assert hostfile_hosts(str(p)) == ["node1", "node2.example.org"]


# ------------------------------------------------------------------ misbehaving peers

class FakePeer:
    """A real socket server that answers every request the same bad way."""

    def __init__(self, ip, port, answer, then=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(8)
        self.answer, self.then = answer, then
        self.conns = []
        self.requests = []   # what each connection sent first
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            try:
                self.requests.append(c.recv(65536))
                c.sendall(self.answer)
                if self.then == "close":
                    c.close()
            except OSError:
                pass

    def close(self):
        # close() alone does not wake a thread blocked in accept(): the listening
        # socket lived on and answered the next test's requests to this address with
        # this test's answer (a flaky redirect test). shutdown() wakes it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("kind", ["stall", "truncate", "too_long", "garbage", "busy", "redirect"])
def test_misbehaving_peers_cost_a_retry_never_a_failed_pull(world, monkeypatch, kind):
    n = len(world.data)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode()
    answer, then = {
        "stall": (head + world.data[:1000], None),          # then silence: read timeout
        "truncate": (head + world.data[:n // 2], "close"),  # half, then hang up
        "too_long": (f"HTTP/1.1 200 OK\r\nContent-Length: {n + 1}\r\n\r\n".encode()
                     + world.data + b"x", "close"),
        "garbage": (b"\x00\xffNOT HTTP AT ALL\r\n\r\n", "close"),
        "busy": (b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n", "close"),
        "redirect": (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\n"
                     b"Content-Length: 0\r\n\r\n", "close"),
    }[kind]
    peer = FakePeer(A, world.port, answer, then)
    try:
        world.set_qhost({A: ["img_img"]})
        path = _ensure_here(world, monkeypatch)
    finally:
        peer.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    assert f"peer {A}" in world.log()


def _run_prolog(world, tmp_path, hosts, **agent):
    import subprocess
    import sys
    spool = tmp_path / "spool"
    spool.mkdir(parents=True)
    (spool / "pe_hostfile").write_text("".join(f"{h} 1 all.q@{h} UNDEFINED\n" for h in hosts))
    (spool / "environment").write_text("")
    cfg = world.config("127.0.0.23", **agent)
    env = {**world.env(), "SGE_IMAGE": "img", "SGE_JOB_SPOOL_DIR": str(spool), "JOB_ID": "7"}
    r = subprocess.run([sys.executable, "-m", "sge.ge.prolog", "--config", cfg], env=env,
                       capture_output=True, text=True, timeout=120)
    return r, (spool / "environment").read_text()


def test_prolog_of_a_parallel_job_goes_when_every_host_has_the_image(world, tmp_path):
    world.start(A, peers=False)
    r, environment = _run_prolog(world, tmp_path, [socket.gethostname(), A], peers=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SGE_IMAGE_PATH=" in environment
    blob = os.path.join(world.dir, "cache", A, "blobs", "sha256", world.digest)
    assert open(blob, "rb").read() == world.data


def test_prolog_of_a_parallel_job_reschedules_when_a_host_cannot_be_reached(world, tmp_path):
    r, environment = _run_prolog(world, tmp_path, [socket.gethostname(), B], peers=False,
                                 pe_wait=2)
    assert r.returncode == 99, r.stdout + r.stderr
    assert "not on " + B in r.stdout and "SGE_IMAGE_PATH" not in environment


def test_trust_by_network_and_bad_networks_are_config_errors(world, make_config):
    from sge import config
    from sge.agent.hosts import Trust
    from sge.errors import ConfigError
    t = Trust(["127.0.0.16/29", "node-that-does-not-resolve.invalid"])
    assert t("127.0.0.21") and t("127.0.0.17") and not t("127.0.0.29") and not t("127.0.0.1")
    with pytest.raises(ConfigError, match="not a network"):
        config.load(make_config(agent={"trust": ["10.0.0.0/33"]}), use_snapshot=False)
    world.start(A, trust=["127.0.0.0/30"])  # .0-.3: the test speaks from 127.0.0.1
    put_blob(world, A, world.data)
    assert status_of(get(A, world.port, f"/blobs/sha256/{world.digest}")) == 200
    assert status_of(get(A, world.port, f"/blobs/sha256/{world.digest}", source=STRANGER)) == 403


def test_a_root_pull_never_runs_a_qhost_from_the_jobs_path(world, monkeypatch):
    # A root prolog sees the job's environment: a planted `qhost` first on PATH must
    # not run as root (the agent runs the site's qhost with the system path).
    evil = os.path.join(world.dir, "evil")
    os.makedirs(evil)
    marker = os.path.join(world.dir, "ran-as-root")
    with open(os.path.join(evil, "qhost"), "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(os.path.join(evil, "qhost"), 0o755)
    from sge import config
    from sge.agent.peers import Peers
    from sge.stage import ensure
    cfg = world.config("127.0.0.23", qhost=["qhost"])
    monkeypatch.setenv("PATH", evil + os.pathsep + os.environ["PATH"])
    for k in ("SGE_ROOT", "SGE_CELL"):
        monkeypatch.delenv(k, raising=False)
    path = ensure("img", config.load(cfg, use_snapshot=False), peers=Peers())
    assert open(path, "rb").read() == world.data
    assert not os.path.exists(marker)


def test_a_flood_of_forged_requests_neither_fills_the_log_nor_stops_the_agent(world):
    from sge.agent.auth import sign
    put_blob(world, A, world.data)
    world.start(A)
    before = world.log().count("refused a staging request")
    for _ in range(200):
        status, answer = _stage(world, A, sign(b"f" * 64, "img", A))
        assert status == 403
    assert world.log().count("refused a staging request") - before <= 2
    assert body_of(get(A, world.port, f"/blobs/sha256/{world.digest}")) == world.data
