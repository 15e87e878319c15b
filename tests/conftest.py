"""Shared fixtures: a real HTTP server, site configs in temp dirs, CLI runner."""
import hashlib
import os
import random
import subprocess
import sys

import pytest
import yaml

from tests.httpserver import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def payload(size, seed=0):
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pytest_addoption(parser):
    parser.addoption("--ge-flavor", dest="ge_flavor", default=None,
                     help="Grid Engine engines for tests/ge, comma-separated: soge,ocs "
                          "(default: both, or $GE_FLAVORS)")


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    srv = Server(str(root))
    yield srv
    srv.close()


@pytest.fixture
def make_config(tmp_path):
    """make_config(images, **sections) -> path of a config.yaml with a private cache.

    Fetch retries and backoff are shortened so fault tests finish quickly, and images
    pulled a moment ago may be evicted at once (cache.evict_grace 0), and a cache full
    of images in use fails at once instead of waiting for room (cache.room_wait 0).
    """
    def make(images=None, cache=None, fetch=None, name="config.yaml", **extra):
        cfg = {
            "cache": {"root": str(tmp_path / "cache"), "max_size": "10G", "lock_wait": 120,
                      "min_free": 0, "evict_grace": 0, "room_wait": 0, **(cache or {})},
            "fetch": {"retries": 1, "backoff": 0.05, "backoff_max": 0.1, "connect_timeout": 5,
                      "read_timeout": 5, "progress_interval": 1, **(fetch or {})},
            "log": {"file": str(tmp_path / "sge-image.log")},
            "images": images or {},
            # No node agent, no peers (tests/test_agent.py runs those): a pull here
            # must not ask this machine's Grid Engine for peers.
            "agent": {"enabled": False},
            **extra,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return str(path)
    return make


def cli(config, *args, timeout=120, **kw):
    """Run `sge-image --config CONFIG ARGS` in a new interpreter."""
    return subprocess.run([sys.executable, "-m", "sge.cli", "--config", config, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def cli_popen(config, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sge.cli", "--config", config, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            **kw)


def cache_files(root):
    """Every file under the cache root, relative, for 'nothing partial' assertions."""
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)
