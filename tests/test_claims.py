"""Job claims (sge/claims.py): a running job keeps its image for its whole life without
the starter method. The claim is live while Grid Engine's active_jobs directory of the
job exists, the epilog ends it, the sensor sweeps what no epilog ended, and eviction
never takes a claimed blob, even from a plan made before the claim."""
import os
import shutil
import subprocess
import sys

import pytest

from sge import claims, config
from sge.cache import Cache
from sge.errors import CacheBusy
from tests.support.common import ROOT, cli, payload, sha256

MB = 1 << 20


def _images(tmp_path, n, size=MB):
    images = {}
    for i in range(n):
        data = payload(size, seed=300 + i)
        p = tmp_path / f"img{i}.sif"
        p.write_bytes(data)
        images[f"img{i}"] = {"url": str(p), "sha256": sha256(data), "size": size}
    return images


def _job_dir(tmp_path, key):
    """What an execd keeps while the job runs: <spool>/active_jobs/<job>.<task>."""
    d = tmp_path / "spool" / "node1" / "active_jobs" / key
    d.mkdir(parents=True)
    os.chmod(d.parent, 0o755)
    (d / "environment").write_text("")
    return str(d)


def _hook(module, cfg, env):
    """Run the prolog or epilog as Grid Engine would: its own interpreter, the job's
    environment, the launcher's `-c` entry."""
    return subprocess.run([sys.executable, "-c", f"from sge.ge.{module} import run; run()",
                           "--config", cfg], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _job_env(key, job_dir, image):
    job, task = key.split(".")
    return {"JOB_ID": job, "SGE_TASK_ID": task, "SGE_JOB_SPOOL_DIR": job_dir, "SGE_IMAGE": image}


def test_job_key_and_job_dir_rules():
    assert claims.job_key("12", "3") == "12.3"
    assert claims.job_key("12", "undefined") == "12.1"  # a plain job: Grid Engine's own name
    for bad in ("", "../1", "1/2", "１２", "1" * 21):
        assert claims.job_key(bad, "1") is None
    assert claims.job_dir_ok("12.3", "/s/node1/active_jobs/12.3")
    for bad in ("s/active_jobs/12.3", "/s/active_jobs/12.4", "/s/jobs/12.3",
                "/s/active_jobs/../active_jobs/12.3", "/s/active_jobs/12.3/", "/a b/active_jobs/12.3"):
        assert not claims.job_dir_ok("12.3", bad), bad


def test_prolog_claims_epilog_releases(tmp_path, make_config):
    cfg = make_config(_images(tmp_path, 1))
    job_dir = _job_dir(tmp_path, "7.2")
    r = _hook("prolog", cfg, _job_env("7.2", job_dir, "img0"))
    assert r.returncode == 0, r.stdout + r.stderr
    root = config.load(cfg).cache_root
    digest = config.load(cfg).image("img0").sha256
    assert claims.read(root) == [("7.2", digest, job_dir, True)]
    assert "SGE_IMAGE_PATH=" in open(os.path.join(job_dir, "environment")).read()
    assert [e.claims for e in Cache(root).entries()] == [("7.2",)]
    r = _hook("epilog", cfg, _job_env("7.2", job_dir, "img0"))
    assert r.returncode == 0 and r.stdout + r.stderr == ""
    assert claims.read(root) == []


def test_claimed_image_survives_eviction_past_grace_and_the_end_frees_it(tmp_path, make_config):
    """The sighting: a job that opens its image again long after its prolog, while another
    image needs the room. Without a claim the grace period was its only protection."""
    cfg = make_config(_images(tmp_path, 2), cache={"max_size": int(1.5 * MB), "evict_grace": 0})
    job_dir = _job_dir(tmp_path, "8.1")
    assert _hook("prolog", cfg, _job_env("8.1", job_dir, "img0")).returncode == 0
    r = cli(cfg, "pull", "img1", "-q")
    assert r.returncode != 0 and "in use" in r.stderr, r.stderr  # busy, not evicted
    settings = config.load(cfg)
    assert Cache.from_settings(settings).lookup(settings.image("img0")) is not None
    # An admin lowers the cap: gc would have to evict img0, and says why it will not.
    small = make_config(_images(tmp_path, 2), cache={"max_size": MB // 2}, name="small.yaml")
    dry = cli(small, "gc", "--dry-run").stdout
    assert "would keep img0" in dry and "claimed by running job 8.1" in dry, dry
    status = cli(cfg, "status").stdout.splitlines()[-1]
    assert status.startswith("img0") and status.split()[-1] == "8.1", status
    # The job ends without an epilog (qdel -f, an execd crash): Grid Engine drops its
    # directory, and the claim holds nothing from that moment.
    shutil.rmtree(job_dir)
    assert cli(cfg, "pull", "img1", "-q").returncode == 0
    assert Cache.from_settings(settings).lookup(settings.image("img0")) is None
    assert claims.sweep(settings.cache_root) == ["8.1"]
    assert claims.read(settings.cache_root) == []


def test_a_claim_a_job_owner_could_keep_alive_holds_nothing(tmp_path):
    """The job directory must belong to the owner of a non-writable active_jobs: a job
    owner who made such a path of their own would otherwise pin an image for ever."""
    root = tmp_path / "cache"
    root.mkdir()
    job_dir = _job_dir(tmp_path, "9.1")
    claims.write(str(root), "9.1", "ab" * 32, job_dir)
    assert claims.live(str(root)) == {"ab" * 32: ["9.1"]}
    os.chmod(os.path.dirname(job_dir), 0o777)
    assert claims.live(str(root)) == {}
    os.chmod(os.path.dirname(job_dir), 0o755)
    if os.geteuid() == 0:
        os.chown(job_dir, 65534, 65534)
        assert claims.live(str(root)) == {}


def test_an_eviction_planned_before_a_hand_out_does_not_take_it(tmp_path, make_config, monkeypatch):
    """Found while explaining the sightings: eviction planned from a scan, then removed
    what the plan named, while a prolog handed that image to a job in between (it found
    it warm, recorded its use and exported the path). The job found no image. Now the
    removal checks last use and claims again under the blob's pin lock."""
    cfg = make_config(_images(tmp_path, 2), cache={"max_size": int(1.5 * MB), "evict_grace": 60})
    settings = config.load(cfg)
    cache = Cache.from_settings(settings)
    assert cli(cfg, "pull", "img0", "-q").returncode == 0
    used = os.path.join(cache.root, "used", settings.image("img0").sha256)
    os.utime(used, (1, 1))  # last used long ago: the plan may take it
    real_plan = Cache.plan

    def plan_then_hand_out(self, need=0, keep=()):
        p = real_plan(self, need, keep)
        if any("img0" in e.names for e in p.evict):
            # A prolog on another task finds img0 warm right now and hands it out.
            other = Cache.from_settings(settings)
            other.record_use(other.lookup(settings.image("img0")))
        return p
    monkeypatch.setattr(Cache, "plan", plan_then_hand_out)
    with pytest.raises(CacheBusy):
        cache.make_room(MB)
    assert cache.lookup(settings.image("img0")) is not None


def test_claim_after_eviction_stages_again(tmp_path, make_config, monkeypatch):
    """Evicted between staging and the claim: the prolog stages it again and claims."""
    from sge.ge import prolog
    cfg = make_config(_images(tmp_path, 1))
    settings = config.load(cfg)
    cache = Cache.from_settings(settings)
    assert cli(cfg, "pull", "img0", "-q").returncode == 0
    os.unlink(cache.lookup(settings.image("img0")))  # an eviction got there first
    staged = []

    def stage_again():
        staged.append(1)
        return cli(cfg, "pull", "img0", "-q").stdout.strip()
    for k, v in _job_env("4.1", _job_dir(tmp_path, "4.1"), "img0").items():
        monkeypatch.setenv(k, v)
    path = prolog._hand_out(cache, settings.image("img0"), stage_again)
    assert staged == [1] and os.path.exists(path)
    assert claims.live(cache.root) == {settings.image("img0").sha256: ["4.1"]}


def test_sweep_removes_only_dead_claims_and_dead_temp_files(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    alive = _job_dir(tmp_path, "1.1")
    claims.write(str(root), "1.1", "aa" * 32, alive)
    claims.write(str(root), "2.1", "bb" * 32, str(tmp_path / "spool" / "node1" / "active_jobs" / "2.1"))
    dead_tmp = root / "claims" / ".3.1.999999999.tmp"
    dead_tmp.write_text("x")
    live_tmp = root / "claims" / f".4.1.{os.getpid()}.tmp"
    live_tmp.write_text("x")
    assert claims.sweep(str(root)) == ["2.1"]
    assert sorted(os.listdir(root / "claims")) == [live_tmp.name, "1.1"]
