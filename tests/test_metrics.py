"""Metrics (sge/metrics/): the event lines, their fold into counters that survive
restarts, rotation and truncation of the event file, the agent's counts record, the
.prom file (checked with Prometheus' own promtool), and the hooks that append."""
import multiprocessing
import os
import shutil
import subprocess
import sys
import time

import pytest

from sge import config
from sge.cache import Cache
from sge.metrics import agent_counts, event_log, events, exposition, state, textfile
from sge.metrics.fold import fold_line
from tests.support.common import ROOT, cli, payload, sha256
from tests.support.promstack import ORIGIN_BYTES_QUERY, RULES, parse_prom

MB = 1 << 20
PROMTOOL = shutil.which("promtool")


@pytest.fixture
def host(tmp_path, make_config):
    """A config with metrics on, two catalog images, and a Collector for it."""
    images = {}
    for i, name in enumerate(["alpha", "beta"]):
        data = payload(4096 * (i + 1), seed=40 + i)
        (tmp_path / f"{name}.sif").write_bytes(data)
        images[name] = {"url": str(tmp_path / f"{name}.sif"), "sha256": sha256(data),
                        "size": len(data)}
    cfg = make_config(images, metrics={"textfile_dir": str(tmp_path / "textfile")})
    settings = config.load(cfg)
    cache = Cache.from_settings(settings)

    class Host:
        pass
    h = Host()
    h.cfg, h.settings, h.cache = cfg, settings, cache
    h.dir = os.path.join(cache.root, "metrics")
    h.prom = str(tmp_path / "textfile" / "sge_image.prom")
    h.collector = lambda: textfile.Collector(config.load(cfg), Cache.from_settings(config.load(cfg)))
    return h


def cycle(collector, warm=()):
    collector.cycle(100, 200, 300, list(warm))


def read(h):
    with open(h.prom) as f:
        return parse_prom(f.read())


# ---------------------------------------------------------------- fold

def test_fold_counts_each_kind_and_skips_bad_lines():
    s = {}
    assert fold_line(s, "prolog alpha hit 0 0.012", {"alpha"})
    assert fold_line(s, "prolog alpha miss 99 12.5", {"alpha"})
    assert fold_line(s, "stage alpha origin 4096 1.5", {"alpha"})
    assert fold_line(s, "stage alpha peer_inflight 4096 0.7", {"alpha"})
    assert fold_line(s, "evict alpha 4096", {"alpha"})
    assert fold_line(s, "evict - 10", {"alpha"})
    assert fold_line(s, "room_wait timeout 300.0", {"alpha"})
    assert fold_line(s, "peer_fail refused", {"alpha"})
    assert fold_line(s, "prolog renamed hit 0 0.01", {"alpha"})  # no longer in the catalog
    assert fold_line(s, 'prolog a"b hit 0 0.01', {"alpha"})  # never a label value as given
    for bad in ("prolog alpha hit 1 0.1", "stage alpha cdn 1 1", "stage alpha origin -1 1",
                "room_wait ok nan", "prolog alpha", "", "stage alpha origin 4096 1.5prolog x"):
        assert not fold_line(s, bad, {"alpha"}), bad
    assert s['sge_image_cache_lookups_total{image="alpha",result="hit"}'] == 1
    assert s['sge_image_cache_lookups_total{image="_other",result="hit"}'] == 2
    assert s['sge_image_cache_lookups_total{image="_other",result="miss"}'] == 0  # made at 0
    assert s['sge_image_prolog_exits_total{code="99"}'] == 1
    assert s['sge_image_fetched_bytes_total{image="alpha",source="origin"}'] == 4096
    assert s['sge_image_fetched_bytes_total{image="alpha",source="peer_inflight"}'] == 4096
    assert s['sge_image_staging_duration_seconds_bucket{source="origin",le="1.0"}'] == 0
    assert s['sge_image_staging_duration_seconds_bucket{source="origin",le="2.0"}'] == 1
    assert s['sge_image_staging_duration_seconds_bucket{source="origin",le="+Inf"}'] == 1
    assert s['sge_image_staging_duration_seconds_sum{source="origin"}'] == 1.5
    assert s['sge_image_prolog_duration_seconds_count{result="miss"}'] == 1
    assert s['sge_image_evicted_bytes_total{image="_other"}'] == 10
    assert s['sge_image_room_waits_total{outcome="timeout"}'] == 1
    assert s['sge_image_peer_failures_total{reason="refused"}'] == 1
    assert s["sge_image_metrics_bad_lines_total"] == 7


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) not installed")
def test_exposition_passes_promtool_and_groups_each_family(tmp_path):
    s = {}
    for line in ("prolog alpha hit 0 0.003", "prolog alpha miss 0 3", "stage alpha origin 5 2",
                 "stage alpha peer 5 0.2", "evict alpha 5", "room_wait ok 1.5"):
        fold_line(s, line, {"alpha"})
    s['sge_image_info{version="0.1.0"}'] = 1
    s["sge_image_cache_bytes"] = 10
    text = exposition.render(s)
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr + text
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    # each family's lines are together, buckets ascending before _sum and _count
    hist = [line for line in text.splitlines()
            if line.startswith('sge_image_staging_duration_seconds') and 'source="origin"' in line]
    les = [line.split('le="')[1].split('"')[0] for line in hist if "_bucket" in line]
    assert les == sorted(les[:-1], key=float) + ["+Inf"]
    assert hist[-2].startswith("sge_image_staging_duration_seconds_sum")
    assert hist[-1].startswith("sge_image_staging_duration_seconds_count")


