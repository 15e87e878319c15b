#!/usr/bin/env python3
"""Fan-out of one cold image over many hosts with the real node agents, and the same
scenario in the model, side by side (run as root).

    python bench/fanout_real.py [--hosts 24] [--size-mib 24] [--origin-rate 3M]
        [--net netns] [--link-mbit 320] [--upload-rate 0] [--upload-slots 4]
        [--report 5] [--stagger 0] [--rounds 1] [--out bench/out] [--tag TAG]
    python bench/fanout_real.py --replay bench/out/fanout-real.json    (the model only)

What is real: every host is a real node agent, `python -m sge.agent` with the kit's
defaults (its own cache, config, log, the privilege split, signed staging requests,
`trust: cluster`), and every host's pull is a real `sge-image pull` of the same cold
image, run as a prolog runs it, from that host's own address. The origin is a real
nginx that sends each connection at most `--origin-rate` bytes a second
(`limit_rate`), so that one origin pull takes seconds.

What stands in for the cluster:
- the hosts are processes on this one machine (2 cores shared by every agent and
  pull). With `--net netns` (the default) each host has a network namespace of its
  own, with one address 127.0.77.(10+i) on a veth link to a bridge in a hub namespace,
  shaped by `tc tbf` to `--link-mbit` each way (its upload at its end, its download at
  the hub's end), and the origin sits in the hub at 127.0.77.1. Every namespace and
  link is made by this run and deleted at its end; nothing is added to the machine's
  own network. With `--net loopback` the hosts and the origin share one loopback
  device (in one namespace of this run) and `--upload-rate` (agent.upload_rate) is
  what gives each host a finite upload rate; the origin then sees every host as that
  loopback's 127.0.0.1, and a verified copy from no peer is counted as the origin's;
- Grid Engine is a stand-in `qhost` (agent.qhost) printing a file that a loop here
  rewrites: every `--report` seconds, at a phase of its own, each host's cache is read
  by the kit's own load sensor code (sge/ge/loadsensor.py Reporter: a verified blob,
  or a download in flight, counts), and the stand-in says what each host's sensor
  reported last, as qhost says what qmaster heard last;
- each host's name is its address, and each process of a host runs in a UTS
  namespace whose host name is that name (the kit sends from its name's address).

At t=0 every host starts its pull (spread over `--stagger` seconds, in a random order,
if given). Measured: origin GETs (nginx's log: address, duration, bytes), where each
host's bytes came from (its log: "bytes from peer X[ (download in progress)],
verified", else the origin), the depth of each copy chain (a host that pulled from the
origin is 0, one that copied from a depth-k host k+1), each host's time to a verified
image (its pull's exit) and when its blob landed, the busy hosts it met and the redirects it
followed, and what each agent served. Then the same scenario in the model
(`sge_sim.run_scenario`, policy "agent": the same hosts, one task each at the same
offsets, the image size, the origin pull's measured time, the links and upload rate,
the upload slots, the report interval and phases, the measured pipeline lag) and both
side by side. Everything is cleaned up at the end, Ctrl-C included: processes,
namespaces, the work directory and the system user the agents ran as, if this run
made it. Results: a table, and OUT/fanout-real[-TAG].json.
"""
import argparse
import hashlib
import heapq
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the kit and the simulator's own distribution (sim/), from this tree
sys.path[:0] = [REPO, os.path.join(REPO, "sim")]

from bench.nginx import Nginx  # noqa: E402
from tests.support.agentkit import QHOST_HEAD  # noqa: E402

IMAGE = "fanout"
NET = "127.0.77."
HUB_ADDR = NET + "1"
ORIGIN_PORT = 8077          # inside a namespace of this run: no one else is there
AGENT_PORT = 645            # the default agent.port, in namespaces of this run
BENCH_USER = "sge-image-fanout"   # the agents' server user: this run's own
PY = sys.executable
MB = 1 << 20


def run(argv, check=True, input=None):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()[:500]}")
    return r


def parse_rate(text):
    from sge.units import parse_size
    text = str(text).strip()
    return parse_size(text[:-2] if text.lower().endswith("/s") else text)


class Host:
    def __init__(self, i, lab):
        self.i = i
        self.label = f"h{i:02d}"
        self.name = self.addr = f"{NET}{10 + i}"   # a host's name is its address
        # its own namespace, or (loopback) the one all hosts share
        self.ns = f"{lab.prefix}-{self.label}" if lab.netns else f"{lab.prefix}-lo"
        self.dir = os.path.join(lab.work, self.label)
        self.cache = os.path.join(self.dir, "cache")
        self.cfg = os.path.join(self.dir, "config.yaml")
        self.log = os.path.join(self.dir, "sge-image.log")
        self.phase = 0.0
        self.offset = 0.0
        self.agent = None
        self.pull = None
        self.started = self.ended = None
        self.timed_out = False

    def argv(self, argv):
        """`argv` run as this host: in its network namespace (netns mode) and in a
        UTS namespace named as the host."""
        pre = ["ip", "netns", "exec", self.ns]
        return pre + ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                      self.name] + argv

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""


