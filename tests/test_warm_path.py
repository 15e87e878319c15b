"""The modules each warm path loads, pinned: the prolog on a cached image, `sge-image
path NAME`, and one load-sensor cycle. Every import there is paid on every job (or every
load report), so a module joins a warm path only after its cost has been measured.

Each path runs in a new interpreter on a warm cache, started with -I -S: -S leaves out
site's .pth hooks (an editable install's finder imports pathlib, ipaddress, urllib...),
so what is measured is the kit's own doing; the site-packages directory is put back on
sys.path by hand, so a third-party import still works (and is caught below).
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from tests.support.common import ROOT, cli, payload, sha256

# path -> {sge module: why the path needs it}. Measured on a warm cache, as root (how
# the prolog and the load sensor run); ROOT_ONLY lists what a non-root run leaves out.
WARM_PATH_MODULES = {
    # prolog/sge-image-prolog: `python -I -c 'from sge.ge.prolog import run; run()'`
    "prolog": {
        "sge": "the package (its __init__ holds the version only)",
        "sge.ge": "the prolog's package",
        "sge.ge.prolog": "the entry",
        "sge.cluster": "package of hookargs (below the hooks and the agent: one-way layers)",
        "sge.cluster.hookargs": "--config without argparse",
        "sge.config": "the settings, read from the JSON snapshot (no YAML)",
        "sge.names": "config's image-name checks (a top-level import of config)",
        "sge.errors": "SgeImageError: the 99/100 decision",
        "sge.cache": "lookup of the cached image and the job's claim",
        "sge.fsutil": "cache's fsync_dir (a top-level import of cache)",
        "sge.metrics": "package of metrics.events",
        "sge.metrics.events": "cache's event appends (nothing written when metrics are off)",
        "sge.tempfiles": "cache's temp-file names and dead-writer rule (a top-level import)",
        "sge.runtimes": "staging_refusal: can the site's runtime run this image",
        "sge.imageformat": "runtimes' formats and the cached image's format record",
        "sge.claims": "the job's claim on its image (_hand_out)",
        "sge.security": "root only: refuse a cache job owners could change",
    },
    # the console script `sge-image` -> sge.cli.main, argv read by _fast_args
    "path": {
        "sge": "the package",
        "sge.cli": "the entry",
        "sge.errors": "exit codes (a top-level import of cli)",
        "sge.config": "the settings, read from the JSON snapshot (no YAML)",
        "sge.names": "config's image-name checks",
        "sge.cache": "lookup of the cached image",
        "sge.fsutil": "cache's fsync_dir",
        "sge.metrics": "package of metrics.events",
        "sge.metrics.events": "cache's event appends (nothing written when metrics are off)",
        "sge.tempfiles": "cache's temp-file names and dead-writer rule",
    },
    # loadsensor/sge-image-loadsensor: `python -I -m sge.ge.loadsensor`, one report
    "loadsensor": {
        "sge": "the package",
        "sge.ge": "the sensor's package",
        "sge.ge.loadsensor": "the entry",
        "sge.cluster": "package of hookargs and complexes",
        "sge.cluster.hookargs": "--config without argparse",
        "sge.cluster.complexes": "the names of the complexes it reports",
        "sge.config": "the settings, read from the JSON snapshot (no YAML)",
        "sge.names": "config's image-name checks",
        "sge.errors": "config's and cache's errors",
        "sge.cache": "the scan of blobs/ and the free space",
        "sge.fsutil": "cache's fsync_dir",
        "sge.log": "the sensor's messages go to the log file, never to execd",
        "sge.metrics": "package of the metrics modules",
        "sge.metrics.events": "cache's event appends",
        "sge.tempfiles": "cache's temp-file names and dead-writer rule",
        "sge.metrics.textfile": "the node_exporter file, or removing the event file when off",
        "sge.metrics.agent_counts": "textfile's fold of the agent's counters",
        "sge.metrics.event_log": "textfile's fold of the event file",
        "sge.metrics.exposition": "textfile's output format",
        "sge.metrics.families": "the metric names exposition and fold share",
        "sge.metrics.fold": "textfile's folding of events into counters",
        "sge.metrics.state": "textfile's saved counters",
        "sge.claims": "root only: the sweep of claims whose job is gone",
        "sge.security": "root only: no report for a cache job owners could change",
    },
}
ROOT_ONLY = {
    "prolog": {"sge.security"},
    "loadsensor": {"sge.security", "sge.claims"},
    "path": set(),
}

# Never on a warm path (a module or a package with all its submodules): each costs
# milliseconds to import, or belongs only to a cold path or an admin command. json is
# allowed: the settings snapshot is JSON, the point of which is to skip yaml.
HEAVY = ("yaml", "argparse", "typing", "dataclasses", "inspect", "subprocess", "socket",
         "ssl", "http", "urllib.request", "email", "hashlib", "threading", "logging",
         "asyncio", "concurrent", "tempfile", "shutil", "random", "difflib", "ipaddress",
         "pathlib", "datetime", "uuid", "importlib.metadata", "zipfile", "ctypes",
         "botocore", "boto3", "oras", "requests", "numpy", "sge_sim")

# Started per job or per submission besides the three paths above (not pinned here:
# each has tests of its own), so their imports are paid the same way and may be lazy.
PER_JOB = {
    "sge.ge.epilog": "every job's end",
    "sge.ge.starter": "every job's start with the starter method",
    "sge.ge.jsv": "every qsub; a job without -l image= must not pay for the rest",
    "sge.ge.jsv_protocol": "the JSV's protocol half",
    "sge.ge.commands": "the subcommand dispatcher: each subcommand loads only its module",
    "sge.agent.pe": "the warm prolog where agents are on asks it for a host file only",
}

MEASURE = "BENCHMARKS.md: `python bench/bench_core.py --only startup,warm`"

_PRELUDE = """\
import sys
sys.path[:0] = [{root!r}]
sys.path.append({site!r})
out = sys.argv.pop(1)


