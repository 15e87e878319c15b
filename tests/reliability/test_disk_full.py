"""Disk full in the middle of a download, on a small tmpfs, through the real prolog.

Another writer fills the filesystem while the image streams in: the stage evicts
unpinned images (least recently used first) and retries once; if nothing can be
evicted it fails with 99, its temp file gone and every other cached image intact.
tests/test_eviction.py covers the no-size file-source case through the CLI.
"""
import os
import subprocess
import time

import pytest

from tests.reliability.conftest import (
    SEED,
    cache_problems,
    exported_path,
    make_spool,
    prolog_cmd,
    prolog_env,
    run_prolog,
    settled_problems,
    write_config,
)
from tests.support.common import payload, sha256
from tests.support.httpserver import Fault
from tests.test_eviction import _pin_holder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

MB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    mounted = []

    def mount(size="8m", inodes=None):
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
        mounted.append(str(mnt))
        return mnt
    yield mount
    for m in mounted:
        if subprocess.run(["umount", m]).returncode != 0:
            subprocess.run(["umount", "-l", m])


def _site(tmp_path, http_server, mnt, rate=2 * MB):
    images, datas = {}, {}
    for i, (name, size) in enumerate([("a", 2 * MB), ("b", 2 * MB), ("c", 3 * MB)]):
        data = payload(size, seed=SEED + i)
        http_server.add_file(f"{name}.sif", data)
        images[name] = {"url": http_server.url(f"{name}.sif"), "sha256": sha256(data), "size": size}
        datas[name] = data
    http_server.faults["c.sif"] = Fault(rate=rate)  # ~1.5 s: time to fill the disk meanwhile
    root = mnt / "cache"
    cfg = write_config(tmp_path / "config.yaml", root, images, cache={"max_size": "1G"})
    for name in ("a", "b"):
        rc, out = run_prolog(cfg, name)
        assert rc == 0, out
        time.sleep(0.02)  # a is the least recently used
    return cfg, str(root), images


def _stage_c_while_filling(cfg, root, mnt, filler_size):
    """Start the prolog on c; once it has written 1 MiB, another process fills the disk."""
    spool = make_spool(os.path.join(os.path.dirname(cfg), "spool"))
    p = subprocess.Popen(prolog_cmd(cfg), env=prolog_env("c", job=3, spool=spool),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = os.path.join(root, "tmp")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = [f for f in os.listdir(tmp) if f.endswith(".part")] if os.path.isdir(tmp) else []
        if parts and os.path.getsize(os.path.join(tmp, parts[0])) >= MB:
            break
        time.sleep(0.01)
    else:
        p.kill()
        pytest.fail("the download never got going")
    with open(mnt / "filler", "wb") as f:  # not the cache's: nothing may evict it
        try:
            f.write(b"\0" * filler_size)
        except OSError:
            pass
    out, err = p.communicate(timeout=120)
    return p.returncode, out + err, spool


def test_full_disk_mid_download_evicts_lru_unpinned_and_retries_once(tmp_path, http_server,
                                                                     small_fs):
    mnt = small_fs("8m")
    cfg, root, images = _site(tmp_path, http_server, mnt)
    holder = _pin_holder(cfg, "b")  # a running job uses b
    try:
        rc, out, spool = _stage_c_while_filling(cfg, root, mnt, 2 * MB)
        assert rc == 0, out
        assert "disk full" in out and "evicting and retrying once" in out, out
        assert "evicted a " in out, out              # the LRU unpinned one
        assert http_server.gets("c.sif") == 2        # the first try and one retry
        assert exported_path(spool) == os.path.join(root, "blobs", "sha256", images["c"]["sha256"])
        blobs = sorted(os.listdir(os.path.join(root, "blobs", "sha256")))
        assert blobs == sorted([images["b"]["sha256"], images["c"]["sha256"]])
        assert settled_problems(root, images, ["b", "c"], pinned=["b"]) == []  # b intact
        assert os.path.getsize(mnt / "filler") == 2 * MB
    finally:
        holder.kill()
        holder.wait()


def test_full_disk_with_everything_pinned_fails_cleanly(tmp_path, http_server, small_fs):
    mnt = small_fs("8m")
    cfg, root, images = _site(tmp_path, http_server, mnt)
    holders = [_pin_holder(cfg, "a"), _pin_holder(cfg, "b")]
    try:
        rc, out, spool = _stage_c_while_filling(cfg, root, mnt, 2 * MB)
        assert rc == 99, out
        assert "disk full" in out or "cannot make room" in out or "in use" in out, out
        assert exported_path(spool) is None
        assert os.listdir(os.path.join(root, "tmp")) == []       # the temp file is gone
        blobs = sorted(os.listdir(os.path.join(root, "blobs", "sha256")))
        assert blobs == sorted([images["a"]["sha256"], images["b"]["sha256"]])
        assert cache_problems(root, images, pinned=["a", "b"]) == []  # a and b intact
        assert http_server.gets("c.sif") <= 2
    finally:
        for h in holders:
            h.kill()
            h.wait()
    # Room again (the other writer's file is gone): the rescheduled job succeeds.
    os.unlink(mnt / "filler")
    http_server.faults.clear()
    rc, out = run_prolog(cfg, "c", job=4)
    assert rc == 0, out
    assert settled_problems(root, images, ["c"]) == []


def test_disk_already_full_fails_before_downloading(tmp_path, http_server, small_fs):
    mnt = small_fs("8m")
    cfg, root, images = _site(tmp_path, http_server, mnt)
    holders = [_pin_holder(cfg, "a"), _pin_holder(cfg, "b")]
    try:
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (3 * MB))  # 1 MiB left for a 3 MiB image, nothing evictable
        rc, out = run_prolog(cfg, "c", job=5)
        assert rc == 99 and ("cannot make room" in out or "in use" in out), out
        assert http_server.gets("c.sif") == 0  # the catalog size said so up front
        assert os.listdir(os.path.join(root, "tmp")) == []
        assert cache_problems(root, images, pinned=["a", "b"]) == []
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_no_inodes_left_is_a_clean_transient_failure(tmp_path, http_server, small_fs):
    mnt = small_fs("16m", inodes=64)
    data = payload(MB, seed=SEED)
    http_server.add_file("d.sif", data)
    images = {"d": {"url": http_server.url("d.sif"), "sha256": sha256(data), "size": MB}}
    root = mnt / "cache"
    cfg = write_config(tmp_path / "config.yaml", root, images)
    # The layout exists (a first run), then another writer takes every inode left.
    from sge import config
    from sge.cache import Cache
    Cache.from_settings(config.load(cfg)).ensure_layout()
    (mnt / "fill").mkdir()
    n = 0
    while True:
        try:
            open(mnt / "fill" / str(n), "w").close()
        except OSError:
            break
        n += 1
    rc, out = run_prolog(cfg, "d")
    assert rc == 99, out
    assert "no space" in out.lower() or "disk full" in out.lower(), out
    assert "internal error" not in out, out
    assert os.listdir(root / "blobs" / "sha256") == []
    for f in os.listdir(mnt / "fill"):
        os.unlink(mnt / "fill" / f)
    rc, out = run_prolog(cfg, "d")
    assert rc == 0, out
    assert settled_problems(str(root), images, ["d"]) == []
