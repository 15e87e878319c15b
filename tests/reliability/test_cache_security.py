"""Shared-cache security: job owners must not be able to change what other jobs run.

The root prolog refuses (99, with the command that fixes it) and the load sensor does
not report a cache whose root, subdirectories, ancestors or blob in use is writable by
group/others or owned by another user; the reschedule counter cannot be aimed at other
files; the cache gets safe modes under any umask; a job owner can read blobs and pin
them; and nothing a job controls reaches a shell.
"""
import ast
import glob
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from sge.ge import install
from tests.reliability.conftest import exported_path, make_spool, run_prolog, write_config
from tests.reliability.corpus import MARK
from tests.support.common import ROOT, payload, sha256
from tests.support.httpserver import Fault
from tests.test_loadsensor import Sensor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")

NOBODY = 65534


@pytest.fixture
def site(tmp_path, http_server):
    """A cache at tmp_path/site/cache with `demo` staged by the root prolog."""
    data = payload(4096, seed=1)
    http_server.add_file("demo.sif", data)
    http_server.add_file("flaky.sif", payload(4096, seed=2))
    http_server.faults["flaky.sif"] = Fault(status=503)
    parent = tmp_path / "site"
    parent.mkdir(mode=0o755)
    root = parent / "cache"
    cfg = write_config(tmp_path / "config.yaml", root, {
        "demo": {"url": http_server.url("demo.sif"), "sha256": sha256(data), "size": len(data)},
        "flaky": {"url": http_server.url("flaky.sif"), "sha256": sha256(payload(4096, seed=2))}},
        prolog={"max_reschedules": 3})
    rc, out = run_prolog(cfg, "demo")
    assert rc == 0, out
    site = type("Site", (), {})()
    site.cfg, site.root, site.parent = cfg, str(root), str(parent)
    site.blob = os.path.join(site.root, "blobs", "sha256", sha256(data))
    site.log = str(tmp_path / "sge-image.log")
    return site


def _chmod(path, mode):
    old = stat.S_IMODE(os.lstat(path).st_mode)
    os.chmod(path, mode)
    return lambda: os.chmod(path, old)


def _chown(path, uid):
    st = os.lstat(path)
    os.chown(path, uid, -1, follow_symlinks=False)
    return lambda: os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _swap_for_symlink(path, owner=NOBODY):
    """Replace directory `path` by a symlink to a copy owned by `owner`."""
    other = path + ".elsewhere"
    shutil.copytree(path, other, symlinks=True)
    for d, dirs, files in os.walk(other):
        for x in [d] + [os.path.join(d, f) for f in files]:
            os.chown(x, owner, -1, follow_symlinks=False)
    os.rename(path, path + ".orig")
    os.symlink(other, path)

    def undo():
        os.unlink(path)
        os.rename(path + ".orig", path)
        shutil.rmtree(other)
    return undo


def _sub(site, *parts):
    return os.path.join(site.root, *parts)


def _writable(*parts, mode):
    """A condition: the cache path `parts` (under the root) gets `mode`."""
    return (lambda s: _chmod(_sub(s, *parts), mode),
            lambda s: f"chmod go-w {_sub(s, *parts)}")


def _foreign(*parts):
    return (lambda s: _chown(_sub(s, *parts), NOBODY),
            lambda s: f"chown root {_sub(s, *parts)}")


# id -> (make the cache unsafe, returning the undo; the words the refusal must contain)
CONDITIONS = {
    "root-o+w": _writable(mode=0o757),
    "root-g+w": _writable(mode=0o775),
    "blobs-o+w": _writable("blobs", "sha256", mode=0o777),
    "images-o+w": _writable("images", mode=0o757),
    "pins-g+w": _writable("pins", mode=0o775),
    "tmp-o+w": _writable("tmp", mode=0o1777),
    "locks-o+w": _writable("locks", mode=0o757),
    "blob-g+w": (lambda s: _chmod(s.blob, 0o464), lambda s: f"chmod go-w {s.blob}"),
    "blob-o+w": (lambda s: _chmod(s.blob, 0o666), lambda s: f"chmod go-w {s.blob}"),
    "root-owner": _foreign(),
    "blob-owner": (lambda s: _chown(s.blob, NOBODY), lambda s: f"chown root {s.blob}"),
    "used-owner": _foreign("used"),
    "parent-o+w": (lambda s: _chmod(s.parent, 0o777), lambda s: f"chmod go-w {s.parent}"),
    "parent-owner": (lambda s: _chown(s.parent, NOBODY), lambda s: f"chown root {s.parent}"),
    "images-symlink": (lambda s: _swap_for_symlink(_sub(s, "images")),
                       lambda s: f"{_sub(s, 'images')} is a symlink"),
    "root-symlink": (lambda s: _swap_for_symlink(s.root), lambda s: f"chown root {s.root}"),
}