# ---------------------------------------------------------------- the event file

def test_reads_whole_lines_only_and_resumes_from_its_cursor(tmp_path):
    d = str(tmp_path)
    lines, cur, _ = event_log.read_new(d, {})
    assert lines == [] and os.path.exists(tmp_path / "events")
    with open(tmp_path / "events", "ab") as f:
        f.write(b"one\ntwo\nthr")   # a writer's line not finished yet
    lines, cur, _ = event_log.read_new(d, cur)
    assert lines == ["one", "two"]
    with open(tmp_path / "events", "ab") as f:
        f.write(b"ee\n")
    lines, cur, _ = event_log.read_new(d, cur)
    assert lines == ["three"]
    assert event_log.read_new(d, cur)[0] == []


def test_truncated_or_rewritten_file_is_read_from_its_start(tmp_path):
    d = str(tmp_path)
    path = tmp_path / "events"
    _, cur, _ = event_log.read_new(d, {})
    path.write_bytes(b"a1\na2\na3\n")
    assert event_log.read_new(d, cur)[0] == ["a1", "a2", "a3"]
    _, cur, _ = event_log.read_new(d, cur)
    with open(path, "r+b") as f:  # `: > events` by an admin
        f.truncate(0)
        f.write(b"b1\n")
    lines, cur, _ = event_log.read_new(d, cur)
    assert lines == ["b1"]
    with open(path, "r+b") as f:  # truncated, then written past the old offset at once
        f.truncate(0)
        f.write(b"c1 longer line\nc2\n")
    assert event_log.read_new(d, cur)[0] == ["c1 longer line", "c2"]


def test_rotation_loses_nothing_an_open_appender_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(event_log, "ROTATE_AT", 10)
    d = str(tmp_path)
    _, cur, _ = event_log.read_new(d, {})
    for i in range(5):
        events.append(str(tmp_path.parent), "x")  # wrong dir: nothing happens
    path = tmp_path / "events"
    path.write_bytes(b"line1\nline2\n")
    lines, cur, _ = event_log.read_new(d, cur)
    # An appender that opened the file before the rotation writes after it.
    late = os.open(path, os.O_WRONLY | os.O_APPEND)
    assert event_log.rotate_if_due(d, cur)
    assert os.path.exists(tmp_path / "events.old") and path.stat().st_size == 0
    os.write(late, b"late\n")
    os.close(late)
    with open(path, "ab") as f:
        f.write(b"new1\n")
    assert not event_log.rotate_if_due(d, cur)  # not drained yet
    lines2, cur, _ = event_log.read_new(d, cur)
    assert lines + lines2 == ["line1", "line2", "late", "new1"]
    assert not os.path.exists(tmp_path / "events.old")
    assert event_log.read_new(d, cur)[0] == []


