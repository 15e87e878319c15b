"""JSV verifications per second through the real protocol loop (goal: >= 5,000/s).

One `sge-image jsv` process, as qmaster runs it. Two measurements:

* pipelined: N jobs written to its stdin while the answers are read (throughput
  of the loop itself),
* lockstep: one job at a time in qmaster's turns (START, wait for STARTED, the
  job's PARAM/ENV lines and BEGIN, wait for RESULT): two pipe round trips per job,
  as a qmaster worker thread sees it.

Each job is REPORT §7's transcript (`-t 1-3 -l image=NAME,h_rt=100 -soft -l arch=lx*
-v FOO=1`); `--plain` makes that share of jobs carry no image.

    .venv/bin/python bench/bench_jsv.py [--jobs 20000] [--images 200] [--plain 0.5]
"""
import argparse
import os
import random
import select
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_config(d, n_images):
    import yaml
    images = {f"img{i:04d}": {"url": f"file:///srv/img{i:04d}.sif", "sha256": f"{i:064x}"}
              for i in range(n_images)}
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"cache": {"root": os.path.join(d, "cache")}, "images": images}, f)
    return path


def transcript(job_id, image):
    hard = f"image={image},h_rt=100" if image else "h_rt=100"
    return (f"START\nPARAM VERSION 1.0\nPARAM CONTEXT server\nPARAM CLIENT qmaster\n"
            f"PARAM USER alice\nPARAM GROUP users\nPARAM JOB_ID {job_id}\nPARAM CMDNAME job.sh\n"
            f"PARAM CMDARGS 0\nPARAM A sge\nPARAM j y\nPARAM l_hard {hard}\n"
            f"PARAM l_soft arch=lx*\nPARAM M alice@host\nPARAM N job.sh\nPARAM o /out/\n"
            f"PARAM t_min 1\nPARAM t_max 3\nPARAM t_step 1\nENV ADD TERM \nENV ADD FOO 1\n"
            f"BEGIN\n").encode()


def start(config):
    return subprocess.Popen([sys.executable, "-m", "sge.cli", "--config", config, "jsv"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)


def warm_up(p, jobs):
    """One image job first, so the lazy catalog load is not timed."""
    p.stdin.write(jobs[0])
    p.stdin.flush()
    read_results(p.stdout, 1)


def read_results(stream, n, until=b"RESULT STATE "):
    """Read answers until `n` lines starting with `until`; -> {state: count}."""
    fd = stream.fileno()
    seen, tail, states = 0, b"", {}
    while seen < n:
        if not select.select([fd], [], [], 30)[0]:
            raise TimeoutError(f"no answer after {seen} of {n} jobs")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError(f"the JSV exited after {seen} of {n} jobs")
        data = tail + chunk
        lines = data.split(b"\n")
        tail = lines.pop()
        for ln in lines:
            if ln.startswith(until):
                seen += 1
                if until.startswith(b"RESULT"):
                    state = ln.split(b" ")[2].decode()
                    states[state] = states.get(state, 0) + 1
    return states


def pipelined(config, jobs):
    p = start(config)
    warm_up(p, jobs)
    payload = b"".join(jobs)

    def feed():
        p.stdin.write(payload)
        p.stdin.flush()

    t0 = time.perf_counter()
    writer = threading.Thread(target=feed)
    writer.start()
    states = read_results(p.stdout, len(jobs))
    dt = time.perf_counter() - t0
    writer.join()
    finish(p)
    return len(jobs) / dt, states


def lockstep(config, jobs):
    p = start(config)
    warm_up(p, jobs)
    states = {}
    t0 = time.perf_counter()
    for j in jobs:
        # qmaster's turns: START, wait for STARTED, then the job and BEGIN, wait for RESULT
        head, body = j.split(b"\n", 1)
        p.stdin.write(head + b"\n")
        p.stdin.flush()
        read_results(p.stdout, 1, until=b"STARTED")
        p.stdin.write(body)
        p.stdin.flush()
        for k, v in read_results(p.stdout, 1).items():
            states[k] = states.get(k, 0) + v
    dt = time.perf_counter() - t0
    finish(p)
    return len(jobs) / dt, states


def finish(p):
    p.stdin.write(b"QUIT\n")
    p.stdin.close()  # flushes
    rc = p.wait(timeout=30)
    err = p.stderr.read()
    if rc != 0 or err:
        raise SystemExit(f"JSV exited {rc}, stderr {err[:200]!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--images", type=int, default=200, help="catalog size")
    ap.add_argument("--plain", type=float, default=0.0, help="share of jobs without an image")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode; the median is reported")
    args = ap.parse_args()
    rnd = random.Random(1)
    jobs = [transcript(1000 + i, None if rnd.random() < args.plain
                       else f"img{rnd.randrange(args.images):04d}")
            for i in range(args.jobs)]
    with tempfile.TemporaryDirectory() as d:
        config = write_config(d, args.images)
        runs_p = [pipelined(config, jobs) for _ in range(args.runs)]
        runs_l = [lockstep(config, jobs) for _ in range(args.runs)]
    rate_p, states_p = sorted(runs_p, key=lambda r: r[0])[len(runs_p) // 2]
    rate_l, states_l = sorted(runs_l, key=lambda r: r[0])[len(runs_l) // 2]
    print(f"jsv: {args.jobs} jobs, catalog of {args.images} images, "
          f"{args.plain:.0%} without an image, median of {args.runs} runs")
    print(f"pipelined: {rate_p:,.0f} jobs/s  {states_p}  "
          f"(runs: {', '.join(f'{r:,.0f}' for r, _ in runs_p)})")
    print(f"lockstep:  {rate_l:,.0f} jobs/s  {states_l}  "
          f"(runs: {', '.join(f'{r:,.0f}' for r, _ in runs_l)})")
    print(f"goal 5,000 jobs/s: {'met' if min(rate_p, rate_l) >= 5000 else 'NOT met'}")
    return 0 if min(rate_p, rate_l) >= 5000 else 1


if __name__ == "__main__":
    sys.exit(main())
