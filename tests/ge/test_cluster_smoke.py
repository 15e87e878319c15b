"""The one-machine Grid Engine cluster really runs jobs on each exec host."""


def test_jobs_run_on_the_requested_exec_host(ge_cluster, tmp_path):
    assert ge_cluster.hosts, "no exec hosts configured"
    jobs = {}
    for host in ge_cluster.hosts:
        # a fresh path per job: Grid Engine appends to an existing -o file
        out = tmp_path / f"hostname-{host}.out"
        jid = ge_cluster.qsub(["-b", "y", "-l", f"hostname={host}", "-j", "y", "-o", str(out), "hostname"])
        jobs[host] = (jid, out)

    for host, (jid, out) in jobs.items():
        ge_cluster.wait_done(jid, timeout=60)
        assert out.read_text().strip() == host
        rec = ge_cluster.qacct(jid)[-1]
        assert (rec["hostname"], rec["failed"], rec["exit_status"]) == (host, "0", "0")

    assert ge_cluster.queue_errors() == []
