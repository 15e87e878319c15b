"""Runtime presets and image formats (sge/runtimes.py, sge/imageformat.py).

Apptainer and Singularity are not packaged for this Debian: their presets are tested
here by the argv the real starter process hands to a recorder script installed under
their names. Charliecloud runs for real in tests/ge/test_containers_ge.py; here its
argv is checked against the binds and paths it must produce.
"""
import os
import shutil
import subprocess
import sys

import pytest

from sge import imageformat, runtimes
from sge.runtimes import UnusableRuntime, from_setting
from tests.support.common import ROOT, cli, payload, sha256

SQFS_HEAD = b"hsqs" + bytes(60)
SIF_HEAD = b"#!/usr/bin/env run-singularity\n\0" + b"SIF_MAGIC" + bytes(23)


def test_formats_by_magic(tmp_path):
    assert imageformat.from_head(SQFS_HEAD) == "squashfs"
    assert imageformat.from_head(SIF_HEAD) == "sif"
    assert imageformat.from_head(b"<html>not an image</html>") == "unknown"
    if shutil.which("siftool") and shutil.which("mksquashfs"):
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "os-release").write_text("ID=x\n")
        sqfs, sif = tmp_path / "r.sqfs", tmp_path / "r.sif"
        subprocess.run(["mksquashfs", str(root), str(sqfs), "-noappend", "-quiet"], check=True,
                       capture_output=True)
        subprocess.run(["siftool", "new", str(sif)], check=True, capture_output=True)
        subprocess.run(["siftool", "add", "--datatype", "4", "--parttype", "1", "--partfs", "1",
                        "--partarch", "2", str(sif), str(sqfs)], check=True, capture_output=True)
        assert imageformat.of_path(str(sqfs)) == "squashfs"
        assert imageformat.of_path(str(sif)) == "sif"


def test_publish_records_the_format(tmp_path, make_config):
    data = SQFS_HEAD + payload(4000)
    (tmp_path / "i.sqfs").write_bytes(data)
    cfg = make_config({"t": {"url": str(tmp_path / "i.sqfs"), "sha256": sha256(data)}})
    path = cli(cfg, "pull", "t", "-q").stdout.strip()
    digest = os.path.basename(path)
    root = str(tmp_path / "cache")
    assert (tmp_path / "cache" / "formats" / digest).read_text() == "squashfs\n"
    assert imageformat.of_cached(root, path) == "squashfs"
    # A blob published before formats were recorded is read again on demand.
    os.unlink(tmp_path / "cache" / "formats" / digest)
    assert imageformat.of_cached(root, path) == "squashfs"


def test_runtime_settings():
    ch = from_setting(["charliecloud"])
    assert (ch.name, ch.template, ch.formats) == ("charliecloud", ("ch-run",), {"squashfs"})
    assert from_setting(["apptainer"]).runs("sif") and from_setting(["singularity"]).runs("sif")
    assert not ch.runs("sif") and ch.runs("squashfs") and ch.runs("unknown")
    legacy = from_setting(["/opt/bin/apptainer", "exec"])
    assert legacy.name == "custom" and legacy.runs("sif")
    assert legacy.argv("/c/img", ["/bin/sh", "s"], {}, "/") == \
        ["/opt/bin/apptainer", "exec", "/c/img", "/bin/sh", "s"]
    tpl = from_setting(["myrun", "--image={image}", "--", "{command}", "--after"])
    assert tpl.formats is None and tpl.runs("sif")
    assert tpl.argv("/c/img", ["a", "b c"], {}, "/") == \
        ["myrun", "--image=/c/img", "--", "a", "b c", "--after"]
    assert from_setting(["ch-run", "{image}", "--"]).formats == {"squashfs"}
    for bad in (["charliecloud", "-v"], ["x", "{command}"], ["x", "{image}", "{image}"]):
        with pytest.raises(UnusableRuntime):
            from_setting(bad)
    assert "SIF" in ch.refusal("demo", "sif") and "\n" not in ch.refusal("demo", "sif")


