"""The command source with a stand-in for `apptainer pull` (Apptainer is not
installable here): a small script that writes an image file, fails, hangs or leaves
children behind, as the URI asks."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sge.errors import FetchError
from sge.fetch import command
from tests.support.common import ROOT, cache_files, cli, sha256
from tests.support.servers_oci_s3 import run_fetch

MB = 1 << 20

FAKE_PULL = textwrap.dedent('''\
    """Stand-in for `apptainer pull DEST URI`: behaves as the URI's host says."""
    import hashlib, os, random, sys, time
    dest, uri = sys.argv[1], sys.argv[2]
    kind = uri.split("://", 1)[1].split("/", 1)[0]
    with open(os.environ["FAKE_PULL_ARGS"], "a") as f:
        f.write(repr(sys.argv[1:]) + "\\n")
    print(f"INFO:    Converting OCI blobs to SIF format for {uri}", flush=True)
    if kind == "ok":
        size = int(os.environ.get("FAKE_PULL_SIZE", 2 << 20))
        with open(dest, "wb") as f:
            f.write(random.Random(uri).randbytes(size))
        print("INFO:    Creating SIF file...\\rdone", flush=True)
        if os.environ.get("FAKE_PULL_INODE"):
            with open(os.environ["FAKE_PULL_INODE"], "w") as f:
                f.write(str(os.stat(dest).st_ino))
    elif kind in ("corrupt", "holdopen", "hardlink"):
        data = random.Random(uri.replace(kind, "ok", 1)).randbytes(2 << 20)
        with open(dest, "wb") as f:
            f.write(data)
        if kind == "corrupt":  # the right bytes first, then one of them changed in place
            with open(dest, "r+b") as f:
                f.seek(12345)
                f.write(bytes([data[12345] ^ 1]))
        elif kind == "hardlink":
            os.link(dest, os.environ["FAKE_PULL_LINK"])
        else:  # something outlives the command and keeps the file open for writing
            pid = os.fork()
            if pid == 0:
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for i in (0, 1, 2):
                    os.dup2(null, i)
                fd = os.open(dest, os.O_WRONLY)
                with open(os.environ["FAKE_PULL_PIDS"], "w") as f:
                    f.write(f"{os.getpid()}\\n")
                time.sleep(60)
                os._exit(0)
            while not os.path.exists(os.environ["FAKE_PULL_PIDS"]):
                time.sleep(0.01)
    elif kind == "notfound":
        print("FATAL:   While making image from oci registry: manifest unknown", flush=True)
        sys.exit(255)
    elif kind == "network":
        print("FATAL:   Get https://registry/v2/: dial tcp: i/o timeout", flush=True)
        sys.exit(255)
    elif kind == "vague":
        print("FATAL:   something odd happened", flush=True)
        sys.exit(1)
    elif kind == "nowrite":
        pass
    elif kind == "hang":
        child = os.fork()
        if child == 0:
            time.sleep(3600)
            os._exit(0)
        with open(os.environ["FAKE_PULL_PIDS"], "w") as f:
            f.write(f"{os.getpid()} {child}\\n")
        time.sleep(3600)
    elif kind == "env":
        with open(dest, "w") as f:
            f.write(os.environ.get("PULL_TOKEN", "unset"))