def test_a_rotation_cut_between_link_and_rename_neither_loses_nor_repeats(tmp_path):
    d = str(tmp_path)
    _, cur, _ = event_log.read_new(d, {})
    (tmp_path / "events").write_bytes(b"e1\n")
    lines, cur, _ = event_log.read_new(d, cur)
    os.link(tmp_path / "events", tmp_path / "events.old")  # the sensor died here
    with open(tmp_path / "events", "ab") as f:
        f.write(b"e2\n")
    lines2, cur, _ = event_log.read_new(d, cur)
    assert lines + lines2 == ["e1", "e2"]
    assert not os.path.exists(tmp_path / "events.old")
    assert event_log.read_new(d, cur)[0] == []


def test_a_rotated_file_cut_short_counts_its_last_line_as_bad(tmp_path, host):
    c = host.collector()
    cycle(c)
    with open(os.path.join(host.dir, "events"), "ab") as f:
        f.write(b"stage alpha origin 4096 1\nstage alpha orig")  # writer died mid-line
    os.link(os.path.join(host.dir, "events"), os.path.join(host.dir, "events.old"))
    os.unlink(os.path.join(host.dir, "events"))
    cycle(c)
    v = read(host)
    assert v['sge_image_fetched_bytes_total{image="alpha",source="origin"}'] == 4096
    assert v["sge_image_metrics_bad_lines_total"] == 1


def _append_many(root, n, tag):
    for i in range(n):
        events.staged(root, "alpha", "origin", 1, 0.5)


def test_concurrent_appenders_lose_no_line(host):
    c = host.collector()
    cycle(c)
    procs = [multiprocessing.Process(target=_append_many, args=(host.cache.root, 400, i))
             for i in range(6)]
    for p in procs:
        p.start()
    for _ in range(3):  # cycles while they append, rotating at a small size
        event_log.ROTATE_AT, saved = 2000, event_log.ROTATE_AT
        try:
            cycle(c)
        finally:
            event_log.ROTATE_AT = saved
        time.sleep(0.05)
    for p in procs:
        p.join(60)
    cycle(c)
    cycle(c)
    v = read(host)
    assert v['sge_image_stagings_total{image="alpha",source="origin"}'] == 2400
    assert v.get("sge_image_metrics_bad_lines_total") == 0


# ---------------------------------------------------------------- the collector

def test_counters_survive_a_sensor_restart_and_never_reset_on_a_cycle(host):
    c = host.collector()
    cycle(c, warm=["alpha"])
    events.prolog(host.cache.root, "alpha", True, 0, 0.01)
    events.staged(host.cache.root, "beta", "peer", 8192, 2.0)
    cycle(c, warm=["alpha", "beta", "stray"])
    cycle(c, warm=["alpha", "beta"])
    v = read(host)
    assert v['sge_image_cache_lookups_total{image="alpha",result="hit"}'] == 1
    assert v['sge_image_fetched_bytes_total{image="beta",source="peer"}'] == 8192
    assert v['sge_image_cached{image="beta"}'] == 1 and v["sge_image_cache_images"] == 2
    assert v['sge_image_image_size_bytes{image="beta"}'] == 8192
    assert v["sge_image_cache_bytes"] == 100 and v["sge_image_cache_room_bytes"] == 300
    assert v['sge_image_prolog_exits_total{code="100"}'] == 0
    assert any(k.startswith("sge_image_info{version=") for k in v)
    # a new sensor process (execd restarted it): counts go on from the state file
    c2 = host.collector()
    events.prolog(host.cache.root, "alpha", True, 0, 0.01)
    cycle(c2, warm=["alpha", "beta"])
    v = read(host)
    assert v['sge_image_cache_lookups_total{image="alpha",result="hit"}'] == 2
    assert v['sge_image_fetched_bytes_total{image="beta",source="peer"}'] == 8192
    # a state file lost: counting starts again from what the event file still holds
    # (a reset to Prometheus), never from twice that
    os.unlink(os.path.join(host.dir, "state.json"))
    c3 = host.collector()
    cycle(c3)
    v = read(host)
    assert v['sge_image_fetched_bytes_total{image="beta",source="peer"}'] == 8192
    assert v['sge_image_cache_lookups_total{image="alpha",result="hit"}'] == 2


