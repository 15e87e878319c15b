"""The load sensor through its real protocol, and its supervisor under kills."""
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.common import ROOT, cli, payload, sha256

SUPERVISOR = os.path.join(ROOT, "loadsensor", "sge-image-loadsensor")


class Sensor:
    def __init__(self, cfg, host="nodeX", supervised=False):
        env = dict(os.environ, HOST=host)
        cmd = ([SUPERVISOR, sys.executable, "--config", cfg] if supervised else
               [sys.executable, "-m", "sge.ge.loadsensor", "--config", cfg])
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def report(self):
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline() == "begin\n"
        lines = []
        while True:
            line = self.p.stdout.readline()
            assert line, "sensor closed its stdout"
            if line == "end\n":
                return lines
            lines.append(line.rstrip("\n"))

    def values(self):
        out = {}
        for line in self.report():
            host, name, value = line.split(":", 2)
            out[name] = value
        return out

    def quit(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        return self.p.wait(10)


@pytest.fixture
def two_images(tmp_path, make_config):
    images = {}
    for i, name in enumerate(["alpha", "Beta.2"]):
        data = payload(10000, seed=i)
        (tmp_path / f"{name}.sif").write_bytes(data)
        images[name] = {"url": str(tmp_path / f"{name}.sif"), "sha256": sha256(data), "size": 10000}
    return make_config(images, cache={"max_size": "1G"})


def test_reports_full_state_each_cycle(two_images, tmp_path):
    s = Sensor(two_images)
    v = s.values()
    assert set(v) == {"img_sensor_time", "img_cache_free", "img_cache_room"}  # no cache yet
    assert int(v["img_cache_free"]) == 1 << 30  # the room a first download has
    assert int(v["img_cache_room"]) == 1 << 30
    assert abs(int(v["img_sensor_time"]) - time.time()) < 5
    assert cli(two_images, "pull", "alpha", "-q").returncode == 0
    v = s.values()
    assert v["img_alpha"] == "1" and "img_beta.2" not in v
    assert int(v["img_cache_free"]) == (1 << 30) - 10000  # the cap binds before the disk
    # room enough for the largest catalog image without evicting: that figure is the room
    assert int(v["img_cache_room"]) == (1 << 30) - 10000
    assert cli(two_images, "pull", "Beta.2", "-q").returncode == 0
    assert s.values()["img_beta.2"] == "1"
    # Host name is the one execd gives ($HOST), on every line.
    assert all(line.startswith("nodeX:") for line in s.report())
    assert s.quit() == 0
    assert s.p.stderr.read() == ""


def test_partial_files_locks_and_evicted_images_do_not_count(two_images):
    assert cli(two_images, "pull", "alpha", "-q").returncode == 0
    from sge import config
    from sge.cache import Cache
    settings = config.load(two_images)
    cache = Cache.from_settings(settings)
    # A half-written download of Beta.2 whose writer died sits in tmp/, its lock in locks/.
    with open(os.path.join(cache.root, "tmp", "Beta.2.999999999.10000.abcd.part"), "wb") as f:
        f.write(b"x" * 5000)
    open(os.path.join(cache.root, "locks", "Beta.2.lock"), "w").close()
    s = Sensor(two_images)
    v = s.values()
    assert v.get("img_alpha") == "1" and "img_beta.2" not in v
    # Evicted: gone from the very next report (qmaster then deletes the value).
    entry = [e for e in cache.entries() if "alpha" in e.names][0]
    cache._remove_unpinned(entry)
    assert "img_alpha" not in s.values()
    s.quit()


def test_vanished_cache_gives_a_report_without_images(two_images):
    assert cli(two_images, "pull", "alpha", "-q").returncode == 0
    from sge import config
    root = config.load(two_images).cache_root
    s = Sensor(two_images)
    assert "img_alpha" in s.values()
    shutil.rmtree(root)
    v = s.values()
    assert set(v) == {"img_sensor_time", "img_cache_free", "img_cache_room"}  # nothing warm
    os.makedirs(root)
    os.chmod(root, 0)
    v = s.values()
    assert "img_alpha" not in v
    s.quit()


def test_broken_config_does_not_kill_it(two_images):
    s = Sensor(two_images)
    s.values()
    with open(two_images, "a") as f:
        f.write("nonsense: [\n")
    assert set(s.values()) == {"img_sensor_time"}
    assert s.p.poll() is None
    s.quit()


def test_eof_exits_cleanly(two_images):
    s = Sensor(two_images)
    s.values()
    s.p.stdin.close()
    assert s.p.wait(10) == 0


def test_lines_stay_under_1000_bytes(tmp_path, make_config):
    data = payload(100, seed=9)
    (tmp_path / "x.sif").write_bytes(data)
    images = {f"img-{i:03d}-" + "n" * 50: {"url": str(tmp_path / "x.sif"), "sha256": sha256(data)}
              for i in range(60)}
    cfg = make_config(images, sensor={"list_complex": True})
    assert cli(cfg, "pull", next(iter(images)), "-q").returncode == 0  # one blob: all 60 are warm
    s = Sensor(cfg, host="h" * 100)
    lines = s.report()
    assert max(len(line.encode()) for line in lines) < 1000
    listed = [line for line in lines if ":images:" in line][0]
    assert listed.split(":", 2)[2].startswith(";img-000-") and listed.endswith(";")
    assert sum(1 for line in lines if ":img_img-" in line) == 60
    s.quit()


def test_supervisor_restarts_a_killed_sensor(two_images):
    s = Sensor(two_images, supervised=True)
    s.values()
    sup = psutil.Process(s.p.pid)
    child = [c for c in sup.children() if "sge.ge.loadsensor" in " ".join(c.cmdline())][0]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        kids = [c for c in sup.children() if "sge.ge.loadsensor" in " ".join(c.cmdline())]
        if kids and kids[0].pid != child.pid:
            break
        time.sleep(0.1)
    assert s.p.poll() is None  # the supervisor, which execd watches, never died
    assert "img_sensor_time" in s.values()
    assert s.quit() == 0


def test_an_image_being_downloaded_counts_as_warm(two_images, make_config):
    """Issue 10: a host pulling an image is visible to the scheduler before the pull
    completes, so a burst piles onto one download (its tasks wait on the image lock)."""
    from sge import config
    from sge.cache import Cache
    cache = Cache.from_settings(config.load(two_images))
    fd, tmp = cache.new_temp("Beta.2", 10000)  # this process: a live writer
    try:
        os.write(fd, b"x" * 5000)
        s = Sensor(two_images)
        assert s.values().get("img_beta.2") == "1"
        os.unlink(tmp)  # the download failed and cleaned up: no longer warm
        assert "img_beta.2" not in s.values()
        s.quit()
    finally:
        os.close(fd)


def test_room_counts_what_eviction_may_take_once_the_cache_is_tight(tmp_path, make_config):
    """Below the largest catalog image the sensor scans the cache as eviction sees it:
    an image out of its grace period counts as room, a recent one does not."""
    images = {}
    for i, name in enumerate(["alpha", "beta"]):
        data = payload(10000, seed=i)
        (tmp_path / f"{name}.sif").write_bytes(data)
        images[name] = {"url": str(tmp_path / f"{name}.sif"), "sha256": sha256(data), "size": 10000}
    cfg = make_config(images, cache={"max_size": 15000})
    assert cli(cfg, "pull", "alpha", "-q").returncode == 0
    s = Sensor(cfg)
    v = s.values()
    assert int(v["img_cache_free"]) == 5000
    assert int(v["img_cache_room"]) == 15000  # evict_grace 0: alpha may go at once
    s.quit()
    cfg2 = make_config(images, cache={"max_size": 15000, "evict_grace": 3600}, name="grace.yaml")
    s = Sensor(cfg2)
    assert int(s.values()["img_cache_room"]) == 5000  # alpha was just used: it stays
    s.quit()