class Lab:
    """Everything one run makes, and takes down again in close()."""

    def __init__(self, args):
        self.args = args
        self.netns = args.net == "netns"
        self.prefix = f"sgfo{os.getpid()}"
        self.work = tempfile.mkdtemp(prefix="sge-fanout-", dir="/var/tmp")
        os.chmod(self.work, 0o755)
        self.namespaces = []
        self.procs = []
        self.nginx = None
        self.made_user = False
        self.sensors = None
        self.hosts = [Host(i, self) for i in range(1, args.hosts + 1)]
        self.bin = os.path.join(self.work, "bin")
        os.makedirs(self.bin)
        self.qhost_txt = os.path.join(self.bin, "qhost.txt")
        self.key = os.path.join(self.work, "agent.key")

    # ------------------------------------------------------------ setup

    def user(self):
        from sge.agent import user
        if not user.exists(BENCH_USER):
            user.create(BENCH_USER)
            self.made_user = True

    def network(self):
        if not self.netns:
            # one loopback for every host, in a namespace of this run: the machine's
            # own loopback carries none of it
            ns = f"{self.prefix}-lo"
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            return
        a = self.args
        rate = f"{a.link_mbit}mbit"
        # tbf: a burst of at least two 64 KiB packets (the links' MTU), or 10 ms
        burst = max(128 << 10, int(a.link_mbit * 1e6 / 8 * 0.01))
        shape = f"root tbf rate {rate} burst {burst} latency 20ms"
        hub = f"{self.prefix}-hub"
        self._netns(hub)
        run(["ip", "-n", hub, "-batch", "-"], input="\n".join([
            "link add br0 type bridge",
            f"addr add {HUB_ADDR}/24 dev br0",
            "link set br0 up"]) + "\n")
        for h in self.hosts:
            self._netns(h.ns)
            run(["ip", "link", "add", "name", h.label, "netns", hub, "mtu", "65000", "type",
                 "veth", "peer", "name", "eth0", "netns", h.ns, "mtu", "65000"])
            run(["ip", "-n", h.ns, "-batch", "-"], input="\n".join([
                f"addr add {h.addr}/24 dev eth0",
                "link set eth0 up"]) + "\n")
            run(["ip", "-n", hub, "link", "set", h.label, "master", "br0", "up"])
            run(["tc", "-n", h.ns, "qdisc", "add", "dev", "eth0", *shape.split()])
            run(["tc", "-n", hub, "qdisc", "add", "dev", h.label, *shape.split()])

    def _netns(self, ns):
        """A namespace where 127.0.77.0/24 is a network on a link, not loopback: the
        kernel routes 127/8 to lo and drops it elsewhere unless told otherwise."""
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1",
             "net.ipv4.conf.default.route_localnet=1"])
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join([
            "link set lo up",
            "addr del 127.0.0.1/8 dev lo",
            "addr add 127.0.0.1/32 dev lo"]) + "\n")

    def origin(self, data):
        root = os.path.join(self.work, "origin")
        os.makedirs(root)
        path = os.path.join(root, f"{IMAGE}.sif")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        rate = parse_rate(self.args.origin_rate)
        ns = f"{self.prefix}-hub" if self.netns else f"{self.prefix}-lo"
        self.nginx = Nginx(root, os.path.join(self.work, "nginx"), limit_rate=rate,
                           host=HUB_ADDR, port=ORIGIN_PORT,
                           prefix=["ip", "netns", "exec", ns], timed=True)
        return self.nginx.url(f"{IMAGE}.sif")

    def configs(self, url, digest, size):
        import yaml

        from sge.agent.auth import create_key
        create_key(self.key)
        a = self.args
        port = AGENT_PORT
        with open(os.path.join(self.bin, "qhost"), "w") as f:
            f.write(f"#!/bin/sh\nexec cat {self.qhost_txt}\n")
        os.chmod(os.path.join(self.bin, "qhost"), 0o755)
        for h in self.hosts:
            os.makedirs(h.dir)
            os.chmod(h.dir, 0o755)
            cfg = {
                # the kit's defaults, but for what a host of this lab needs to say
                "cache": {"root": h.cache, "max_size": "10G", "min_free": 0},
                "fetch": {"progress_interval": 60},
                "log": {"file": h.log},
                "agent": {"port": port, "bind": h.addr, "key_file": self.key,
                          "user": BENCH_USER, "qhost": [os.path.join(self.bin, "qhost")],
                          "upload_slots": a.upload_slots,
                          "upload_rate": parse_rate(a.upload_rate)},
                "images": {IMAGE: {"url": url, "sha256": digest, "size": size}},
            }
            with open(h.cfg, "w") as f:
                yaml.safe_dump(cfg, f)

    def env(self, h):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO
        env["HOST"] = h.name
        return env

    def start_agents(self):
        for h in self.hosts:
            err = open(os.path.join(h.dir, "agent.err"), "wb")
            h.agent = subprocess.Popen(h.argv([PY, "-m", "sge.agent", "--config", h.cfg]),
                                       env=self.env(h), cwd=h.dir, stdout=subprocess.DEVNULL,
                                       stderr=err)
            err.close()
            self.procs.append(h.agent)
        deadline = time.monotonic() + 60
        for h in self.hosts:
            while f"listening on {h.addr}:" not in h.read_log():
                if h.agent.poll() is not None or time.monotonic() > deadline:
                    with open(os.path.join(h.dir, "agent.err")) as f:
                        raise RuntimeError(f"agent of {h.label} did not start: "
                                           f"{h.read_log()[-500:]} {f.read()[-1000:]}")
                time.sleep(0.1)

    # ------------------------------------------------------------ the run

    def pulls(self, t0):
        """Start each host's pull at t0 + its offset, and note when each exits (while
        the later ones are still to start) -> None once all have."""
        waiting = sorted(self.hosts, key=lambda h: h.offset)
        running = []
        deadline = time.monotonic() + self.args.timeout + self.args.stagger
        while waiting or running:
            now = time.time()
            while waiting and t0 + waiting[0].offset <= now:
                h = waiting.pop(0)
                out = open(os.path.join(h.dir, "pull.out"), "wb")
                h.started = time.time()
                h.pull = subprocess.Popen(
                    h.argv([PY, "-m", "sge.cli", "--config", h.cfg, "pull", "-q", IMAGE]),
                    env=self.env(h), cwd=h.dir, stdout=out, stderr=subprocess.STDOUT)
                out.close()
                self.procs.append(h.pull)
                running.append(h)
            for h in list(running):
                if h.pull.poll() is not None:
                    h.ended = time.time()
                    running.remove(h)
            if running and time.monotonic() > deadline:
                # A result too: the hosts still waiting are stopped and counted as
                # without the image (image at: none).
                print(f"{len(running)} pulls still running after {self.args.timeout:.0f}s: "
                      f"{' '.join(h.label for h in running)}; stopping them", flush=True)
                for h in running:
                    h.pull.terminate()
                    h.timed_out = True
                return
            time.sleep(0.01)

    # ------------------------------------------------------------ teardown

    def close(self):
        if self.sensors is not None:
            self.sensors.stop.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.nginx is not None:
            self.nginx.close()
        for ns in reversed(self.namespaces):
            # whatever still runs in a namespace of this run is this run's
            r = run(["ip", "netns", "pids", ns], check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            for _ in range(20):
                if run(["ip", "netns", "del", ns], check=False).returncode == 0:
                    break
                time.sleep(0.25)
            else:
                print(f"could not delete network namespace {ns}", file=sys.stderr)
        if self.made_user:
            from sge.agent import user
            deadline = time.monotonic() + 30
            while True:
                try:
                    user.remove(BENCH_USER)
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        print(f"could not remove the user {BENCH_USER}: {e}", file=sys.stderr)
                        break
                    time.sleep(0.5)
        if self.args.keep:
            print(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


class Sensors(threading.Thread):
    """Each host's load sensor, as the kit's Reporter sees its cache, every `interval`
    seconds at the host's own phase; the stand-in qhost prints what each reported last."""

    def __init__(self, lab, interval):
        super().__init__(daemon=True)
        from sge import config
        from sge.cache import Cache
        from sge.ge.loadsensor import Reporter
        self.lab = lab
        self.interval = interval
        self.stop = threading.Event()
        self.reporters = {}
        for h in lab.hosts:
            settings = config.load(h.cfg, use_snapshot=False)
            self.reporters[h.name] = Reporter(settings, Cache.from_settings(settings), h.name)
        self.views = {}
        self.first_seen = {}   # host -> when its report first had the image
        self.t0 = None
        self.refusals = []

    def report(self, h, now):
        text = self.reporters[h.name].report()
        vals = {}
        for line in text.splitlines():
            host, _, rest = line.partition(":")
            key, _, value = rest.partition(":")
            if host == h.name and key:
                vals[key] = value
        if "img_sensor_time" in vals and len(vals) == 1:
            self.refusals.append((h.label, now))
        vals["load_avg"] = "0.01"
        self.views[h.name] = vals
        if f"img_{IMAGE}" in vals and h.name not in self.first_seen and self.t0 is not None:
            self.first_seen[h.name] = round(now - self.t0, 3)

    def write(self):
        text = QHOST_HEAD
        for h in self.lab.hosts:
            vals = self.views.get(h.name)
            if not vals:
                continue
            text += (f"{h.name:<23} lx-amd64        2    1    2    2  0.01    1.9G  "
                     f"100.0M     0.0     0.0\n")
            items = [f"hl:{k}={v}" for k, v in vals.items()]
            text += "   Host Resource(s):      " + items[0] + "\n"
            text += "".join(f"                          {x}\n" for x in items[1:])
        tmp = self.lab.qhost_txt + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.lab.qhost_txt)

    def all_once(self):
        now = time.time()
        for h in self.lab.hosts:
            self.report(h, now)
        self.write()

    def begin(self, t0):
        self.t0 = t0
        self.start()

    def run(self):
        due = [(self.t0 + h.phase, h.i, h) for h in self.lab.hosts]
        heapq.heapify(due)
        while not self.stop.is_set():
            at, i, h = heapq.heappop(due)
            if self.stop.wait(max(0.0, at - time.time())):
                return
            self.report(h, time.time())
            self.write()
            heapq.heappush(due, (at + self.interval, i, h))


# ---------------------------------------------------------------- measuring

PEER_RE = re.compile(r"image \S+: (\d+) bytes from peer (\S+)( \(download in progress\))?, verified")
BUSY_RE = re.compile(r"peer (\S+): HTTP 503")
REDIRECT_RE = re.compile(r"peer (\S+) is busy and names \S+ .*: (trying (.+)|none to follow)$",
                         re.M)
SERVED_RE = re.compile(r"served blob \S+ \((\d+) bytes\) to (\S+)( while it was downloaded)?")
SEED_RE = re.compile(r"waiting for seed host (\S+) to stage it")
STAGE_REQ_RE = re.compile(r"staging \S+ for (\S+)")
DROPPED_RE = re.compile(r"(dropped a transfer|stopped serving blob)")


def origin_gets(nginx_dir, t0):
    """nginx's timed log -> [{addr, start, end, seconds, status, bytes}] (times from t0)."""
    gets = []
    try:
        with open(os.path.join(nginx_dir, "logs", "access.log")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return gets
    for line in lines:
        parts = line.split(" ", 5)
        if len(parts) < 6 or f"GET /{IMAGE}.sif " not in parts[5]:
            continue
        end, took = float(parts[1]), float(parts[2])
        gets.append({"addr": parts[0], "start": round(end - took - t0, 3),
                     "end": round(end - t0, 3), "seconds": took, "status": int(parts[3]),
                     "bytes": int(parts[4])})
    return sorted(gets, key=lambda g: g["start"])


def depths(src):
    """{host: its source host, None for the origin} -> {host: chain depth}: 0 for a
    host that pulled from the origin, k+1 for one that copied from a depth-k host,
    None on a loop (which would be a bug worth seeing)."""
    out = {}

    def walk(h, path):
        if h in out:
            return out[h]
        if h in path:
            return None
        s = src.get(h)
        if s is None:
            d = 0
        else:
            ds = walk(s, path | {h})
            d = None if ds is None else ds + 1
        out[h] = d
        return d
    for h in src:
        walk(h, frozenset())
    return out


def measure(lab, t0, size, digest):
    by_name = {h.name: h for h in lab.hosts}
    by_addr = {h.addr: h.name for h in lab.hosts}
    gets = origin_gets(lab.nginx.dir, t0)
    full = [g for g in gets if g["status"] == 200 and g["bytes"] == size]
    hosts = {}
    src = {}
    for h in lab.hosts:
        log = h.read_log()
        peer = PEER_RE.search(log)
        redirects = REDIRECT_RE.findall(log)
        followed = [t.strip() for _, _, targets in redirects for t in targets.split(",") if t]
        served = SERVED_RE.findall(log)
        blob = os.path.join(h.cache, "blobs", "sha256", digest)
        try:
            landed = round(os.stat(blob).st_mtime - t0, 3)
            with open(blob, "rb") as f:
                ok = hashlib.file_digest(f, "sha256").hexdigest() == digest \
                    if hasattr(hashlib, "file_digest") else None
        except OSError:
            landed, ok = None, False
        from_origin = [g for g in full if g["addr"] == h.addr]
        # On one loopback the origin sees every host as that loopback's own address:
        # a verified copy that came from no peer came from the origin.
        if not peer and not from_origin and ok and not lab.netns:
            from_origin = ["by elimination"]
        src[h.name] = peer.group(2) if peer else None
        hosts[h.name] = {
            "label": h.label, "addr": h.addr, "phase": round(h.phase, 3),
            "offset": round(h.offset, 3),
            "exit": h.pull.returncode if h.pull and not h.timed_out else None,
            "timed_out": h.timed_out,
            "source": peer.group(2) if peer else ("origin" if from_origin else None),
            "streamed": bool(peer and peer.group(3)),
            "origin_gets": len([g for g in gets if g["addr"] == h.addr]),
            "busy_503": len(BUSY_RE.findall(log)),
            "busy_from": BUSY_RE.findall(log),
            # busy hosts met, each once a pull: the kit logs a busy answer once a host
            # (a redirect line) or once an answer (an HTTP 503 line), by version
            "busy_hosts": len(set(BUSY_RE.findall(log)) | {r[0] for r in redirects}),
            # 503s that named hosts receiving the blob, and of them those followed
            "redirects_named": len(redirects),
            "redirects_followed": sum(1 for r in redirects if r[2]),
            "by_redirect": bool(peer and peer.group(2) in followed),
            "seed_waits": sorted(set(SEED_RE.findall(log))),
            "stage_requests": len(STAGE_REQ_RE.findall(log)),
            "served": len(served),
            "served_streamed": sum(1 for s in served if s[2]),
            "served_to": [s[1] for s in served],
            "dropped": len(DROPPED_RE.findall(log)),
            "pull_start": round(h.started - t0, 3) if h.started else None,
            "image_at": round(h.ended - t0, 3) if h.ended else None,
            "pull_seconds": round(h.ended - h.started, 3) if h.ended and h.started else None,
            "blob_landed": landed,
            "verified": ok,
            "reported_at": lab.sensors.first_seen.get(h.name),
            "log": [line[20:] for line in log.splitlines()],
        }
    depth = depths(src)
    for name, d in depth.items():
        # a host without the image (stopped at the timeout) is at no depth
        hosts[name]["depth"] = d if hosts[name]["source"] is not None else None
    # the pipeline's lag: a streamed copy's blob after its source's
    lags = []
    for name, v in hosts.items():
        s = src.get(name)
        if v["streamed"] and s in hosts and v["blob_landed"] is not None \
                and hosts[s]["blob_landed"] is not None:
            lags.append(round(v["blob_landed"] - hosts[s]["blob_landed"], 3))
    children = {}
    for name, s in src.items():
        if s is not None:
            children.setdefault(s, []).append(name)
    unknown = sorted(s for s in src.values() if s is not None and s not in by_name)
    # an origin pull as its host sees it: from its pull's start (process start, qhost,
    # the seed's choice) to the GET's last byte; the model starts it at once
    seen = [g["end"] - hosts[by_addr[g["addr"]]]["pull_start"] for g in full
            if g["addr"] in by_addr and hosts[by_addr[g["addr"]]]["pull_start"] is not None]
    return {"hosts": hosts, "origin_gets": gets, "origin_full": len(full),
            "origin_seconds": [g["seconds"] for g in full],
            "origin_seen_seconds": [round(x, 3) for x in seen], "pipeline_lags": sorted(lags),
            "children": {by_name[k].label: sorted(by_name[c].label for c in v)
                         for k, v in children.items() if k in by_name},
            "unknown_sources": unknown, "sensor_refusals": lab.sensors.refusals}


# ---------------------------------------------------------------- the model

def simulate(real, args_d, lag=None):
    """The real run's scenario in the model -> its summary (per host: time to image,
    source, depth)."""
    from sge_sim import peers as sim_peers
    from sge_sim import run_scenario
    hosts = real["hosts"]
    names = sorted(hosts, key=lambda n: hosts[n]["label"])
    # the origin pull: the measured GET (the time a host spends before it, process
    # start, qhost, choosing the seed, is not in the model: see "first origin GET")
    got = real["origin_seconds"]
    origin_s = statistics.median(got) if got else real["size"] / real["origin_rate"]
    link = real["link_gbit"]
    up = real["upload_gbit"]
    lag = lag if lag is not None else (statistics.median(real["pipeline_lags"])
                                       if real["pipeline_lags"] else 1.0)
    settings = {
        "schedule_interval": 0.05, "first_schedule": 0.0,
        "load_report_time": real["report"],
        "report_phase": {n: hosts[n]["phase"] for n in names},
        "load_from_running": False,
        "host_link_gbit": link, "peer_upload_gbit": min(link, up),
        "peer_upload_slots": real["upload_slots"],
        "peer_pipeline": True, "peer_redirect": True, "peer_seed": True,
        "pipeline_lag_s": max(0.0, lag),
    }
    scen = {"policy": "agent",
            "hosts": [{"name": n, "slots": 1} for n in names],
            "images": {IMAGE: {"download_s": round(origin_s, 3), "size_gb": real["size"] / 1e9}},
            "jobs": [{"image": IMAGE, "submit": hosts[n]["offset"], "runtime": 60.0}
                     for n in names],
            "settings": settings}
    # Who copied from whom: the model's own choices, read where it makes them (its
    # agent's _from_peer/_from_origin); None where this model has no such hooks.
    edges = {}
    agent_cls = getattr(sim_peers, "Agent", None)
    hooks = agent_cls is not None and all(hasattr(agent_cls, m)
                                          for m in ("_from_peer", "_from_origin"))
    if hooks:
        orig_peer, orig_origin = agent_cls._from_peer, agent_cls._from_origin

        def from_peer(self, fl, s, *a, **k):
            edges[fl.host] = (s, a[0] is not None if a else False)
            return orig_peer(self, fl, s, *a, **k)

        def from_origin(self, fl, *a, **k):
            edges[fl.host] = (None, False)
            return orig_origin(self, fl, *a, **k)
        agent_cls._from_peer, agent_cls._from_origin = from_peer, from_origin
    try:
        s = run_scenario(scen)
    finally:
        if hooks:
            agent_cls._from_peer, agent_cls._from_origin = orig_peer, orig_origin
    at = {}
    for t in s["tasks"]:
        if t["host"] is not None and t["start"] is not None:
            at[t["host"]] = round(t["start"], 3)
    src = {names[h]: (names[e[0]] if e[0] is not None else None) for h, e in edges.items()}
    depth = depths(src) if hooks else {}
    return {"settings": settings, "origin_s": round(origin_s, 3),
            "origin": sum(s["downloads"].values()), "peer": sum(s["peer_transfers"].values()),
            "streamed": sum(1 for e in edges.values() if e[1]) if hooks else None,
            "image_at": at, "source": src if hooks else None, "depth": depth,
            "unstarted": s["unstarted"]}


# ---------------------------------------------------------------- report

def spread(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "-"
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{xs[0]:.1f} / {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f} / {xs[-1]:.1f}"


def histogram(ds):
    out = {}
    for d in ds:
        out[d] = out.get(d, 0) + 1
    return ", ".join(f"{k}:{v}" for k, v in sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def print_report(real, sim):
    hosts = real["hosts"]
    label = {n: v["label"] for n, v in hosts.items()}
    print(f"\n{len(hosts)} hosts ({real['net']}: link {real['link_gbit'] * 1000:.0f} Mbit/s, "
          f"upload_rate {real['upload_rate'] or 'none'}, {real['upload_slots']} upload "
          f"slots), image {real['size'] / MB:.0f} MiB, origin {real['origin_rate'] / MB:.1f} "
          f"MiB/s per connection, reports every {real['report']:.0f}s, stagger "
          f"{real['stagger']:.1f}s, load {real['load']:.2f}")
    print(f"{'host':5} {'start':>6} {'source':>8} {'how':>9} {'depth':>5} {'busy':>4} "
          f"{'redir':>5} {'image at':>8} {'pull s':>7} {'blob at':>7} {'reported':>8} "
          f"{'served':>6}")
    for n in sorted(hosts, key=lambda n: hosts[n]["label"]):
        v = hosts[n]
        src = v["source"]
        how = "origin" if src == "origin" else ("stream" if v["streamed"] else "whole") \
            if src else "?"
        if v["by_redirect"]:
            how += "+r"
        print(f"{v['label']:5} {v['pull_start']:>6.2f} {label.get(src, src or '-'):>8} "
              f"{how:>9} {str(v['depth']):>5} {v.get('busy_hosts', v['busy_503']):>4} {v['redirects_followed']:>5} "
              f"{v['image_at'] if v['image_at'] is not None else '-':>8} "
              f"{v['pull_seconds'] if v['pull_seconds'] is not None else '-':>7} "
              f"{v['blob_landed'] if v['blob_landed'] is not None else '-':>7} "
              f"{v['reported_at'] if v['reported_at'] is not None else '-':>8} "
              f"{v['served']:>3}/{v['served_streamed']:<2}")
    print("  (start: its pull's start; source: the host it copied from; how: stream = "
          "its download in progress, whole = a verified blob, +r = from a host a busy "
          "peer named; busy: busy hosts met; redir: redirects followed; image at: its "
          "pull's exit, the image verified; blob at: the blob's last write; reported: "
          "its sensor's first report of the image; served: copies sent / of them "
          "streamed; times in s from t=0)")
    print("  tree (who served whom): " + "; ".join(
        f"{k} -> {', '.join(v)}" for k, v in sorted(real["children"].items())))
    gets = real["origin_gets"]
    print(f"  origin GETs: {len(gets)} ({real['origin_full']} whole): " + ", ".join(
        f"{label.get(g['addr'], g['addr'])} {g['start']:.1f}-{g['end']:.1f}s "
        f"{g['bytes'] / MB:.1f} MiB" for g in gets))
    r_depth = [v["depth"] for v in hosts.values()]
    r_at = [v["image_at"] for v in hosts.values()]
    s_at = list(sim["image_at"].values())
    s_depth = list(sim["depth"].values()) if sim["depth"] else []
    r_own = [v["pull_seconds"] for v in hosts.values() if v["pull_seconds"] is not None]
    r_last = max((x for x in r_at if x is not None), default=None)
    s_own = [at - hosts[n]["offset"] for n, at in sim["image_at"].items() if n in hosts]
    peer_real = sum(1 for v in hosts.values() if v["source"] not in (None, "origin"))
    rows = [
        ("origin pulls (whole GETs)", f"{real['origin_full']}", f"{sim['origin']}"),
        ("peer copies", f"{peer_real}", f"{sim['peer']}"),
        ("of them streamed (pipelined)", f"{sum(1 for v in hosts.values() if v['streamed'])}",
         f"{sim['streamed'] if sim['streamed'] is not None else '-'}"),
        ("max chain depth", f"{max((d for d in r_depth if d is not None), default='-')}",
         f"{max((d for d in s_depth if d is not None), default='-')}"),
        ("hosts per depth", histogram(r_depth), histogram(s_depth) if s_depth else "-"),
        ("time for the last host, s",
         (f"{r_last:.1f}" if r_last is not None else "-")
         + (f" ({sum(1 for x in r_at if x is None)} without the image)"
            if None in r_at else ""),
         f"{max(s_at):.1f}" if s_at else "-"),
        ("time to image min/p25/median/p75/max, s", spread(r_at), spread(s_at)),
        ("a host's own wait (image at - start), median / max, s",
         f"{statistics.median(r_own):.1f} / {max(r_own):.1f}" if r_own else "-",
         f"{statistics.median(s_own):.1f} / {max(s_own):.1f}" if s_own else "-"),
        ("origin GET, s (measured -> model)", ", ".join(
            f"{x:.1f}" for x in real["origin_seconds"]), f"{sim['origin_s']:.1f}"),
        ("first origin GET starts at, s", f"{min(g['start'] for g in gets):.1f}"
         if gets else "-", "0.0"),
        ("pipeline lag, s (median)", f"{statistics.median(real['pipeline_lags']):.2f}"
         if real["pipeline_lags"] else "-", f"{sim['settings']['pipeline_lag_s']:.2f}"),
        ("busy hosts met / redirects followed",
         f"{sum(v.get('busy_hosts', v['busy_503']) for v in hosts.values())} / "
         f"{sum(v['redirects_followed'] for v in hosts.values())}", "-"),
        ("hosts reached by a redirect", f"{sum(1 for v in hosts.values() if v['by_redirect'])}",
         "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\n{'':{w}}  {'real':>28}  {'model':>28}")
    for k, a, b in rows:
        print(f"{k:{w}}  {a:>28}  {b:>28}")


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=24)
    ap.add_argument("--size-mib", type=float, default=24.0)
    ap.add_argument("--origin-rate", default="3M", help="bytes/s per origin connection")
    ap.add_argument("--net", choices=("netns", "loopback"), default="netns")
    ap.add_argument("--link-mbit", type=int, default=320,
                    help="each host's link, each way (netns)")
    ap.add_argument("--upload-rate", default=None,
                    help="agent.upload_rate (default: none with netns, 8M on loopback)")
    ap.add_argument("--upload-slots", type=int, default=4, help="agent.upload_slots")
    ap.add_argument("--report", type=float, default=5.0, help="load report interval, s")
    ap.add_argument("--same-phase", action="store_true",
                    help="every sensor reports at once (default: phases spread evenly)")
    ap.add_argument("--stagger", type=float, default=0.0,
                    help="pulls start spread over this many seconds, in a random order")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="runs, each on a lab of its own")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--replay", metavar="JSON", help="rerun only the model")
    ap.add_argument("--lag", type=float, default=None,
                    help="the model's pipeline_lag_s (default: the measured median)")
    args = ap.parse_args(argv)
    if args.upload_rate is None:
        args.upload_rate = "0" if args.net == "netns" else "8M"
    if args.net == "loopback" and not parse_rate(args.upload_rate):
        ap.error("--net loopback needs --upload-rate: without it the hosts' uploads are "
                 "bounded by nothing but the CPU")
    if not 1 <= args.hosts <= 200:
        ap.error("--hosts: 1 to 200")
    return args


def stale_namespaces():
    """Namespaces of runs that were killed outright (SIGKILL: no cleanup ran)."""
    r = run(["ip", "netns", "list"], check=False)
    out = []
    for line in r.stdout.splitlines():
        m = re.match(r"(sgfo(\d+)-(hub|h\d+))\b", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            out.append(m.group(1))
    return out


def run_real(args, seed):
    """One round on a lab of its own -> what was measured. `seed` picks the image's
    bytes (and so its seed host), the sensors' phases and the pulls' order."""
    if os.geteuid() != 0:
        raise SystemExit("fanout_real.py must run as root (agents bind, fork and drop "
                         "root; namespaces)")
    for tool in ("nginx", "ip", "tc", "unshare"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is needed (Debian: nginx, iproute2, util-linux)")
    for ns in stale_namespaces():
        print(f"removing {ns}, left by a run that was killed")
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", ns], check=False)
    size = int(args.size_mib * MB)
    data = random.Random(seed).randbytes(size)
    digest = hashlib.sha256(data).hexdigest()
    lab = Lab(args)
    rng = random.Random(seed)
    n = len(lab.hosts)
    phases = [args.report * k / n for k in range(n)]
    offsets = [args.stagger * k / max(1, n - 1) for k in range(n)]
    rng.shuffle(phases)
    rng.shuffle(offsets)
    for h, ph, off in zip(lab.hosts, phases, offsets):
        h.phase = 0.0 if args.same_phase else ph
        h.offset = off
    try:
        lab.user()
        lab.network()
        url = lab.origin(data)
        del data
        lab.configs(url, digest, size)
        lab.sensors = Sensors(lab, args.report)
        lab.sensors.all_once()      # every host live, nothing cached
        t_setup = time.monotonic()
        lab.start_agents()
        print(f"{n} agents up in {time.monotonic() - t_setup:.1f}s", flush=True)
        time.sleep(1.0)
        lab.sensors.all_once()
        t0 = time.time() + 0.5
        lab.sensors.begin(t0)
        lab.pulls(t0)
        t_all = time.time() - t0
        time.sleep(1.0)  # the agents' last log lines
        lab.sensors.stop.set()
        m = measure(lab, t0, size, digest)
        failed = [v["label"] for v in m["hosts"].values() if v["exit"] != 0]
        for h in lab.hosts:
            if h.timed_out:
                h.pull.wait(10)
        up = parse_rate(args.upload_rate)
        link_gbit = args.link_mbit / 1000 if lab.netns else 10.0
        real = {"net": args.net, "size": size, "origin_rate": parse_rate(args.origin_rate),
                "link_gbit": link_gbit, "upload_rate": args.upload_rate,
                "upload_gbit": up * 8 / 1e9 if up else link_gbit,
                "upload_slots": args.upload_slots, "report": args.report,
                "stagger": args.stagger, "all_done_s": round(t_all, 3), "failed": failed,
                "load": os.getloadavg()[0], **m}
        return real
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        lab.close()


def summary_line(i, real, sim):
    hosts = real["hosts"].values()
    first = min((g["start"] for g in real["origin_gets"]), default=None)
    depth = max((v["depth"] for v in hosts if v["depth"] is not None), default=None)
    return (f"round {i + 1}: origin {real['origin_full']} / model {sim['origin']}, depth "
            f"{depth} / {max((d for d in sim['depth'].values() if d is not None), default='-')}, "
            f"last host {max((v['image_at'] for v in hosts if v['image_at'] is not None), default=float('nan')):.1f}"
            f"{' (' + str(sum(1 for v in hosts if v['image_at'] is None)) + ' without)' if any(v['image_at'] is None for v in hosts) else ''} / "
            f"{max(sim['image_at'].values(), default=float('nan')):.1f}s, first origin GET at "
            f"{first if first is not None else '-'}s, busy hosts met "
            f"{sum(v.get('busy_hosts', v['busy_503']) for v in hosts)}, redirects followed "
            f"{sum(v['redirects_followed'] for v in hosts)}")


def report_round(i, n, r):
    print(f"\n== round {i + 1} of {n}")
    print_report(r["real"], r["sim"])
    if r["real"].get("failed"):
        print(f"\npulls that failed or were stopped: {', '.join(r['real']['failed'])}")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    if args.replay:
        with open(args.replay) as f:
            rounds = json.load(f)["rounds"]
    else:
        def interrupted(sig, frame):
            raise KeyboardInterrupt
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupted)
        rounds = []
        path = os.path.join(args.out, f"fanout-real{'-' + args.tag if args.tag else ''}.json")
        os.makedirs(args.out, exist_ok=True)
        for i in range(args.rounds):
            if i:
                time.sleep(5)  # the machine's other work between rounds
            r = {"real": run_real(args, args.seed + i)}
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, interrupted)
            r["sim"] = simulate(r["real"], vars(args), lag=args.lag)
            rounds.append(r)
            report_round(i, args.rounds, r)
            with open(path, "w") as f:  # after each round: a later one may not end
                json.dump({"args": vars(args), "rounds": rounds}, f, indent=1)
    if args.replay:
        for i, r in enumerate(rounds):
            r["sim"] = simulate(r["real"], vars(args), lag=args.lag)
            report_round(i, len(rounds), r)
    print()
    for i, r in enumerate(rounds):
        print(summary_line(i, r["real"], r["sim"]))
    if not args.replay:
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