def test_config_checks_the_runtime_and_binds(tmp_path):
    from sge import config
    from sge.errors import ConfigError
    p = tmp_path / "c.yaml"
    p.write_text("starter:\n  runtime: charliecloud\n  binds: [/scratch, '/proj:/mnt/3']\n")
    s = config.load(str(p), use_snapshot=False)
    assert s.starter.runtime == ("charliecloud",) and s.starter.binds == ("/scratch", "/proj:/mnt/3")
    p.write_text("starter:\n  runtime: [charliecloud, --home]\n")
    with pytest.raises(ConfigError, match="c.yaml:2: starter.runtime: the preset"):
        config.load(str(p), use_snapshot=False)
    p.write_text("starter:\n  binds: [scratch]\n")
    with pytest.raises(ConfigError, match="starter.binds"):
        config.load(str(p), use_snapshot=False)
    p.write_text("images:\n  x:\n    url: file:///x\n    sha256: " + "a" * 64 + "\n    format: tar\n")
    with pytest.raises(ConfigError, match="c.yaml:5: image 'x': format must be sif or squashfs"):
        config.load(str(p), use_snapshot=False)


def _job_tree(tmp_path):
    spool = tmp_path / "spool" / "active_jobs" / "7.1"
    scripts = tmp_path / "spool" / "job_scripts"
    for d in (spool, scripts, tmp_path / "home" / "alice" / "proj", tmp_path / "tmpdir",
              tmp_path / "scratch" / "run", tmp_path / "elsewhere"):
        d.mkdir(parents=True)
    (scripts / "7").write_text("echo hi\n")
    env = {"HOME": str(tmp_path / "home" / "alice"), "USER": "alice",
           "TMPDIR": str(tmp_path / "tmpdir"), "SGE_JOB_SPOOL_DIR": str(spool),
           "PE_HOSTFILE": str(spool / "pe_hostfile")}
    return env, [ "/bin/sh", str(scripts / "7")], str(scripts)


def test_charliecloud_argv_shows_the_job_its_paths(tmp_path):
    env, command, scripts = _job_tree(tmp_path)
    spool = env["SGE_JOB_SPOOL_DIR"]
    cwd = os.path.join(env["HOME"], "proj")
    argv = runtimes.charliecloud_argv("/c/img.sqfs", command, env, cwd)
    assert argv == ["ch-run", "--home", "-b", f"{scripts}:/mnt/1", "-b", f"{spool}:/mnt/2",
                    "-c", "/home/alice/proj", "--env-no-expand", "--set-env=TMPDIR=/tmp",
                    "--set-env=SGE_JOB_SPOOL_DIR=/mnt/2",
                    "--set-env=PE_HOSTFILE=/mnt/2/pe_hostfile",
                    "/c/img.sqfs", "--", "/bin/sh", "-c", '"$@"; exit $?', "sh",
                    "/bin/sh", "/mnt/1/7"]
    # A site bind holds the working directory at its own path; a directory no bind
    # shows goes onto /mnt/0.
    scratch = str(tmp_path / "scratch")
    argv = runtimes.charliecloud_argv("/i", command, env, os.path.join(scratch, "run"),
                                      binds=[scratch, "/nonexistent-dir"])
    assert argv[1:3] == ["-b", f"{scratch}:{scratch}"] and "/nonexistent-dir" not in " ".join(argv)
    assert argv[argv.index("-c") + 1] == os.path.join(scratch, "run")
    elsewhere = str(tmp_path / "elsewhere")
    argv = runtimes.charliecloud_argv("/i", command, env, elsewhere)
    assert f"{elsewhere}:/mnt/0" in argv and argv[argv.index("-c") + 1] == "/mnt/0"
    # The working directory inside $TMPDIR is under /tmp inside.
    argv = runtimes.charliecloud_argv("/i", command, env, env["TMPDIR"])
    assert argv[argv.index("-c") + 1] == "/tmp"


def _recorder(tmp_path, name):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    rec = bindir / name
    rec.write_text("#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > \"$RECORD\"\n")
    rec.chmod(0o755)
    return str(bindir)


