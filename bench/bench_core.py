"""Core benchmarks, each a ratio against a baseline measured in the same run.

    python bench/bench_core.py [--size-gib 2] [--rounds 3] [--out bench/out]

- cold fetch of one image from a local nginx vs `curl -o` of the same file
  (ours includes sha256 verification, fsync and the atomic publish; curl does neither);
- storm: 20 and 100 concurrent cold pulls of one image: downloads seen by nginx, and
  the wall time of the last to finish vs one pull alone;
- warm `sge-image path` and the prolog's warm path vs `python -I -c pass`;
- lock hand-off: release to the last of 19 waiters proceeding, blocking
  `fcntl.flock` (the kit's choice) vs `filelock` (which polls).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench.nginx import Nginx  # noqa: E402

PY = sys.executable


def make_image(path, size):
    """Incompressible content, hashed while written."""
    h = hashlib.sha256()
    chunk = bytearray(os.urandom(64 << 20))
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            h.update(chunk[:n])
            left -= n
            chunk[:8] = os.urandom(8)  # no two blocks alike
    return h.hexdigest()


def write_config(path, root, url, digest, size):
    with open(path, "w") as f:
        f.write(f"cache:\n  root: {root}\n  max_size: 100G\n  min_free: 0\n"
                f"fetch:\n  retries: 0\n"
                f"images:\n  demo:\n    url: {url}\n    sha256: {digest}\n    size: {size}\n")


def timed(cmd, **kw):
    os.sync()  # start every measurement with nothing left for the disk to write
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def bench_cold(srv, work, digest, size, rounds):
    cfg = os.path.join(work, "cold.yaml")
    curl_t, curl_sync_t, ours_t = [], [], []
    dest = os.path.join(work, "curl.out")
    for _ in range(rounds):
        curl_t.append(timed(["curl", "-sf", "-o", dest, srv.url("demo.sif")]))
        os.unlink(dest)
        # curl, then fsync: what a download that is durable before it is used costs.
        os.sync()
        t = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", dest, srv.url("demo.sif")], check=True)
        fd = os.open(dest, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        curl_sync_t.append(time.perf_counter() - t)
        os.unlink(dest)
        root = os.path.join(work, "cache-cold")
        shutil.rmtree(root, ignore_errors=True)
        write_config(cfg, root, srv.url("demo.sif"), digest, size)
        ours_t.append(timed([PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"]))
        shutil.rmtree(root)
    c, cs, o = statistics.median(curl_t), statistics.median(curl_sync_t), statistics.median(ours_t)
    return {"curl_s": c, "curl_fsync_s": cs, "sge_image_s": o, "ratio": o / c, "ratio_fsync": o / cs,
            "curl_runs": curl_t, "curl_fsync_runs": curl_sync_t, "ours_runs": ours_t}


def bench_storm(srv, work, digest, size, n):
    root = os.path.join(work, f"cache-storm{n}")
    cfg = os.path.join(work, f"storm{n}.yaml")
    shutil.rmtree(root, ignore_errors=True)
    write_config(cfg, root, srv.url("demo.sif"), digest, size)
    single_root = root + "-single"
    single_cfg = cfg + ".single.yaml"
    write_config(single_cfg, single_root, srv.url("demo.sif"), digest, size)
    single = timed([PY, "-I", "-m", "sge.cli", "--config", single_cfg, "pull", "demo", "-q"])
    shutil.rmtree(single_root)
    before = srv.gets("demo.sif")
    t = time.perf_counter()
    procs = [subprocess.Popen([PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"],
                              stdout=subprocess.DEVNULL) for _ in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t
    shutil.rmtree(root)
    return {"processes": n, "downloads": srv.gets("demo.sif") - before, "failures": sum(1 for c in codes if c),
            "single_s": single, "last_done_s": wall, "ratio": wall / single}


def bench_warm(work, digest, size, reps=40):
    src = os.path.join(work, "small.sif")
    with open(src, "wb") as f:
        f.write(b"x" * 4096)
    small = hashlib.sha256(b"x" * 4096).hexdigest()
    root = os.path.join(work, "cache-warm")
    cfg = os.path.join(work, "warm.yaml")
    write_config(cfg, root, src, small, 4096)
    subprocess.run([PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ, SGE_IMAGE="demo")
    cmds = {
        "bare": [PY, "-I", "-c", "pass"],
        "path": [PY, "-I", "-m", "sge.cli", "--config", cfg, "path", "demo"],
        "prolog": [PY, "-I", "-m", "sge.ge.prolog", "--config", cfg],
    }
    times = {k: [] for k in cmds}
    for _ in range(reps):  # interleaved, so drift hits all alike
        for k, cmd in cmds.items():
            times[k].append(timed(cmd, env=env))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bare_ms": med["bare"] * 1e3, "path_ms": med["path"] * 1e3, "prolog_ms": med["prolog"] * 1e3,
            "path_ratio": med["path"] / med["bare"], "prolog_ratio": med["prolog"] / med["bare"]}


WAITER = r"""
import fcntl, os, sys, time
kind, path, ready = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "flock":  # the kit's Cache.image_lock, as a waiter uses it
    sys.path.insert(0, sys.argv[4])
    from sge.cache import Cache
    cache = Cache(os.path.dirname(os.path.dirname(path)))
    open(ready, "a").close()
    with cache.image_lock("img", 60, ready=lambda: True) as must_stage:
        t = time.time()
