"""A real metrics stack for tests: Debian's prometheus-node-exporter (one per host, its
textfile collector reading that host's directory) and prometheus scraping them, all on
127.0.0.1 with free ports, their own config and data directories, and stopped again.

Debian's packages start nothing here (no systemd); the daemons run as children of the
test and are asked to stop with SIGTERM, then killed.
"""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import yaml

from tests.support.agentkit import free_port
from tests.support.common import ROOT

NODE_EXPORTER = "prometheus-node-exporter"
# Never through a proxy from the environment: the daemons listen on 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMETHEUS = "prometheus"


RULES = os.path.join(ROOT, "config", "prometheus-rules.yml")
# The README's example query for the origin bytes of one image (IMAGE: its name).
ORIGIN_BYTES_QUERY = 'sum(sge_image_fetched_bytes_total{image="IMAGE",source="origin"})'


def parse_prom(text):
    """{series: value} of a .prom file (comments left out)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def available():
    return bool(shutil.which(NODE_EXPORTER) and shutil.which(PROMETHEUS))


class PromStack:
    def __init__(self, workdir, textfile_dirs, rule_files=(), scrape_interval="1s"):
        """textfile_dirs: {host: the directory its node_exporter reads}."""
        self.workdir = workdir
        self.procs = []
        self.exporters = {}
        os.makedirs(workdir, exist_ok=True)
        try:
            for host, d in sorted(textfile_dirs.items()):
                port = free_port("127.0.0.1")
                self._start(f"node-exporter-{host}", [
                    NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                    "--collector.disable-defaults", "--collector.textfile",
                    f"--collector.textfile.directory={d}"])
                self.exporters[host] = port
            for port in self.exporters.values():
                _wait_http(f"http://127.0.0.1:{port}/metrics", 30)
            cfg = {
                "global": {"scrape_interval": scrape_interval,
                           "evaluation_interval": scrape_interval},
                "rule_files": [os.path.abspath(p) for p in rule_files],
                "scrape_configs": [{
                    "job_name": "node",
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"host": h}}
                                       for h, port in sorted(self.exporters.items())],
                }],
            }
            path = os.path.join(workdir, "prometheus.yml")
            with open(path, "w") as f:
                yaml.safe_dump(cfg, f)
            self.port = free_port("127.0.0.1")
            self._start("prometheus", [
                PROMETHEUS, f"--config.file={path}",
                f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}"])
            _wait_http(f"http://127.0.0.1:{self.port}/-/ready", 60)
        except BaseException:
            self.close()
            raise

    def _start(self, name, argv):
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.workdir, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with _OPENER.open(url, timeout=10) as r:
            data = json.loads(r.read())
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr):
        """An instant query -> [(labels, value)]."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def wait_value(self, expr, want, timeout=60):
        """Poll `expr` (one series or a scalar) until it equals `want`; -> the last value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            res = self.query(expr)
            last = res[0][1] if len(res) == 1 else res
            if last == want or time.monotonic() > deadline:
                return last
            time.sleep(0.5)

    def log(self, name):
        with open(os.path.join(self.workdir, f"{name}.log"), errors="replace") as f:
            return f.read()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []


def _wait_http(url, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _OPENER.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.2)
