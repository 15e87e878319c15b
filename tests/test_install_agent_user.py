"""install makes the agent server's own system user, and uninstall removes it only
if install made it (against the stand-in qconf of tests/test_install_refusals.py)."""
import os
import subprocess
import sys

import pytest

from tests.support.common import ROOT, payload, sha256
from tests.test_install_refusals import BUILTIN, FAKE_QCONF

USER = "sge-image-t-agent"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making a system user needs root")


@pytest.fixture
def kit(tmp_path, make_config):
    from sge.agent import user
    d = tmp_path / "qconf"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "qconf").write_text(FAKE_QCONF)
    (d / "bin" / "qconf").chmod(0o755)
    (d / "managers").write_text("root\n")
    (d / "complexes").write_text(BUILTIN)
    (d / "conf.global").write_text("jsv_url none\nmin_uid 0\n")
    (d / "queue").write_text("qname all.q\nprolog NONE\nstarter_method NONE\n")
    data = payload(100)
    cfg = make_config({"demo": {"url": "file:///x", "sha256": sha256(data)}},
                      agent={"enabled": True, "user": USER, "key_file": str(tmp_path / "k")})

    def run(*args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGE_")}
        env.update(FAKE_QCONF_DIR=str(d), PATH=f"{d / 'bin'}:{os.environ['PATH']}")
        r = subprocess.run([sys.executable, "-m", "sge.cli", "--config", cfg, *args,
                            "--hooks-dir", str(tmp_path / "hooks")],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    yield run
    import time
    deadline = time.monotonic() + 30
    while True:  # install's check starts the load sensor, and so an agent, for a moment
        try:
            user.remove(USER)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_install_creates_the_user_and_uninstall_removes_it(kit):
    from sge.agent import user
    assert not user.exists(USER)
    out = kit("install", "--no-jsv")
    assert f"create the system user {USER}" in out and user.exists(USER)
    import pwd
    pw = pwd.getpwnam(USER)
    assert pw.pw_uid != 0 and pw.pw_shell.endswith("nologin")
    assert f"unchanged: agent user {USER}" in kit("install", "--no-jsv")
    kit("uninstall")
    assert not user.exists(USER)


def test_uninstall_keeps_a_user_install_did_not_make(kit):
    from sge.agent import user
    user.create(USER)
    out = kit("install", "--no-jsv")
    assert f"unchanged: agent user {USER}" in out
    kit("uninstall")
    assert user.exists(USER)


def test_an_agent_on_another_exec_host_makes_the_kits_user(monkeypatch):
    """install runs on one host and cannot reach the others: there the agent, as root,
    makes the kit's own default user itself. A user the site named is never made."""
    from sge.agent import main, user
    name = "sge-image-t2-agent"
    monkeypatch.setattr(user, "DEFAULT", name)
    said = []
    try:
        assert not user.exists(name)
        main._ensure_own_user("sge-image-site-named", said.append)
        assert not user.exists("sge-image-site-named") and said == []
        main._ensure_own_user(name, said.append)
        assert user.exists(name), said
        assert said == [f"created the system user {name} for the agent's server on this host"]
        main._ensure_own_user(name, said.append)  # there now: nothing to do
        assert len(said) == 1
    finally:
        user.remove(name)
