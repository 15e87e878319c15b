"""Every way out of the prolog is 0, 99 or 100, whatever state its stdio, spool and cache
are in, and whatever signal arrives when.

Issue it guards against: with stdout and stderr closed the prolog exited 1 (writing to a
`None` sys.stdout, then again from the last-resort handler), and any code but 0/99/100
puts the queue instance into error. Each cell runs the real prolog in a new process.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.conftest import (
    PROLOG_CODES,
    SEED,
    exported_path,
    make_spool,
    prolog_env,
    write_config,
)
from tests.support.common import ROOT, payload, sha256

# The executable the launcher runs, as Grid Engine starts it.
WRAPPER = os.path.join(ROOT, "prolog", "sge-image-prolog")

MB = 1 << 20

# name -> how fds 0, 1, 2 are set up in the child
STDIO = ("normal", "all-closed", "out-closed", "err-closed", "out-full", "out-broken-pipe",
         "in-closed")
# name -> (catalog entry, the one right answer)
OUTCOMES = ("staged", "dead-source", "unknown-name", "busy")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    a, b = payload(MB, seed=SEED + 11), payload(MB, seed=SEED + 12)
    (d / "a.sif").write_bytes(a)
    (d / "b.sif").write_bytes(b)
    return {
        "good": {"url": str(d / "a.sif"), "sha256": sha256(a), "size": MB},
        "other": {"url": str(d / "b.sif"), "sha256": sha256(b), "size": MB},
        # a port nothing listens on: connection refused, a transient failure
        "dead": {"url": "http://127.0.0.1:9/x.sif", "sha256": "0" * 64, "size": MB},
    }


def _child_stdio(kind):
    """(stdin, stdout, stderr, preexec) for subprocess, and fds to close afterwards."""
    close_after = []
    stdin, stdout, stderr = subprocess.DEVNULL, subprocess.PIPE, subprocess.PIPE
    closing = []
    if kind == "all-closed":
        closing = [0, 1, 2]
    elif kind == "out-closed":
        closing = [1]
    elif kind == "err-closed":
        closing = [2]
    elif kind == "in-closed":
        closing = [0]
    elif kind == "out-full":
        stdout = stderr = open("/dev/full", "wb")
        close_after.append(stdout)
    elif kind == "out-broken-pipe":
        r, w = os.pipe()
        os.close(r)  # nobody will ever read the job's output
        stdout = stderr = w
        close_after.append(w)

    def pre():
        for fd in closing:
            os.close(fd)
    return stdin, stdout, stderr, pre, close_after


def _run(config, name, spool, kind, signal_after=None, sig=None):
    stdin, stdout, stderr, pre, close_after = _child_stdio(kind)
    # Its own process group, signalled as a whole: the shepherd signals the prolog's
    # group, which holds the launcher's shell and the interpreter.
    p = subprocess.Popen([WRAPPER, sys.executable, "--config", config], env=prolog_env(name, "7", spool), stdin=stdin,
                         stdout=stdout, stderr=stderr, preexec_fn=pre, start_new_session=True)
    for f in close_after:
        f.close() if hasattr(f, "close") else os.close(f)
    if signal_after is not None:
        time.sleep(signal_after)
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
    p.communicate(timeout=120)
    return p.returncode


def _cell_config(tmp_path, images, outcome):
    cache = {"root": str(tmp_path / "cache"), "room_wait": 0}
    if outcome == "busy":
        # `other` fills the cap and was just handed to a job: no room for `good` now
        cache.update(max_size=int(1.5 * MB), evict_grace=3600)
    return write_config(tmp_path / "config.yaml", tmp_path / "cache", images, cache=cache)


NAME = {"staged": "good", "dead-source": "dead", "unknown-name": "no-such-image", "busy": "good"}
WANT = {"staged": 0, "dead-source": 99, "unknown-name": 100, "busy": 99}


@pytest.mark.parametrize("kind", STDIO)
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_exit_code_matrix(tmp_path, images, kind, outcome):
    config = _cell_config(tmp_path, images, outcome)
    spool = make_spool(tmp_path / "spool")
    if outcome == "busy":
        assert _run(config, "other", spool, "normal") == 0
    code = _run(config, NAME[outcome], spool, kind)
    assert code == WANT[outcome]
    if outcome == "staged":
        # the job still gets its image path, whatever happened to the output
        assert exported_path(spool) == os.path.join(str(tmp_path / "cache"), "blobs", "sha256",
                                                    images["good"]["sha256"])


def test_busy_never_spends_the_reschedule_budget(tmp_path, images):
    """A cache full of images in use reschedules without end, never Eqw (issue 9):
    more attempts than prolog.max_reschedules all answer 99."""
    config = _cell_config(tmp_path, images, "busy")
    spool = make_spool(tmp_path / "spool")
    assert _run(config, "other", spool, "normal") == 0
    codes = [_run(config, "good", spool, "normal") for _ in range(6)]
    assert codes == [99] * 6
    # a dead source on a cache with room does go to Eqw after the budget (3)
    (tmp_path / "roomy").mkdir()
    config = _cell_config(tmp_path / "roomy", images, "dead-source")
    codes = [_run(config, "dead", spool, "normal") for _ in range(5)]
    assert codes == [99, 99, 99, 100, 99]


@pytest.mark.parametrize("spool_kind", ["missing", "not-a-dir", "no-environment-file"])
def test_unusable_spool_dir(tmp_path, images, spool_kind):
    config = _cell_config(tmp_path, images, "staged")
    if spool_kind == "missing":
        spool = str(tmp_path / "nope")
    elif spool_kind == "not-a-dir":
        spool = str(tmp_path / "file")
        open(spool, "w").close()
    else:
        spool = str(tmp_path / "spool")
        os.makedirs(spool)
    # staged, but the job cannot be told where: reschedule rather than run without it
    assert _run(config, "good", spool, "all-closed") == 99


@pytest.mark.parametrize("kind", ["normal", "all-closed"])
def test_signals_at_any_point(tmp_path, images, kind):
    rng = random.Random(SEED + 99)
    sigs = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGQUIT, signal.SIGALRM, signal.SIGPIPE]
    codes = []
    for i in range(16):
        d = tmp_path / str(i)
        d.mkdir()
        config = write_config(d / "config.yaml", d / "cache", images,
                              cache={"root": str(d / "cache"), "room_wait": 0})
        spool = make_spool(d / "spool")
        # from interpreter start-up to after the staging
        codes.append(_run(config, "good", spool, kind, signal_after=rng.uniform(0, 0.4),
                          sig=rng.choice(sigs)))
    assert set(codes) <= PROLOG_CODES, codes


def test_an_interpreter_that_cannot_import_the_kit_reschedules(tmp_path, images):
    """Upgrading in place, pip removes the old files before it writes the new ones: a
    prolog starting then cannot import the kit, and Python's exit 1 would put the queue
    instance into error. The launcher turns it into 99."""
    config = _cell_config(tmp_path, images, "staged")
    spool = make_spool(tmp_path / "spool")
    bare = "/usr/bin/python3"  # -I: neither the checkout nor a venv is on its path
    r = subprocess.run([bare, "-I", "-c", "import sge"], capture_output=True)
    if r.returncode == 0:
        pytest.skip("the system interpreter can import the kit")
    p = subprocess.run([WRAPPER, bare, "--config", config], env=prolog_env("good", "7", spool),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 99, p
    assert "rescheduling" in p.stdout, p.stdout
