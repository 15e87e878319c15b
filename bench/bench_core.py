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
  `fcntl.flock` (the kit's choice) vs `filelock` (which polls);
- start-up (`--only startup`): N processes started at once against a held image lock,
  the CPU each used from exec until it blocked in flock (/proc/PID/schedstat) and the
  time until the last one got there, for `sge-image pull`, the prolog and the bare
  interpreter.

The kit runs as production installs it: `pip install TREE` (not editable) into a fresh
venv of the system Python, and its console script `sge-image` and prolog wrapper. An
editable install adds an import hook (pathlib, re, ...) to every interpreter, about 9 ms
of CPU before the kit's first line. `--kit old=DIR --kit new=.` installs each tree in
its own venv and alternates them within every round of the storm, the start-up and the
warm path, to compare two versions of the code in the same run.

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
KITS = {}  # label -> venv bin dir of that kit's non-editable install


def install_kit(work, label, tree):
    """A fresh venv with `pip install TREE`, as production installs the kit."""
    venv = os.path.join(work, f"kit-{label}")
    base = os.path.join(sys.base_prefix, "bin", "python3")
    subprocess.run([base, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", os.path.abspath(tree)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(venv, "bin")


def kit_pull(cfg, label=None):
    return [os.path.join(KITS[label or next(iter(KITS))], "sge-image"), "--config", cfg, "pull",
            "demo", "-q"]


def kit_prolog(cfg, label=None):
    b = KITS[label or next(iter(KITS))]
    return [os.path.join(b, "sge-image-prolog"), os.path.join(b, "python"), "--config", cfg]


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


def write_config(path, root, url, digest, size, textfile_dir=None):
    with open(path, "w") as f:
        f.write(f"cache:\n  root: {root}\n  max_size: 100G\n  min_free: 0\n"
                f"fetch:\n  retries: 0\n"
                f"images:\n  demo:\n    url: {url}\n    sha256: {digest}\n    size: {size}\n")
        if textfile_dir:
            f.write(f"metrics:\n  textfile_dir: {textfile_dir}\n")


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


def pull_cmd(cfg, label=None):
    return kit_pull(cfg, label)


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
    """N concurrent cold pulls vs one pull alone, alternating (and alternating kits)."""
    root = os.path.join(work, f"cache-storm{n}")
    cfg = os.path.join(work, f"storm{n}.yaml")
    write_config(cfg, root, srv.url("demo.sif"), digest, size)
    seen = {"downloads": [], "failures": []}

    def single(label):
        return lambda: timed(pull_cmd(cfg, label))

    def storm(label):
        def run():
            before = srv.gets("demo.sif")
            os.sync()
            t = time.perf_counter()
            procs = [subprocess.Popen(pull_cmd(cfg, label), stdout=subprocess.DEVNULL)
                     for _ in range(n)]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t
            seen["downloads"].append(srv.gets("demo.sif") - before)
            seen["failures"].append(sum(1 for c in codes if c))
            return wall
        return run

    steps = {}
    for label in KITS:
        steps[_k("single", label)] = single(label)
        steps[_k(f"storm{n}", label)] = storm(label)
    runs = rounds_of(steps, rounds, [root])
    res = {"processes": n, "downloads": seen["downloads"], "failures": seen["failures"],
           "runs": runs}
    for label in KITS:
        one, many = runs[_k("single", label)], runs[_k(f"storm{n}", label)]
        ratios = [s / o for s, o in zip(many, one)]
        res[label] = {"single_s": med(one), "last_done_s": med(many), "ratio": med(ratios),
                      "pair_ratios": ratios, "extra_s": med([s - o for s, o in zip(many, one)])}
    return res


def _k(name, label):
    """Step name, with the kit's label when more than one kit runs."""
    return name if len(KITS) == 1 else f"{name}[{label}]"


def in_flock(pid):
    """Is `pid` asleep in flock(2)? (/proc/PID/syscall: x86-64 number 73)"""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return nr == "73" and state == "S"


def startup_once(cmd, n, lock, env):
    """Start `cmd` n times at once against the held `lock`; -> (CPU ms each used until it
    blocked in flock, seconds until the last one did). A command that exits instead
    (the bare interpreter) counts its whole CPU, from wait4."""
    import fcntl
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for _ in range(n)]
        cpu, last = {}, 0.0
        while len(cpu) < n:
            for p in procs:
                if p.pid in cpu:
                    continue
                pid, _, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = 0
                    cpu[p.pid] = (ru.ru_utime + ru.ru_stime) * 1e3
                elif in_flock(p.pid):
                    with open(f"/proc/{p.pid}/schedstat") as f:
                        cpu[p.pid] = int(f.read().split()[0]) / 1e6
                else:
                    continue
                last = time.perf_counter() - t
            time.sleep(0.0005)
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    finally:
        os.close(fd)
    return list(cpu.values()), last


def bench_startup(work, n, rounds):
    """CPU to the lock and the time until the last of n started processes reached it."""
    root = os.path.join(work, "cache-startup")
    cfg = os.path.join(work, "startup.yaml")
    write_config(cfg, root, "http://127.0.0.1:9/demo.sif", hashlib.sha256(b"x").hexdigest(), 1)
    lock = os.path.join(root, "locks", "demo.lock")
    env = dict(os.environ, SGE_IMAGE="demo")
    for b in KITS.values():  # writes the config's snapshot, as the first run on a host does
        p = subprocess.run([os.path.join(b, "sge-image"), "--config", cfg, "path", "demo"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert p.returncode == 4, p.stderr  # not cached, config read
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    cmds = {}
    for label, b in KITS.items():
        cmds[_k("bare", label)] = [os.path.join(b, "python"), "-I", "-c", "pass"]
        cmds[_k("pull", label)] = kit_pull(cfg, label)
        cmds[_k("prolog", label)] = kit_prolog(cfg, label)
    cpu = {k: [] for k in cmds}
    span = {k: [] for k in cmds}
    names = list(cmds)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            c, s = startup_once(cmds[k], n, lock, env)
            cpu[k] += c
            span[k].append(s)
        print(f"    round {r + 1}: " + ", ".join(
            f"{k} {med(cpu[k][-n:]):.1f}ms/{span[k][-1]:.2f}s" for k in names), flush=True)
    return {k: {"cpu_ms_median": med(cpu[k]), "cpu_ms_max": max(cpu[k]),
                "last_at_lock_s": med(span[k]), "spans_s": span[k]} for k in names}


def bench_warm(work, digest, size, reps=40):
    src = os.path.join(work, "small.sif")
    with open(src, "wb") as f:
        f.write(b"x" * 4096)
    small = hashlib.sha256(b"x" * 4096).hexdigest()
    root = os.path.join(work, "cache-warm")
    cfg = os.path.join(work, "warm.yaml")
    write_config(cfg, root, src, small, 4096)
    subprocess.run(kit_pull(cfg), check=True, stdout=subprocess.DEVNULL)
    # The prolog runs as on a cluster: a job whose active_jobs directory exists, so its
    # warm path includes the claim it writes (README, "A job keeps its image").
    spool = os.path.join(work, "spool", "active_jobs", "1.1")
    os.makedirs(spool, exist_ok=True)
    open(os.path.join(spool, "environment"), "w").close()
    env = dict(os.environ, SGE_IMAGE="demo", JOB_ID="1", SGE_TASK_ID="1",
               SGE_JOB_SPOOL_DIR=spool)
    # The same with metrics on (sge/metrics/): the event file the load sensor's first
    # cycle makes exists, and each prolog appends its line to it.
    root_m = os.path.join(work, "cache-warm-metrics")
    cfg_m = os.path.join(work, "warm-metrics.yaml")
    write_config(cfg_m, root_m, src, small, 4096, os.path.join(work, "textfile"))
    b = KITS[next(iter(KITS))]
    cmds = {
        "bare": [os.path.join(b, "python"), "-I", "-c", "pass"],
        "path": [os.path.join(b, "sge-image"), "--config", cfg, "path", "demo"],
        "pull": kit_pull(cfg),
    }
    for i, label in enumerate(KITS):  # each tree's prolog (--kit old=DIR --kit new=.)
        suffix = "" if i == 0 else f"_{label}"
        # A config file of its own: two versions sharing one would each find the
        # other's settings snapshot stale and parse the YAML on every run.
        own, own_m = (cfg, cfg_m) if i == 0 else (f"{cfg}.{label}.yaml", f"{cfg_m}.{label}.yaml")
        if i:
            shutil.copy(cfg, own)
            shutil.copy(cfg_m, own_m)
        cmds["prolog" + suffix] = kit_prolog(own, label)
        if i:  # each later tree's `path` and warm `pull` too, against the first's
            cmds["path" + suffix] = [os.path.join(KITS[label], "sge-image"), "--config", own,
                                     "path", "demo"]
            cmds["pull" + suffix] = kit_pull(own, label)
        if subprocess.run(kit_pull(own_m, label), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:  # a tree with metrics
            os.makedirs(os.path.join(root_m, "metrics"), exist_ok=True)
            open(os.path.join(root_m, "metrics", "events"), "a").close()
            cmds["prolog_metrics" + suffix] = kit_prolog(own_m, label)
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
    b = KITS[next(iter(KITS))]
    p = subprocess.run([os.path.join(b, "python"), "-I", "-X", "importtime",
                        os.path.join(b, "sge-image"), "--config", cfg, "pull", "demo", "-q"],
                       capture_output=True, text=True, check=True)
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
    ap.add_argument("--only", default="cold,storm,warm,handoff",
                    help="any of cold,storm,warm,handoff,startup")
    ap.add_argument("--kit", action="append", metavar="LABEL=TREE",
                    help="source tree(s) to install and compare (default: this one)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sge-image-bench-", dir=args.work or "/var/tmp")
    os.chmod(work, 0o755)  # nginx's workers run as www-data
    for spec in args.kit or [f"kit={os.path.dirname(HERE)}"]:
        label, _, tree = spec.rpartition("=")
        print(f"installing {tree} ({label or 'kit'}) ...", flush=True)
        KITS[label or "kit"] = install_kit(work, label or "kit", tree)
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
                    print(f"  storm {n} {key}: downloads {st['downloads']} (goal 1 each), "
                          f"failures {st['failures']}", flush=True)
                    for label in KITS:
                        k = st[label]
                        print(f"    {label}: last done {k['last_done_s']:.2f}s vs single "
                              f"{k['single_s']:.2f}s -> {k['ratio']:.2f}x (median of pairs; "
                              f"goal <= 1.3); the storm's extra time {k['extra_s']:.2f}s",
                              flush=True)
            os.unlink(src)
    finally:
        srv.close()
    if "startup" in only:
        for n in [int(x) for x in args.storm.split(",")]:
            print(f"start-up of {n} at once against a held lock, {args.pairs} rounds "
                  f"(median CPU to the lock / time until the last got there):")
            res[f"startup{n}"] = su = bench_startup(work, n, args.pairs)
            for k, v in su.items():
                print(f"  {k}: CPU to the lock {v['cpu_ms_median']:.1f} ms (max "
                      f"{v['cpu_ms_max']:.1f}), last at the lock {v['last_at_lock_s']:.2f}s",
                      flush=True)
    if "warm" in only:
        res["warm"] = w = bench_warm(work, None, None)
        print(f"warm: bare python {w['bare_ms']:.1f}ms, `path` {w['path_ms']:.1f}ms "
              f"({w['path_ratio']:.2f}x), `pull` of a cached image {w['pull_ms']:.1f}ms "
              f"({w['pull_ratio']:.2f}x), prolog {w['prolog_ms']:.1f}ms ({w['prolog_ratio']:.2f}x) "
              f"(goal <= 2.5)", flush=True)
        for k in sorted(w):
            if k.startswith("prolog") and k.endswith("_ms") and k != "prolog_ms":
                print(f"  {k[:-3]} {w[k]:.1f}ms ({w[k[:-3] + '_ratio']:.2f}x)", flush=True)
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
