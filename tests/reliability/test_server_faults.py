"""Server faults, through the real prolog, from servers this test controls.

Every fault ends in bounded time with the exit code the adapters define (99: may work
later, reschedule; 100: the catalog or source is wrong, hold the job), retried with
backoff when transient, failed over to the next mirror, and never published: no blob
but verified ones, no temp file left. tests/test_stage.py checks the CLI's messages
for several of these; here the contract is the prolog's exit code.
"""
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.conftest import (
    PROLOG_CODES,
    SEED,
    exported_path,
    make_spool,
    run_prolog,
    settled_problems,
    write_config,
)
from tests.support.common import payload, sha256
from tests.support.httpserver import Fault

SIZE = 300_000
BOUND = 60  # seconds: generous; the point is "finishes", not "fast"
FETCH = {"retries": 1, "backoff": 0.05, "backoff_max": 0.2, "connect_timeout": 2,
         "read_timeout": 1, "low_speed_limit": 1024, "low_speed_time": 2}


class RawServer:
    """A TCP listener that misbehaves below HTTP: never accepts, hangs up, or talks
    nonsense."""

    def __init__(self, mode):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        self.conns = []
        if mode != "blackhole":  # blackhole: connections wait in the backlog forever
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "garbage":
                try:
                    c.recv(65536)
                    c.sendall(b"SSH-2.0-OpenSSH\r\n\x00\xff garbage\r\n\r\n")
                except OSError:
                    pass
            c.close()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port  # nothing listens there any more: connection refused


# id -> (fault on the first mirror, catalog tweaks, exit code, words in the prolog's output)
HTTP_FAULTS = {
    "corrupt-byte": (Fault(corrupt_at=12345), {}, 100, "does not match the catalog"),
    "truncated-no-ranges": (Fault(cut_at=100_000, no_ranges=True), {}, 99, "connection closed"),
    "truncated-resumed": (Fault(cut_at=100_000, cut_times=1), {}, 0, ""),
    "length-short": (Fault(length_delta=-10), {}, 100, "offers"),
    "length-long": (Fault(length_delta=10), {}, 100, "offers"),
    "length-short-no-size": (Fault(length_delta=-10), {"size": None}, 100, "does not match"),
    "length-long-no-size": (Fault(length_delta=10), {"size": None}, 99, "no data"),
    "500": (Fault(status=500), {}, 99, "server error"),
    "503-twice": (Fault(status=503, times=2), {"retries": 2}, 0, ""),
    "429": (Fault(status=429), {}, 99, "server error"),
    "404": (Fault(status=404), {}, 100, "not found"),
    "403": (Fault(status=403), {}, 100, "access denied"),
    "stall-mid-stream": (Fault(stall_at=50_000, stall_for=30), {}, 99, "no data"),
    "dribble": (Fault(dribble=True), {}, 99, "too slow"),
    "redirect-loop": (Fault(redirect="/img.sif"), {}, 100, "redirect loop"),
    "redirect-chain": ("chain", {}, 100, "more than 5 redirects"),
}
RAW_FAULTS = {
    "refused": (99, "connection refused"),
    "blackhole": (99, "timed out"),
    "hang-up": (99, "every source failed"),
    "not-http": (99, "every source failed"),
}


def _setup(tmp_path, http_server, first_url, tweaks, mirror=False):
    data = payload(SIZE, seed=SEED)
    http_server.add_file("good.sif", data)
    urls = [first_url] + ([http_server.url("good.sif")] if mirror else [])
    entry = {"url": urls, "sha256": sha256(data), "size": SIZE}
    fetch = dict(FETCH)
    for k, v in tweaks.items():
        if k == "size":
            entry.pop("size")
        else:
            fetch[k] = v
    root = tmp_path / "cache"
    cfg = write_config(tmp_path / "config.yaml", root, {"demo": entry}, fetch=fetch,
                       prolog={"max_reschedules": 100})
    return cfg, str(root), {"demo": entry}, data


def _first_url(http_server, fault):
    http_server.add_file("img.sif", payload(SIZE, seed=SEED))
    if fault == "chain":
        for i in range(8):
            http_server.faults[f"hop{i}.sif"] = Fault(redirect=f"/hop{i + 1}.sif")
        return http_server.url("hop0.sif")
    http_server.faults["img.sif"] = fault
    return http_server.url("img.sif")


