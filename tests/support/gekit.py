"""The kit installed into the running test cluster, the way an admin would.

Grid Engine runs the hooks as root, as sgeadmin (the JSV) and as job owners, so the
kit goes into a virtualenv every one of them can read (the repository checkout may sit
under a private home), built from the system Python, and `sge-image install` wires it
in. Images are served by a real HTTP server on 127.0.0.1 that counts requests.
"""
import difflib
import os
import shutil
import subprocess
import time

import yaml

from tests.support.common import ROOT, payload
from tests.support.httpserver import Server

# Not /opt/sge-image-kit, where the README has an admin install the kit: a test (or the
# demo, /opt/sge-image-kit-demo) must never overwrite or remove a real installation.
KIT_VENV = "/opt/sge-image-kit-test/venv"
WORK = "/var/tmp/sge-image-kit-test"
MB = 1 << 20

# The lab's exec hosts share one machine: a client process in node2's namespace
# connects from 127.0.0.1, and qmaster refuses it ("client IP resolved to host name
# vm"). Pin its source address to the host's own, as the execds are pinned
# (lab/bindshim.c); a real exec host needs nothing of the kind.
QHOST_PINNED = """#!/bin/sh
ip=$(getent hosts "$(hostname)" | awk '{print $1; exit}')
GE_BIND_IP=$ip LD_PRELOAD=libsge-image-kit-bindshim.so exec qhost "$@"
"""


def kit_work(cluster):
    """The kit's work dir (config, install state, caches) for this cluster's engine: one
    per engine, so a leftover install is undone on the cluster it was made on."""
    return WORK if cluster.flavor == "soge" else f"{WORK}-{cluster.flavor}"


def build_kit_venv():
    """A fresh install of this checkout (not editable: hooks must not read the checkout)."""
    py = os.path.join(KIT_VENV, "bin", "python3")
    if not os.path.exists(py):
        subprocess.run(["/usr/bin/python3", "-m", "venv", KIT_VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", ROOT],
                   check=True, capture_output=True)
    deps = subprocess.run([py, "-c", "import yaml"], capture_output=True)
    if deps.returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", ROOT], check=True, capture_output=True)
    return py


class Kit:
    def __init__(self, cluster, work, server, config, python):
        self.cluster = cluster
        self.work = work
        self.server = server
        self.config = config
        self.python = python
        self.images = {}

    def sge_image(self, *args, check=True, host=None):
        """Run `sge-image` as root, optionally as if on exec host `host` (its UTS name
        decides which `{host}` cache it sees)."""
        cmd = [self.python, "-I", "-m", "sge.cli", "--config", self.config, *args]
        if host:
            cmd = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"sge-image {' '.join(args)}: {r.returncode}\n{r.stderr}")
        return r

    def cache_dir(self, host):
        return os.path.join(self.work, "cache", host)

    def out(self, name):
        d = os.path.join(self.work, "out", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, mode=0o777)
        return d

    def script(self, name, text):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        return path

    def sensor_value(self, host, complex_name):
        out = self.cluster.run(["qhost", "-F", complex_name, "-h", host]).stdout
        # The first value shares its line with "Host Resource(s):".
        for word in out.split():
            if word.startswith("hl:" + complex_name + "="):
                return word.split("=", 1)[1]
        return None

    def wait_sensor(self, host, complex_name, want=True, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.sensor_value(host, complex_name)
            if (v is not None) == want:
                return v
            time.sleep(0.5)
        raise TimeoutError(f"{complex_name} on {host}: still {'absent' if want else 'present'}")


def make_kit(cluster, images, extra=None, starter_runtime=None):
    """Fresh work dir, image server, config and venv; returns an uninstalled Kit."""
    python = build_kit_venv()
    work = kit_work(cluster)
    if os.path.exists(os.path.join(work, "hooks", "install-state.json")):
        # A run that died before its teardown: undo its install first.
        subprocess.run([python, "-I", "-m", "sge.cli", "--config", os.path.join(work, "config.yaml"),
                        "uninstall"], capture_output=True, timeout=300)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "srv"))
    os.chmod(work, 0o755)
    server = Server(os.path.join(work, "srv"))
    catalog = {}
    for name, spec in images.items():
        # `data` gives an image's bytes (a real SquashFS or SIF), else a random payload;
        # `file` its name on the server; `format` goes into the catalog entry as is.
        data = spec.get("data") or payload(spec.get("size", MB),
                                           seed=spec.get("seed", hash(name) & 0xFFFF))
        fn = spec.get("file", f"{name}.sif")
        digest = server.add_file(fn, data)
        catalog[name] = {"url": server.url(fn), "sha256": digest, "size": len(data)}
        if spec.get("format"):
            catalog[name]["format"] = spec["format"]
    cfg = {
        "cache": {"root": os.path.join(work, "cache", "{host}"), "max_size": "1G", "min_free": 0},
        "fetch": {"retries": 0, "backoff": 0.1, "connect_timeout": 3, "read_timeout": 10,
                  "progress_interval": 1},
        "log": {"file": os.path.join(work, "sge-image.log")},
        "prolog": {"max_reschedules": 3},
        "images": catalog,
        # The node agent is off unless a test asks for it (tests/ge/test_agent_e2e.py):
        # these tests count downloads per host.
        "agent": {"enabled": False},
        **(extra or {}),
    }
    if starter_runtime:
        cfg["starter"] = {"runtime": starter_runtime}
    path = os.path.join(work, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    os.chmod(path, 0o644)
    kit = Kit(cluster, work, server, path, python)
    kit.images = catalog
    return kit


def cluster_snapshot(cluster):
    """What install may change, as qconf prints it (for the uninstall round trip)."""
    snap = {"complexes": cluster.qconf("-sc"), "global": cluster.qconf("-sconf", "global"),
            "queue": cluster.qconf("-sq", "all.q")}
    for h in cluster.hosts:
        snap[h] = cluster.run(["qconf", "-sconf", h], check=False).stdout
    return snap


def snapshot_diff(before, after):
    """The lines that differ between two cluster snapshots, as a unified diff per part
    (empty when equal). An assertion message carries it whole, whatever pytest's
    verbosity: `-q` cuts a dict comparison down to the part's name."""
    out = []
    for part in sorted(set(before) | set(after)):
        a, b = before.get(part, ""), after.get(part, "")
        if a != b:
            out.extend(difflib.unified_diff(a.splitlines(), b.splitlines(), f"{part} before",
                                            f"{part} after", lineterm="", n=1))
    return "\n".join(out)


def assert_cluster_unchanged(cluster, before):
    """What install changed, uninstall put back: every line of every part is as before."""
    diff = snapshot_diff(before, cluster_snapshot(cluster))
    assert not diff, "the cluster's configuration differs after uninstall:\n" + diff
