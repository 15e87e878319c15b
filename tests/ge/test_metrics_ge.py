"""Metrics on a real Grid Engine: each exec host's load sensor writes its textfile, a
real node_exporter per host reads it, a real Prometheus scrapes them, and PromQL over
the HTTP API answers what an admin asks (the README's example queries): the origin
bytes of a cold array, which the test's HTTP server counted itself."""
import os
import time

import pytest

from tests.support import promstack
from tests.support.gekit import MB, QHOST_PINNED, kit_work, make_kit
from tests.support.promstack import ORIGIN_BYTES_QUERY, RULES, parse_prom

TASKS = 12
SIZE = 16 * MB


def _textfile_dir(kit, host):
    return os.path.join(kit.work, "textfile", host)


def _prom(kit, host):
    try:
        with open(os.path.join(_textfile_dir(kit, host), "sge_image.prom")) as f:
            return parse_prom(f.read())
    except FileNotFoundError:
        return {}


@pytest.fixture(scope="module")
def kit(ge_cluster):
    if not promstack.available():
        pytest.fail("prometheus and prometheus-node-exporter are missing: run scripts/setup.sh")
    work = kit_work(ge_cluster)
    qhost = os.path.join(work, "qhost-pinned")
    k = make_kit(ge_cluster, {"cold": {"size": SIZE, "seed": 201}}, extra={
        "agent": {"enabled": True, "seed_wait": 120, "pe_wait": 120, "qhost": [qhost]},
        "metrics": {"textfile_dir": os.path.join(work, "textfile", "{host}")}})
    k.script("qhost-pinned", QHOST_PINNED)
    k.sge_image("install")
    stack = None
    try:
        # Every host's sensor has written its file and its agent is listening.
        deadline = time.monotonic() + 120
        while not all(_prom(k, h).get("sge_image_agent_up") == 1 for h in ge_cluster.hosts):
            assert time.monotonic() < deadline, {h: _prom(k, h) for h in ge_cluster.hosts}
            time.sleep(0.5)
        stack = promstack.PromStack(os.path.join(work, "prometheus"),
                                    {h: _textfile_dir(k, h) for h in ge_cluster.hosts},
                                    rule_files=[RULES])
        k.stack = stack
        yield k
    finally:
        if stack is not None:
            stack.close()
        ge_cluster.run(["qdel", "-u", "*", "-f"], check=False)
        k.sge_image("uninstall", check=False)
        k.server.close()


def test_prometheus_counts_the_origin_bytes_of_a_cold_array(kit):
    c, stack = kit.cluster, kit.stack
    hosts = c.hosts
    assert stack.wait_value("count(sge_image_agent_up == 1)", float(len(hosts))) == len(hosts)
    out = kit.out("cold")
    job = kit.script("cold.sh", '#!/bin/sh\ntest -r "$SGE_IMAGE_PATH" || exit 3\n')
    t0 = time.monotonic()
    jid = c.qsub(["-t", f"1-{TASKS}", "-l", "image=cold", "-o", f"{out}/$TASK_ID.out", "-j", "y",
                  job])
    c.wait_done(jid, timeout=300)
    ran = time.monotonic() - t0
    recs = c.qacct(jid)
    assert len(recs) == TASKS
    assert all(r["exit_status"] == "0" and r["failed"].startswith("0") for r in recs), recs
    downloads = kit.server.gets("cold.sif")
    assert downloads >= 1
    digest = kit.images["cold"]["sha256"]
    have = [h for h in hosts if os.path.exists(os.path.join(kit.cache_dir(h), "blobs", "sha256", digest))]

    # The README's query, answered by Prometheus from the hosts' textfiles: the
    # origin bytes are what the HTTP server sent, every host's copy came from
    # somewhere, and every task's prolog counted one lookup and one exit 0.
    t1 = time.monotonic()
    origin = stack.wait_value(ORIGIN_BYTES_QUERY.replace("IMAGE", "cold"), float(SIZE * downloads))
    assert origin == SIZE * downloads, (origin, downloads)
    every = stack.wait_value('sum(sge_image_fetched_bytes_total{image="cold"})',
                             float(SIZE * len(have)))
    assert every == SIZE * len(have), (every, have)
    lookups = stack.wait_value('sum(sge_image_cache_lookups_total{image="cold"})', float(TASKS))
    assert lookups == TASKS
    assert stack.wait_value('sum(sge_image_prolog_exits_total{code="0"})', float(TASKS)) == TASKS
    seen = time.monotonic() - t1
    assert stack.query('sum(sge_image_prolog_exits_total{code=~"99|100"})')[0][1] == 0
    stagings = stack.query('sum(sge_image_staging_duration_seconds_count{source="origin"})')
    assert stagings[0][1] == downloads
    hit_rate = stack.query('sum(sge_image_cache_lookups_total{result="hit"}) / '
                           'sum(sge_image_cache_lookups_total)')[0][1]
    assert 0 <= hit_rate < 1  # the first task on each host that ran one missed
    cached = stack.query('count(sge_image_cached{image="cold"})')[0][1]
    assert cached == len(have)
    # Each copy a host took from a peer is one upload its agent counted.
    from_peers = stack.query('sum(sge_image_fetched_bytes_total{image="cold",source=~"peer.*"}) or vector(0)')[0][1]
    uploads = stack.wait_value("sum(sge_image_agent_uploads_total)", from_peers / SIZE)
    assert uploads == from_peers / SIZE, (uploads, from_peers)
    # The example alert rules load and evaluate against these series.
    rules = [r for g in stack.api("rules")["groups"] for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), rules
    by_source = {m["source"]: v for m, v in
                 stack.query('sum by (source) (sge_image_fetched_bytes_total{image="cold"})')}
    print(f"{c.flavor}: {TASKS} tasks in {ran:.1f} s on {len(have)} hosts; origin downloads "
          f"{downloads}; bytes by source {by_source}; hit rate {hit_rate:.2f}; the counts "
          f"reached Prometheus {seen:.1f} s after the array ended")
    assert c.queue_errors() == []
