"""Real node agents for tests: `python -m sge.agent` processes on 127.0.0.x addresses,
each with its own cache, and a stand-in `qhost` that says which hosts are live and
what they have (the agent and the client ask Grid Engine through it)."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from tests.support.common import ROOT

QHOST_HEAD = ("HOSTNAME                ARCH         NCPU NSOC NCOR NTHR  LOAD  MEMTOT  MEMUSE  SWAPTO  SWAPUS\n"
              "----------------------------------------------------------------------------------------------\n"
              "global                  -               -    -    -    -     -       -       -       -       -\n")


_CREATED_USER = []


def agent_user():
    """The agent's default system user, made once for the test run if this host has
    none (as `install` would) and removed at exit if the run made it."""
    import atexit

    from sge.agent import user
    from sge.config import SCHEMA
    name = SCHEMA["agent"]["user"][1]
    if not user.exists(name):
        user.create(name)
        _CREATED_USER.append(name)
        atexit.register(remove_user, name)
    return name


def remove_user(name, wait=30):
    """userdel, once no agent server runs as the user any more (a server follows its
    root side within a second or so)."""
    from sge.agent import user
    deadline = time.monotonic() + wait
    while True:
        try:
            user.remove(name)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class AgentWorld:
    """A directory every user can traverse (the agent serves as nobody), a shared key,
    a fake qhost, and one config per host."""

    def __init__(self, images, port):
        self.dir = tempfile.mkdtemp(prefix="sge-agent-test-", dir="/var/tmp")
        os.chmod(self.dir, 0o755)
        self.images = images
        self.port = port
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        self.key = os.path.join(self.dir, "agent.key")
        from sge.agent.auth import create_key
        create_key(self.key)
        self.hosts_text = ""
        self.set_qhost({})
        self.procs = []
        self.user = agent_user()

    def set_qhost(self, hosts):
        """hosts: {name: [image complexes it reports]}; every host is live."""
        now = int(time.time())
        text = QHOST_HEAD
        for h, complexes in hosts.items():
            text += f"{h:<23} lx-amd64        2    1    2    2  0.01    1.9G  100.0M     0.0     0.0\n"
            vals = [f"hl:img_sensor_time={now}.000000"] + [f"hl:{c}=1.000000" for c in complexes]
            text += "   Host Resource(s):      " + vals[0] + "\n"
            text += "".join(f"                          {v}\n" for v in vals[1:])
        path = os.path.join(self.bin, "qhost")
        with open(path + ".txt", "w") as f:
            f.write(text)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec cat {path}.txt\n")
        os.chmod(path, 0o755)
        os.chmod(path + ".txt", 0o644)

    def env(self, host=None):
        env = dict(os.environ)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = ROOT
        if host:
            env["HOST"] = host
        return env

    def config(self, host, trust=None, **agent):
        cfg = {
            "cache": {"root": os.path.join(self.dir, "cache", host), "max_size": "10G",
                      "min_free": 0, "evict_grace": 0, "lock_wait": 60},
            "fetch": {"retries": 0, "backoff": 0.05, "connect_timeout": 3, "read_timeout": 5,
                      "progress_interval": 1},
            "log": {"file": os.path.join(self.dir, "sge-image.log")},
            "agent": {"port": self.port, "bind": host, "key_file": self.key,
                      "qhost": [os.path.join(self.bin, "qhost")],
                      "trust": trust or ["127.0.0.1", host], "seed_wait": 30, **agent},
            "images": self.images,
        }
        path = os.path.join(self.dir, f"config-{host}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return path

    def start(self, host, **kw):
        cfg = self.config(host, **kw)
        p = subprocess.Popen([sys.executable, "-m", "sge.agent", "--config", cfg],
                             env=self.env(host), cwd=self.dir,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(p)
        wait_listening(host, self.port, p)
        return p

    def log(self):
        try:
            with open(os.path.join(self.dir, "sge-image.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stderr:
                p.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_listening(ip, port, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {ip}:{port}")


def raw(ip, port, data, source=None, read_timeout=10):
    """Send raw bytes, return everything the server sends until it closes."""
    s = socket.create_connection((ip, port), timeout=read_timeout,
                                 source_address=(source, 0) if source else None)
    try:
        if data:
            s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def status_of(response):
    line = response.split(b"\r\n", 1)[0]
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def body_of(response):
    return response.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in response else b""
