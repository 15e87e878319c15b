"""Eviction: LRU order down to the low-water mark, pins respected across processes,
stale temp files swept, and a full disk handled without losing cached images."""
import os
import subprocess
import sys
import time

import pytest

from sge import config
from sge.cache import Cache
from tests.support.common import ROOT, cli, payload, sha256

MB = 1 << 20


def file_images(tmp_path, n, size=MB):
    images, datas = {}, {}
    for i in range(n):
        data = payload(size, seed=100 + i)
        p = tmp_path / f"img{i}.sif"
        p.write_bytes(data)
        images[f"img{i}"] = {"url": str(p), "sha256": sha256(data), "size": size}
        datas[f"img{i}"] = data
    return images


def cached_names(cfg):
    cache = Cache.from_settings(config.load(cfg))
    return sorted(n for e in cache.entries() for n in e.names)


def test_lru_order_down_to_low_water(tmp_path, make_config):
    # Cap 4.5 MB, low water 50%: pulling a 5th 1 MB image evicts down to 2.25 MB - 1 MB.
    cfg = make_config(file_images(tmp_path, 5), cache={"max_size": int(4.5 * MB), "low_water": "50%"})
    for i in range(4):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
        time.sleep(0.02)
    # Use img0 again: it becomes the most recently used.
    assert cli(cfg, "pull", "img0", "-q").returncode == 0
    assert cli(cfg, "pull", "img4", "-q").returncode == 0
    # 1.25 MB target before the new 1 MB: keep only img0 (most recent), evict 1, 2, 3.
    assert cached_names(cfg) == ["img0", "img4"]
    log = open(tmp_path / "sge-image.log").read()
    order = [line.split("evicted ")[1].split()[0] for line in log.splitlines() if "evicted " in line]
    assert order == ["img1", "img2", "img3"]