def test_prom_file_is_replaced_atomically_and_only_prom_files_are_final(host):
    c = host.collector()
    cycle(c)
    ino = os.stat(host.prom).st_ino
    cycle(c)
    assert os.stat(host.prom).st_ino != ino  # renamed over, never rewritten in place
    assert os.listdir(os.path.dirname(host.prom)) == ["sge_image.prom"]
    if PROMTOOL:
        with open(host.prom) as f:
            r = subprocess.run([PROMTOOL, "check", "metrics"], stdin=f, capture_output=True,
                               text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_metrics_off_removes_the_event_file_and_appending_does_nothing(host, make_config):
    c = host.collector()
    cycle(c)
    assert os.path.exists(os.path.join(host.dir, "events"))
    textfile.disable(host.cache)
    assert not os.path.exists(os.path.join(host.dir, "events"))
    assert not os.path.exists(host.prom)  # node_exporter serves no stale figures
    events.prolog(host.cache.root, "alpha", True, 0, 0.01)
    assert not os.path.exists(os.path.join(host.dir, "events"))
    assert config.load(make_config({}, name="off.yaml")).metrics.textfile_dir == ""


def test_config_refuses_a_relative_textfile_dir(make_config):
    from sge.errors import ConfigError
    with pytest.raises(ConfigError, match="metrics.textfile_dir"):
        config.load(make_config({}, metrics={"textfile_dir": "relative/dir"}))


def test_an_event_file_past_its_cap_takes_no_more_lines(host, monkeypatch):
    cycle(host.collector())
    monkeypatch.setattr(events, "MAX_FILE", 40)
    for _ in range(5):
        events.staged(host.cache.root, "alpha", "origin", 1, 0.5)
    assert os.path.getsize(os.path.join(host.dir, "events")) < 80


# ---------------------------------------------------------------- the agent's counts

def test_agent_counts_record_round_trip_and_torn_reads():
    counts = {k: i * 1000 for i, k in enumerate(agent_counts.KEYS)}
    rec = agent_counts.record(counts)
    assert agent_counts.parse(rec) == counts
    assert len(agent_counts.record({})) == len(rec)  # fixed width
    torn = rec[:30] + b"9" + rec[31:]
    assert agent_counts.parse(torn) is None


AGENT = """
import os, sys, time
from sge import config
from sge.metrics import agent_counts
agent_counts.open_for_agent(config.load(sys.argv[3]), sys.argv[1])
pid = os.fork()
if pid == 0:   # the server side, as the real agent's child
    agent_counts.count("refused", 3)
    agent_counts.count_upload(False, 4096)
    agent_counts.count_stage_answer("staging")
    agent_counts.count("busy_slots")
    print("counted", flush=True)
    time.sleep(float(sys.argv[2]))
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_agent_counts_fold_once_up_while_alive_and_removed_when_dead(host):
    c = host.collector()
    cycle(c)
    p = subprocess.Popen([sys.executable, "-c", AGENT, host.cache.root, "3", host.cfg], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "counted\n"
    cycle(c)
    cycle(c)  # the same record again: no double count
    v = read(host)
    assert v["sge_image_agent_up"] == 1 if host.settings.agent.enabled else True
    assert v["sge_image_agent_refused_connections_total"] == 3
    assert v['sge_image_agent_uploads_total{kind="whole"}'] == 1
    assert v["sge_image_agent_upload_bytes_total"] == 4096
    assert v['sge_image_agent_stage_requests_total{answer="staging"}'] == 1
    assert v['sge_image_agent_busy_total{reason="slots"}'] == 1
    p.wait(30)
    cycle(c)
    assert [n for n in os.listdir(host.dir) if n.startswith("agent.")] == []
    # a restarted agent counts on from the totals, and a restarted sensor too
    p = subprocess.Popen([sys.executable, "-c", AGENT, host.cache.root, "0", host.cfg], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    p.wait(30)
    cycle(host.collector())
    assert read(host)["sge_image_agent_refused_connections_total"] == 6


def test_agent_up_is_reported_when_the_agent_is_enabled(tmp_path, make_config):
    cfg = make_config({}, agent={"enabled": True, "peers": False},
                      metrics={"textfile_dir": str(tmp_path / "tf")})
    settings = config.load(cfg)
    c = textfile.Collector(settings, Cache.from_settings(settings))
    cycle(c)
    with open(tmp_path / "tf" / "sge_image.prom") as f:
        v = parse_prom(f.read())
    assert v["sge_image_agent_up"] == 0
    assert v["sge_image_agent_refused_connections_total"] == 0


# ---------------------------------------------------------------- the hooks

def test_prolog_pull_and_eviction_append_their_events(host, tmp_path):
    cycle(host.collector())  # metrics on: the event file exists
    job_dir = tmp_path / "spool" / "active_jobs" / "5.1"
    job_dir.mkdir(parents=True)
    (job_dir / "environment").write_text("")
    env = {**os.environ, "JOB_ID": "5", "SGE_TASK_ID": "1", "SGE_JOB_SPOOL_DIR": str(job_dir),
           "SGE_IMAGE": "alpha"}
    for _ in range(2):  # a cold start, then a warm one
        r = subprocess.run([sys.executable, "-c", "from sge.ge.prolog import run; run()",
                            "--config", host.cfg], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", "from sge.ge.prolog import run; run()", "--config",
                        host.cfg], env={**env, "SGE_IMAGE": "nope"}, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 100
    with open(os.path.join(host.dir, "events")) as f:
        lines = f.read().splitlines()
    kinds = [ln.split()[:4] for ln in lines]
    assert kinds[0] == ["stage", "alpha", "origin", str(host.settings.images["alpha"].size)]
    assert kinds[1] == ["prolog", "alpha", "miss", "0"]
    assert kinds[2] == ["prolog", "alpha", "hit", "0"]
    assert kinds[3] == ["prolog", "nope", "miss", "100"]
    cycle(host.collector(), warm=["alpha"])
    v = read(host)
    assert v['sge_image_prolog_exits_total{code="100"}'] == 1
    assert v['sge_image_cache_lookups_total{image="_other",result="miss"}'] == 1
    # eviction: a gc down to the low-water mark of a tiny cap
    cache = Cache(host.cache.root, max_size=1, low_water=0.0)
    os.unlink(os.path.join(host.cache.root, "claims", "5.1"))
    cache.make_room(1)
    with open(os.path.join(host.dir, "events")) as f:
        assert f.read().splitlines()[-1] == f"evict alpha {host.settings.images['alpha'].size}"


def test_the_load_sensor_writes_the_prom_file_every_cycle(host):
    from tests.test_loadsensor import Sensor
    s = Sensor(host.cfg)
    try:
        s.values()
        s.values()  # the file is written after each answer: done before the next one
        assert os.path.exists(host.prom)
        assert cli(host.cfg, "pull", "beta", "-q").returncode == 0
        s.values()
        s.values()
        v = read(host)
        assert v['sge_image_fetched_bytes_total{image="beta",source="origin"}'] == \
            host.settings.images["beta"].size
        assert v['sge_image_cached{image="beta"}'] == 1
    finally:
        assert s.quit() == 0
    assert not os.path.exists(host.prom)  # execd's quit: no figures left to go stale


# ---------------------------------------------------------------- the README's rules and queries

def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_lists_every_metric_and_the_queries_the_tests_run():
    from sge.metrics.families import FAMILIES, PREFIX
    text = readme()
    for name in FAMILIES:
        assert f"`{PREFIX}{name}`" in text, name
    assert ORIGIN_BYTES_QUERY.replace("IMAGE", "rocky9-cuda") in text
    assert "config/prometheus-rules.yml" in text


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) not installed")
def test_example_alert_rules_are_valid():
    r = subprocess.run([PROMTOOL, "check", "rules", RULES], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_real_node_exporter_and_prometheus_read_the_file(host, tmp_path):
    """Without Grid Engine: the textfile as node_exporter parses it, and the rules as
    Prometheus evaluates them (tests/ge/test_metrics_ge.py does it on the cluster)."""
    from tests.support import promstack
    if not promstack.available():
        pytest.skip("prometheus and prometheus-node-exporter are not installed (scripts/setup.sh)")
    c = host.collector()
    cycle(c)
    size = host.settings.images["alpha"].size
    events.staged(host.cache.root, "alpha", "origin", 4096, 1.0)
    events.prolog(host.cache.root, "alpha", False, 0, 1.2)
    events.staged(host.cache.root, "beta", "origin", 2 * host.settings.images["beta"].size, 1.0)
    cycle(c, warm=["alpha", "beta"])
    stack = promstack.PromStack(str(tmp_path / "prom"), {"nodeX": os.path.dirname(host.prom)},
                                rule_files=[RULES])
    try:
        expr = ORIGIN_BYTES_QUERY.replace("IMAGE", "alpha")
        assert stack.wait_value(expr, 4096.0, timeout=30) == 4096.0, stack.log("prometheus")
        assert stack.query("node_textfile_scrape_error")[0][1] == 0
        deadline = time.monotonic() + 30
        while True:
            rules = [r for g in stack.api("rules")["groups"] for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("2") and
                             not r["lastEvaluation"].startswith("0001") for r in rules) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(rules) == 8
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        # Two copies of beta from the origin, in series that are new: the rule sees them
        # (increase() would not), and one copy of alpha does not fire it.
        deadline = time.monotonic() + 30
        while True:
            alerts = [(a["labels"]["alertname"], a["labels"].get("image"))
                      for a in stack.api("alerts")["alerts"]]
            if ("SgeImageOriginCopies", "beta") in alerts or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert ("SgeImageOriginCopies", "beta") in alerts, alerts
        assert ("SgeImageOriginCopies", "alpha") not in alerts
        assert size == 4096
    finally:
        stack.close()


def test_with_metrics_off_each_agent_start_removes_dead_agents_files(tmp_path, make_config):
    cfg = make_config({})
    root = str(tmp_path / "cache")
    os.makedirs(root)  # the agent makes the cache's layout first
    for _ in range(3):
        subprocess.run([sys.executable, "-c", AGENT, root, "0", cfg], cwd=ROOT, check=True,
                       capture_output=True)
    files = [n for n in os.listdir(os.path.join(root, "metrics")) if n.startswith("agent.")]
    assert len(files) == 1  # the last one's: its agent is gone, the next start removes it


def test_a_sensor_killed_before_it_saved_counts_those_events_once(host, monkeypatch):
    c = host.collector()
    cycle(c)
    events.staged(host.cache.root, "alpha", "origin", 4096, 1.0)

    def killed(*a, **k):
        raise SystemExit("killed between the fold and the save")
    monkeypatch.setattr(state, "save", killed)
    with pytest.raises(SystemExit):
        cycle(c)
    monkeypatch.undo()
    cycle(host.collector())  # execd's next sensor
    cycle(host.collector())
    assert read(host)['sge_image_fetched_bytes_total{image="alpha",source="origin"}'] == 4096


def test_a_peer_that_refuses_or_stalls_is_counted_by_the_client(host, tmp_path):
    cycle(host.collector())
    temp = os.path.join(host.cache.root, "tmp", "alpha.1.4096.abc.part")
    import socket

    from sge.errors import FetchError
    events.peer_failed(temp, ConnectionRefusedError(111, "Connection refused"))
    events.peer_failed(temp, socket.timeout("timed out"))
    events.peer_failed(temp, FetchError("peer node2: HTTP 503 Service Unavailable (busy)"))
    events.peer_failed(temp, FetchError("peer node2: offers 1 bytes, expected 4096"))
    c = host.collector()
    cycle(c)
    v = read(host)
    assert [v[f'sge_image_peer_failures_total{{reason="{r}"}}'] for r in
            ("refused", "timeout", "busy", "error")] == [1, 1, 1, 1]


def test_a_textfile_dir_that_cannot_be_made_costs_no_report(tmp_path, make_config):
    from tests.test_loadsensor import Sensor
    (tmp_path / "afile").write_text("")
    cfg = make_config({}, metrics={"textfile_dir": str(tmp_path / "afile" / "sub")})
    s = Sensor(cfg)
    try:
        for _ in range(3):
            assert "img_sensor_time" in s.values()
    finally:
        assert s.quit() == 0
    with open(tmp_path / "sge-image.log") as f:
        lines = [ln for ln in f if "metrics not written" in ln]
    assert len(lines) == 1, lines  # logged once, not every cycle


def test_the_prom_file_is_never_written_through_a_planted_link(host, tmp_path):
    c = host.collector()
    cycle(c)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, os.path.join(os.path.dirname(host.prom), f".sge_image.prom.{os.getpid()}.tmp"))
    cycle(c)
    assert victim.read_text() == "precious\n"
    assert "sge_image_info" in open(host.prom).read()
