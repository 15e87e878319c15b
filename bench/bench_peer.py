"""Peer transfer speed: a blob from a node agent into a verifying sink, against `curl`
fetching the same blob from the same agent, in the same run (run as root: the agent
binds, forks and drops to its own user, `agent.user`).

    python bench/bench_peer.py [--size-gib 1] [--rounds 5] [--out bench/out]

- peer transfer: sge/agent/peers.get_blob into the Sink (sha256 as it streams, the
  temp file written and fsynced), process start included, vs `curl -o` (no
  verification) and `curl -o` + fsync;
- peer pull: `sge-image pull` of an image only a peer has (discovery through a
  stand-in qhost, transfer, verify, fsync, atomic publish) vs `curl -o` + fsync;
- pipeline (`--origin-mib-s`, 0 to skip): three hosts A, B, C (an agent and a cache
  each, on 127.0.0.41-43) and an nginx origin limited per connection. Time until all
  three have the image (`sge-image pull` on each), alternating per round:
  *pipelined*: A pulls from the origin, B streams A's download in progress, C streams
  B's (each started once the previous one's temp file has bytes);
  *chain*: complete blobs only, A, then B from A, then C from B;
  *fan-out*: complete blobs only, A, then B and C from A at once.
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
from tests.support.agentkit import agent_user, free_port  # noqa: E402

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


PIPE_HOSTS = ("127.0.0.41", "127.0.0.42", "127.0.0.43")


def pipeline_bench(work, blob, digest, size, rounds, rate, key, env):
    """-> {mode: [seconds until all three hosts have the image]}, and origin GETs."""
    from bench.nginx import Nginx
    origin_root = os.path.join(work, "origin")
    os.makedirs(origin_root)
    os.link(blob, os.path.join(origin_root, "demo.sif"))
    origin = Nginx(origin_root, os.path.join(work, "nginx"), limit_rate=rate)
    port = free_port(PIPE_HOSTS[0])
    me = socket.gethostbyname(socket.gethostname())  # peers connect from this address
    agents, cfgs = [], {}
    try:
        for h in PIPE_HOSTS:
            d = os.path.join(work, h)
            os.makedirs(os.path.join(d, "bin"))
            os.chmod(d, 0o755)
            qhost = os.path.join(d, "bin", "qhost")
            cfg = os.path.join(d, "config.yaml")
            with open(cfg, "w") as f:
                f.write(f"cache:\n  root: {d}/cache\n  max_size: 100G\n  min_free: 0\n"
                        f"fetch:\n  retries: 0\n  progress_interval: 60\n"
                        f"log:\n  file: {d}/sge-image.log\n"
                        f"agent:\n  port: {port}\n  bind: {h}\n  key_file: {key}\n"
                        f"  qhost: [{qhost}]\n  trust: [{me}, 127.0.0.0/8]\n"
                        f"images:\n  demo:\n    url: {origin.url('demo.sif')}\n"
                        f"    sha256: {digest}\n    size: {size}\n")
            cfgs[h] = (cfg, qhost, d)
            agents.append(subprocess.Popen([PY, "-I", "-m", "sge.agent", "--config", cfg],
                                           cwd=ROOT, env={**env, "HOST": h}))
        for h in PIPE_HOSTS:
            wait_port(h, port)

        def set_qhost(h, has):
            """What host h's pulls see: itself and `has` live, `has` reporting the image
            (so that no other host is chosen as a seed and asked to pull)."""
            now = int(time.time()) + 10 ** 6
            text = "HOSTNAME ARCH\n-----\n" + "".join(
                f"{x} lx-amd64 2\n   Host Resource(s):      hl:img_sensor_time={now}.000000\n"
                + ("                          hl:img_demo=1.000000\n" if x in has else "")
                for x in (h,) + tuple(has))
            with open(cfgs[h][1], "w") as f:
                f.write(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
            os.chmod(cfgs[h][1], 0o755)

        def pull(h):
            return subprocess.Popen([PY, "-I", "-m", "sge.cli", "--config", cfgs[h][0], "pull",
                                     "demo", "-q"], cwd=ROOT, env={**env, "HOST": h},
                                    stdout=subprocess.DEVNULL)

        def started(h):
            tmp = os.path.join(cfgs[h][2], "cache", "tmp")
            try:
                return any(n.endswith(".part") and os.path.getsize(os.path.join(tmp, n))
                           for n in os.listdir(tmp))
            except OSError:
                return False

        def clean():
            for h in PIPE_HOSTS:
                shutil.rmtree(os.path.join(cfgs[h][2], "cache"), ignore_errors=True)
            os.sync()

        # A sees only itself: its own seed, it pulls from the origin. B sees A with
        # the image, C sees B (the fan-out: A) with it.
        def run(mode):
            clean()
            set_qhost(PIPE_HOSTS[0], ())
            set_qhost(PIPE_HOSTS[1], (PIPE_HOSTS[0],))
            set_qhost(PIPE_HOSTS[2], (PIPE_HOSTS[1],) if mode != "fanout" else (PIPE_HOSTS[0],))
            t = time.perf_counter()
            a = pull(PIPE_HOSTS[0])
            if mode == "pipelined":
                procs = [a]
                for prev, h in zip(PIPE_HOSTS, PIPE_HOSTS[1:]):
                    while not started(prev):
                        time.sleep(0.005)
                    procs.append(pull(h))
            else:
                procs = []
                if a.wait() != 0:
                    raise SystemExit("A's pull failed")
                if mode == "chain":
                    for h in PIPE_HOSTS[1:]:
                        p = pull(h)
                        if p.wait() != 0:
                            raise SystemExit(f"{h}'s pull failed")
                else:
                    procs = [pull(h) for h in PIPE_HOSTS[1:]]
            for p in procs:
                if p.wait() != 0:
                    raise SystemExit("a pull failed")
            elapsed = time.perf_counter() - t
            for h in PIPE_HOSTS:
                if not os.path.exists(os.path.join(cfgs[h][2], "cache", "blobs", "sha256", digest)):
                    raise SystemExit(f"{h} has no image after a {mode} round")
            return elapsed

        modes = ["pipelined", "chain", "fanout"]
        raw = {m: [] for m in modes}
        gets0 = origin.gets("demo.sif")
        for i in range(rounds):
            order = modes[i % 3:] + modes[:i % 3]
            for m in order:
                raw[m].append(run(m))
                print(f"  pipeline round {i + 1}: {m} {raw[m][-1]:.2f} s", flush=True)
        streamed = sum(open(os.path.join(cfgs[h][2], "sge-image.log")).read().count(
            "(download in progress), verified") for h in PIPE_HOSTS)
        return raw, origin.gets("demo.sif") - gets0, streamed
    finally:
        for a in agents:
            a.terminate()
            a.wait(10)
        origin.close()
        clean_dirs = [os.path.join(work, h) for h in PIPE_HOSTS] + [origin_root]
        for d in clean_dirs:
            shutil.rmtree(d, ignore_errors=True)


def wait_port(ip, port):
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


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
    ap.add_argument("--origin-mib-s", type=float, default=100.0,
                    help="the pipeline part's origin rate per connection (0: skip that part)")
    ap.add_argument("--pipeline-rounds", type=int, default=3)
    ap.add_argument("--skip-transfer", action="store_true",
                    help="only the pipeline part")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agent drops from root to its own user")
    agent_user()  # as `install` makes it
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
        wait_port(SERVER, port)
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

        result = {"machine": machine(), "size_bytes": size, "load_before": os.getloadavg()}
        gib = size / (1 << 30)
        if not args.skip_transfer:
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
            result.update({
                "rounds": args.rounds, "raw_s": raw,
                "median_s": med,
                "speed_vs_curl": med["curl"] / med["peer_get"],
                "speed_vs_curl_fsync": med["curl_fsync"] / med["peer_get"],
                "pull_speed_vs_curl_fsync": med["curl_fsync"] / med["peer_pull"],
            })
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
        if args.origin_mib_s > 0:
            rate = args.origin_mib_s * (1 << 20)
            print(f"pipeline: origin at {args.origin_mib_s:g} MiB/s per connection, "
                  f"{args.pipeline_rounds} rounds", flush=True)
            praw, gets, streamed = pipeline_bench(work, blob, digest, size, args.pipeline_rounds,
                                                  rate, key, env)
            pmed = {k: statistics.median(v) for k, v in praw.items()}
            result["pipeline"] = {
                "origin_bytes_per_s": rate, "raw_s": praw, "median_s": pmed,
                "origin_gets": gets, "streamed_transfers": streamed,
                "pipelined_speedup_vs_chain": pmed["chain"] / pmed["pipelined"],
                "pipelined_speedup_vs_fanout": pmed["fanout"] / pmed["pipelined"],
            }
            one = size / rate
            print(f"time until A, B and C all have it (medians; origin alone {one:.2f} s):")
            for m in ("pipelined", "chain", "fanout"):
                print(f"  {m:<10} {pmed[m]:.2f} s  ({pmed[m] / one:.2f}x one origin pull)  "
                      + ", ".join(f"{x:.2f}" for x in praw[m]))
            print(f"  pipelined is {result['pipeline']['pipelined_speedup_vs_chain']:.2f}x faster "
                  f"than the chain, {result['pipeline']['pipelined_speedup_vs_fanout']:.2f}x than "
                  f"the fan-out; origin GETs {gets} over {3 * args.pipeline_rounds} rounds, "
                  f"{streamed} transfers streamed from a download in progress")
        result["load_after"] = os.getloadavg()
        print(f"load average before {result['load_before'][0]:.2f}, after "
              f"{result['load_after'][0]:.2f}")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_peer.json"), "w") as f:
            json.dump(result, f, indent=1)
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