def _pin_holder(cfg, name):
    code = ("import sys,time; from sge import config; from sge.cache import Cache;"
            "s=config.load(sys.argv[1]); c=Cache.from_settings(s);"
            "cm=c.pinned(s.image(sys.argv[2])); cm.__enter__(); print('pinned', flush=True);"
            "time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, cfg, name], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "pinned"
    return p


def test_pinned_images_survive_and_pins_die_with_their_process(tmp_path, make_config):
    cfg = make_config(file_images(tmp_path, 4), cache={"max_size": int(3.5 * MB), "low_water": "30%"})
    for i in range(3):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
        time.sleep(0.02)
    holder = _pin_holder(cfg, "img0")  # the least recently used one
    try:
        assert cli(cfg, "pull", "img3", "-q").returncode == 0
        assert "img0" in cached_names(cfg)
        assert "img1" not in cached_names(cfg)
        status = cli(cfg, "status").stdout
        assert [ln for ln in status.splitlines() if ln.startswith("img0")][0].split()[-3] == "yes"
    finally:
        holder.kill()
        holder.wait()
    assert cli(cfg, "gc").returncode == 0  # cap 3.5 MB holds 2 images: nothing to evict
    cache = Cache.from_settings(config.load(cfg))
    assert not any(e.pinned for e in cache.entries())


def test_cache_full_when_everything_is_pinned(tmp_path, make_config):
    cfg = make_config(file_images(tmp_path, 3), cache={"max_size": int(2.5 * MB)})
    for i in range(2):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
    holders = [_pin_holder(cfg, "img0"), _pin_holder(cfg, "img1")]
    try:
        r = cli(cfg, "pull", "img2", "-q")
        assert r.returncode == 5 and "full of images in use" in r.stderr and "pinned" in r.stderr
        assert cached_names(cfg) == ["img0", "img1"]
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_a_busy_cache_waits_for_room_then_stages(tmp_path, make_config):
    """Issue: full caches sent tasks to Eqw. A pull that finds every image pinned waits
    (cache.room_wait) and stages as soon as a pin drops."""
    cfg = make_config(file_images(tmp_path, 3), cache={"max_size": int(2.5 * MB), "room_wait": 60})
    for i in range(2):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
    holders = [_pin_holder(cfg, "img0"), _pin_holder(cfg, "img1")]
    try:
        from tests.support.common import cli_popen
        waiter = cli_popen(cfg, "pull", "img2")
        deadline = time.monotonic() + 30
        log = tmp_path / "sge-image.log"
        while "waiting up to" not in (log.read_text() if log.exists() else ""):
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline, "the pull never said it waits for room"
            time.sleep(0.1)
        holders[0].kill()
        holders[0].wait()
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
        assert cached_names(cfg) == ["img1", "img2"]
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_an_image_larger_than_the_cap_is_full_not_busy(tmp_path, make_config):
    # Waiting cannot help: fail at once with the cap in the message, even with a wait set.
    cfg = make_config(file_images(tmp_path, 1, size=2 * MB),
                      cache={"max_size": MB, "room_wait": 600})
    r = cli(cfg, "pull", "img0", "-q", timeout=120)  # well under room_wait: no wait
    assert r.returncode == 5 and "cannot make room" in r.stderr
    assert "in use" not in r.stderr
    assert cached_names(cfg) == []


def test_gc_sweeps_dead_temp_files_but_not_live_ones(tmp_path, make_config):
    cfg = make_config({})
    cache = Cache.from_settings(config.load(cfg))
    cache.ensure_layout()
    live_fd, live = cache.new_temp("live", 10)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a writer that has exited: its pid is free
    dead = os.path.join(cache.root, "tmp", f"dead.{gone.pid}.10.abcd.part")
    open(dead, "wb").close()
    r = cli(cfg, "gc")
    assert r.returncode == 0 and f"dead.{gone.pid}" in r.stdout
    assert os.path.exists(live) and not os.path.exists(dead)
    os.close(live_fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_evicts_unpinned_and_retries_once(tmp_path, make_config):
    mnt = tmp_path / "small"
    mnt.mkdir()
    # 6 MiB and 64 KiB: each published blob also writes a small format record (a page
    # on tmpfs), and the retry needs twice the 3 MiB that fit, exactly 6 MiB.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6208k", "tmpfs", str(mnt)], check=True)
    try:
        images = file_images(tmp_path, 3, size=2 * MB)
        big = payload(3 * MB, seed=999)
        (tmp_path / "big.sif").write_bytes(big)
        images["big"] = {"url": str(tmp_path / "big.sif"), "sha256": sha256(big)}  # no size: no pre-check
        cfg = make_config(images, cache={"root": str(mnt / "cache"), "max_size": "1G"})
        assert cli(cfg, "pull", "img0", "-q").returncode == 0
        assert cli(cfg, "pull", "img1", "-q").returncode == 0
        # 4 MB used of 6 MB: the 3 MB image hits ENOSPC mid-write, evicts, retries.
        r = cli(cfg, "pull", "big", "-q")
        assert r.returncode == 0, r.stderr
        assert "disk full" in open(tmp_path / "sge-image.log").read()
        assert "big" in cached_names(cfg)
        assert cached_names(cfg) == ["big"]  # room for twice what fit was made
        holder = _pin_holder(cfg, "big")
        try:
            assert cli(cfg, "pull", "img2", "-q").returncode == 0      # fits beside big
            r = cli(cfg, "pull", "img0", "-q")                         # evicts img2, not big
            assert r.returncode == 0, r.stderr
            assert cached_names(cfg) == ["big", "img0"]
            assert not os.listdir(mnt / "cache" / "tmp")
        finally:
            holder.kill()
            holder.wait()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_waiters_for_one_image_stage_it_once(tmp_path, make_config):
    """Two tasks of one image wait for room on the same host: one stages it, the other
    finds it; neither evicts it to make room for itself (found by the two-array test on
    the real cluster: a host staged the same image three times)."""
    cfg = make_config(file_images(tmp_path, 3), cache={"max_size": int(2.5 * MB), "room_wait": 60})
    for i in range(2):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
    holders = [_pin_holder(cfg, "img0"), _pin_holder(cfg, "img1")]
    log = tmp_path / "sge-image.log"
    try:
        from tests.support.common import cli_popen
        waiters = [cli_popen(cfg, "pull", "img2", "-q") for _ in range(2)]
        deadline = time.monotonic() + 30
        while log.read_text().count("waiting up to") < 2:
            assert all(w.poll() is None for w in waiters)
            assert time.monotonic() < deadline, "the pulls never waited for room"
            time.sleep(0.1)
        holders[0].kill()
        holders[0].wait()
        for w in waiters:
            w.communicate(timeout=60)
            assert w.returncode == 0
    finally:
        for h in holders:
            h.kill()
            h.wait()
    text = log.read_text()
    assert text.count("image img2: staged") == 1, text
    assert "evicted img2" not in text


def test_gc_dry_run_prints_the_plan_and_changes_nothing(tmp_path, make_config):
    cfg = make_config(file_images(tmp_path, 3), cache={"max_size": int(3.5 * MB), "low_water": "30%"})
    for i in range(3):
        assert cli(cfg, "pull", f"img{i}", "-q").returncode == 0
        time.sleep(0.02)
    # Over the cap now: lower it so gc has work; img0 is pinned by a job.
    cfg2 = make_config(file_images(tmp_path, 3), cache={"max_size": int(2.5 * MB), "low_water": "50%"},
                       name="small.yaml")
    holder = _pin_holder(cfg2, "img0")
    try:
        before = cached_names(cfg2)
        r = cli(cfg2, "gc", "--dry-run")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert [ln.split()[2] for ln in lines if ln.startswith("would evict")] == ["img1", "img2"]
        assert any(ln.startswith("would keep img0 ") and ln.endswith("pinned by a running job")
                   for ln in lines), lines
        assert "2 images to evict" in lines[-1]
        assert cached_names(cfg2) == before  # a dry run changes nothing
        r = cli(cfg2, "gc")
        assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("evicted")] == \
            ["img1", "img2"]
    finally:
        holder.kill()
        holder.wait()
