"""Core benchmarks, each a ratio against a baseline measured in the same run.

    python bench/bench_core.py [--sizes 1,2] [--pairs 5] [--storm 20] [--only cold,storm,warm,handoff]

The protocol holds still on a shared, noisy machine: runs alternate (the order of
each round rotates, so no command always follows the same one), and before every run
the previous run's files are deleted and `sync` waits until the disk has nothing left
to write from them. Every round is printed; the figure reported is the median over
rounds of the ratio within each round, beside the ratio of the medians.

- cold fetch of one image from a local nginx (page-cached file) vs the durable copy
  `dd if=<the page-cached file> of=<new file> bs=1M conv=fsync` of the same bytes,
  and `curl -o` of the same URL followed by an fsync of its file (ours includes sha256
  verification, fsync and the atomic publish);
- storm: N concurrent cold pulls of one image vs one pull alone, alternating: downloads
  seen by nginx, and the wall time of the last to finish;
- warm `sge-image path`, `sge-image pull` of a cached image (what a storm's waiter does
  after it wakes) and the prolog's warm path vs `python -I -c pass`;
- lock hand-off: release to the last of 19 waiters proceeding, blocking
  `fcntl.flock` (the kit's choice) vs `filelock` (which polls).

`taskset -c 0 python bench/bench_core.py ...` runs all of it (servers included) on
one CPU, to see what a second core buys.
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


def clean(*paths):
    """Delete what earlier runs left, then wait for the disk to settle."""
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    os.sync()


def page_cache(path):
    """Read `path` once so that every later run reads it from memory."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def med(xs):
    return statistics.median(xs)


def rounds_of(steps, n, clean_paths):
    """Run `steps` (name -> callable returning seconds) `n` times, rotating the order
    each round; returns name -> list of seconds, and prints each round."""
    names = list(steps)
    runs = {k: [] for k in names}
    for r in range(n):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            clean(*clean_paths)
            runs[k].append(steps[k]())
        print(f"    round {r + 1}: " + ", ".join(f"{k} {runs[k][-1]:.2f}s" for k in order),
              flush=True)
    clean(*clean_paths)
    return runs


