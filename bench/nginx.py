"""A real nginx on 127.0.0.1 serving a directory, with an access log to count GETs."""
import os
import shutil
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, root, workdir, limit_rate=None):
        """limit_rate: bytes per second per connection (a slow origin), or None."""
        self.root = root
        self.dir = workdir
        self.port = free_port()
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/logs/access.log;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        {f"limit_rate {int(limit_rate)};" if limit_rate else ""}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", conf, "-p", workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def gets(self, name):
        try:
            with open(os.path.join(self.dir, "logs", "access.log")) as f:
                return sum(1 for line in f if f"GET /{name} " in line)
        except OSError:
            return 0

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
