"""Shared pieces of the fault-injection suite: the seed, the real prolog entry, and
the cache invariants every trial checks.

Random choices come from RELIABILITY_SEED (printed in the report header and in
every failure message), so a failing trial can be replayed exactly.
"""
import fcntl
import hashlib
import os
import random
import subprocess
import sys

import pytest
import yaml

from tests.support.common import ROOT

SEED = int(os.environ.get("RELIABILITY_SEED", "20240611"))
PROLOG_CODES = {0, 99, 100}


def pytest_report_header(config):
    return f"reliability seed: RELIABILITY_SEED={SEED}"


@pytest.fixture
def rng(request):
    """A generator seeded from RELIABILITY_SEED and the test's id: a test's draws do not
    depend on which other tests ran."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"[{request.node.name}] RELIABILITY_SEED={SEED}")
    print(f"RELIABILITY_SEED={SEED}")
    return random.Random(f"{SEED}:{request.node.nodeid}")


def write_config(path, root, images, cache=None, fetch=None, log=None, **extra):
    """A site config for one trial; `images` is a catalog mapping."""
    cfg = {
        "cache": {"root": str(root), "max_size": "1G", "min_free": 0, "lock_wait": 120,
                  "evict_grace": 0, "room_wait": 0, **(cache or {})},
        "fetch": {"retries": 0, "backoff": 0.05, "backoff_max": 0.1, "connect_timeout": 5,
                  "read_timeout": 30, "progress_interval": 1, **(fetch or {})},
        "log": {"file": str(log or os.path.join(os.path.dirname(str(path)), "sge-image.log"))},
        "images": images,
        "agent": {"enabled": False},  # peers have their own trials (tests/test_agent.py)
        **extra,
    }
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def prolog_env(name, job="1", spool=None, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGE_")}
    env.update({"SGE_IMAGE": name, "JOB_ID": str(job), "SGE_TASK_ID": "undefined"})
    if spool:
        env["SGE_JOB_SPOOL_DIR"] = str(spool)
    env.update(extra or {})
    return env


def prolog_cmd(config, module="sge.ge.prolog"):
    """The real prolog entry, as the launcher runs it (minus -I: the checkout is the kit)."""
    return [sys.executable, "-m", module, "--config", config]


def run_prolog(config, name, job="1", spool=None, extra_env=None, timeout=120, umask=None):
    """Run the prolog once; -> (exit code, its output). The output is what the job's
    -o file would get; stderr must stay empty (nothing else would read it)."""
    pre = (lambda: os.umask(umask)) if umask is not None else None
    p = subprocess.run(prolog_cmd(config), env=prolog_env(name, job, spool, extra_env),
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       preexec_fn=pre)
    return p.returncode, p.stdout + p.stderr


def make_spool(path):
    """A stand-in for $SGE_JOB_SPOOL_DIR: the prolog appends SGE_IMAGE_PATH=... there."""
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "environment"), "a").close()
    return str(path)


def exported_path(spool):
    with open(os.path.join(spool, "environment")) as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("SGE_IMAGE_PATH=")]
    return lines[-1].split("=", 1)[1] if lines else None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_problems(root, catalog, pinned=()):
    """What is wrong with a cache at this instant (a list of sentences; empty = sound).

    Must hold at any moment, even right after a kill: every blob is complete (its
    content hashes to its name) and read-only; every name in the index is a catalog
    image pointing at that image's digest (a name may point at a blob not there yet
    or no longer there: readers go by digest, never through the index); nothing else
    sits in the index; and no lock is held by anyone but the test's own pin holders
    (`pinned`: image names), so a held lock means a leaked holder."""
    problems = []
    digests = {n: e.get("sha256") for n, e in catalog.items()}
    blobs = os.path.join(root, "blobs", "sha256")
    for fn in _ls(blobs):
        p = os.path.join(blobs, fn)
        if not os.path.isfile(p) or os.path.islink(p):
            problems.append(f"blobs/sha256/{fn} is not a regular file")
            continue
        got = file_sha256(p)
        if got != fn:
            problems.append(f"blobs/sha256/{fn[:12]} is partial or corrupt (hashes to {got[:12]})")
        mode = os.stat(p).st_mode & 0o777
        if mode != 0o444:
            problems.append(f"blobs/sha256/{fn[:12]} has mode {mode:o}, not 444")
    for sub in ("images", "refs"):
        for fn in _ls(os.path.join(root, sub)):
            p = os.path.join(root, sub, fn)
            if sub == "images" and fn not in digests:
                problems.append(f"stray entry in the name index: {sub}/{fn}")
            elif not os.path.islink(p):
                problems.append(f"{sub}/{fn} is not a symlink")
            elif sub == "images" and os.readlink(p) != f"../blobs/sha256/{digests[fn]}":
                problems.append(f"images/{fn} points at {os.readlink(p)}, not its digest")
    allowed = {f"{digests[n]}.pin" for n in pinned}
    for sub in ("locks", "pins"):
        for fn in _ls(os.path.join(root, sub)):
            if fn in allowed:
                continue
            p = os.path.join(root, sub, fn)
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                problems.append(f"{sub}/{fn} is still locked")
            finally:
                os.close(fd)
    return problems


def settled_problems(root, catalog, pulled, pinned=()):
    """After a successful run: the invariants, plus no temp file left and every
    image in `pulled` reachable through its name."""
    problems = cache_problems(root, catalog, pinned)
    left = _ls(os.path.join(root, "tmp"))
    if left:
        problems.append(f"temp files left in tmp/: {left}")
    for name in pulled:
        link = os.path.join(root, "images", name)
        if not os.path.isfile(link):
            problems.append(f"images/{name} does not lead to its blob")
    return problems


def _ls(d):
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def tree(path, skip=()):
    """Every path under `path` (files, dirs, links), relative, except under `skip`."""
    out = set()
    for d, dirs, files in os.walk(path):
        rel = os.path.relpath(d, path)
        if any(rel == s or rel.startswith(s + os.sep) for s in skip):
            dirs[:] = []
            continue
        for x in dirs + files:
            out.add(os.path.normpath(os.path.join(rel, x)))
    return out
