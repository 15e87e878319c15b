"""Staging against a real HTTP server with real processes: one download per node,
verified, atomic, and nothing partial left by failures or kills."""
import os
import signal
import time

import pytest

from sge import config
from sge.cache import Cache
from sge.errors import EXIT_NOT_CACHED, EXIT_PERMANENT, EXIT_TRANSIENT, EXIT_UNKNOWN_IMAGE
from tests.support.common import cache_files, cli, cli_popen, payload, sha256
from tests.support.httpserver import Fault

MB = 1 << 20


def image_entry(server, name, data, **extra):
    digest = server.add_file(f"{name}.sif", data)
    return {"url": server.url(f"{name}.sif"), "sha256": digest, "size": len(data), **extra}


def blobs(cfg):
    root = config.load(cfg, use_snapshot=False).cache_root
    d = os.path.join(root, "blobs", "sha256")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def assert_nothing_partial(cfg):
    """No temp file left, and every blob's name is its content's digest."""
    root = config.load(cfg, use_snapshot=False).cache_root
    files = cache_files(root)
    assert not [f for f in files if f.startswith("tmp/")], files
    for digest in blobs(cfg):
        with open(os.path.join(root, "blobs", "sha256", digest), "rb") as f:
            assert sha256(f.read()) == digest


def test_pull_then_path(http_server, make_config):
    data = payload(3 * MB)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    r = cli(cfg, "path", "demo")
    assert r.returncode == EXIT_NOT_CACHED and "not cached" in r.stderr
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert cli(cfg, "path", "demo").stdout.strip() == path
    # Warm: a second pull does not touch the server.
    assert cli(cfg, "pull", "demo", "--quiet").returncode == 0
    assert http_server.gets("demo.sif") == 1


def test_twenty_processes_one_download(http_server, make_config):
    data = payload(8 * MB, seed=1)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    http_server.faults["demo.sif"] = Fault(rate=16 * MB)  # ~0.5 s: all 20 overlap
    procs = [cli_popen(cfg, "pull", "demo", "--quiet") for _ in range(20)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [o[1] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    with open(paths.pop(), "rb") as f:
        assert sha256(f.read()) == sha256(data)
    assert http_server.gets("demo.sif") == 1
    assert_nothing_partial(cfg)


def test_sigkill_mid_download_leaves_nothing_partial(http_server, make_config):
    data = payload(8 * MB, seed=2)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    http_server.faults["demo.sif"] = Fault(rate=4 * MB)
    p = cli_popen(cfg, "pull", "demo", "--quiet")
    root = config.load(cfg, use_snapshot=False).cache_root
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until bytes are on disk
        tmp = os.path.join(root, "tmp")
        if os.path.isdir(tmp) and any(os.path.getsize(os.path.join(tmp, f)) > MB for f in os.listdir(tmp)):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert cli(cfg, "path", "demo").returncode == EXIT_NOT_CACHED
    assert blobs(cfg) == []
    assert os.listdir(os.path.join(root, "tmp")), "the dead writer's temp file is still there"
    http_server.faults.clear()
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "removed stale temp file" in open(os.path.join(os.path.dirname(cfg), "sge-image.log")).read()
    assert_nothing_partial(cfg)


@pytest.mark.parametrize("fault, words", [
    (Fault(corrupt_at=12345), "does not match the catalog"),
    (Fault(cut_at=MB, no_ranges=True), "connection closed"),
    (Fault(length_delta=-10), "offers"),
    (Fault(status=404), "not found"),
    (Fault(status=403), "access denied"),
])
def test_bad_bodies_are_never_published(http_server, make_config, fault, words):
    data = payload(2 * MB, seed=3)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    http_server.faults["demo.sif"] = fault
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode in (EXIT_PERMANENT, EXIT_TRANSIENT), r.stderr
    assert words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert blobs(cfg) == []
    assert_nothing_partial(cfg)


def test_server_errors_are_transient_and_retried(http_server, make_config):
    data = payload(MB, seed=4)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)}, fetch={"retries": 2})
    http_server.faults["demo.sif"] = Fault(status=503, times=2)
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    assert http_server.gets("demo.sif") == 3
    http_server.faults["other.sif"] = Fault(status=500)
    cfg2 = make_config({"other": image_entry(http_server, "other", payload(MB, seed=40))},
                       name="c2.yaml")
    r = cli(cfg2, "pull", "other", "--quiet")
    assert r.returncode == EXIT_TRANSIENT and "server error" in r.stderr


def test_interrupted_transfer_resumes_with_range(http_server, make_config):
    data = payload(4 * MB, seed=5)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)}, fetch={"retries": 0})
    http_server.faults["demo.sif"] = Fault(cut_at=3 * MB, cut_times=1)
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    ranges = http_server.ranged_gets("demo.sif")
    assert len(ranges) == 1 and ranges[0].startswith("bytes=")
    assert int(ranges[0][6:].rstrip("-")) >= 2 * MB
    assert_nothing_partial(cfg)


def test_mirror_failover(http_server, make_config, tmp_path):
    data = payload(MB, seed=6)
    entry = image_entry(http_server, "demo", data)
    entry["url"] = [http_server.url("missing.sif"), "http://127.0.0.1:9/refused.sif", entry["url"]]
    cfg = make_config({"demo": entry}, fetch={"retries": 0})
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    assert http_server.gets("missing.sif") == 1 and http_server.gets("demo.sif") == 1


