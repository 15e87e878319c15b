"""A real nginx serving a directory, with an access log to count GETs.

By default on 127.0.0.1 and a free port; `host`, `port` and `prefix` (a command that
runs it elsewhere, such as `ip netns exec NS`) put it on another address or in a
network namespace, and `timed` logs each request's address, end and duration."""
import os
import shutil
import socket
import subprocess
import time

# address, end of the request (epoch seconds, ms), its duration, status, body bytes
TIMED_FORMAT = '$remote_addr $msec $request_time $status $body_bytes_sent "$request"'


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, root, workdir, limit_rate=None, host="127.0.0.1", port=None,
                 prefix=(), timed=False):
        """limit_rate: bytes per second per connection (a slow origin), or None."""
        self.root = root
        self.dir = workdir
        self.host = host
        self.port = port or free_port(host)
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        conf = os.path.join(workdir, "nginx.conf")
        log_format = f"log_format timed '{TIMED_FORMAT}';" if timed else ""
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
    {log_format}
    access_log {workdir}/logs/access.log{" timed" if timed else ""};
    sendfile on;
    tcp_nopush on;
    server {{
        listen {host}:{self.port};
        root {root};
        {f"limit_rate {int(limit_rate)};" if limit_rate else ""}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([*prefix, nginx, "-c", conf, "-p", workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._ready(bool(prefix)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise RuntimeError("nginx did not start")

    def _ready(self, elsewhere):
        if elsewhere:  # not reachable from here: nginx writes its pid once it listens
            return os.path.exists(os.path.join(self.dir, "nginx.pid"))
        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def url(self, name):
        return f"http://{self.host}:{self.port}/{name}"

    def gets(self, name):
        try:
            with open(os.path.join(self.dir, "logs", "access.log")) as f:
                return sum(1 for line in f if f"GET /{name} " in line)
        except OSError:
            return 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
