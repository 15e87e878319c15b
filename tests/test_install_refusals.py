"""install's refusals, against a stand-in `qconf` (the real-cluster lifecycle is in
tests/ge/test_kit_e2e.py): it must never take over what another admin configured."""
import os
import subprocess
import sys

import pytest

from tests.support.common import ROOT, payload, sha256

FAKE_QCONF = r'''#!/bin/sh
# Serves canned qconf answers from $FAKE_QCONF_DIR; records every call.
d=$FAKE_QCONF_DIR
echo "$*" >> "$d/calls"
case "$1" in
  -sm) cat "$d/managers" ;;
  -sc) cat "$d/complexes" ;;
  -sel) echo node1 ;;
  -sconf) [ -f "$d/conf.$2" ] && cat "$d/conf.$2" || { echo "configuration $2 not defined" >&2; exit 1; } ;;
  -sq) cat "$d/queue" ;;
  *) exit 0 ;;
esac
'''

BUILTIN = ("#name shortcut type relop requestable consumable default urgency\n"
           "arch a RESTRING == YES NO NONE 0\n")


@pytest.fixture
def fake(tmp_path, make_config):
    d = tmp_path / "qconf"
    (d / "bin").mkdir(parents=True)
    q = d / "bin" / "qconf"
    q.write_text(FAKE_QCONF)
    q.chmod(0o755)
    (d / "managers").write_text("root\nsgeadmin\n" if os.geteuid() == 0 else f"{os.environ.get('USER')}\n")
    (d / "complexes").write_text(BUILTIN)
    (d / "conf.global").write_text("jsv_url none\nmin_uid 0\n")
    (d / "queue").write_text("qname all.q\nprolog NONE\nstarter_method NONE\n")
    data = payload(100)
    cfg = make_config({"demo": {"url": "file:///x", "sha256": sha256(data)}})

    def run(*args):
        # no Grid Engine of this machine (the tests/ge sessions leave SGE_ROOT set)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGE_")}
        env.update(FAKE_QCONF_DIR=str(d), PATH=f"{d / 'bin'}:{os.environ['PATH']}")
        return subprocess.run([sys.executable, "-m", "sge.cli", "--config", cfg, *args,
                               "--hooks-dir", str(tmp_path / "hooks")],
                              capture_output=True, text=True, env=env, cwd=ROOT)
    run.dir = d
    return run


def calls(fake):
    return (fake.dir / "calls").read_text().splitlines()


def test_dry_run_changes_nothing(fake):
    r = fake("install", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would add/update complexes image" in r.stdout and "planned" in r.stdout
    assert not [c for c in calls(fake) if c.split()[0] in ("-Mc", "-Mconf", "-Aconf", "-mattr")]


def test_refuses_someone_elses_prolog(fake):
    (fake.dir / "queue").write_text("qname all.q\nprolog /site/prolog.sh\nstarter_method NONE\n")
    r = fake("install")
    assert r.returncode == 2
    assert "already has prolog '/site/prolog.sh'" in r.stderr
    assert not [c for c in calls(fake) if c.startswith("-mattr queue prolog")]


def test_refuses_someone_elses_jsv(fake):
    (fake.dir / "conf.global").write_text("jsv_url /site/jsv.pl\n")
    r = fake("install")
    assert r.returncode == 2 and "already has jsv_url" in r.stderr


def test_refuses_a_foreign_complex_named_image(fake):
    (fake.dir / "complexes").write_text(BUILTIN + "image im STRING == YES NO NONE 0\n")
    r = fake("install")
    assert r.returncode == 2 and "complex 'image' already exists" in r.stderr
    assert not [c for c in calls(fake) if c.startswith("-Mc")]


def test_refuses_a_shortcut_clash(fake):
    (fake.dir / "complexes").write_text(BUILTIN + "imagery img INT <= YES NO 0 0\n")
    r = fake("install")
    assert r.returncode == 2 and "shortcut 'img'" in r.stderr


def test_needs_a_manager(fake):
    (fake.dir / "managers").write_text("someoneelse\n")
    r = fake("install")
    assert r.returncode == 2 and "not a Grid Engine manager" in r.stderr


def test_needs_qconf(tmp_path, make_config):
    cfg = make_config({})
    env = dict(os.environ, PATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "sge.cli", "--config", cfg, "install"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "qconf not found" in r.stderr