def test_stall_and_dribble_are_bounded(http_server, make_config):
    data = payload(MB, seed=7)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)},
                      fetch={"retries": 0, "read_timeout": 1.5, "low_speed_limit": 1024,
                             "low_speed_time": 2})
    http_server.faults["demo.sif"] = Fault(stall_at=1000, no_ranges=True)
    t = time.monotonic()
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == EXIT_TRANSIENT and "no data" in r.stderr
    http_server.faults["demo.sif"] = Fault(dribble=True)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)}, name="c2.yaml",
                      fetch={"retries": 0, "read_timeout": 3, "low_speed_limit": 1024,
                             "low_speed_time": 2})
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == EXIT_TRANSIENT and "too slow" in r.stderr
    assert time.monotonic() - t < 30
    assert blobs(cfg) == []


def test_redirect_loop_fails_fast(http_server, make_config):
    data = payload(1000, seed=8)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    http_server.faults["demo.sif"] = Fault(redirect="/demo.sif")
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == EXIT_PERMANENT and "redirect" in r.stderr


def test_unknown_image_and_bad_names(make_config):
    cfg = make_config({})
    for name in ["nope", "../etc/passwd", "a;b"]:
        r = cli(cfg, "pull", name)
        assert r.returncode == EXIT_UNKNOWN_IMAGE, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_unwritable_cache_root_is_a_clear_error(http_server, make_config, tmp_path):
    data = payload(1000, seed=9)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)},
                      cache={"root": "/proc/sge-image-cache"})
    r = cli(cfg, "pull", "demo", "--quiet")
    assert r.returncode == EXIT_TRANSIENT and "cache root /proc/sge-image-cache" in r.stderr


def test_file_source_and_plain_paths(tmp_path, make_config):
    data = payload(MB, seed=10)
    src = tmp_path / "img.sif"
    src.write_bytes(data)
    cfg = make_config({"a": {"url": f"file://{src}", "sha256": sha256(data)},
                       "b": {"url": str(src), "sha256": sha256(data), "size": len(data)},
                       "gone": {"url": str(tmp_path / "absent.sif"), "sha256": sha256(b"other")}})
    pa = cli(cfg, "pull", "a", "-q").stdout.strip()
    pb = cli(cfg, "pull", "b", "-q").stdout.strip()
    assert pa == pb and open(pa, "rb").read() == data  # one blob, two names
    r = cli(cfg, "pull", "gone", "-q")
    assert r.returncode == EXIT_PERMANENT and "No such file" in r.stderr


def test_status_and_verify_quarantines_corruption(http_server, make_config):
    data = payload(MB, seed=11)
    cfg = make_config({"demo": image_entry(http_server, "demo", data)})
    path = cli(cfg, "pull", "demo", "-q").stdout.strip()
    r = cli(cfg, "status")
    assert r.returncode == 0 and "demo" in r.stdout and sha256(data)[:12] in r.stdout
    assert cli(cfg, "verify").returncode == 0
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"X")
    r = cli(cfg, "verify", "demo")
    assert r.returncode == 7 and "CORRUPT" in r.stdout
    assert not os.path.exists(path)
    assert cli(cfg, "path", "demo").returncode == EXIT_NOT_CACHED


def test_lock_waiters_wake_and_find_it(tmp_path, make_config):
    """A holder of the image lock; waiters block (not poll) and return the path
    the holder published, without downloading themselves."""
    data = payload(1000, seed=12)
    src = tmp_path / "img.sif"
    src.write_bytes(data)
    cfg = make_config({"demo": {"url": str(src), "sha256": sha256(data)}})
    settings = config.load(cfg)
    cache = Cache.from_settings(settings)
    cache.ensure_layout()
    with cache.image_lock("demo"):
        procs = [cli_popen(cfg, "pull", "demo", "-q") for _ in range(5)]
        time.sleep(1.0)
        assert all(p.poll() is None for p in procs)  # blocked on the lock
        fd, tmp = cache.new_temp("demo")
        os.write(fd, data)
        cache.publish(fd, tmp, sha256(data), settings.image("demo"))
        os.close(fd)
        src.unlink()  # a waiter that downloaded after the release would fail
    outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


def test_lock_wait_limit_is_transient(tmp_path, make_config):
    data = payload(1000, seed=13)
    src = tmp_path / "img.sif"
    src.write_bytes(data)
    cfg = make_config({"demo": {"url": str(src), "sha256": sha256(data)}}, cache={"lock_wait": 1})
    cache = Cache.from_settings(config.load(cfg))
    cache.ensure_layout()
    with cache.image_lock("demo"):
        r = cli(cfg, "pull", "demo", "-q")
    assert r.returncode == EXIT_TRANSIENT and "gave up waiting" in r.stderr


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path, monkeypatch):
    from sge import fsutil
    p = tmp_path / "state.json"
    fsutil.atomic_write(str(p), "one")
    fsutil.atomic_write(str(p), b"two", mode=0o600)
    assert p.read_bytes() == b"two" and (p.stat().st_mode & 0o777) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json"]

    # a write that fails before the rename leaves the old file and no temp file
    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fsutil.os, "fsync", no_space)
    with pytest.raises(OSError):
        fsutil.atomic_write(str(p), "three")
    assert p.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_status_and_verify_on_an_empty_cache_say_so(make_config):
    """On an admin host the cache is empty: status points at --cluster, and verify
    says there was nothing to check rather than printing nothing."""
    cfg = make_config({})
    r = cli(cfg, "status")
    assert r.returncode == 0 and "status --cluster" in r.stdout, r.stdout
    r = cli(cfg, "verify")
    assert r.returncode == 0 and "nothing to verify" in r.stdout, r.stdout
