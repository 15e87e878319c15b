"""Fuzzing the node agent: hypothesis over raw bytes against a live server (the
request parser, the Range parser, the staging path through to the root side's
verifier), and over text against the staging verifier and the answer check.

Each run has a fixed time budget: examples past it pass without work, so the suite's
time stays bounded whatever hypothesis draws. After every example the agent must
have answered (or closed) within its header timeout, and still serve a blob whole;
the verifier must only accept or raise AuthError.
"""
import hashlib
import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.reliability.conftest import SEED
from tests.support.agentkit import AgentWorld, body_of, free_port, raw, status_of
from tests.support.common import payload

A = "127.0.0.21"
SERVER_BUDGET = 25.0     # seconds of raw bytes against the live server
VERIFIER_BUDGET = 8.0    # seconds against the verifier in this process
HEADER_TIMEOUT = 2
# Examples past the budget still cost hypothesis' generation (~3 ms each): enough
# examples to fill the budget here, few enough that the overrun stays small.
EXAMPLES = 8000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent binds, forks and drops root")

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"BREW", b"get", b""]
TARGETS = [b"/stage", b"/blobs/sha256/", b"/", b"*", b"/blobs/sha256/" + b"a" * 64]
HEADERS = [b"Range", b"Content-Length", b"X-Sge-Image-Inflight", b"Host", b"Transfer-Encoding",
           b"X-Sge-Image-Peers", b""]


@st.composite
def requests(draw):
    """Mostly request-shaped bytes with hostile parts, sometimes pure noise, sometimes
    a well-formed staging request whose line is garbage (it reaches the verifier)."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=4096))
    if kind == 1:
        words = draw(st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                      min_size=1, max_size=70), min_size=1, max_size=8))
        body = " ".join(words).encode()[:512]
        return b"POST /stage HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    line = draw(st.sampled_from(METHODS)) + b" " + draw(st.sampled_from(TARGETS)) \
        + draw(st.binary(max_size=80)) + b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0",
                                                                      b"HTTP/9", b""]))
    headers = b""
    for _ in range(draw(st.integers(0, 4))):
        headers += draw(st.sampled_from(HEADERS)) + draw(st.sampled_from([b": ", b":", b" : "])) \
            + draw(st.one_of(st.binary(max_size=64),
                             st.sampled_from([b"bytes=\xc2\xb2-", b"bytes=" + b"9" * 5000 + b"-",
                                              b"bytes=-0", b"1", b"-1", b"99999999999999999999",
                                              b"nan", b"bytes=0-0,1-1"])))
        headers += b"\r\n"
    end = draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b""]))
    return line + b"\r\n" + headers + end + draw(st.binary(max_size=600))


def _exchange(data):
    """Send, close our side, read to the end; -> (answer, seconds)."""
    t = time.monotonic()
    s = socket.create_connection((A, PORT[0]), timeout=HEADER_TIMEOUT + 5)
    out = b""
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the agent refused and closed first: fine
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    return out, time.monotonic() - t


PORT = [0]


@pytest.fixture(scope="module")
def live_agent():
    data = payload(256 << 10, seed=SEED)
    w = AgentWorld({"img": {"url": "file:///nonexistent", "sha256": hashlib.sha256(data).hexdigest(),
                            "size": len(data)}}, free_port(A))
    PORT[0] = w.port
    from sge import config
    from sge.cache import Cache
    cache = Cache.from_settings(config.load(w.config(A), use_snapshot=False))
    cache.ensure_layout()
    digest = hashlib.sha256(data).hexdigest()
    with open(cache.blob_path(digest), "wb") as f:
        f.write(data)
    os.chmod(cache.blob_path(digest), 0o444)
    p = w.start(A, header_timeout=HEADER_TIMEOUT, peers=False)
    w.blob, w.blob_digest = data, digest
    yield w, p
    w.close()


def test_raw_bytes_against_a_live_agent(live_agent):
    world, proc = live_agent
    start = time.monotonic()
    counted = {"sent": 0, "answered": 0, "slowest": 0.0}

    @seed(SEED)
    @hsettings(max_examples=EXAMPLES, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    @given(requests())
    def run(data):
        if time.monotonic() - start > SERVER_BUDGET:
            return
        answer, took = _exchange(data)
        counted["sent"] += 1
        counted["slowest"] = max(counted["slowest"], took)
        assert took <= HEADER_TIMEOUT + 2, (data[:200], took)
        if answer:
            assert status_of(answer) in (200, 206, 400, 403, 404, 405, 408, 411, 413, 416,
                                         431, 503), answer[:200]
            counted["answered"] += 1
        assert proc.poll() is None
    run()
    print(f"fuzzed the live agent with {counted['sent']} requests in "
          f"{time.monotonic() - start:.1f}s (budget {SERVER_BUDGET:.0f}s): "
          f"{counted['answered']} answered, slowest {counted['slowest']:.2f}s")
    assert counted["sent"] >= 50
    r = raw(A, PORT[0], f"GET /blobs/sha256/{world.blob_digest} HTTP/1.1\r\n\r\n".encode())
    assert status_of(r) == 200 and body_of(r) == world.blob


def test_text_against_the_staging_verifier_and_the_answer_check():
    from sge.agent.auth import AuthError, Verifier, check_answer, sign
    from sge.agent.server import ByteRange, Range, parse_range
    key = b"k" * 64
    v = Verifier(key, ["node1"], not_before=0)
    good = sign(key, "img", "node1").split()
    start = time.monotonic()
    counted = [0]

    @seed(SEED)
    @hsettings(max_examples=EXAMPLES, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(st.text(max_size=80), st.sampled_from(good + ["nan", "inf", "1e999",
                                                                          "-0", "²"])),
                    max_size=8),
           st.text(max_size=200), st.integers(0, 1 << 40))
    def run(fields, text, size):
        if time.monotonic() - start > VERIFIER_BUDGET:
            return
        counted[0] += 1
        for line in (" ".join(fields), text):
            try:
                name, _ = v.check(line)
            except AuthError:
                pass
            else:  # only an exactly signed line passes, once
                assert line.split()[5] == good[5]
        try:
            check_answer(key, text, {"state": text, "mac": text})
        except AuthError:
            pass
        r = parse_range(text, size)
        assert r in (Range.IGNORE, Range.UNSATISFIABLE) or \
            (isinstance(r, ByteRange) and 0 <= r.start <= r.end < size)
    run()
    print(f"fuzzed the verifier, the answer check and the range parser {counted[0]} times")
    assert counted[0] >= 100
