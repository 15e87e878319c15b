"""`agent.upload_rate`: one cap on the bytes a second an agent sends to peers, over all
of its uploads together, so that serving peers cannot take a host's link from its jobs.

A real agent (`python -m sge.agent`, dropping root, as in test_agent.py) on its own
127.0.77.x address serves a blob of a few MiB to two clients at once, whole and as a
download in progress; every byte is checked. Timing is asserted one way only: capped,
the uploads together cannot beat the rate (a loaded machine makes them slower, never
faster).
"""
import hashlib
import os
import threading
import time

import pytest

from tests.support.agentkit import AgentWorld, body_of, free_port, raw, status_of
from tests.support.common import payload

AGENT, CLIENTS = "127.0.77.201", ("127.0.77.202", "127.0.77.203")
MB = 1 << 20
SIZE = 3 * MB + 4321
RATE = 2 * MB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent binds, forks and drops root")


@pytest.fixture
def world():
    data = payload(SIZE, seed=77)
    digest = hashlib.sha256(data).hexdigest()
    # The origin is never asked here: the agent only serves what its cache holds.
    images = {"img": {"url": "http://127.0.77.200:9/img.sif", "sha256": digest,
                      "size": len(data)}}
    w = AgentWorld(images, free_port(AGENT))
    w.data, w.digest = data, digest
    yield w
    w.close()


def _cache(world):
    from sge import config
    from sge.cache import Cache
    cache = Cache.from_settings(config.load(world.config(AGENT), use_snapshot=False))
    cache.ensure_layout()
    return cache


def _put_blob(world):
    """A verified blob in the agent's cache, as staging leaves it (root's, 0444)."""
    path = _cache(world).blob_path(world.digest)
    with open(path, "wb") as f:
        f.write(world.data)
    os.chmod(path, 0o444)


def _start(world, **agent):
    world.start(AGENT, trust=[AGENT, *CLIENTS], upload_slots=2, upload_min_rate="512K",
                **agent)


def _get_from_both(world, inflight=False):
    """GET the blob from the agent, from both client addresses at once -> (seconds
    until both had every byte, [response per client])."""
    head = f"GET /blobs/sha256/{world.digest} HTTP/1.1\r\nHost: x\r\n" + \
        ("X-Sge-Image-Inflight: 1\r\n" if inflight else "") + "\r\n"
    out = [b""] * len(CLIENTS)
    go = threading.Barrier(len(CLIENTS) + 1)

    def fetch(i, src):
        go.wait()
        out[i] = raw(AGENT, world.port, head.encode(), source=src, read_timeout=30)
    threads = [threading.Thread(target=fetch, args=(i, c)) for i, c in enumerate(CLIENTS)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(60)
    return time.monotonic() - t0, out


def _check_bytes(world, responses):
    for r in responses:
        assert status_of(r) == 200
        body = body_of(r)
        assert len(body) == SIZE and hashlib.sha256(body).hexdigest() == world.digest


def _least(total):
    """The least time `total` bytes can take under the cap: all of them at RATE, less
    the one piece an idle cap sends at once (sge/agent/server.py UploadCap)."""
    from sge.agent.server import UploadCap
    return (total - UploadCap(RATE).piece) / RATE


def test_a_capped_agent_sends_no_faster_than_its_rate_over_all_uploads(world):
    _put_blob(world)
    _start(world, upload_rate="2M")
    took, responses = _get_from_both(world)
    _check_bytes(world, responses)
    assert took >= _least(2 * SIZE), took
    log = world.log()
    assert "uploads capped at 2.0 MiB/s" in log
    assert log.count(f"served blob {world.digest[:16]}") == 2
    assert "dropped a transfer" not in log  # the cap's waits are not the readers'
    print(f"2 x {SIZE} bytes at upload_rate 2M: {took:.2f}s "
          f"(at least {_least(2 * SIZE):.2f}s)")


def test_a_capped_agent_caps_a_download_in_progress_too(world):
    _start(world, upload_rate="2M/s")
    # A download in progress, as sge/stage.py makes one: the cache's own temp file,
    # flocked by its writer (this process) while the agent streams it.
    fd, _ = _cache(world).new_temp("img", SIZE)
    try:
        os.write(fd, world.data)
        took, responses = _get_from_both(world, inflight=True)
    finally:
        os.close(fd)
    _check_bytes(world, responses)
    assert all(b"X-Sge-Image-Inflight: 1" in r for r in responses)
    assert took >= _least(2 * SIZE), took
    assert world.log().count("while it was downloaded") == 2


def test_an_uncapped_agent_is_unchanged(world):
    _put_blob(world)
    _start(world)  # upload_rate: its default, no cap
    took, responses = _get_from_both(world)
    _check_bytes(world, responses)
    assert "uploads capped" not in world.log()
    print(f"2 x {SIZE} bytes without a cap: {took:.2f}s")


@pytest.mark.parametrize("value, says", [
    ("fast", "is not a rate in bytes a second"),
    (-1, "is not a rate in bytes a second"),
    (True, "is not a rate in bytes a second"),
    # 4 upload slots x upload_min_rate 1M: a copy would get less than it is held to
    ("3M", "agent.upload_rate 3.0 MiB/s is below agent.upload_slots (4) x "
           "agent.upload_min_rate (1.0 MiB/s) = 4.0 MiB/s"),
])
def test_a_bad_upload_rate_is_a_config_error_naming_its_line(tmp_path, value, says):
    import yaml

    from sge import config
    from sge.errors import ConfigError
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"cache": {"root": str(tmp_path / "cache")},
                                    "agent": {"upload_rate": value}}))
    with pytest.raises(ConfigError) as e:
        config.load(str(path), use_snapshot=False)
    assert f"{path}:" in str(e.value) and says in str(e.value), str(e.value)