def pull_cmd(cfg):
    return [PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"]


def bench_cold(srv, work, src, digest, size, rounds):
    """Cold pull vs the durable copy of the same page-cached bytes, and vs curl + fsync."""
    cfg = os.path.join(work, "cold.yaml")
    root = os.path.join(work, "cache-cold")
    write_config(cfg, root, srv.url("demo.sif"), digest, size)
    dd_out, curl_out = os.path.join(work, "dd.out"), os.path.join(work, "curl.out")
    page_cache(src)

    def dd():
        return timed(["dd", f"if={src}", f"of={dd_out}", "bs=1M", "conv=fsync", "status=none"])

    def curl_fsync():
        t = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", curl_out, srv.url("demo.sif")], check=True)
        fd = os.open(curl_out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        return time.perf_counter() - t

    runs = rounds_of({"dd": dd, "pull": lambda: timed(pull_cmd(cfg)), "curl+fsync": curl_fsync},
                     rounds, [dd_out, curl_out, root])
    ratios = [p / d for p, d in zip(runs["pull"], runs["dd"])]
    ratios_curl = [p / c for p, c in zip(runs["pull"], runs["curl+fsync"])]
    return {"dd_s": med(runs["dd"]), "curl_fsync_s": med(runs["curl+fsync"]),
            "sge_image_s": med(runs["pull"]), "ratio_dd": med(ratios),
            "ratio_dd_of_medians": med(runs["pull"]) / med(runs["dd"]),
            "ratio_curl_fsync": med(ratios_curl), "pair_ratios_dd": ratios, "runs": runs}


def bench_storm(srv, work, digest, size, n, rounds):
    """N concurrent cold pulls vs one pull alone, alternating."""
    root = os.path.join(work, f"cache-storm{n}")
    cfg = os.path.join(work, f"storm{n}.yaml")
    write_config(cfg, root, srv.url("demo.sif"), digest, size)
    seen = {"downloads": [], "failures": []}

    def single():
        return timed(pull_cmd(cfg))

    def storm():
        before = srv.gets("demo.sif")
        os.sync()
        t = time.perf_counter()
        procs = [subprocess.Popen(pull_cmd(cfg), stdout=subprocess.DEVNULL) for _ in range(n)]
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - t
        seen["downloads"].append(srv.gets("demo.sif") - before)
        seen["failures"].append(sum(1 for c in codes if c))
        return wall

    runs = rounds_of({"single": single, f"storm{n}": storm}, rounds, [root])
    ratios = [s / o for s, o in zip(runs[f"storm{n}"], runs["single"])]
    return {"processes": n, "downloads": seen["downloads"], "failures": seen["failures"],
            "single_s": med(runs["single"]), "last_done_s": med(runs[f"storm{n}"]),
            "ratio": med(ratios), "pair_ratios": ratios, "runs": runs}


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
        "pull": [PY, "-I", "-m", "sge.cli", "--config", cfg, "pull", "demo", "-q"],
        "prolog": [PY, "-I", "-m", "sge.ge.prolog", "--config", cfg],
    }
    times = {k: [] for k in cmds}
    for _ in range(reps):  # interleaved, so drift hits all alike
        for k, cmd in cmds.items():
            times[k].append(timed(cmd, env=env))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {f"{k}_ms": v * 1e3 for k, v in med.items()}
    res.update({f"{k}_ratio": v / med["bare"] for k, v in med.items() if k != "bare"})
    res["pull_imports"] = import_profile(cfg)
    return res


def import_profile(cfg, top=6):
    """`python -X importtime` of a pull that finds the image cached (a storm's waiter
    after it wakes): total import time and the costliest modules, self time."""
    p = subprocess.run([PY, "-I", "-X", "importtime", "-m", "sge.cli", "--config", cfg, "pull",
                        "demo", "-q"], capture_output=True, text=True, check=True)
    rows = []
    for line in p.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].startswith("import time:") and parts[1].strip().isdigit():
            rows.append((int(parts[0].split(":")[1]), int(parts[1]), parts[2].strip()))
    total = sum(r[0] for r in rows)
    return {"total_ms": total / 1e3,
            "top": [(name, us / 1e3) for us, _, name in sorted(rows, reverse=True)[:top]]}


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
    ap.add_argument("--sizes", default="1,2", help="image sizes in GiB, comma-separated")
    ap.add_argument("--pairs", type=int, default=5, help="rounds of each comparison")
    ap.add_argument("--storm", default="20", help="storm sizes, comma-separated")
    ap.add_argument("--only", default="cold,storm,warm,handoff")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sge-image-bench-", dir=args.work or "/var/tmp")
    os.chmod(work, 0o755)  # nginx's workers run as www-data
    srv_root = os.path.join(work, "srv")
    os.makedirs(srv_root)
    cpus = sorted(os.sched_getaffinity(0))
    res = {"machine": machine(), "cpus": cpus, "argv": sys.argv[1:]}
    print(f"machine: {machine()}; running on CPUs {cpus}")
    srv = Nginx(srv_root, os.path.join(work, "nginx"))
    try:
        for gib in [float(x) for x in args.sizes.split(",")] if only & {"cold", "storm"} else []:
            size = int(gib * (1 << 30))
            src = os.path.join(srv_root, "demo.sif")
            print(f"{gib:g} GiB image ...", flush=True)
            digest = make_image(src, size)
            key = f"{gib:g}GiB"
            res[key] = r = {"size_bytes": size}
            if "cold" in only:
                print(f"  cold fetch, {args.pairs} rounds (dd = durable copy of the page-cached file):")
                r["cold"] = c = bench_cold(srv, work, src, digest, size, args.pairs)
                print(f"  cold fetch {key}: dd {c['dd_s']:.2f}s, curl+fsync {c['curl_fsync_s']:.2f}s, "
                      f"sge-image {c['sge_image_s']:.2f}s -> {c['ratio_dd']:.2f}x dd (median of "
                      f"pairs; goal <= 1.1), {c['ratio_curl_fsync']:.2f}x curl+fsync", flush=True)
            if "storm" in only:
                for n in [int(x) for x in args.storm.split(",")]:
                    print(f"  storm of {n}, {args.pairs} rounds:")
                    r[f"storm{n}"] = st = bench_storm(srv, work, digest, size, n, args.pairs)
                    print(f"  storm {n} {key}: downloads {st['downloads']} (goal 1 each), failures "
                          f"{st['failures']}, last done {st['last_done_s']:.2f}s vs single "
                          f"{st['single_s']:.2f}s -> {st['ratio']:.2f}x (median of pairs; goal "
                          f"<= 1.3)", flush=True)
            os.unlink(src)
    finally:
        srv.close()
    if "warm" in only:
        res["warm"] = w = bench_warm(work, None, None)
        print(f"warm: bare python {w['bare_ms']:.1f}ms, `path` {w['path_ms']:.1f}ms "
              f"({w['path_ratio']:.2f}x), `pull` of a cached image {w['pull_ms']:.1f}ms "
              f"({w['pull_ratio']:.2f}x), prolog {w['prolog_ms']:.1f}ms ({w['prolog_ratio']:.2f}x) "
              f"(goal <= 2.5)", flush=True)
        imp = w["pull_imports"]
        print(f"  imports of that pull: {imp['total_ms']:.1f}ms; costliest (self): "
              + ", ".join(f"{n} {ms:.1f}" for n, ms in imp["top"]), flush=True)
    if "handoff" in only:
        res["handoff_ms"] = {k: bench_handoff(work, k) for k in ("flock", "filelock")}
        print(f"lock hand-off to the last of 19 waiters: fcntl.flock {res['handoff_ms']['flock']:.1f}ms, "
              f"filelock {res['handoff_ms']['filelock']:.1f}ms (goal <= 10 ms)", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    name = "core.json" if len(cpus) == os.cpu_count() else f"core-cpus{len(cpus)}.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