@pytest.mark.parametrize("preset", ["apptainer", "singularity"])
def test_apptainer_presets_argv_through_the_starter(tmp_path, make_config, preset):
    """The real starter process execs `apptainer exec` (or singularity's) with binds for
    the job's script and spool directories and a TMPDIR outside /tmp, and its cwd."""
    env, command, scripts = _job_tree(tmp_path)
    data = SIF_HEAD + payload(1000)
    (tmp_path / "i.sif").write_bytes(data)
    cfg = make_config({"demo": {"url": str(tmp_path / "i.sif"), "sha256": sha256(data)}},
                      starter={"runtime": preset})
    path = cli(cfg, "pull", "demo", "-q").stdout.strip()
    bindir = _recorder(tmp_path, preset)
    record = tmp_path / "argv"
    cwd = os.path.join(env["HOME"], "proj")
    run_env = dict(os.environ, **env, SGE_IMAGE="demo", RECORD=str(record),
                   SGE_STARTER_SHELL_PATH="/bin/sh",
                   PATH=bindir + os.pathsep + os.environ["PATH"])
    r = subprocess.run([sys.executable, "-m", "sge.ge.starter", "--config", cfg, "--",
                        command[1], "two words"], env=run_env, capture_output=True, text=True,
                       cwd=cwd)
    assert r.returncode == 0, r.stderr
    # $TMPDIR here is under /tmp, which apptainer binds itself.
    assert record.read_text().splitlines() == [
        os.path.join(bindir, preset), "exec", "--bind", scripts,
        "--bind", env["SGE_JOB_SPOOL_DIR"], "--pwd", cwd,
        path, "/bin/sh", command[1], "two words"]
    # A $TMPDIR elsewhere, and a site's binds, are bound too.
    argv = runtimes.apptainer_argv("/i", ["/bin/true"], {"TMPDIR": "/var/tmp"}, "/",
                                   binds=["/var/tmp:/scratch"], program=preset)
    assert argv == [preset, "exec", "--bind", "/var/tmp:/scratch", "--bind", "/var/tmp",
                    "--pwd", "/", "/i", "/bin/true"]


def test_starter_refuses_a_sif_for_charliecloud_in_one_line(tmp_path, make_config):
    data = SIF_HEAD + payload(1000)
    (tmp_path / "i.sif").write_bytes(data)
    cfg = make_config({"demo": {"url": str(tmp_path / "i.sif"), "sha256": sha256(data)}},
                      starter={"runtime": "charliecloud"})
    cli(cfg, "pull", "demo", "-q")
    r = subprocess.run([sys.executable, "-m", "sge.ge.starter", "--config", cfg, "--",
                        "/bin/true"], env=dict(os.environ, SGE_IMAGE="demo"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 75
    assert r.stderr.count("\n") == 1 and "is a SIF image" in r.stderr
    assert "runs only squashfs" in r.stderr


def test_staging_refuses_only_jobs_of_the_kits_starter(tmp_path, make_config):
    data = SIF_HEAD + payload(1000)
    (tmp_path / "i.sif").write_bytes(data)
    cfg = make_config({"demo": {"url": str(tmp_path / "i.sif"), "sha256": sha256(data)}})
    path = cli(cfg, "pull", "demo", "-q").stdout.strip()
    spool = tmp_path / "job"
    spool.mkdir()
    root = str(tmp_path / "cache")
    conf = "prolog=root@/opt/hooks/prolog\nstarter_method={}\n"
    (spool / "config").write_text(conf.format("/opt/hooks/starter"))
    refusal = runtimes.staging_refusal("demo", path, ["charliecloud"], root, str(spool))
    assert refusal and "is a SIF image" in refusal
    assert runtimes.staging_refusal("demo", path, ["apptainer"], root, str(spool)) is None
    (spool / "config").write_text(conf.format("none"))
    assert runtimes.staging_refusal("demo", path, ["charliecloud"], root, str(spool)) is None
    assert runtimes.staging_refusal("demo", path, ["charliecloud"], root, None) is None


def test_jsv_refuses_a_format_the_runtime_cannot_run(tmp_path):
    from sge.config import CacheSettings, Image, JsvSettings, Settings, StarterSettings
    from sge.ge import jsv

    class Site:
        def __init__(self, runtime):
            self.images = {"demo": Image("demo", ["file:///x"], "a" * 64, format="sif")}
            self.jsv, self.cache = JsvSettings({}), CacheSettings({})
            self.starter = StarterSettings({"runtime": (runtime,)})

        def image(self, name):
            return Settings.image(self, name)

    params = {"l_hard": "image=demo"}
    r = jsv.map_image(params, {}, lambda: Site("charliecloud"), lambda: True)
    assert r.state == "REJECT" and "is a SIF image" in r.message, r.message
    assert jsv.map_image(params, {}, lambda: Site("charliecloud"), lambda: False).state == "CORRECT"
    assert jsv.map_image(params, {}, lambda: Site("apptainer"), lambda: True).state == "CORRECT"
    # The server JSV learns whether the starter is installed from the install state.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    proc = jsv.ImageJsv(launcher=str(hooks / "jsv"))
    assert not proc.starter_installed()
    (hooks / "install-state.json").write_text('{"queues": {"all.q": {"starter_method": "NONE"}}}')
    assert proc.starter_installed()