def _check(tmp_path, cfg, root, catalog, want, words):
    spool = make_spool(tmp_path / "spool")
    t = time.monotonic()
    rc, out = run_prolog(cfg, "demo", spool=spool, timeout=BOUND + 30)
    took = time.monotonic() - t
    assert rc in PROLOG_CODES
    assert rc == want, (rc, out)
    assert took < BOUND, took
    assert words in out, out
    if rc == 0:
        want_path = os.path.join(root, "blobs", "sha256", catalog["demo"]["sha256"])
        assert exported_path(spool) == want_path
        assert settled_problems(root, catalog, ["demo"]) == []
    else:
        assert exported_path(spool) is None
        assert os.listdir(os.path.join(root, "blobs", "sha256")) == []  # never published
        assert os.listdir(os.path.join(root, "tmp")) == []
    return out


@pytest.mark.parametrize("name", HTTP_FAULTS)
def test_http_fault(tmp_path, http_server, name):
    fault, tweaks, want, words = HTTP_FAULTS[name]
    cfg, root, catalog, _ = _setup(tmp_path, http_server, _first_url(http_server, fault), tweaks)
    _check(tmp_path, cfg, root, catalog, want, words)
    gets = http_server.gets("img.sif")
    if want == 100:
        assert gets <= 1  # permanent: not retried (a redirect chain never reaches it)
    elif want == 99:
        assert gets >= 2  # transient: retried


@pytest.mark.parametrize("name", RAW_FAULTS)
def test_dead_or_broken_server(tmp_path, http_server, name):
    want, words = RAW_FAULTS[name]
    raw = None if name == "refused" else RawServer(
        {"blackhole": "blackhole", "hang-up": "hangup", "not-http": "garbage"}[name])
    try:
        url = raw.url("img.sif") if raw else f"http://127.0.0.1:{_free_port()}/img.sif"
        cfg, root, catalog, _ = _setup(tmp_path, http_server, url, {})
        _check(tmp_path, cfg, root, catalog, want, words)
    finally:
        if raw:
            raw.close()


FAILOVER = ["corrupt-byte", "truncated-no-ranges", "length-long", "500", "404",
            "stall-mid-stream", "dribble", "redirect-loop", "refused", "blackhole", "not-http"]


@pytest.mark.parametrize("name", FAILOVER)
def test_mirror_failover(tmp_path, http_server, name):
    """The first mirror has the fault, the second is good: the job runs, and what the
    first sent is never what gets published."""
    raw = None
    if name in HTTP_FAULTS:
        url = _first_url(http_server, HTTP_FAULTS[name][0])
    elif name == "refused":
        url = f"http://127.0.0.1:{_free_port()}/img.sif"
    else:
        raw = RawServer("garbage" if name == "not-http" else name)
        url = raw.url("img.sif")
    try:
        cfg, root, catalog, data = _setup(tmp_path, http_server, url, {}, mirror=True)
        _check(tmp_path, cfg, root, catalog, 0, "")
        assert http_server.gets("good.sif") == 1
    finally:
        if raw:
            raw.close()


def test_transient_errors_back_off_exponentially(tmp_path, http_server):
    url = _first_url(http_server, Fault(status=503))
    cfg, root, catalog, _ = _setup(tmp_path, http_server, url, {"retries": 3})
    out = _check(tmp_path, cfg, root, catalog, 99, "server error")
    assert http_server.gets("img.sif") == 4
    delays = [float(x) for x in re.findall(r"retrying in ([0-9.]+)s", out)]
    # backoff 0.05 s doubling, jittered to [50%, 100%], capped at 0.2 s: the ranges
    # [0.025, 0.05], [0.05, 0.1], [0.1, 0.2] do not overlap, so the order shows it.
    assert len(delays) == 3 and delays == sorted(delays), delays
    assert re.findall(r"attempt (\d) of 4", out) == ["2", "3", "4"]


def test_every_waiter_fails_cleanly_when_the_source_is_down(tmp_path, http_server):
    """Eight array tasks on one host, source answering 500: each gets 99 in bounded
    time. Waiters find no image when the stager gives up and try themselves (queued on
    the lock), so the server sees at most 8 x (retries + 1) requests."""
    url = _first_url(http_server, Fault(status=500))
    cfg, root, catalog, _ = _setup(tmp_path, http_server, url, {})
    t = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: run_prolog(cfg, "demo", job=100 + i), range(8)))
    assert [rc for rc, _ in results] == [99] * 8, results
    assert time.monotonic() - t < BOUND
    assert 2 <= http_server.gets("img.sif") <= 8 * 2
    assert os.listdir(os.path.join(root, "blobs", "sha256")) == []
    assert os.listdir(os.path.join(root, "tmp")) == []