''')


def image_bytes(uri, size=2 * MB):
    import random
    return random.Random(uri).randbytes(size)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_pull.py"
    script.write_text(FAKE_PULL)
    args = tmp_path / "args.log"
    monkeypatch.setenv("FAKE_PULL_ARGS", str(args))
    monkeypatch.setenv("FAKE_PULL_PIDS", str(tmp_path / "pids"))

    class Fake:
        template = [sys.executable, str(script), "{dest}", "{uri}"]
        sources = {"command": {"template": template}}

        def calls(self):
            return args.read_text().splitlines() if args.exists() else []
    return Fake()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_dead(pids, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def test_pull_through_the_command(tmp_path, fake):
    uri = "docker://ok/library/alpine:3.19"
    data = image_bytes(uri)
    digest, got, log = run_fetch(tmp_path, uri, sha256=sha256(data), size=len(data),
                                 sources=fake.sources)
    assert got == data and digest == sha256(data)
    assert any("command: INFO:    Converting OCI blobs" in line for line in log)
    # \r-redrawn progress lines are logged one per redraw.
    assert any(line.endswith("command: done") for line in log)
    # The work directory is gone: only the sink's own temp file was there.
    assert os.listdir(tmp_path / "tmp") == []


def test_no_sha256_in_catalog_still_publishes(tmp_path, fake):
    uri = "library://ok/lab/tool:1.0"
    digest, got, _ = run_fetch(tmp_path, uri, sources=fake.sources)
    assert digest == sha256(image_bytes(uri))


def test_catalog_template_overrides_the_site(tmp_path, fake):
    uri = "docker://ok/x:1"
    sources = {"command": {"template": ["false", "{dest}"]}}
    _, got, _ = run_fetch(tmp_path, uri, sources=sources,
                          options={"command": {"template": fake.template}})
    assert got == image_bytes(uri)


def test_arguments_are_never_given_to_a_shell(tmp_path, fake):
    marker = tmp_path / "pwned"
    uri = f"docker://ok/x:1; touch {marker} $(touch {marker})"
    _, got, _ = run_fetch(tmp_path, uri, sources=fake.sources)
    assert not marker.exists()
    (call,) = fake.calls()
    assert eval(call)[1] == uri  # one argument, exactly as in the catalog


def test_env_option_reaches_the_command(tmp_path, fake):
    _, got, _ = run_fetch(tmp_path, "docker://env/x:1",
                          options={"command": {"env": {"PULL_TOKEN": "abc"}}},
                          sources=fake.sources)
    assert got == b"abc"


def test_output_is_verified_like_any_source(tmp_path, fake):
    uri = "docker://ok/x:1"
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, uri, sha256="3" * 64, sources=fake.sources)
    assert not e.value.transient and "does not match the catalog" in str(e.value)
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, uri, size=MB, sources=fake.sources)
    assert not e.value.transient and "more than the expected" in str(e.value)


@pytest.mark.parametrize("host,transient,words", [
    ("notfound", False, "manifest unknown"),
    ("network", True, "i/o timeout"),
    ("vague", True, "something odd happened"),
    ("nowrite", False, "wrote no image")])
def test_failures_are_classified(tmp_path, fake, host, transient, words):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, f"docker://{host}/x:1", sha256="1" * 64, sources=fake.sources,
                  name="tool")
    msg = str(e.value)
    assert e.value.transient is transient
    assert msg.startswith("image 'tool': every source failed") and "docker://" in msg
    assert words in msg
    assert os.listdir(tmp_path / "tmp") == []


def test_missing_program_is_permanent(tmp_path):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "docker://ok/x:1", sha256="1" * 64,
                  sources={"command": {"template": ["no-such-apptainer", "pull", "{dest}", "{uri}"]}})
    assert not e.value.transient and "cannot run 'no-such-apptainer'" in str(e.value)


def test_default_template_is_apptainer_pull():
    assert command.DEFAULT_TEMPLATE == ["apptainer", "pull", "--disable-cache", "{dest}", "{uri}"]
    assert command.argv_for(command.DEFAULT_TEMPLATE, "docker://a b", "/c/d", "/t") == [
        "apptainer", "pull", "--disable-cache", "/c/d", "docker://a b"]


def test_timeout_kills_the_whole_group(tmp_path, fake):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "docker://hang/x:1", sha256="1" * 64, sources=fake.sources,
                  command_timeout=1)
    assert e.value.transient and "timed out after 1s" in str(e.value)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert wait_dead(pids), "the pull or its child outlived the timeout"
    assert os.listdir(tmp_path / "tmp") == []


def test_termination_signal_kills_the_group_first(tmp_path, fake):
    """SIGTERM to the stager (qdel, a killed prolog) takes the pull down with it."""
    pids_file = tmp_path / "pids"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f'''\
        import sys
        sys.path.insert(0, {ROOT!r})
        from tests.support.servers_oci_s3 import run_fetch
        run_fetch({str(tmp_path)!r}, "docker://hang/x:1", sha256="1" * 64,
                  sources={{"command": {{"template": {fake.template!r}}}}})
        '''))
    proc = subprocess.Popen([sys.executable, str(driver)], stderr=subprocess.PIPE)
    end = time.monotonic() + 20
    while not pids_file.exists() and time.monotonic() < end:
        time.sleep(0.05)
    pids = [int(p) for p in pids_file.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode == -signal.SIGTERM
    assert wait_dead(pids), "the pull outlived the stager"
    # Its work directory went before it did (only the core's temp file remains,
    # which the cache sweeps).
    assert [n for n in os.listdir(tmp_path / "tmp") if n.endswith(".cmd")] == []


def test_live_work_directory_is_not_swept(tmp_path):
    import fcntl
    (tmp_path / "tmp").mkdir()
    live = tmp_path / "tmp" / "a.part.cmd"
    dead = tmp_path / "tmp" / "b.part.cmd"
    for d in (live, dead):
        d.mkdir()
        (d / "image").write_bytes(b"x")
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # flock is per open file: another open of the same directory must see it held.
        pid = os.fork()
        if pid == 0:
            from sge.tempfiles import sweep_command_dirs
            sweep_command_dirs(str(tmp_path / "tmp"))
            os._exit(0)
        os.waitpid(pid, 0)
        assert live.exists() and not dead.exists()
    finally:
        os.close(fd)


def test_pull_end_to_end_with_the_cli(fake, make_config, tmp_path):
    uri = "docker://ok/library/alpine@sha256:" + "ab" * 32
    data = image_bytes(uri)
    cfg = make_config({"alpine": {"url": uri}}, sources=fake.sources)
    r = cli(cfg, "pull", "alpine", "--quiet")
    assert r.returncode == 0, r.stderr
    with open(r.stdout.strip(), "rb") as f:
        assert f.read() == data
    assert not [f for f in cache_files(tmp_path / "cache") if f.startswith("tmp/")]
    assert "command: INFO:    Converting" in (tmp_path / "sge-image.log").read_text()


def test_catalog_command_options_are_checked_at_load(make_config):
    from sge import config
    from sge.errors import ConfigError
    cfg = make_config({"tool": {"url": "docker://x/y:1", "sha256": "1" * 64,
                                "command": {"template": ["apptainer", "pull", "{uri}"]}}})
    with pytest.raises(ConfigError) as e:
        config.load(cfg, use_snapshot=False)
    assert "command.template: must pass {dest}" in str(e.value)
    cfg = make_config({"tool": {"url": "docker://x/y:1", "sha256": "1" * 64,
                                "command": {"templat": ["x", "{dest}"]}}})
    with pytest.raises(ConfigError) as e:
        config.load(cfg, use_snapshot=False)
    assert "command.templat: unknown option (known: env, template)" in str(e.value)


def test_bad_site_template_is_named(tmp_path):
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "docker://ok/x:1", sha256="1" * 64,
                  sources={"command": {"template": "apptainer pull {uri}"}})
    assert not e.value.transient and "config sources.command.template" in str(e.value)


def test_output_file_is_adopted_not_copied(fake, make_config, tmp_path, monkeypatch):
    """The published blob is the very file the command wrote (same inode): no second
    copy of the image, and the command's directory is gone."""
    inode = tmp_path / "inode"
    monkeypatch.setenv("FAKE_PULL_INODE", str(inode))
    uri = "docker://ok/library/adopt:1"
    data = image_bytes(uri)
    cfg = make_config({"adopt": {"url": uri, "sha256": sha256(data), "size": len(data)}},
                      sources=fake.sources)
    r = cli(cfg, "pull", "adopt", "--quiet")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    with open(path, "rb") as f:
        assert f.read() == data
    assert os.stat(path).st_ino == int(inode.read_text())
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert "copying it instead" not in (tmp_path / "sge-image.log").read_text()
    assert not [f for f in cache_files(tmp_path / "cache") if f.startswith("tmp/")]


def test_right_bytes_changed_afterwards_are_never_published(tmp_path, fake, make_config):
    """A command that first writes the catalog's bytes and then changes one of them
    in place: the file as it is when the command has exited is what gets hashed."""
    uri = "docker://corrupt/x:1"
    data = image_bytes("docker://ok/x:1")
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, uri, sha256=sha256(data), size=len(data), sources=fake.sources)
    assert not e.value.transient and "does not match the catalog" in str(e.value)
    cfg = make_config({"bad": {"url": uri, "sha256": sha256(data), "size": len(data)}},
                      sources=fake.sources)
    r = cli(cfg, "pull", "bad", "--quiet")
    assert r.returncode == 6, r.stderr
    assert not [f for f in cache_files(tmp_path / "cache")
                if f.startswith(("blobs/", "images/", "tmp/"))]


def test_file_still_open_for_writing_is_copied_not_adopted(tmp_path, fake, monkeypatch):
    """Bytes written after the hash must not reach the cache: a file that something
    (escaped from the command's group) still holds open for writing is copied
    through the sink, so what is published is what was hashed."""
    inode = tmp_path / "inode"
    monkeypatch.setenv("FAKE_PULL_INODE", str(inode))
    uri = "docker://holdopen/x:1"
    data = image_bytes("docker://ok/x:1")
    try:
        digest, got, log = run_fetch(tmp_path, uri, sha256=sha256(data), size=len(data),
                                     sources=fake.sources)
        assert got == data and digest == sha256(data)
        assert any("copying it instead of taking it over" in line for line in log)
    finally:
        pids = tmp_path / "pids"
        if pids.exists():
            pid = int(pids.read_text())
            os.kill(pid, signal.SIGKILL)
            wait_dead([pid])


def test_hard_linked_output_is_copied_and_the_other_name_untouched(tmp_path, fake,
                                                                   monkeypatch):
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("FAKE_PULL_LINK", str(other))
    uri = "docker://hardlink/x:1"
    data = image_bytes("docker://ok/x:1")
    digest, got, log = run_fetch(tmp_path, uri, sha256=sha256(data), size=len(data),
                                 sources=fake.sources)
    assert got == data
    assert any("copying it instead of taking it over" in line for line in log)
    assert other.read_bytes() == data and other.stat().st_nlink == 1


def test_symlinked_output_is_read_through_not_adopted(tmp_path):
    """{dest} made a symlink to a file outside: its bytes are copied (as before), the
    target itself is neither moved nor made read-only."""
    target = tmp_path / "target.sif"
    data = os.urandom(MB)
    target.write_bytes(data)
    target.chmod(0o640)
    template = ["ln", "-s", str(target), "{dest}"]
    digest, got, _ = run_fetch(tmp_path, "docker://ok/x:1", sha256=sha256(data), size=len(data),
                               sources={"command": {"template": template}})
    assert got == data
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o640


def test_next_mirror_after_a_rejected_output_writes_into_the_same_sink(tmp_path, fake):
    """The command's wrong output is taken over and rejected; the next mirror then
    restarts the very same temp file, and only its bytes are published."""
    data = image_bytes("docker://ok/x:1")
    good = tmp_path / "good.sif"
    good.write_bytes(data)
    digest, got, log = run_fetch(tmp_path, ["docker://corrupt/x:1", str(good)],
                                 sha256=sha256(data), size=len(data), sources=fake.sources)
    assert got == data and digest == sha256(data)
    assert any("does not match the catalog" in line for line in log)


@pytest.mark.skipif(os.geteuid() != 0, reason="the rebuilt environment is root's")
def test_as_root_the_job_environment_does_not_choose_the_command(tmp_path, monkeypatch):
    """A root prolog sees the job's environment: `qsub -v PATH=...` must not decide which
    `apptainer` root runs (sge/rootenv.py). Found in review of the node agent's qhost call."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran-as-root"
    (evil / "sge-test-planted-cmd").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    os.chmod(evil / "sge-test-planted-cmd", 0o755)
    monkeypatch.setenv("PATH", f"{evil}:{os.environ['PATH']}")
    monkeypatch.setenv("SGE_JOB_SPOOL_DIR", str(tmp_path))  # as in a prolog
    with pytest.raises(FetchError) as e:
        run_fetch(tmp_path, "docker://ok/x:1", sha256="1" * 64,
                  sources={"command": {"template": ["sge-test-planted-cmd", "{dest}"]}})
    assert "cannot run 'sge-test-planted-cmd'" in str(e.value)
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root-owned directories")
def test_grid_engine_bin_dirs_join_root_path_only_when_root_owns_them(tmp_path, monkeypatch):
    """Open Cluster Scheduler's qhost lives in $SGE_ROOT/bin/<arch>; SGE_ROOT comes from
    the job's environment, so only a directory chain only root can write counts."""
    import shutil

    from sge import rootenv
    base = "/opt/sge-image-kit-test-root"
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(f"{base}/bin/lx-amd64", mode=0o755)
    try:
        monkeypatch.setenv("SGE_ROOT", base)
        monkeypatch.setenv("SGE_JOB_SPOOL_DIR", str(tmp_path))
        assert rootenv.child_env()["PATH"].split(":")[0] == f"{base}/bin/lx-amd64"
        os.chmod(f"{base}/bin", 0o777)  # anyone could plant a qhost there now
        assert f"{base}/bin/lx-amd64" not in rootenv.child_env()["PATH"]
        (tmp_path / "bin" / "x").mkdir(parents=True)  # a job owner's own "SGE_ROOT"
        monkeypatch.setenv("SGE_ROOT", str(tmp_path))
        assert rootenv.child_env()["PATH"] == rootenv.SAFE_PATH
    finally:
        shutil.rmtree(base, ignore_errors=True)
