"""Redirects: a busy agent names the hosts it is sending a blob to, and a client
streams from one of them instead of the origin.

Without them the hosts of a burst see only the seed (the sensor reports the others
up to a load report later), fill its upload slots, and the rest go to the origin:
15.4x one copy on day one in the simulator instead of 1.0x. The header is only a hint
from a peer: the client follows an address only if it is a live cluster host's,
once per pull, and a bounded number of times; the bytes go through the verifying
sink like any others.
"""
from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING

from . import hosts as _hosts

if TYPE_CHECKING:
    from typing import Dict, Iterable, List, Optional, Sequence, Set

HEADER = "X-Sge-Image-Peers"
MAX_NAMED = 4      # addresses a busy agent names; a header with more is ignored whole
MAX_TRIES = 4      # redirect targets a client tries per pull


def header_value(sending: Iterable[str], requester: str) -> Optional[str]:
    """The header for a 503: up to MAX_NAMED distinct addresses of transfers of the
    requested digest, never the requester's own (it would ask itself)."""
    out: List[str] = []
    for ip in sending:
        if ip != requester and ip not in out:
            out.append(ip)
            if len(out) == MAX_NAMED:
                break
    return ",".join(out) if out else None


def parse(value: Optional[str]) -> List[str]:
    """Addresses named by a peer's header; [] for none, garbage or more than a
    conforming agent sends (a peer that lies about one thing is trusted with none)."""
    if not value or len(value) > 64 * MAX_NAMED:
        return []
    items = [x.strip() for x in value.split(",")]
    if len(items) > MAX_NAMED:
        return []
    try:
        return [str(ipaddress.ip_address(x)) for x in items]
    except ValueError:
        return []


class Redirects:
    """Per pull: which named addresses may be followed, each once, MAX_TRIES in all.
    Only an address of a live host qhost lists is followed, so a lying peer cannot
    send the client anywhere else (a cluster host serves wrong bytes at worst, which
    the sink refuses)."""

    def __init__(self, live: Sequence[str], max_tries: int = MAX_TRIES) -> None:
        self.live = list(live)
        self.left = max_tries
        self.tried: Set[str] = set()
        self._by_ip: Optional[Dict[str, str]] = None

    def targets(self, value: Optional[str], via: str) -> List[str]:
        """Host names to try for a 503 from `via` carrying header `value`."""
        if self.left <= 0:
            return []
        named = parse(value)
        if not named:
            return []
        if self._by_ip is None:
            self._by_ip = {}
            for h in self.live:
                addr = _hosts.address_of(h)
                if addr is not None:
                    self._by_ip.setdefault(addr, h)
        hosts = []
        for ip in named:
            host = self._by_ip.get(ip)
            if host is None or host in self.tried or host == via or _hosts.is_me(host):
                continue
            hosts.append(host)
        random.shuffle(hosts)  # many busy clients spread over the named hosts
        hosts = hosts[:self.left]
        self.left -= len(hosts)
        self.tried.update(hosts)
        return hosts