@pytest.mark.parametrize("condition", CONDITIONS)
def test_unsafe_cache_is_refused_and_not_reported(site, tmp_path, condition):
    make_unsafe, fix = CONDITIONS[condition]
    undo = make_unsafe(site)
    try:
        spool = make_spool(tmp_path / "spool")
        rc, out = run_prolog(site.cfg, "demo", job=11, spool=spool)
        assert rc == 99, out
        assert "refusing to use the cache" in out and fix(site) in out, out
        assert exported_path(spool) is None  # the job did not get the image
        sensor = Sensor(site.cfg)
        values = sensor.values()
        assert sensor.quit() == 0
        assert set(values) == {"img_sensor_time"}, values  # alive, nothing warm
        assert fix(site) in open(site.log).read()
    finally:
        undo()
    rc, out = run_prolog(site.cfg, "demo", job=12, spool=spool)
    assert rc == 0, out
    assert exported_path(spool) == site.blob
    sensor = Sensor(site.cfg)
    assert sensor.values().get("img_demo") == "1"
    sensor.quit()


def test_sticky_world_writable_parent_is_fine(site):
    """Like /tmp or /var/tmp above the root: others cannot rename what is not theirs."""
    undo = _chmod(site.parent, 0o1777)
    try:
        rc, out = run_prolog(site.cfg, "demo")
        assert rc == 0, out
    finally:
        undo()


def test_unsafe_cache_reschedules_up_to_the_cap(site):
    undo = _chmod(site.root, 0o777)
    try:
        codes = [run_prolog(site.cfg, "demo", job=21)[0] for _ in range(4)]
        assert codes == [99, 99, 99, 100]  # prolog.max_reschedules: 3, then held (Eqw)
    finally:
        undo()
    assert run_prolog(site.cfg, "demo", job=21)[0] == 0


def test_reschedule_counter_cannot_be_aimed_at_other_files(site, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    jobs = _sub(site, "jobs")
    # A job owner's symlink where the counter goes.
    os.makedirs(jobs, exist_ok=True)
    os.symlink(str(victim), os.path.join(jobs, "31.attempts"))
    rc, out = run_prolog(site.cfg, "flaky", job=31)
    assert rc == 100 and "cannot be counted safely" in out, out
    assert victim.read_text() == "precious\n"
    # The whole directory swapped for a symlink.
    shutil.rmtree(jobs)
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.symlink(str(other), jobs)
    rc, out = run_prolog(site.cfg, "flaky", job=32)
    assert rc == 100 and "cannot be counted safely" in out, out
    assert os.listdir(other) == []
    # Job ids come from the environment the job owner shapes: only digits reach a path.
    os.unlink(jobs)
    rc, out = run_prolog(site.cfg, "flaky", extra_env={"JOB_ID": f"../../{MARK}",
                                                       "SGE_TASK_ID": f"../{MARK}"})
    assert rc == 99, out
    assert glob.glob(f"{tmp_path}/**/*{MARK}*", recursive=True) == []
    assert os.listdir(jobs) == ["0.attempts"]


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o027])
def test_cache_modes_do_not_depend_on_the_umask(tmp_path, http_server, umask):
    data = payload(2048, seed=3)
    http_server.add_file("u.sif", data)
    http_server.add_file("flaky.sif", b"x")
    http_server.faults["flaky.sif"] = Fault(status=503)
    root = tmp_path / "fresh" / "cache"  # parents created by the cache too
    cfg = write_config(tmp_path / "config.yaml", root, {
        "u": {"url": http_server.url("u.sif"), "sha256": sha256(data)},
        "flaky": {"url": http_server.url("flaky.sif"), "sha256": sha256(b"x")}})
    assert run_prolog(cfg, "u", umask=umask)[0] == 0
    assert run_prolog(cfg, "flaky", job=5, umask=umask)[0] == 99  # writes jobs/5.attempts
    bad = []
    for d, dirs, files in os.walk(tmp_path / "fresh"):
        for x in dirs:
            p = os.path.join(d, x)
            if os.path.islink(p):
                continue
            if stat.S_IMODE(os.lstat(p).st_mode) != 0o755:
                bad.append((p, oct(os.lstat(p).st_mode)))
        for x in files:
            p = os.path.join(d, x)
            if os.path.islink(p):
                continue  # the name index: link modes mean nothing
            want = 0o444 if "/blobs/" in p else 0o644
            if stat.S_IMODE(os.lstat(p).st_mode) != want:
                bad.append((p, oct(os.lstat(p).st_mode)))
    if stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) != 0o755:
        bad.append(("fresh", oct(os.stat(tmp_path / "fresh").st_mode)))
    assert bad == []
    assert os.path.exists(root / "jobs" / "5.attempts")
    assert glob.glob(str(root / "pins" / "*.pin"))


