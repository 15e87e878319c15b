"""Load-sensor cycle time and memory with many cached images (goal: <= 30 ms, <= 40 MB).

    python bench/bench_sensor.py [--images 10000] [--cycles 50] [--metrics 100]

Builds a catalog of N images, all cached (small blobs: the sensor never reads
content, so size does not matter), runs the real sensor process and times the
request -> `end` round trip of each protocol cycle, as execd sees it. `--metrics N`
turns metrics on (sge/metrics/) and appends N prolog events before each cycle, which
the sensor folds and writes out with the rest of the .prom file after it has
answered execd; cycles are then 0.5 s apart (execd's load_report_time is seconds), so
the round trip shows what execd waits for and `metrics work` the time after it.
"""
import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--tree", default=None,
                    help="run the sensor of this source tree (e.g. an older commit's "
                         "`git archive`) instead of the installed kit")
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--metrics", type=int, default=None, metavar="EVENTS_PER_CYCLE")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sge-image-sensor-")
    root = os.path.join(work, "cache")
    blobs = os.path.join(root, "blobs", "sha256")
    os.makedirs(blobs)
    lines = ["cache:", f"  root: {root}", "  max_size: 100T", "images:"]
    for i in range(args.images):
        data = f"image {i}".encode()
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        lines += [f"  image-{i:05d}:", f"    url: http://mirror.invalid/{i}.sif", f"    sha256: {d}",
                  f"    size: {len(data)}"]
    if args.metrics is not None:
        lines[0:0] = ["metrics:", f"  textfile_dir: {os.path.join(work, 'textfile')}"]
    cfg = os.path.join(work, "config.yaml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    sensor = [sys.executable, "-I", "-m", "sge.ge.loadsensor"]
    if args.tree:
        sensor = [sys.executable, "-I", "-c",
                  f"import runpy, sys; sys.path.insert(0, {os.path.abspath(args.tree)!r}); "
                  f"runpy.run_module('sge.ge.loadsensor', run_name='__main__')"]
    p = subprocess.Popen(sensor + ["--config", cfg],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, HOST="bench"), cwd=os.path.dirname(HERE))
    times, count = [], 0
    events = os.path.join(root, "metrics", "events")
    prom = os.path.join(work, "textfile", "sge_image.prom")
    work_times, answered = [], 0.0
    for c in range(args.cycles + 1):
        if args.metrics is not None:
            time.sleep(0.5)
            if c > 1:
                work_times.append(os.stat(prom).st_mtime - answered)
        if args.metrics and c:  # the first cycle makes the event file
            with open(events, "a") as f:
                f.write("".join(f"prolog image-{(c * 7919 + i) % args.images:05d} hit 0 0.012\n"
                                for i in range(args.metrics)))
        t = time.perf_counter()
        p.stdin.write("\n")
        p.stdin.flush()
        n = 0
        while p.stdout.readline() != "end\n":
            n += 1
        answered = time.time()
        if c:  # the first cycle also loads the catalog
            times.append(time.perf_counter() - t)
        count = n
    rss = psutil.Process(p.pid).memory_info().rss
    if args.metrics is not None:
        time.sleep(0.5)  # the last cycle's file (the sensor removes it on quit)
        with open(prom) as f:
            series = sum(1 for line in f if not line.startswith("#"))
    p.stdin.write("quit\n")
    p.stdin.flush()
    p.wait(10)
    if args.metrics is not None:
        print(f"metrics on, {args.metrics} events a cycle: .prom file of {series} series; "
              f"metrics work after each answer: median "
              f"{statistics.median(work_times) * 1e3:.1f} ms, max {max(work_times) * 1e3:.1f} ms")
    shutil.rmtree(work)
    print(f"{args.images} cached images, {count - 1} report lines: cycle median "
          f"{statistics.median(times) * 1e3:.1f} ms, p95 {sorted(times)[int(len(times) * .95)] * 1e3:.1f} ms "
          f"(goal <= 30 ms); RSS {rss / 2**20:.1f} MiB (goal <= 40 MB)")


if __name__ == "__main__":
    main()
