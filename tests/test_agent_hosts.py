"""Which hosts the node agent counts as live, from real `qhost -F` text (both engines
print this shape)."""
import time

from sge.agent.hosts import live_hosts, seed_for
from sge.cluster import qhost

HEAD = ("HOSTNAME                ARCH         NCPU  NSOC  NCOR  NTHR   LOAD  MEMTOT  MEMUSE  "
        "SWAPTO  SWAPUS\n" + "-" * 98 + "\n"
        "global                  -               -     -     -     -      -       -       -"
        "       -       -\n")


def _host(name, values, load="0.50"):
    text = f"{name:<23} lx-amd64        2     1     2     2   {load}   23.5G    1.0G     0.0     0.0\n"
    if values:
        text += "    Host Resource(s):   \n" + "".join(f"\thl:{k}={v}\n" for k, v in values.items())
    return text


def _read(text):
    return lambda complexes: qhost.parse(text)


def test_hosts_whose_sensor_has_not_reported_yet_are_seed_candidates():
    # Right after install: execds report load, no sensor has reported.
    text = HEAD + "".join(_host(h, {"load_avg": "6.680000"}) for h in ("node1", "node2", "node3"))
    live, have = live_hosts("img_cold", 300, _read(text))
    assert live == ["node1", "node2", "node3"] and have == []
    assert seed_for("ab" * 32, live) in live


def test_a_stale_sensor_is_dead_and_a_host_without_load_is_down():
    now = int(time.time())
    text = HEAD + _host("fresh", {"load_avg": "0.1", "img_sensor_time": f"{now}.000000",
                                  "img_cold": "1.000000"})
    text += _host("stale", {"load_avg": "0.1", "img_sensor_time": f"{now - 900}.000000",
                            "img_cold": "1.000000"})
    text += _host("young", {"load_avg": "0.1"})
    text += _host("down", {}, load="-")
    live, have = live_hosts("img_cold", 300, _read(text))
    assert live == ["fresh", "young"]
    assert have == ["fresh"]
