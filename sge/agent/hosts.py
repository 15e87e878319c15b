"""Who is who: this host's names and address, the cluster's live hosts, and who may
connect to the agent. Grid Engine already knows the exec hosts and what each has
cached (the load sensor's values in `qhost -F`): one qhost call per cold staging, or
per minute for the trust list, is all the agent asks of qmaster.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from ..cluster import qhost
from ..peerplan import seed_for  # noqa: F401 - who asks the image's seed
from ..rootenv import child_env

if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

    from ..cluster.qhost import HostView

    # read(complexes) -> {host: what its load sensor reported}
    Reader = Callable[[Sequence[str]], Dict[str, HostView]]

REFRESH_MIN = 10.0      # seconds between qhost calls for an unknown peer address
REFRESH_EVERY = 60.0


def my_names() -> Set[str]:
    """The names this host answers to: Grid Engine's (HOST, set by execd for the load
    sensor), the kernel's, and their short forms."""
    names = {socket.gethostname()}
    if os.environ.get("HOST"):
        names.add(os.environ["HOST"])
    names |= {n.split(".")[0] for n in names if not _is_address(n)}
    return {n.lower() for n in names if n}


def _is_address(name: str) -> bool:
    try:
        socket.inet_aton(name)
        return name.count(".") == 3
    except OSError:
        return False


def my_host() -> str:
    # Not $HOST: in a prolog the job owner's environment could set it, and this name
    # picks the address our requests are sent from.
    return socket.gethostname()


def address_of(host: str) -> Optional[str]:
    """IPv4 address of a host name (what peers connect to), or None."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def is_me(host: str) -> bool:
    mine = my_names()
    return host.lower() in mine or (not _is_address(host) and host.split(".")[0].lower() in mine)


def reader(argv: Sequence[str] = ("qhost",)) -> Reader:
    """read(complexes) -> {host: HostView}, running `argv -F complexes` (the site's
    qhost, or a wrapper of it)."""
    def read(complexes: Sequence[str]) -> Dict[str, HostView]:
        r = subprocess.run(list(argv) + ["-F", ",".join(complexes)], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL, env=_command_env())
        if r.returncode != 0:
            raise OSError(f"{argv[0]} failed: {(r.stderr or r.stdout).strip()[:300]}")
        return qhost.parse(r.stdout)
    return read


def _command_env() -> Optional[Dict[str, str]]:
    """qhost as root runs with sge/rootenv.py's rebuilt environment; a site whose qhost
    is not on the system path names it in `agent.qhost`."""
    return child_env(always=True)


def live_hosts(complex_name: str, window: float,
               read: Optional[Reader] = None) -> Tuple[List[str], List[str]]:
    """-> (live host names, those of them reporting `complex_name`), from `qhost -F`.
    Live: its sensor reported within `window` seconds (a host whose execd is down
    keeps its last values in qhost for a while; its timestamp goes stale), or it has
    no sensor report yet while its execd reports load: the seconds after `install`,
    before the sensor's first report reaches qmaster."""
    read = read or reader()
    hosts = read([complex_name, "img_sensor_time", "load_avg"])
    now = time.time()
    # Without the second case a burst right after install found no live host, chose
    # no seed and every host pulled from the origin (3 downloads for 3 hosts on Open
    # Cluster Scheduler: no sensor had reported when the tasks started). A host
    # without the kit is a candidate too; its agent refuses at once and the next
    # seed is asked.
    live = [h for h, v in hosts.items() if _live(v, now, window)]
    have = [h for h in live if hosts[h].has(complex_name)]
    return sorted(live), have


def _live(view: HostView, now: float, window: float) -> bool:
    if view.sensor_time is not None:
        return now - view.sensor_time <= window
    return view.values.get("load_avg") is not None


class Trust:
    """allowed(ip) for the server: a fixed list of hosts, addresses and networks
    (`10.1.0.0/16`), or `cluster`, the
    exec hosts qhost lists (re-read at most every REFRESH_MIN seconds when an unknown
    address knocks, so a flood of strangers cannot flood qmaster).

    The server asks in its accepting thread, before a connection costs anything, so
    an answer never waits: `load()` reads qhost once before serving, and later
    re-reads run in a thread of their own while unknown addresses are refused (a host
    that just joined is refused until the re-read has it: its pull uses the origin)."""

    def __init__(self, setting: Union[str, Sequence[str]], read: Optional[Reader] = None) -> None:
        self.setting = setting
        self.read = read
        self.addresses: Set[str] = set()
        self.networks: List[Union[ipaddress.IPv4Network, ipaddress.IPv6Network]] = []
        self.loaded = 0.0
        self.lock = threading.Lock()
        self.refreshing = False
        if setting != "cluster":
            self.networks = [ipaddress.ip_network(x, strict=False) for x in setting if "/" in x]
            self.addresses = _resolve_all([x for x in setting if "/" not in x])
            self.loaded = float("inf")

    def __call__(self, ip: str) -> bool:
        if ip in self.addresses:
            return True
        if self.setting != "cluster":
            if self.networks:
                addr = ipaddress.ip_address(ip)
                return any(addr in n for n in self.networks)
            return False
        with self.lock:
            if self.refreshing or time.monotonic() - self.loaded < REFRESH_MIN:
                return False
            self.refreshing = True
        threading.Thread(target=self._refresh, daemon=True, name="trust").start()
        return False

    def load(self) -> None:
        """Read the cluster's hosts now (before serving)."""
        if self.setting == "cluster":
            with self.lock:
                self.refreshing = True
            self._refresh()

    def _refresh(self) -> None:
        try:
            hosts = (self.read or reader())(["img_sensor_time"])
            self.addresses = _resolve_all(hosts)
        except Exception:
            pass  # qmaster unreachable: keep the last list
        with self.lock:
            self.loaded = time.monotonic()
            self.refreshing = False


def _resolve_all(names: Iterable[str]) -> Set[str]:
    out: Set[str] = set()
    for n in names:
        try:
            for info in socket.getaddrinfo(n, None, socket.AF_INET):
                out.add(str(info[4][0]))
        except OSError:
            continue
    return out