@pytest.fixture
def public_dir():
    """A directory job owners can reach (pytest's tmp dirs are root-only)."""
    d = tempfile.mkdtemp(prefix="sge-image-rel-", dir="/var/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_job_owner_can_read_and_pin_what_root_staged(public_dir, http_server):
    """Regression: pin files were created only by eviction, so the starter (the job
    owner) could not open one and every image job of a non-root user failed (75)."""
    data = payload(3000, seed=4)
    http_server.add_file("j.sif", data)
    shutil.copytree(os.path.join(ROOT, "sge"), os.path.join(public_dir, "sge"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    runtime = os.path.join(public_dir, "runtime")
    with open(runtime, "w") as f:
        # stands in for `apptainer exec IMAGE CMD...`: reads the image as the job owner
        f.write('#!/bin/sh\nhead -c 100 "$2" > /dev/null || exit 9\necho "RAN $(id -u) $2"\n')
    os.chmod(runtime, 0o755)
    root = os.path.join(public_dir, "cache")
    cfg = write_config(os.path.join(public_dir, "config.yaml"), root,
                       {"j": {"url": http_server.url("j.sif"), "sha256": sha256(data)}},
                       starter={"runtime": [runtime, "exec"]})
    os.chmod(cfg, 0o644)
    python = _python_for_nobody(public_dir)
    assert run_prolog(cfg, "j", umask=0o077)[0] == 0
    env = dict(os.environ, SGE_IMAGE="j")
    r = subprocess.run([python, "-m", "sge.ge.starter", "--config", cfg, "--", "/bin/true"],
                       env=env, capture_output=True, text=True, cwd=public_dir,
                       preexec_fn=_as_nobody, timeout=60)
    blob = os.path.join(root, "blobs", "sha256", sha256(data))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"RAN {NOBODY} {blob}"


def _python_for_nobody(cwd):
    """An interpreter with PyYAML an unprivileged user may run (this one may live
    under root's home)."""
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            r = subprocess.run([python, "-c", "import yaml"], preexec_fn=_as_nobody,
                               capture_output=True, cwd=cwd)
        except OSError:
            continue
        if r.returncode == 0:
            return python
    pytest.skip("no interpreter with PyYAML that an unprivileged user may run")


def test_no_shell_anywhere_in_the_package():
    """Nothing in sge/ runs a shell: every command is an argv list."""
    found = []
    for path in glob.glob(os.path.join(ROOT, "sge", "**", "*.py"), recursive=True):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in ("system", "popen", "getoutput", "getstatusoutput"):
                    found.append(f"{path}:{node.lineno} {name}")
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                                  and kw.value.value is False):
                        found.append(f"{path}:{node.lineno} shell=")
    assert found == []


def test_launchers_pass_job_arguments_to_python_intact(tmp_path):
    """The starter launcher is the one shell between Grid Engine and the kit: job
    arguments must come out the other side as they went in, never evaluated."""
    record = tmp_path / "argv"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake_python.chmod(0o755)
    settings = type("S", (), {"path": str(tmp_path / "config.yaml")})()
    hostile = [f"$(touch {tmp_path}/{MARK})", f"`touch {tmp_path}/{MARK}`", "a;b", "two words",
               "'q'", '"d"', "*", "$HOME", "\\", "-rf", "--config=/etc/x", ""]
    for name, text in install.launchers(settings, str(fake_python), str(tmp_path)).items():
        if name != "starter":
            continue
        launcher = tmp_path / name
        launcher.write_text(text)
        launcher.chmod(0o755)
        r = subprocess.run([str(launcher), "/bin/echo", *hostile], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        got = record.read_text().split("\n")[:-1]
        assert got[-len(hostile) - 2:] == ["--", "/bin/echo", *hostile], got
    assert not glob.glob(f"{tmp_path}/*{MARK}*")
