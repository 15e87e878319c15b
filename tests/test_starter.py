"""The starter method: the job's own argv, intact, inside its image, pinned."""
import os
import subprocess
import sys
import time

from sge.ge.starter import job_command
from tests.support.common import ROOT, cli, payload, sha256


def test_scripts_run_through_the_requested_shell():
    env = {"SGE_STARTER_SHELL_PATH": "/bin/bash", "SGE_STARTER_SHELL_START_MODE": "posix_compliant"}
    script = "/var/spool/gridengine/execd/node1/job_scripts/17"
    assert job_command([script, "a b"], env) == ["/bin/bash", script, "a b"]
    # unix_behavior: the script's own shebang decides, as without a starter.
    env["SGE_STARTER_SHELL_START_MODE"] = "unix_behavior"
    assert job_command([script], env) == [script]
    # `qsub -b y` binaries run as they are.
    env["SGE_STARTER_SHELL_START_MODE"] = "posix_compliant"
    assert job_command(["/bin/echo", "x"], env) == ["/bin/echo", "x"]


def test_runs_inside_the_image_with_hostile_arguments_intact(tmp_path, make_config):
    data = payload(1000)
    (tmp_path / "i.sif").write_bytes(data)
    runtime = tmp_path / "runtime"
    runtime.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$RECORD\"\n")
    runtime.chmod(0o755)
    cfg = make_config({"demo": {"url": str(tmp_path / "i.sif"), "sha256": sha256(data)}},
                      starter={"runtime": [str(runtime), "exec"]})
    path = cli(cfg, "pull", "demo", "-q").stdout.strip()
    record = tmp_path / "argv"
    hostile = ["$(touch /tmp/pwned)", "a;b", "two words", "`id`", "'q'"]
    env = dict(os.environ, SGE_IMAGE="demo", RECORD=str(record), SGE_STARTER_SHELL_PATH="/bin/sh")
    r = subprocess.run([sys.executable, "-m", "sge.ge.starter", "--config", cfg, "--",
                        "/bin/echo", *hostile], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert record.read_text().splitlines() == ["exec", path, "/bin/echo", *hostile]
    assert not os.path.exists("/tmp/pwned")


def test_holds_the_pin_for_the_jobs_life(tmp_path, make_config):
    data = payload(1000, seed=2)
    (tmp_path / "i.sif").write_bytes(data)
    runtime = tmp_path / "runtime"
    runtime.write_text("#!/bin/sh\nshift 2\nexec \"$@\"\n")
    runtime.chmod(0o755)
    cfg = make_config({"demo": {"url": str(tmp_path / "i.sif"), "sha256": sha256(data)}},
                      starter={"runtime": [str(runtime), "exec"]})
    cli(cfg, "pull", "demo", "-q")
    env = dict(os.environ, SGE_IMAGE="demo")
    job = subprocess.Popen([sys.executable, "-m", "sge.ge.starter", "--config", cfg, "--",
                            "/bin/sleep", "30"], env=env, cwd=ROOT)
    try:
        for _ in range(100):  # the PINNED column: the starter has taken its pin
            if cli(cfg, "status").stdout.splitlines()[-1].split()[-3] == "yes":
                break
            time.sleep(0.05)
        line = cli(cfg, "status").stdout.splitlines()[-1]
        assert line.split()[-3] == "yes", line  # pinned while the job runs
    finally:
        job.kill()
        job.wait()
    assert cli(cfg, "status").stdout.splitlines()[-1].split()[-3] == "no"


def test_missing_image_fails_the_job_not_the_queue(tmp_path, make_config):
    cfg = make_config({"demo": {"url": "/nonexistent", "sha256": sha256(b"x")}})
    env = dict(os.environ, SGE_IMAGE="demo")
    r = subprocess.run([sys.executable, "-m", "sge.ge.starter", "--config", cfg, "--", "/bin/true"],
                       env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 75 and "not cached" in r.stderr