def test_the_receivers_low_speed_limit_bounds_the_cap_too(tmp_path):
    import yaml

    from sge import config
    from sge.errors import ConfigError
    path = tmp_path / "config.yaml"
    base = {"cache": {"root": str(tmp_path / "cache")}, "fetch": {"low_speed_limit": "2M"}}
    path.write_text(yaml.safe_dump({**base, "agent": {"upload_rate": "6M"}}))
    with pytest.raises(ConfigError, match="fetch.low_speed_limit"):
        config.load(str(path), use_snapshot=False)
    path.write_text(yaml.safe_dump({**base, "agent": {"upload_rate": "8M", "upload_slots": 4}}))
    assert config.load(str(path), use_snapshot=False).agent.upload_rate == 8 * MB
    for off in (0, None, ""):
        path.write_text(yaml.safe_dump({**base, "agent": {"upload_rate": off}}))
        assert config.load(str(path), use_snapshot=False).agent.upload_rate == 0


def test_the_cap_is_a_schedule_one_piece_ahead_of_the_rate():
    """UploadCap without real time: an idle cap lets a piece go at once; after that
    every piece waits until the bytes before it are paid for at the rate, whoever
    sends them, and time spent idle is not saved up for a later burst."""
    from sge.agent.server import UploadCap
    now = [100.0]

    def sleep(s):
        now[0] += s
    cap = UploadCap(1000, clock=lambda: now[0], sleep=sleep)
    assert cap.take(100) == 0.0                      # idle: at once
    assert cap.take(100) == pytest.approx(0.1)       # one upload...
    assert cap.take(300) == pytest.approx(0.1)       # ...or another: the same schedule
    assert cap.take(100) == pytest.approx(0.3)
    assert now[0] == pytest.approx(100.5)            # 600 bytes: 0.5 s after the first
    now[0] += 60                                     # a minute idle
    assert cap.take(100) == 0.0
    assert cap.take(100) == pytest.approx(0.1)       # no credit from the idle minute
    with pytest.raises(ValueError):
        UploadCap(0)
