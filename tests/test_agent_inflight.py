"""The node agent serving a blob while its host is still downloading it: the bytes as
they land, only for the kit's own live temp files of the exact digest, and never a
corrupt publish on the client, whatever the download in progress turns out to be.

Real agents (`python -m sge.agent`, dropping to nobody) as in test_agent.py; the
"writer" is this test process holding a temp file made by the cache's own new_temp,
as a staging does, or a real `sge-image pull` from a throttled origin.
"""
import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.support.agentkit import body_of, status_of
from tests.support.common import ROOT, payload
from tests.support.httpserver import Fault
from tests.test_agent import (  # noqa: F401
    MB,
    A,
    B,
    FakePeer,
    _ensure_here,
    get,
    put_blob,
    world,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent binds, forks and drops root")
INFLIGHT = "X-Sge-Image-Inflight: 1"


def _cache(world, host):
    from sge import config
    from sge.cache import Cache
    cache = Cache.from_settings(config.load(world.config(host), use_snapshot=False))
    cache.ensure_layout()
    return cache


class Writer:
    """A download in progress in `host`'s cache, as sge/stage.py makes one: new_temp's
    file, flocked, growing as the test writes to it."""

    def __init__(self, world, host, name="img", size=None):
        self.cache = _cache(world, host)
        self.fd, self.path = self.cache.new_temp(name, len(world.data) if size is None else size)

    def write(self, data):
        os.write(self.fd, data)

    def die(self):
        os.close(self.fd)
        self.fd = None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)


class _stream:
    """A GET read in a thread; `wait_for(n)` returns once n bytes (head included) are in."""

    def __init__(self, world, host, headers=(INFLIGHT,)):
        import socket
        self.data = b""
        self.sock = socket.create_connection((host, world.port), timeout=20)
        head = f"GET /blobs/sha256/{world.digest} HTTP/1.1\r\nHost: x\r\n" + \
            "".join(f"{h}\r\n" for h in headers) + "\r\n"
        self.sock.sendall(head.encode())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return
                self.data += chunk
        finally:
            self.sock.close()

    def wait_for(self, n, timeout=20):
        deadline = time.monotonic() + timeout
        while len(self.data) < n:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.01)

    def join(self, timeout=20):
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.data


def _wait_log(world, text, timeout=20):
    deadline = time.monotonic() + timeout
    while text not in world.log():
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(0.05)


def test_a_download_in_progress_is_streamed_as_it_lands(world):
    world.start(A)
    w = Writer(world, A)
    try:
        half = len(world.data) // 2
        w.write(world.data[:half])
        st = _stream(world, A)
        st.wait_for(half)   # the client has the first half and waits for more
        assert st.thread.is_alive()
        w.write(world.data[half:])
        r = st.join()
        assert status_of(r) == 200 and body_of(r) == world.data
        assert b"X-Sge-Image-Inflight: 1" in r
        _wait_log(world, "while it was downloaded")
    finally:
        w.close()


def test_a_download_without_a_byte_yet_is_not_offered(world):
    """A pull still asking peers (or waiting for a slot) holds an empty temp file: a
    reader must not wait on it, perhaps on itself at one remove (a seed streamed from
    the hosts waiting for it: stalls of 30-211 s on 24 hosts). 404 until a byte."""
    world.start(A)
    w = Writer(world, A)
    try:
        r = get(A, world.port, f"/blobs/sha256/{world.digest}", [INFLIGHT])
        assert status_of(r) == 404
        w.write(world.data[:1])
        st = _stream(world, A)
        st.wait_for(1)
        w.write(world.data[1:])
        r = st.join()
        assert status_of(r) == 200 and body_of(r) == world.data
    finally:
        w.close()


def test_only_a_client_that_asks_gets_a_download_in_progress(world):
    world.start(A)
    w = Writer(world, A)
    try:
        w.write(world.data)
        r = get(A, world.port, f"/blobs/sha256/{world.digest}")
        assert status_of(r) == 404
        # An open-ended range of it is served; other ranges are not promised.
        r = get(A, world.port, f"/blobs/sha256/{world.digest}", [INFLIGHT, "Range: bytes=100-"])
        assert status_of(r) == 206 and body_of(r) == world.data[100:]
    finally:
        w.close()


