"""Where flock does nothing (some shared filesystems), downloads may happen twice but a
reader still never sees a partial image: correctness rests on temp + verify + rename."""
import os
import shutil
import subprocess
import sys

import pytest

from sge import config
from tests.support.common import ROOT, cli_popen, payload, sha256
from tests.support.httpserver import Fault

SHIM = r"""
#include <sys/file.h>
/* flock() that always "succeeds" without locking anything. */
int flock(int fd, int op) { (void)fd; (void)op; return 0; }
"""

READER = r"""
import hashlib, os, sys, time
from sge import config
from sge.cache import Cache
s = config.load(sys.argv[1]); img = s.image("demo"); c = Cache.from_settings(s)
seen = bad = 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    p = c.lookup(img)
    if p:
        seen += 1
        if hashlib.sha256(open(p, "rb").read()).hexdigest() != img.sha256:
            bad += 1
print(seen, bad)
"""


@pytest.fixture(scope="module")
def noop_flock(tmp_path_factory):
    if shutil.which("gcc") is None:
        if os.environ.get("CI"):
            pytest.fail("gcc is needed to build the no-op flock shim")
        pytest.skip("no gcc")
    d = tmp_path_factory.mktemp("shim")
    (d / "noflock.c").write_text(SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "noflock.so"), str(d / "noflock.c")],
                   check=True)
    return str(d / "noflock.so")


def test_no_partial_image_without_working_locks(http_server, make_config, noop_flock):
    data = payload(6 << 20, seed=21)
    digest = http_server.add_file("demo.sif", data)
    cfg = make_config({"demo": {"url": http_server.url("demo.sif"), "sha256": digest,
                                "size": len(data)}})
    http_server.faults["demo.sif"] = Fault(rate=12 << 20)
    env = dict(os.environ, LD_PRELOAD=noop_flock)
    reader = subprocess.Popen([sys.executable, "-c", READER, cfg, "4"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    pulls = [cli_popen(cfg, "pull", "demo", "-q", env=env) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in pulls]
    assert all(p.returncode == 0 for p in pulls), "\n".join(o[1] for o in outs)
    assert len({o[0] for o in outs}) == 1
    seen, bad = map(int, reader.communicate(timeout=60)[0].split())
    assert bad == 0 and seen > 0
    # Without locks every process may download: that costs bandwidth, not correctness.
    assert 1 <= http_server.gets("demo.sif") <= 6
    root = config.load(cfg).cache_root
    assert os.listdir(os.path.join(root, "blobs", "sha256")) == [sha256(data)]