def dump():
    loaded = sorted(sys.modules)  # before anything else is imported
    with open(out, "w") as f:
        f.write(sys.modules["sge"].__file__ + "\\n" + "\\n".join(loaded))
"""

ENTRIES = {
    # as the launcher runs it: run() leaves through os._exit, so dump there
    "prolog": ("import os\n"
               "_exit = os._exit\n"
               "os._exit = lambda code: (dump(), _exit(code))\n"
               "from sge.ge.prolog import run\n"
               "run()\n"),
    # as the console script runs it
    "path": "from sge.cli import main\ncode = main()\ndump()\nsys.exit(code)\n",
    # by import rather than -m, which would run it as __main__ under another name
    "loadsensor": "from sge.ge.loadsensor import main\ncode = main()\ndump()\nsys.exit(code)\n",
}


@pytest.fixture
def warm(tmp_path, make_config):
    """A site config whose cache holds `demo`, its settings snapshot written."""
    data = payload(10000, seed=5)
    (tmp_path / "demo.sif").write_bytes(data)
    cfg = make_config({"demo": {"url": str(tmp_path / "demo.sif"), "sha256": sha256(data),
                                "size": len(data)}})
    r = cli(cfg, "pull", "-q", "demo")
    assert r.returncode == 0, r.stderr
    return cfg, r.stdout.strip()


def _run(path_name, argv, tmp_path, env=None, stdin=""):
    """Run one warm path in a new interpreter; -> (its result, modules loaded)."""
    out = tmp_path / f"{path_name}.modules"
    code = _PRELUDE.format(root=ROOT, site=sysconfig.get_paths()["purelib"]) + ENTRIES[path_name]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SGE_", "PYTHON"))}
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(out), *argv],
                       env={**base, **(env or {})}, input=stdin, capture_output=True,
                       text=True, timeout=60, cwd=str(tmp_path))
    assert out.exists(), f"{path_name} did not finish: {p.returncode}\n{p.stdout}{p.stderr}"
    where, *loaded = out.read_text().split("\n")
    assert where.startswith(os.path.join(ROOT, "sge")), f"measured another sge: {where}"
    return p, set(loaded)


def _check(path_name, loaded):
    """The exact sge.* set, then the deny-list; the loaded set is printed either way."""
    mods = sorted(m for m in loaded if m == "sge" or m.startswith("sge."))
    print(f"{path_name}: {' '.join(mods)}")
    want = set(WARM_PATH_MODULES[path_name])
    if os.geteuid() != 0:
        want -= ROOT_ONLY[path_name]
    new, gone = sorted(set(mods) - want), sorted(want - set(mods))
    msg = []
    if new:
        msg.append(f"new on the {path_name} warm path: {', '.join(new)}. Measure what it "
                   f"costs first ({MEASURE}), then add it to WARM_PATH_MODULES"
                   f"[{path_name!r}] in tests/test_warm_path.py with the reason it is needed.")
    if gone:
        msg.append(f"no longer on the {path_name} warm path: {', '.join(gone)}; remove it "
                   f"from WARM_PATH_MODULES[{path_name!r}] in tests/test_warm_path.py.")
    heavy = sorted(m for m in loaded for h in HEAVY if m == h or m.startswith(h + "."))
    if heavy:
        msg.append(f"heavy modules on the {path_name} warm path: {', '.join(heavy)} "
                   f"(HEAVY in tests/test_warm_path.py; {MEASURE}).")
    if msg:
        pytest.fail("\n".join(msg), pytrace=False)


def test_prolog_warm_path(warm, tmp_path):
    cfg, cached = warm
    # a job of Grid Engine's: its claim on the image is part of the warm path
    spool = tmp_path / "spool" / "active_jobs" / "7.1"
    spool.mkdir(parents=True)
    (spool / "environment").write_text("")
    env = {"SGE_IMAGE": "demo", "JOB_ID": "7", "SGE_TASK_ID": "undefined",
           "SGE_JOB_SPOOL_DIR": str(spool)}
    p, loaded = _run("prolog", ["--config", cfg], tmp_path, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (spool / "environment").read_text() == f"SGE_IMAGE_PATH={cached}\n"
    _check("prolog", loaded)


def test_path_warm_path(warm, tmp_path):
    cfg, cached = warm
    p, loaded = _run("path", ["--config", cfg, "path", "demo"], tmp_path)
    assert (p.returncode, p.stdout) == (0, cached + "\n"), p.stderr
    _check("path", loaded)


def test_loadsensor_cycle(warm, tmp_path):
    cfg, _ = warm
    # execd sets HOST; one empty line asks for one report, then EOF ends the sensor
    p, loaded = _run("loadsensor", ["--config", cfg], tmp_path, {"HOST": "nodeX"}, "\n")
    assert p.returncode == 0, p.stderr
    assert "nodeX:img_demo:1\n" in p.stdout, p.stdout  # the cache was read, and warm
    _check("loadsensor", loaded)


def test_lazy_imports_are_allowed_on_warm_paths_only():
    """ruff.toml lifts PLC0415 (import outside the top level) for a module of the kit
    only when a warm path loads it: anywhere else an import belongs at the top."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "ruff.toml"), "rb") as f:
        ignores = tomllib.load(f)["lint"]["per-file-ignores"]
    warm = {m for mods in WARM_PATH_MODULES.values() for m in mods} | set(PER_JOB)
    exempt = [p for p, rules in ignores.items() if "PLC0415" in rules and p.startswith("sge/")]
    assert exempt
    for path in exempt:
        assert os.path.isfile(os.path.join(ROOT, path)), f"ruff.toml names a missing {path}"
        module = path[:-3].replace("/", ".").replace(".__init__", "")
        assert module in warm, (f"ruff.toml exempts {path} from PLC0415, but no warm path "
                                f"(nor PER_JOB) loads {module}: move its imports to the top")
