"""Small helpers of the tests and benchmarks: the repository root, deterministic data,
the CLI in a new interpreter, a cache's file list."""
import hashlib
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def payload(size, seed=0):
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


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