else:
    import filelock
    lock = filelock.FileLock(path)
    open(ready, "a").close()
    lock.acquire()
    t = time.time()
    lock.release()
print(repr(t))
"""


def bench_handoff(work, kind, waiters=19, rounds=5):
    results = []
    for r in range(rounds):
        d = tempfile.mkdtemp(dir=work)
        os.makedirs(os.path.join(d, "locks"))
        path = os.path.join(d, "locks", "img.lock")
        if kind == "flock":
            import fcntl
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            import filelock
            holder = filelock.FileLock(path)
            holder.acquire()
        procs = [subprocess.Popen([PY, "-c", WAITER, kind, path, os.path.join(d, f"r{i}"),
                                   os.path.dirname(HERE)],
                                  stdout=subprocess.PIPE, text=True) for i in range(waiters)]
        while len([f for f in os.listdir(d) if f.startswith("r")]) < waiters:
            time.sleep(0.01)
        time.sleep(0.3)  # all of them inside acquire
        t0 = time.time()
        if kind == "flock":
            os.close(fd)
        else:
            holder.release()
        last = max(float(p.communicate()[0]) for p in procs)
        results.append((last - t0) * 1e3)
        shutil.rmtree(d)
    return statistics.median(results)


def machine():
    import platform
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.platform()}, Python {platform.python_version()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sge-image-bench-", dir=args.work or "/var/tmp")
    os.chmod(work, 0o755)  # nginx's workers run as www-data
    srv_root = os.path.join(work, "srv")
    os.makedirs(srv_root)
    size = int(args.size_gib * (1 << 30))
    print(f"machine: {machine()}")
    print(f"making a {args.size_gib} GiB image ...", flush=True)
    digest = make_image(os.path.join(srv_root, "demo.sif"), size)
    srv = Nginx(srv_root, os.path.join(work, "nginx"))
    res = {"machine": machine(), "size_bytes": size}
    try:
        res["cold"] = bench_cold(srv, work, digest, size, args.rounds)
        c = res["cold"]
        print(f"cold fetch: curl {c['curl_s']:.2f}s, curl+fsync {c['curl_fsync_s']:.2f}s, sge-image "
              f"{c['sge_image_s']:.2f}s -> ratio {c['ratio']:.2f} (goal <= 1.05), "
              f"{c['ratio_fsync']:.2f} vs curl+fsync", flush=True)
        for n in (20, 100):
            s = bench_storm(srv, work, digest, size, n)
            res[f"storm{n}"] = s
            print(f"storm {n}: downloads {s['downloads']} (goal 1), failures {s['failures']}, "
                  f"last done {s['last_done_s']:.2f}s vs single {s['single_s']:.2f}s -> ratio "
                  f"{s['ratio']:.2f} (goal <= 1.05)", flush=True)
    finally:
        srv.close()
    res["warm"] = bench_warm(work, digest, size)
    w = res["warm"]
    print(f"warm: bare python {w['bare_ms']:.1f}ms, `path` {w['path_ms']:.1f}ms (ratio {w['path_ratio']:.2f}), "
          f"prolog {w['prolog_ms']:.1f}ms (ratio {w['prolog_ratio']:.2f}) (goal <= 2.5)", flush=True)
    res["handoff_ms"] = {k: bench_handoff(work, k) for k in ("flock", "filelock")}
    print(f"lock hand-off to the last of 19 waiters: fcntl.flock {res['handoff_ms']['flock']:.1f}ms, "
          f"filelock {res['handoff_ms']['filelock']:.1f}ms (goal <= 10 ms)", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "core.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
