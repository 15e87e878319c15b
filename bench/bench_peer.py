"""Peer transfer speed: a blob from a node agent into a verifying sink, against `curl`
fetching the same blob from the same agent, in the same run (run as root: the agent
binds, forks and drops to nobody).

    python bench/bench_peer.py [--size-gib 1] [--rounds 5] [--out bench/out]

- peer transfer: sge/agent/peers.get_blob into the Sink (sha256 as it streams, the
  temp file written and fsynced), process start included, vs `curl -o` (no
  verification) and `curl -o` + fsync;
- peer pull: `sge-image pull` of an image only a peer has (discovery through a
  stand-in qhost, transfer, verify, fsync, atomic publish) vs `curl -o` + fsync.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from bench.bench_core import machine, make_image  # noqa: E402
from tests.support.agentkit import free_port  # noqa: E402

PY = sys.executable
SERVER, CLIENT = "127.0.0.31", "127.0.0.1"

CLIENT_SCRIPT = r"""
import os, sys
from sge import config
from sge.agent import peers
from sge.cache import Cache
from sge.fetch import Context
from sge.sink import Sink
settings = config.load(sys.argv[1], use_snapshot=False)
image = settings.image("demo")
cache = Cache.from_settings(settings)
fd, tmp = cache.new_temp("demo", image.size)
sink = Sink(fd, tmp, image.size, image.sha256)
ctx = Context(image, settings.fetch, settings.sources)
digest = peers.get_blob(sys.argv[2], image, sink, ctx, settings.agent)
sink.close()
os.fsync(fd)  # durable, as curl + fsync and a publish are
os.close(fd)
os.unlink(tmp)
sys.exit(0 if digest == image.sha256 else 1)
"""


def write_config(path, root, key, port, digest, size, bind):
    qhost = os.path.join(os.path.dirname(path), "bin", "qhost")
    with open(path, "w") as f:
        f.write(f"cache:\n  root: {root}\n  max_size: 100G\n  min_free: 0\n"
                f"fetch:\n  retries: 0\n"
                f"agent:\n  port: {port}\n  bind: {bind}\n  key_file: {key}\n"
                f"  qhost: [{qhost}]\n"
                f"  trust: [{CLIENT}]\n"
                f"images:\n  demo:\n    url: http://{CLIENT}:1/nowhere.sif\n"
                f"    sha256: {digest}\n    size: {size}\n")


def timed(cmd, **kw):
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agent drops from root to nobody")
    work = tempfile.mkdtemp(prefix="bench-peer-", dir="/var/tmp")
    os.chmod(work, 0o755)
    agent = None
    try:
        size = int(args.size_gib * (1 << 30))
        src_root = os.path.join(work, "server-cache")
        blobs = os.path.join(src_root, "blobs", "sha256")
        os.makedirs(blobs)
        for d in (src_root, os.path.dirname(blobs), blobs):
            os.chmod(d, 0o755)
        tmp_image = os.path.join(work, "image")
        digest = make_image(tmp_image, size)
        blob = os.path.join(blobs, digest)
        os.rename(tmp_image, blob)
        os.chmod(blob, 0o444)
        from sge.agent.auth import create_key
        key = os.path.join(work, "agent.key")
        create_key(key)
        port = free_port(SERVER)
        server_cfg = os.path.join(work, "server.yaml")
        write_config(server_cfg, src_root, key, port, digest, size, SERVER)
        env = {**os.environ, "PYTHONPATH": ROOT}
        agent = subprocess.Popen([PY, "-I", "-m", "sge.agent", "--config", server_cfg],
                                 cwd=ROOT, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((SERVER, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # A stand-in qhost: the server host has the image (for `sge-image pull`).
        binp = os.path.join(work, "bin")
        os.makedirs(binp)
        with open(os.path.join(binp, "qhost"), "w") as f:
            f.write("#!/bin/sh\ncat <<'EOF'\nHOSTNAME ARCH\n-----\n"
                    f"{SERVER} lx-amd64 2\n   Host Resource(s):      "
                    f"hl:img_sensor_time={int(time.time()) + 10 ** 6}.000000\n"
                    "                          hl:img_demo=1.000000\nEOF\n")
        os.chmod(os.path.join(binp, "qhost"), 0o755)
        client_root = os.path.join(work, "client-cache")
        client_cfg = os.path.join(work, "client.yaml")
        write_config(client_cfg, client_root, key, port, digest, size, CLIENT)
        url = f"http://{SERVER}:{port}/blobs/sha256/{digest}"
        dest = os.path.join(work, "curl.out")
        client_env = {**env, "PATH": binp + os.pathsep + os.environ["PATH"]}
        raw = {"curl": [], "peer_get": [], "curl_fsync": [], "peer_pull": []}
        def curl():
            raw["curl"].append(timed(["curl", "-sf", "-o", dest, url]))
            os.unlink(dest)

        def peer_get():
            os.makedirs(client_root, exist_ok=True)
            raw["peer_get"].append(timed([PY, "-I", "-c", CLIENT_SCRIPT, client_cfg, SERVER],
                                         cwd=ROOT, env=client_env))
            shutil.rmtree(client_root)

        def curl_fsync():
            os.sync()
            t = time.perf_counter()
            subprocess.run(["curl", "-sf", "-o", dest, url], check=True)
            fd = os.open(dest, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            raw["curl_fsync"].append(time.perf_counter() - t)
            os.unlink(dest)

        def peer_pull():
            raw["peer_pull"].append(timed([PY, "-I", "-m", "sge.cli", "--config", client_cfg,
                                           "pull", "demo", "-q"], cwd=ROOT, env=client_env))
            shutil.rmtree(client_root)

        os.sync()  # the blob just written must not be flushing under the first round
        for i in range(args.rounds + 1):
            # Alternate who goes first: on this VM a run right after a large write or
            # delete is slower, whoever it is. Round 0 warms up and is not kept.
            pairs = [(curl, peer_get), (curl_fsync, peer_pull)]
            for a, b in pairs:
                for step in ((a, b) if i % 2 == 0 else (b, a)):
                    step()
            if i == 0:
                for v in raw.values():
                    v.clear()
        med = {k: statistics.median(v) for k, v in raw.items()}
        result = {
            "machine": machine(), "size_bytes": size, "rounds": args.rounds, "raw_s": raw,
            "median_s": med,
            "speed_vs_curl": med["curl"] / med["peer_get"],
            "speed_vs_curl_fsync": med["curl_fsync"] / med["peer_get"],
            "pull_speed_vs_curl_fsync": med["curl_fsync"] / med["peer_pull"],
        }
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_peer.json"), "w") as f:
            json.dump(result, f, indent=1)
        gib = size / (1 << 30)
        print(f"blob {gib:.2f} GiB, {args.rounds} rounds (medians)")
        print(f"curl -o            {med['curl']:.2f} s  ({gib / med['curl']:.2f} GiB/s)")
        print(f"peer transfer      {med['peer_get']:.2f} s  ({gib / med['peer_get']:.2f} GiB/s, "
              f"verified, fsynced)  speed {result['speed_vs_curl']:.2f}x curl, "
              f"{result['speed_vs_curl_fsync']:.2f}x curl+fsync")
        print(f"curl -o + fsync    {med['curl_fsync']:.2f} s")
        print(f"sge-image pull     {med['peer_pull']:.2f} s  (from the peer, verified, published)  "
              f"speed {result['pull_speed_vs_curl_fsync']:.2f}x curl+fsync")
        for k, v in raw.items():
            print(f"  {k}: {', '.join(f'{x:.2f}' for x in v)}")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