def test_a_writer_that_dies_or_starts_over_ends_the_response_short(world):
    world.start(A)
    for how in ("die", "truncate"):
        w = Writer(world, A)
        try:
            w.write(world.data[:MB])
            st = _stream(world, A)
            st.wait_for(MB)
            if how == "die":
                os.unlink(w.path)   # what a failed staging does, then its fd goes
                w.die()
            else:
                os.ftruncate(w.fd, 0)  # sink.reset(): a mirror switch starts over
                os.lseek(w.fd, 0, os.SEEK_SET)
                w.write(world.data[:100])
            r = st.join()
            assert status_of(r) == 200 and len(body_of(r)) < len(world.data), how
        finally:
            w.close()
    _wait_log(world, "stopped serving blob")


def test_only_the_kits_own_live_temp_files_of_the_exact_digest_are_served(world):
    world.start(A)
    cache = _cache(world, A)
    tmp = os.path.join(cache.root, "tmp")
    size = len(world.data)
    secret = os.path.join(world.dir, "secret")
    with open(secret, "wb") as f:
        f.write(world.data)
    path = f"/blobs/sha256/{world.digest}"
    made = []

    def name(tag):
        return os.path.join(tmp, f"img.{os.getpid()}.{size}.{tag}.part")

    def refused(why):
        r = get(A, world.port, path, [INFLIGHT])
        assert status_of(r) == 404, why
        for p in made:
            os.unlink(p)
        made.clear()

    # A symlink named like a temp file, pointing at a file outside the cache.
    os.symlink(secret, name("aaaa0001"))
    made.append(name("aaaa0001"))
    refused("symlink")
    # Hard-linked to another name (a second link could be an outside file).
    os.link(secret, name("aaaa0002"))
    made.append(name("aaaa0002"))
    fd = os.open(name("aaaa0002"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    refused("hard link")
    os.close(fd)
    # Not root's: another user's file planted in tmp/.
    p = name("aaaa0003")
    with open(p, "wb") as f:
        f.write(world.data)
    os.chown(p, 65534, 65534)
    fd = os.open(p, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    made.append(p)
    refused("foreign owner")
    os.close(fd)
    # No live writer (its flock is gone): abandoned.
    p = name("aaaa0004")
    with open(p, "wb") as f:
        f.write(world.data)
    made.append(p)
    refused("abandoned")
    # A directory, and the wrong size or name in the temp name.
    os.mkdir(name("aaaa0005"))
    r = get(A, world.port, path, [INFLIGHT])
    assert status_of(r) == 404
    os.rmdir(name("aaaa0005"))
    for wrong in (dict(size=size + 1), dict(name="other")):
        w = Writer(world, A, **wrong)
        try:
            w.write(world.data)
            r = get(A, world.port, path, [INFLIGHT])
            assert status_of(r) == 404, wrong
        finally:
            w.close()
            os.unlink(w.path)
    # A digest the catalog does not name.
    w = Writer(world, A)
    try:
        w.write(world.data)
        r = get(A, world.port, "/blobs/sha256/" + "0" * 64, [INFLIGHT])
        assert status_of(r) == 404
        r = get(A, world.port, path, [INFLIGHT])
        assert status_of(r) == 200 and body_of(r) == world.data  # the real one is
    finally:
        w.close()


def test_a_wrong_download_in_progress_costs_a_retry_never_a_corrupt_image(world, monkeypatch):
    world.start(A)
    lie = bytearray(world.data)
    lie[len(lie) // 3] ^= 0xFF
    w = Writer(world, A)
    try:
        w.write(bytes(lie))
        world.set_qhost({A: ["img_img"]})
        path = _ensure_here(world, monkeypatch)
    finally:
        w.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    log = world.log()
    assert f"peer {A} (download in progress): sha256" in log and "does not match" in log


def test_a_host_streams_a_peers_pull_from_a_throttled_origin(world, monkeypatch):
    # A pulls from an origin sending 1 MB/s; we see A report the image, find no whole
    # blob there, and stream A's download as it lands: one origin download.
    world.origin.faults["img.sif"] = Fault(rate=MB)
    world.start(A)
    world.set_qhost({A: []})  # A's own pull finds no peer with it and no other seed
    pull = subprocess.Popen([sys.executable, "-m", "sge.cli", "--config", world.config(A),
                             "pull", "img", "-q"], env=world.env(A), cwd=ROOT,
                            stderr=subprocess.PIPE)
    try:
        tmp = os.path.join(world.dir, "cache", A, "tmp")
        deadline = time.monotonic() + 20
        while not any(n.endswith(".part") and os.path.getsize(os.path.join(tmp, n))
                      for n in (os.listdir(tmp) if os.path.isdir(tmp) else [])):
            assert time.monotonic() < deadline and pull.poll() is None
            time.sleep(0.02)
        world.set_qhost({A: ["img_img"]})
        path = _ensure_here(world, monkeypatch)
        assert pull.wait(30) == 0, pull.stderr.read().decode()
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        pull.stderr.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    assert f"from peer {A} (download in progress), verified" in world.log()


def test_a_cold_seed_is_streamed_while_it_pulls(world, monkeypatch):
    # Only B is live besides us: it is the seed. Asked to stage, it pulls from a slow
    # origin, and we stream its download rather than wait for the end.
    world.origin.faults["img.sif"] = Fault(rate=MB)
    world.start(B)
    world.set_qhost({B: []})
    path = _ensure_here(world, monkeypatch)
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    assert f"from peer {B} (download in progress), verified" in world.log()


# ------------------------------------------------------------------ redirects

PEERS = b"X-Sge-Image-Peers: "
NET = ["127.0.0.0/24"]


def _hog(world, host, source, digest, inflight=False, timeout=20):
    """A transfer from `host` to `source` that stays in progress: the client reads its
    head, then nothing, so the agent's send blocks (or it waits for a download's next
    bytes). Asked again while the agent is still busy with transfers that are ending."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((source, 0))
        s.connect((host, world.port))
        s.sendall(f"GET /blobs/sha256/{digest} HTTP/1.1\r\n".encode()
                  + (f"{INFLIGHT}\r\n" if inflight else "").encode() + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        if status_of(head) == 200:
            return s
        s.close()
        assert status_of(head) == 503 and time.monotonic() < deadline, head
        time.sleep(0.1)


def _named(r):
    """The addresses a 503 names, or None without the header."""
    for line in r.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.startswith(PEERS):
            return line[len(PEERS):].decode().split(",")
    return None


def _busy(world, host, digest, source, want=lambda named: True, timeout=20):
    """Ask until the agent answers 503 with a header `want` accepts (transfers take a
    moment to start, and to end)."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(host, world.port, f"/blobs/sha256/{digest}", source=source)
        if status_of(r) == 503 and want(_named(r)):
            return _named(r)
        assert time.monotonic() < deadline, r[:300]
        time.sleep(0.1)


def test_a_busy_agent_names_only_other_receivers_of_that_blob(world):
    from sge.agent.redirects import MAX_NAMED
    big = payload(64 * MB, seed=4)
    other, _ = put_blob(world, A, big)
    world.start(A, trust=NET, upload_slots=6, idle_timeout=60)
    w = Writer(world, A)
    hogs = []
    try:
        w.write(world.data[:MB])
        xs = [f"127.0.0.{i}" for i in range(31, 36)]
        hogs = [_hog(world, A, ip, world.digest, inflight=True) for ip in xs]
        hogs.append(_hog(world, A, "127.0.0.36", other))
        # Every slot is taken: five receivers of the image, one of another blob.
        named = _busy(world, A, world.digest, "127.0.0.40",
                      lambda n: n is not None and len(n) == MAX_NAMED)
        assert set(named) <= set(xs)
        # A receiver asking again is never sent to itself.
        named = _busy(world, A, world.digest, xs[0])
        assert named is not None and xs[0] not in named and set(named) <= set(xs[1:])
        # Only transfers of the blob asked for.
        assert _busy(world, A, other, "127.0.0.40") == ["127.0.0.36"]
        # The transfers end (the download lands, the receivers are gone): none is named.
        for s in hogs[:5]:
            s.close()
        w.write(world.data[MB:])
        hogs += [_hog(world, A, f"127.0.0.{i}", other) for i in range(41, 46)]
        assert _busy(world, A, world.digest, "127.0.0.40", lambda n: n is None) is None
    finally:
        for s in hogs:
            s.close()
        w.close()


def test_a_busy_seed_sends_the_client_to_a_host_streaming_from_it(world, monkeypatch):
    # A (the only host reporting the image) has one upload slot, taken by B, which is
    # streaming A's download; B's own download is where we get the image from.
    world.start(A, trust=NET, upload_slots=1, idle_timeout=60)
    world.start(B, trust=NET)
    wa, wb = Writer(world, A), Writer(world, B)
    hog = None
    try:
        wa.write(world.data[:MB])
        hog = _hog(world, A, B, world.digest, inflight=True)
        assert _busy(world, A, world.digest, "127.0.0.1") == [B]
        wb.write(world.data)
        world.set_qhost({A: ["img_img"], B: []})
        path = _ensure_here(world, monkeypatch)
    finally:
        if hog:
            hog.close()
        wa.close()
        wb.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 0
    log = world.log()
    assert f"peer {A} is busy" in log and f"trying {B}" in log
    assert f"from peer {B} (download in progress), verified" in log


class Recorder(FakePeer):
    """A listening socket that notes every request and answers 404."""

    def __init__(self, ip, port):
        super().__init__(ip, port, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                         then="close")

    def blob_gets(self):
        return [r for r in self.requests if r.startswith(b"GET /blobs/")]


@pytest.mark.parametrize("named, followed", [
    ("B", True),                          # a live host: asked once, for its download
    ("STRANGER", False),                  # not a cluster host: never contacted
    ("127.0.0.1", False),                 # the client itself
    ("B,STRANGER,A,127.0.0.1,127.0.0.2", False),   # more than an agent names
    ("B;rm -rf /", False), ("B:80", False), ("..,,", False), ("B" + " " * 300, False),
])
def test_a_peers_redirect_header_is_followed_only_to_live_cluster_hosts(world, monkeypatch,
                                                                        named, followed):
    from tests.test_agent import STRANGER, FakePeer
    value = named.replace("STRANGER", STRANGER).replace("B", B).replace("A", A)
    busy = FakePeer(A, world.port, b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\n"
                    + PEERS + value.encode() + b"\r\nContent-Length: 0\r\n\r\n", "close")
    b, stranger = Recorder(B, world.port), Recorder(STRANGER, world.port)
    try:
        world.set_qhost({A: ["img_img"], B: []})
        path = _ensure_here(world, monkeypatch)
    finally:
        busy.close()
        b.close()
        stranger.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    assert stranger.requests == []
    gets = b.blob_gets()
    if followed:
        assert len(gets) == 1 and INFLIGHT.encode() in gets[0]
    else:
        assert gets == []


def test_a_redirect_target_serving_wrong_bytes_costs_a_retry_never_a_corrupt_image(
        world, monkeypatch):
    from tests.test_agent import FakePeer
    lie = bytearray(world.data)
    lie[len(lie) // 2] ^= 0xFF
    world.start(B, trust=NET)
    w = Writer(world, B)
    busy = FakePeer(A, world.port, b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\n" + PEERS
                    + B.encode() + b"\r\nContent-Length: 0\r\n\r\n", "close")
    try:
        w.write(bytes(lie))
        world.set_qhost({A: ["img_img"], B: []})
        path = _ensure_here(world, monkeypatch)
    finally:
        busy.close()
        w.close()
    assert open(path, "rb").read() == world.data
    assert world.origin.gets("img.sif") == 1
    log = world.log()
    assert f"trying {B}" in log
    assert f"peer {B} (download in progress): sha256" in log and "does not match" in log


def test_a_busy_answer_names_few_hosts_and_garbage_names_none():
    from sge.agent.redirects import MAX_NAMED, header_value, parse
    assert parse("127.0.0.50,127.0.0.51") == ["127.0.0.50", "127.0.0.51"]
    assert parse(",".join(f"10.0.0.{i}" for i in range(MAX_NAMED + 1))) == []  # too many
    assert parse("10.0.0.1,host") == [] and parse(None) == [] and parse("x" * 300) == []
    # (which named hosts a pull asks, how deep and how often: tests/test_peerplan.py)
    # The server's side: distinct, bounded, never the requester.
    assert header_value(["1.1.1.1", "1.1.1.1", "2.2.2.2"], "2.2.2.2") == "1.1.1.1"
    assert header_value(["1.1.1.1"], "1.1.1.1") is None
    assert header_value([f"10.0.0.{i}" for i in range(10)], "x").count(",") == 3
    assert parse("10.0.0.1, ::1") == ["10.0.0.1", "::1"] and parse("10.0.0.1,host") == []
