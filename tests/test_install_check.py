"""`install --check`: launchers run as their Grid Engine users, and a failure names the
path component that user cannot use (issue: a JSV sgeadmin could not execute stopped
every qsub on the cluster)."""
import os
import pwd
import shutil
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sge import config
from sge.ge import install, install_check
from sge.ge.install_check import denied_component, may

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs launchers as other users")


def test_may_follows_owner_group_other():
    d = stat.S_IFDIR
    assert may(d | 0o700, 0, 0, 0, {0}, "x")            # root searches anything
    assert not may(d | 0o700, 0, 0, 1000, {1000}, "x")  # others cannot
    assert may(d | 0o750, 0, 50, 1000, {1000, 50}, "x")  # via a supplementary group
    assert not may(d | 0o075, 1000, 0, 1000, {1000}, "x")  # the owner bits decide for the owner
    f = stat.S_IFREG
    assert not may(f | 0o644, 0, 0, 0, {0}, "x")        # not even root executes a 0644 file
    assert may(f | 0o644, 0, 0, 1000, {1000}, "r")


def _fake_fs(tree):
    """path -> (mode, uid, gid, link target or None) as lstat/readlink stand-ins."""
    def lstat(p):
        if p not in tree:
            raise FileNotFoundError(p)
        mode, uid, gid, _ = tree[p]
        return SimpleNamespace(st_mode=mode, st_uid=uid, st_gid=gid)

    def readlink(p):
        return tree[p][3]
    return lstat, readlink


def test_denied_component_names_the_first_blocking_directory():
    D, F, L = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
    tree = {
        "/": (D | 0o755, 0, 0, None),
        "/opt": (D | 0o755, 0, 0, None),
        "/opt/venv": (D | 0o755, 0, 0, None),
        "/opt/venv/bin": (D | 0o755, 0, 0, None),
        # the venv's python links into root's home, which others cannot search
        "/opt/venv/bin/python3": (L | 0o777, 0, 0, "/root/.pyenv/bin/python3.11"),
        "/root": (D | 0o700, 0, 0, None),
        "/root/.pyenv": (D | 0o755, 0, 0, None),
        "/root/.pyenv/bin": (D | 0o755, 0, 0, None),
        "/root/.pyenv/bin/python3.11": (F | 0o755, 0, 0, None),
    }
    lstat, readlink = _fake_fs(tree)
    assert denied_component("/opt/venv/bin/python3", 0, {0}, "x", lstat, readlink) is None
    assert denied_component("/opt/venv/bin/python3", 115, {120}, "x", lstat, readlink) == \
        ("/root", "search (x)")
    tree["/root"] = (D | 0o755, 0, 0, None)
    tree["/root/.pyenv/bin/python3.11"] = (F | 0o700, 0, 0, None)
    assert denied_component("/opt/venv/bin/python3", 115, {120}, "x", lstat, readlink) == \
        ("/root/.pyenv/bin/python3.11", "execute")


@pytest.fixture
def public(tmp_path):
    """A directory every user can search: pytest's own tmp dirs are root's alone."""
    import tempfile
    from pathlib import Path
    d = tempfile.mkdtemp(prefix="sge-image-test.", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def site(public):
    import hashlib

    import yaml
    data = b"x" * 100
    (public / "a.sif").write_bytes(data)
    cfg = public / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "cache": {"root": str(public / "cache"), "max_size": "1G", "min_free": 0},
        "log": {"file": None},
        "images": {"alpha": {"url": str(public / "a.sif"),
                             "sha256": hashlib.sha256(data).hexdigest(), "size": 100}}}))
    os.chmod(cfg, 0o644)
    return config.load(str(cfg), use_snapshot=False)


def _private_python(tmp_path):
    """An interpreter behind a directory only root may search, as a venv built from
    a Python under root's home has."""
    from tests.support.common import ROOT
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    venv = private / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    # this checkout, importable as root would import an installed kit
    import glob
    [site_dir] = glob.glob(str(venv / "lib" / "python3*" / "site-packages"))
    with open(os.path.join(site_dir, "kit.pth"), "w") as f:
        f.write(ROOT + "\n")
    return str(venv / "bin" / "python3")


@needs_root
def test_check_passes_for_an_interpreter_every_user_can_run(site, public, monkeypatch):
    # Everyone must reach the kit: the checkout (or venv) this test imports sge from.
    import sge
    nobody = pwd.getpwnam("nobody")
    if install_check.denied_component(sge.__file__, nobody.pw_uid, {nobody.pw_gid}, "r") or \
            install_check.denied_component(sys.executable, nobody.pw_uid, {nobody.pw_gid}, "x"):
        pytest.skip("this checkout is not readable by nobody")
    monkeypatch.setattr(install_check, "admin_user", lambda: "nobody")
    hooks = public / "hooks"
    failures = install_check.check(site, install.launchers(site, sys.executable, str(hooks)),
                                   sys.executable, str(hooks), starter=True, jsv=True)
    assert [str(f) for f in failures] == []


@needs_root
def test_check_names_what_the_admin_user_cannot_execute(site, public, monkeypatch):
    monkeypatch.setattr(install_check, "admin_user", lambda: "nobody")
    py = _private_python(public)
    hooks = public / "hooks"
    failures = install_check.check(site, install.launchers(site, py, str(hooks)), py,
                                   str(hooks), starter=True, jsv=True)
    by_hook = {f.hook: f for f in failures}
    # root runs sensor and prolog fine; the JSV (admin user) and starter (nobody) fail
    assert set(by_hook) == {"jsv", "starter"}, [str(f) for f in failures]
    for f in by_hook.values():
        assert f.component == (str(public / "private"), "search (x)"), str(f)
        assert str(public / "private") in str(f)


@needs_root
def test_cli_check_exit_code(site, public):
    """`sge-image install --check` with no Grid Engine: the JSV runs as root (no
    bootstrap file to name an admin user), the rest as usual; exit 0 or 2."""
    env = {k: v for k, v in os.environ.items() if k not in ("SGE_ROOT", "SGE_CELL")}
    r = subprocess.run([sys.executable, "-m", "sge.cli", "--config", site.path, "install",
                        "--check", "--hooks-dir", str(public / "hooks")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed: loadsensor, prolog, epilog, jsv" in r.stdout
    assert not (public / "hooks").exists()  # a check changes nothing


@needs_root
def test_a_sensor_that_keeps_failing_leaves_no_process(site, public, monkeypatch):
    """Its supervisor restarts a crashing sensor for ever: the check gives up after
    SENSOR_TIMEOUT and kills the whole tree."""
    import psutil
    monkeypatch.setattr(install_check, "SENSOR_TIMEOUT", 3)
    launcher = public / "loadsensor"
    launcher.write_text("#!/bin/sh\nwhile :; do /bin/false; sleep 0.2; done\n")
    os.chmod(launcher, 0o755)
    msg = install_check._run_sensor(str(launcher), "root", site, "nodeX")
    assert "no load report within 3s" in msg
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(launcher) in " ".join(p.info["cmdline"] or [])]
    assert left == []
